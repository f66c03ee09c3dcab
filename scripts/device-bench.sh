#!/usr/bin/env bash
# omex beside llama.cpp on the device's GPU, one table per model: run ON the device machine, with the peers folder
# (../shared/peers copied to .peers, see its README), a stripped omex binary and the glvnd packages (.gl: see
# scripts/device-env.sh) carried along.
#
#   bash scripts/device-bench.sh [MODEL..]     # MODEL: a header in .peers/heads/ without .head
#                                              # (default: smollm2-135m-instruct-q4_1 gemma-3-270m-q4_k_m)
#
# The card's copy bandwidth first (`omex profile`). For each model: a same-shape GGUF with random weights (speed
# does not depend on the values), converted with `--quant keep`, and omex `bench --backend gpu` (a warm-up run
# first) while llama.cpp builds behind it; then llama.cpp CUDA and Vulkan `llama-bench` and omex again, all pp512
# and tg128 on the same card in the same call. Each omex decode figure is followed by the weight bytes it reads
# a second: a token's (`omex plan`'s read_bytes_per_token) times tokens per second, to set beside the card's
# memory bandwidth (`omex profile`'s copy figure is not that: 324 GB/s on an H100 whose HBM3 does ~3.35 TB/s).
# OMEX_BIN picks the binary (default .devbin/omex, else target/release/omex); REPS the repetitions (default 3);
# KVS the omex KV cache types to run (default "f16"; e.g. KVS="f16 f32 q8"); CTX_FILL, if set (e.g. 3500), adds
# a long-context run per KV type: tg128 after a CTX_FILL-token prompt (the cache holds the model's context, at
# most 4096 tokens).
set -euo pipefail
cd "$(dirname "$0")/.."
REPS=${REPS:-3}
KVS=${KVS:-f16}
[ $# -gt 0 ] || set -- smollm2-135m-instruct-q4_1 gemma-3-270m-q4_k_m
PEERS_BUILD=background source scripts/device-env.sh
copy=$("$BIN" profile --json 2>/dev/null | python3 -c 'import json,sys; print((json.load(sys.stdin).get("gpu") or {}).get("copy_gbs", 0))' || echo 0)
echo "copy bandwidth (omex profile): $copy GB/s"
if [ "$copy" = 0 ]; then  # no adapter: say what the machine has instead of benchmarking nothing for ten minutes
    "$BIN" profile 2>&1 | head -20
    # The loader's own account of each driver it tried and why it was dropped.
    VK_LOADER_DEBUG=error,warn,driver "$BIN" profile 2>&1 | grep -iE "loader|icd|driver|fail|error" | head -40
    lib=$(ldconfig -p | grep -o '/[^ ]*libGLX_nvidia.so.0' | head -1 || true)
    [ -z "$lib" ] && echo "libGLX_nvidia.so.0: not on this machine" || { echo "$lib:"; ldd "$lib"; }
    ls -la /usr/share/vulkan/icd.d /etc/vulkan/icd.d /usr/local/nvidia/share/vulkan/icd.d 2>&1 | head -20
    ldconfig -p | grep -E "vulkan|nvidia" | head -20
    exit 1
fi

# omex bench, one line per run: pp and tg with their spread, and the weight bytes tg reads a second.
omex_bench() {  # MODEL_DIR KV PROMPT [extra bench args]
    local dir=$1 kv=$2 pp=$3; shift 3
    "$BIN" bench "$dir" --backend gpu --kv "$kv" -p "$pp" -n 128 -r "$REPS" --json "$@" 2>/dev/null | python3 -c '
import json, sys
b = json.loads(sys.stdin.read()); w = float(sys.argv[1])
eff = "{:.0f} GB/s of weights read".format(w * b["tg_tok_s"] / 1e9)
print("omex  kv {:<3}  pp{:<5} {:10.1f} ± {:7.1f}   tg128 {:8.1f} ± {:6.1f}   ({:.0f} MB a token: {})".format(
    b["kv"], b["n_prompt"], b["pp_tok_s"], b["pp_sd"], b["tg_tok_s"], b["tg_sd"], w / 1e6, eff))
' "$(weights "$dir")" || echo "omex bench failed (kv $kv, prompt $pp)"
}
weights() { "$BIN" plan "$1" --json 2>/dev/null | python3 -c 'import json,sys; p=json.load(sys.stdin); print(p.get("read_bytes_per_token", p["weight_bytes"]))' || echo 0; }
omex_runs() {  # MODEL_DIR LABEL
    echo "== omex ($2)"
    for kv in $KVS; do
        omex_bench "$1" "$kv" 512
        [ -z "${CTX_FILL:-}" ] || omex_bench "$1" "$kv" "$CTX_FILL"
    done
}

for m in "$@"; do
    bash $P/device.sh model "$P/heads/$m.head" "/tmp/$m.gguf" >/dev/null
    rm -rf "/tmp/$m.omex"
    "$BIN" convert "/tmp/$m.gguf" -o "/tmp/$m.omex" --quant keep >/dev/null
    "$BIN" bench "/tmp/$m.omex" --backend gpu -p 512 -n 128 -r 1 2>&1 | grep -E "engine|rror|adapter" | head -3 || true
    echo "=== $m"
    omex_runs "/tmp/$m.omex" "while llama.cpp builds"
done
peers_wait
for m in "$@"; do
    echo "=== $m"
    bash $P/device.sh bench "/tmp/$m.gguf" -p 512 -n 128 -r "$REPS"
    omex_runs "/tmp/$m.omex" "after llama.cpp, nothing else running"
done
