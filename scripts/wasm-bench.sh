#!/usr/bin/env bash
# The wasm CPU engine: its kernel tests and its speed.
#
#   scripts/wasm-bench.sh test               # kernels-cpu's tests for wasm32-wasip1 (+simd128) under Node:
#                                            # every SIMD128 kernel against the f64 references and the portable
#                                            # kernels (CI runs this from scripts/test.sh; ~1 min once built)
#   scripts/wasm-bench.sh kernels [POS] [STEPS]
#                                            # one SmolLM2 decode step at the kernel level (examples/decode_step.rs),
#                                            # native (portable, best ISA) and wasm (portable, simd128), int8 and
#                                            # f32 activations, one thread
#   scripts/wasm-bench.sh page [TOKENS]      # native `omex bench -t 1` vs the web page's CPU engine in headless
#                                            # Chromium (f32 and int8 activations), SmolLM2
#
# Needs node (Debian: apt-get install nodejs), the wasm32-wasip1 target (added here when missing); `page`
# also chromium + chromium-driver and wasm-bindgen-cli (scripts/web-build.sh). Environment: OMEX_SMOLLM2_GGUF.
set -euo pipefail
cd "$(dirname "$0")/.."

die() { echo "wasm-bench.sh: error: $*" >&2; exit 1; }
log() { echo "wasm-bench.sh: $*" >&2; }

command -v node >/dev/null || die "node is needed (apt-get install nodejs)"
if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip1; then
    log "adding the wasm32-wasip1 target"
    rustup target add wasm32-wasip1 >&2
fi
export CARGO_TARGET_WASM32_WASIP1_RUNNER="node --no-warnings $PWD/benches/wasm/wasi-run.mjs"
# No debug info in wasm builds: only size, and Node would parse it.
export CARGO_PROFILE_RELEASE_DEBUG=0

case "${1:-}" in
test)
    # threads.rs needs a 2-thread pool, which wasm32 without atomics cannot start; tests that need threads or
    # unwinding (should_panic) are ignored on wasm32 and listed as such.
    cargo test --release -p kernels-cpu --target wasm32-wasip1 --lib --test q8 --test matvec --test attention \
        --test ops --test ggml
    ;;
kernels)
    pos="${2:-128}"
    steps="${3:-20}"
    [[ "$pos" =~ ^[0-9]+$ && "$pos" -le 8192 ]] || die "POS must be a number up to 8192"
    [[ "$steps" =~ ^[0-9]+$ && "$steps" -ge 1 && "$steps" -le 1000 ]] || die "STEPS must be in 1..1000"
    cargo build --release -p kernels-cpu --example decode_step >&2
    cargo build --release -p kernels-cpu --example decode_step --target wasm32-wasip1 >&2
    best="$(target/release/examples/decode_step 2>/dev/null | awk '{print $2; exit}')"
    for act in int8 f32; do
        for isa in portable "$best"; do
            echo "native $(target/release/examples/decode_step "$isa" "$pos" "$steps" "$act")"
        done
        for isa in portable simd128; do
            echo "wasm   $(node --no-warnings benches/wasm/wasi-run.mjs \
                target/wasm32-wasip1/release/examples/decode_step.wasm "$isa" "$pos" "$steps" "$act")"
        done
    done
    ;;
page)
    tokens="${2:-64}"
    [[ "$tokens" =~ ^[0-9]+$ && "$tokens" -ge 1 && "$tokens" -le 4096 ]] || die "TOKENS must be in 1..4096"
    gguf="${OMEX_SMOLLM2_GGUF:-$(scripts/fetch-model.sh | tail -n 1)}"
    [ -f "$gguf" ] || die "no model at $gguf"
    cargo build --release --bin omex >&2
    work="$(mktemp -d "${TMPDIR:-/tmp}/omex-wasm-bench.XXXXXX")"
    trap 'rm -rf "$work"' EXIT
    target/release/omex convert "$gguf" -o "$work/smollm2.omex" >/dev/null
    pkg="$(OMEX_WEB_PKG="$work/pkg" scripts/web-build.sh | tail -n 1)"
    # The page takes the URL's `activations` (its default is int8).
    cp -r examples/web "$work/page"
    for act in int8 f32; do
        echo "native omex bench -t 1 ($act activations):"
        target/release/omex bench "$work/smollm2.omex" --backend cpu --threads 1 --activations "$act" -p 16 \
            -n "$tokens" -r 3 | sed 's/^/    /'
    done
    python3 benches/wasm/page_bench.py --page "$work/page" --pkg "$pkg" --model "$work/smollm2.omex" \
        --tokens "$tokens"
    ;;
*)
    die "usage: scripts/wasm-bench.sh test | kernels [POS] [STEPS] | page [TOKENS]"
    ;;
esac
