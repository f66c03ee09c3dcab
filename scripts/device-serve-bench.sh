#!/usr/bin/env bash
# `omex serve` beside `llama-server` (continuous batching, CUDA) on the device's GPU: run ON the device machine with
# the peers folder carried as .peers (see scripts/device-bench.sh) and a stripped omex binary in .devbin.
#
#   bash scripts/device-serve-bench.sh [HEAD] [CONCURRENCY]   # default smollm2-135m-instruct-q4_1 1,4,16,64
#
# A same-shape random-weight GGUF, converted with --quant keep; each server in turn on a loopback port with 64
# sequences at once, driven by scripts/serve_bench.py (streaming completions, tokens from the usage chunk).
set -euo pipefail
cd "$(dirname "$0")/.."
m=${1:-smollm2-135m-instruct-q4_1}
conc=${2:-1,4,16,64}
TOKENS=${TOKENS:-128}
ROUNDS=${ROUNDS:-2}
source scripts/device-env.sh
bash $P/device.sh model "$P/heads/$m.head" "/tmp/$m.gguf" >/dev/null
rm -rf "/tmp/$m.omex"
"$BIN" convert "/tmp/$m.gguf" -o "/tmp/$m.omex" --quant keep >/dev/null
wait_up() { for _ in $(seq 1 240); do curl -sf "http://127.0.0.1:$1/health" >/dev/null && return 0; sleep 0.5; done; return 1; }
bench() { python3 scripts/serve_bench.py "http://127.0.0.1:$1" --concurrency "$conc" --rounds "$ROUNDS" --max-tokens "$TOKENS"; }
echo "=== omex bench -b B (the engine's batched decode alone, no HTTP)"
for b in ${conc//,/ }; do "$BIN" bench "/tmp/$m.omex" --backend gpu -p 0 -n "$TOKENS" -r 2 -b "$b" 2>&1 | grep -E "^\| /tmp|rror" || true; done
echo "=== omex serve --backend gpu --parallel 64"
"$BIN" serve "/tmp/$m.omex" --backend gpu --parallel 64 --ctx 512 --port 8091 > /tmp/omex-serve.log 2>&1 &
pid=$!
if wait_up 8091; then bench 8091 || true; else echo "omex serve did not come up"; fi
curl -s http://127.0.0.1:8091/metrics | grep -E "^omex_(batch|time_to_first)" | head -12 || true
kill -INT $pid || true; wait $pid || true
tail -5 /tmp/omex-serve.log
echo "=== llama-server --parallel 64 (CUDA)"
/tmp/peers/cuda/bin/llama-server -m "/tmp/$m.gguf" -ngl 99 --parallel 64 -c $((64 * 512)) --port 8092 > /tmp/llama-server.log 2>&1 &
pid=$!
if wait_up 8092; then bench 8092 || true; else echo "llama-server did not come up"; tail -5 /tmp/llama-server.log; fi
kill $pid || true; wait $pid || true
