#!/usr/bin/env bash
# omex beside llama.cpp on the device's GPU, one table per model: run ON the device machine, with the peers folder
# (../shared/peers copied to .peers, see its README) and a stripped omex binary carried along.
#
#   bash scripts/device-bench.sh [MODEL..]     # MODEL: a header in .peers/heads/ without .head
#                                              # (default: smollm2-135m-instruct-q4_1 gemma-3-270m-q4_k_m)
#
# For each model: a same-shape GGUF with random weights (speed does not depend on the values), converted with
# `--quant keep`; then omex `bench --backend gpu` (a warm-up run first), llama.cpp CUDA and Vulkan `llama-bench`,
# and omex again, all pp512 and tg128 on the same card in the same call. OMEX_BIN picks the binary
# (default .devbin/omex, else target/release/omex); REPS the repetitions (default 3); KVS the omex KV cache types
# to run (default "f16"; e.g. KVS="f16 f32 q8").
set -euo pipefail
cd "$(dirname "$0")/.."
REPS=${REPS:-3}
KVS=${KVS:-f16}
[ $# -gt 0 ] || set -- smollm2-135m-instruct-q4_1 gemma-3-270m-q4_k_m
source scripts/device-env.sh
for m in "$@"; do
    echo "=== $m"
    bash $P/device.sh model "$P/heads/$m.head" "/tmp/$m.gguf" >/dev/null
    rm -rf "/tmp/$m.omex"
    "$BIN" convert "/tmp/$m.gguf" -o "/tmp/$m.omex" --quant keep >/dev/null
    "$BIN" bench "/tmp/$m.omex" --backend gpu -p 512 -n 128 -r 1 >/dev/null 2>&1 || true
    for kv in $KVS; do
        echo "== omex --kv $kv (before)"
        "$BIN" bench "/tmp/$m.omex" --backend gpu --kv "$kv" -p 512 -n 128 -r "$REPS" 2>&1 | grep -v XDG || true
    done
    bash $P/device.sh bench "/tmp/$m.gguf" -p 512 -n 128 -r "$REPS"
    for kv in $KVS; do
        echo "== omex --kv $kv (after)"
        "$BIN" bench "/tmp/$m.omex" --backend gpu --kv "$kv" -p 512 -n 128 -r "$REPS" 2>&1 | grep -v XDG || true
    done
done
