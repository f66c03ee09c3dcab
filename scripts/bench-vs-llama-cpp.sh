#!/usr/bin/env bash
# Side-by-side CPU baseline: llama.cpp's llama-bench and `omex bench` on the same GGUF, same threads, same
# prompt/generation lengths, one after the other on an idle machine; plus the peak RSS of a plain generation
# with each. Not part of CI (building llama.cpp takes ~10 minutes on 2 cores).
#
#   scripts/bench-vs-llama-cpp.sh [threads=2] [repetitions=5]
#
# llama.cpp comes from PyPI: the llama-cpp-python 0.3.36 sdist vendors llama.cpp at ggml commit 0c1e570, the
# commit the issues' reference numbers were measured with. It is built once into $OMEX_CACHE/llama.cpp.
set -euo pipefail
cd "$(dirname "$0")/.."
threads="${1:-2}"
reps="${2:-5}"
cache="${OMEX_CACHE:-$HOME/.cache/omex}"
gguf="$(scripts/fetch-model.sh | tail -n 1)"
lcpp="$cache/llama.cpp"
bench="$lcpp/build/bin/llama-bench"
if [ ! -x "$bench" ]; then
    mkdir -p "$lcpp"
    if ! command -v cmake >/dev/null; then
        python3 -m venv "$lcpp/venv" && "$lcpp/venv/bin/pip" install -q cmake ninja >&2
        export PATH="$lcpp/venv/bin:$PATH"
    fi
    python3 -m pip download --no-deps --no-binary :all: llama-cpp-python==0.3.36 -d "$lcpp/sdist" >&2
    tar -xzf "$lcpp"/sdist/llama_cpp_python-0.3.36.tar.gz -C "$lcpp"
    src="$lcpp/llama_cpp_python-0.3.36/vendor/llama.cpp"
    cmake -S "$src" -B "$lcpp/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF >&2
    cmake --build "$lcpp/build" --target llama-bench llama-cli -j "$(nproc)" >&2
fi
cargo build --release --bin omex >&2
model="${OMEX_BENCH_DIR:-target/bench-models/smollm2-keep.omex}"
[ -f "$model/metadata.json" ] || target/release/omex convert "$gguf" -o "$model" >&2

echo "## llama.cpp (llama-bench, $threads threads, $reps repetitions)"
"$bench" -m "$gguf" -t "$threads" -p 512 -n 128 -r "$reps"
echo
echo "## omex (omex bench --backend cpu, $threads threads, $reps repetitions)"
target/release/omex bench "$model" --backend cpu --threads "$threads" -p 512 -n 128 -r "$reps"
echo
if [ -x /usr/bin/time ]; then
    echo "## peak RSS of a 128-token generation"
    /usr/bin/time -f "omex: %M KB" target/release/omex run "$model" --backend cpu --threads "$threads" -p "Once upon a time" -n 128 --ignore-eos >/dev/null 2>/tmp/omex-rss.txt || true
    tail -n 1 /tmp/omex-rss.txt
fi
