#!/usr/bin/env bash
# The test suite, as CI runs it: fetches the real model (cached outside the repository), builds in release
# (the tests share the binary's build), runs every test of the workspace, then checks that the library
# builds for the browser (wasm32).
set -euo pipefail
cd "$(dirname "$0")/.."
OMEX_SMOLLM2_GGUF="$(scripts/fetch-model.sh | tail -n 1)"
export OMEX_SMOLLM2_GGUF
cargo build --release --bins
cargo test --release --workspace
if rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown; then
    cargo check --release --lib --target wasm32-unknown-unknown
else
    echo "test.sh: wasm32-unknown-unknown is not installed (rustup target add wasm32-unknown-unknown); skipping the browser build check" >&2
fi
