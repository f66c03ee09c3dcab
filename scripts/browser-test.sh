#!/usr/bin/env bash
# The browser test: the real model (SmolLM2-135M, converted here) runs in headless Chromium through the web
# page (examples/web), on WebGPU (Dawn's SwiftShader adapter: no GPU needed) and on the CPU engine compiled
# to wasm, and its greedy tokens must equal the native CPU engine's on the same activations (WebGPU, always
# f32, and the wasm engine asked for "f32": --activations f32's; the wasm engine's default, int8, as the native
# CPU engine's: --activations int8's); the page says plainly when WebGPU is
# missing; and GPU kernels (int4 matvec, RMS norm, decode attention) run in Chromium against their kernels-cpu
# twins (wasm-bindgen-test); and the npm package omex-web (scripts/web-package.sh), its tarball installed into a
# scratch project, is driven through a scratch page: the OpenAI-style API in a worker, greedy ids against the
# native engine's, the model cache (a reload asks the server for nothing), a damaged cache entry and a full
# quota (examples/web/tests/package_test.py). Ends with "N passed, N failed"; exits non-zero on any failure.
#
#   scripts/browser-test.sh
#
# Needs Debian's chromium and chromium-driver (installed here when missing and running as root), npm (Debian's
# npm, likewise), the wasm32-unknown-unknown target and wasm-bindgen-cli (scripts/web-build.sh sees to both).
#
# Environment: OMEX_SMOLLM2_GGUF (else scripts/fetch-model.sh fetches it), OMEX_WEB_PROMPT, OMEX_WEB_TOKENS,
# OMEX_WEB_ENGINES (gpu,cpu), OMEX_WEB_SCREENSHOT (save a screenshot mid-generation there).
set -euo pipefail
cd "$(dirname "$0")/.."

die() { echo "browser-test.sh: error: $*" >&2; exit 1; }
log() { echo "browser-test.sh: $*" >&2; }

prompt="${OMEX_WEB_PROMPT:-The capital of France is}"
tokens="${OMEX_WEB_TOKENS:-8}"

need=()
command -v chromium >/dev/null || need+=(chromium)
command -v chromedriver >/dev/null || need+=(chromium-driver)
command -v npm >/dev/null || need+=(npm)
if [ ${#need[@]} -gt 0 ]; then
    [ "$(id -u)" = 0 ] || die "install ${need[*]} (apt-get install ${need[*]})"
    log "installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq "${need[@]}" >/dev/null
fi

gguf="${OMEX_SMOLLM2_GGUF:-$(scripts/fetch-model.sh | tail -n 1)}"
[ -f "$gguf" ] || die "no model at $gguf"
cargo build --release --bin omex >&2
built="$(scripts/web-package.sh | tail -n 2)"
pkg="$(printf '%s\n' "$built" | head -n 1)"
tarball="$(realpath "$(printf '%s\n' "$built" | tail -n 1)")"

work="$(mktemp -d "${TMPDIR:-/tmp}/omex-browser-test.XXXXXX")"
trap 'rm -rf "$work"' EXIT
model="$work/smollm2.omex"
target/release/omex convert "$gguf" -o "$model" >/dev/null

# The references, greedy, from the native CPU engine: on float activations (the reference-exact path: the
# GPU engine runs f32, and the wasm engine when asked for "f32") and on int8 activations (the CPU engine's
# default, native and in wasm alike: the wasm SIMD128 q8 kernels are meant to be bit-equal to the native ones).
native_ids() { # FIELD JSON
    printf '%s' "$2" | python3 -c 'import json,sys; print(",".join(map(str, json.load(sys.stdin)[sys.argv[1]])))' "$1"
}
native="$(target/release/omex run "$model" --backend cpu --activations f32 --json -p "$prompt" -n "$tokens")"
expected="$(native_ids output_ids "$native")"
prompt_ids="$(native_ids prompt_ids "$native")"
log "native CPU engine, f32 activations: prompt ids [$prompt_ids] -> greedy ids [$expected]"
native_int8="$(target/release/omex run "$model" --backend cpu --activations int8 --json -p "$prompt" -n "$tokens")"
expected_int8="$(native_ids output_ids "$native_int8")"
[ "$(native_ids prompt_ids "$native_int8")" = "$prompt_ids" ] || die "the prompt ids differ between the two native runs"
log "native CPU engine, int8 activations: greedy ids [$expected_int8]"
native_chat="$(target/release/omex run "$model" --backend cpu --activations f32 --json --chat -p "$prompt" -n 4)"
expected_chat="$(native_ids output_ids "$native_chat")"
log "native CPU engine with --chat, f32 activations: greedy ids [$expected_chat]"
native_chat_int8="$(target/release/omex run "$model" --backend cpu --activations int8 --json --chat -p "$prompt" -n 4)"
expected_chat_int8="$(native_ids output_ids "$native_chat_int8")"
log "native CPU engine with --chat, int8 activations: greedy ids [$expected_chat_int8]"

# The package as a web developer gets it: the tarball installed into a scratch project beside a page of its own.
scratch="$work/scratch"
mkdir -p "$scratch"
cp examples/web/tests/package-page/index.html examples/web/tests/package-page/tests.js "$scratch/"
(cd "$scratch" && npm init -y >/dev/null && npm install --no-audit --no-fund --loglevel=error "$tarball" >&2) \
    || die "npm install $tarball into a scratch project failed"

# GPU kernels in Chromium against their kernels-cpu twins (wasm-bindgen-test: examples/web/tests/kernels.rs).
tools="$(scripts/web-build.sh --tools | tail -n 1)"
cat > "$work/webdriver.json" <<JSON
{"goog:chromeOptions": {"binary": "$(command -v chromium)", "args": ["--enable-unsafe-webgpu",
  "--user-data-dir=$work/chromium-kernels", "--disable-background-networking", "--disable-component-update",
  "--disable-sync", "--no-first-run", "--disable-quic"]}}
JSON
kernels_log="$work/kernels.log"
echo "kernel tests in Chromium (wasm-bindgen-test) ..."
CHROMEDRIVER="$(command -v chromedriver)" WASM_BINDGEN_TEST_WEBDRIVER_JSON="$work/webdriver.json" \
    WASM_BINDGEN_TEST_TIMEOUT=300 CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER="$tools/wasm-bindgen-test-runner" \
    CARGO_PROFILE_RELEASE_DEBUG=0 \
    cargo test --release --target wasm32-unknown-unknown -p omex-web --test kernels >"$kernels_log" 2>&1 || true
grep -E '^test [a-z_0-9]+ \.\.\. ' "$kernels_log" | sed 's/^/    /' || true
kernel_passed="$(grep -cE '^test [a-z_0-9]+ \.\.\. ok' "$kernels_log" || true)"
kernel_failed="$(grep -cE '^test [a-z_0-9]+ \.\.\. FAIL' "$kernels_log" || true)"
if ! grep -q '^test result: ok' "$kernels_log"; then
    echo "kernel tests in Chromium ... FAILED; the end of their log:"
    tail -n 40 "$kernels_log" | sed 's/^/    /'
    [ "$kernel_failed" -gt 0 ] || kernel_failed=1
fi

args=(--model "$model" --pkg "$pkg" --prompt "$prompt" --expected "$expected" --prompt-ids "$prompt_ids"
      --expected-chat "$expected_chat" --scratch "$scratch"
      --engines "${OMEX_WEB_ENGINES:-gpu,cpu}" --prior-passed "$kernel_passed" --prior-failed "$kernel_failed")
[ -z "${OMEX_WEB_SCREENSHOT:-}" ] || args+=(--screenshot "$OMEX_WEB_SCREENSHOT")
# The int8 references reach the package tests (package_test.py) through the environment.
OMEX_WEB_EXPECTED_INT8="$expected_int8" OMEX_WEB_EXPECTED_CHAT_INT8="$expected_chat_int8" \
    python3 scripts/browser_test.py "${args[@]}"
