#!/usr/bin/env bash
# The test suite, as CI runs it: fetches the real models (SmolLM2-135M, Qwen2.5-Coder-0.5B and 1.5B, Gemma 3 270M,
# cached outside the repository), builds in release
# (the tests share the binary's build), runs every test of the workspace, checks that the library builds for
# the browser (wasm32), then runs the browser test (scripts/browser-test.sh: the real model in headless
# Chromium; it needs chromium and chromium-driver, and builds wasm-bindgen-cli once per machine, ~15 min).
# OMEX_SKIP_BROWSER=1 skips the browser test.
set -euo pipefail
cd "$(dirname "$0")/.."
OMEX_SMOLLM2_GGUF="$(scripts/fetch-model.sh | tail -n 1)"
export OMEX_SMOLLM2_GGUF
OMEX_QWEN05_GGUF="$(scripts/fetch-model.sh qwen2.5-coder-0.5b | tail -n 1)"
export OMEX_QWEN05_GGUF
OMEX_QWEN15_GGUF="$(scripts/fetch-model.sh qwen2.5-coder-1.5b | tail -n 1)"
export OMEX_QWEN15_GGUF
OMEX_GEMMA3_GGUF="$(scripts/fetch-model.sh gemma3-270m | tail -n 1)"
export OMEX_GEMMA3_GGUF
cargo build --release --bins
cargo test --release --workspace
if rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown; then
    cargo check --release --lib --target wasm32-unknown-unknown
else
    echo "test.sh: wasm32-unknown-unknown is not installed (rustup target add wasm32-unknown-unknown); skipping the browser build check" >&2
fi
# The SIMD128 kernels of the wasm CPU engine against the references and the portable kernels, under Node.
if command -v node >/dev/null; then bash scripts/wasm-bench.sh test; else echo "test.sh: no node; skipping the wasm kernel tests" >&2; fi
if [ "${OMEX_SKIP_BROWSER:-0}" = 1 ]; then
    echo "test.sh: OMEX_SKIP_BROWSER=1: skipping the browser test" >&2
else
    bash scripts/browser-test.sh
fi
