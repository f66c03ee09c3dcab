#!/usr/bin/env python3
"""Regenerate the Qwen2.5-Coder-0.5B golden files in tests/golden/ from the numpy reference.

    python3 scripts/reference/make_qwen_goldens.py              # float32 only (~2.5 GB RAM)
    python3 scripts/reference/make_qwen_goldens.py --float64    # + float64 comparison fields (~5 GB more)
    python3 scripts/reference/make_qwen_goldens.py --only perplexity   # or: logits (logits + greedy files)

Writes (see scripts/reference/README.md for the field names):
    tests/golden/qwen05_logits.json      per prompt: ids, last position's top-20 logits and stats,
                                         teacher-forced argmax/top-2 margin at every position
    tests/golden/qwen05_greedy.json      24-token greedy continuations (float32) with the top-2
                                         margin of every step
    tests/golden/qwen05_perplexity.json  llama-perplexity style perplexity of tests/data/perplexity.txt
                                         at ctx 128 (float32; per-chunk mean NLL)

The committed files were made with --float64 (perplexity with OMEX_REF_THREADS=2); the Rust test reads
only the float32 fields.
"""

from __future__ import annotations

import os

_THREADS = os.environ.get("OMEX_REF_THREADS", "1")
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, _THREADS)

import argparse  # noqa: E402
import gc  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gguf_tokenizer import build_tokenizer, decode, encode  # noqa: E402
from gguf_weights import check_dequantization  # noqa: E402
from make_goldens import PPL_TEXT, chunk_nlls, f32, f64, perplexity_entry, sha256_file, top_k_ids, write_json  # noqa: E402
from qwen2_reference import MODEL_FILE, chat_prompt, default_model_path, open_model_file  # noqa: E402
from smollm2_reference import Model, top2_margins  # noqa: E402

MODEL_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
TOP_K = 20
N_GREEDY = 24
PPL_CTX = 128

# Logits of these ids are recorded too (low and mid-range values, specials, a [PAD] row at the end).
FIXED_TOKEN_IDS = [0, 1, 11, 13, 198, 220, 262, 284, 1350, 4710, 10939, 40000, 100000,
                   151643, 151644, 151645, 151935]


def prompts(reader) -> list[tuple[str, str]]:
    return [
        ("code", 'def is_palindrome(s: str) -> bool:\n    """Return True if s reads the same forwards and '
                 'backwards, ignoring case."""\n'),
        ("chat", chat_prompt(reader, "Write a Python function that returns the n-th Fibonacci number.")),
        ("rust", "// Sum of the even numbers in a slice.\nfn sum_even(xs: &[i64]) -> i64 {\n"),
    ]


def summarize(row: np.ndarray, pos: int, conv) -> dict:
    """Summary of one position's logit vector [vocab]: top-k, fixed ids, whole-vector statistics."""
    ids = top_k_ids(row, TOP_K)
    r64 = row.astype(np.float64)
    return {
        "pos": pos,
        "top_ids": [int(i) for i in ids],
        "top_logits": [conv(row[i]) for i in ids],
        "fixed_logits": [conv(row[i]) for i in FIXED_TOKEN_IDS],
        "mean": float(r64.mean()),
        "std": float(r64.std()),
        "min": float(r64.min()),
        "max": float(r64.max()),
        "top2_margin": float(r64[ids[0]] - r64[ids[1]]),
    }


def model_info() -> dict:
    return {"file": MODEL_FILE, "sha256": MODEL_SHA256, "fetch": "scripts/fetch-model.sh qwen2.5-coder-0.5b"}


def float32_entries(m32: Model, tok, reader) -> tuple[list, list, list]:
    """Logits and greedy entries from the float32 model, and each prompt's last logit row."""
    logit_entries, greedy_entries, last_rows = [], [], []
    for name, text in prompts(reader):
        ids = encode(tok, text)
        T = len(ids)
        logits = m32.forward(ids)                                    # [T, vocab]
        last_rows.append(logits[-1].copy())
        logit_entries.append({
            "name": name,
            "text": text,
            "token_ids": ids,
            "last": summarize(logits[-1], T - 1, f32),
            "argmax_ids": [int(i) for i in np.argmax(logits, axis=-1)],
            "top2_margins": [float(x) for x in top2_margins(logits)],
        })
        last = logit_entries[-1]["last"]
        print(f"  logits {name:5s} T={T:3d} last argmax {last['top_ids'][0]:6d} margin {last['top2_margin']:.4f}")

        gen, margins = m32.greedy(ids, N_GREEDY)
        # Self-check of the KV-cache path: one cache-free forward over prompt+generated picks the same token
        # at every step whose margin is not a float32 rounding tie.
        full = m32.forward(ids + gen[:-1])[T - 1:]
        for i, (g, m) in enumerate(zip(gen, margins)):
            assert m < 1e-3 or int(np.argmax(full[i])) == g, f"{name} step {i}: KV cache and recompute disagree"
        greedy_entries.append({
            "name": name,
            "text": text,
            "token_ids": ids,
            "generated_ids": gen,
            "generated_text": decode(tok, gen),
            "top2_margins": margins,
            "min_top2_margin": float(min(margins)),
        })
        print(f"  greedy {name:5s} min margin {min(margins):.4f} at step {int(np.argmin(margins))}: "
              f"{greedy_entries[-1]['generated_text']!r}")
    return logit_entries, greedy_entries, last_rows


def add_float64(m64: Model, logit_entries: list, greedy_entries: list, last_rows: list) -> None:
    """The same prompts in float64: how far the float32 reference itself is from exact arithmetic."""
    for le, ge, row32 in zip(logit_entries, greedy_entries, last_rows):
        ids = le["token_ids"]
        logits = m64.forward(ids)
        le["last_float64"] = summarize(logits[-1], len(ids) - 1, f64)
        le["argmax_ids_float64"] = [int(i) for i in np.argmax(logits, axis=-1)]
        le["max_abs_diff_f32_vs_f64_last"] = float(np.abs(row32.astype(np.float64) - logits[-1]).max())
        gen, margins = m64.greedy(ids, N_GREEDY)
        ge["generated_ids_float64"] = gen
        ge["first_divergence_float64"] = next(
            (i for i, (a, b) in enumerate(zip(gen, ge["generated_ids"])) if a != b), None)
        print(f"  float64 {le['name']:5s} max |f32-f64| last row "
              f"{le['max_abs_diff_f32_vs_f64_last']:.2e}, greedy diverges at {ge['first_divergence_float64']}")


def make_perplexity(m32: Model, m64: Model | None, tok, max_chunks: int | None) -> None:
    """llama-perplexity's definition (make_goldens.chunk_nlls): chunks of PPL_CTX tokens, no BOS, the second
    half of each chunk scored. `max_chunks` keeps only the first chunks (all whole chunks when None)."""
    text = PPL_TEXT.read_text(encoding="utf-8")
    tokens = encode(tok, text)
    ctx = PPL_CTX
    n_total = len(tokens) // ctx
    n_chunks = n_total if max_chunks is None else min(max_chunks, n_total)
    used = tokens[:n_chunks * ctx]
    t0 = time.time()
    nll32 = chunk_nlls(m32, used, ctx)
    t32 = time.time() - t0
    nll64 = chunk_nlls(m64, used, ctx) if m64 is not None else None
    entry = perplexity_entry(ctx, nll32, nll64, n_chunks_total=n_total)
    msg = f"  perplexity ctx={ctx}: {n_chunks}/{n_total} chunks, ppl f32 {entry['ppl']:.6f} ({t32:.1f}s)"
    if m64 is not None:
        msg += f", f64 {entry['ppl_float64']:.6f}"
    print(msg)
    write_json("qwen05_perplexity.json", {
        "model": model_info(),
        "reference": "scripts/reference/make_goldens.py chunk_nlls (llama-perplexity definition, no BOS) on "
                     "scripts/reference/qwen2_reference.py; chunk_nll/ppl from the float32 forward"
                     + (", *_float64 from the float64 forward" if m64 is not None else ""),
        "text_file": "tests/data/perplexity.txt",
        "text_sha256": sha256_file(PPL_TEXT),
        "n_tokens_total": len(tokens),
        "entries": [entry],
        "token_ids": tokens,
    })


def write_logits_and_greedy(reader, tok, logit_entries: list, greedy_entries: list, last_rows: list,
                            float64: bool) -> None:
    """qwen05_logits.json and qwen05_greedy.json from float32_entries' output (+ the float64 fields)."""
    if float64:
        t0 = time.time()
        add_float64(Model(reader, np.float64), logit_entries, greedy_entries, last_rows)
        print(f"[float64: {time.time() - t0:.1f}s]")

    reference = "scripts/reference/qwen2_reference.py (numpy, dequantized weights, float32)"
    write_json("qwen05_logits.json", {
        "model": model_info(),
        "reference": reference + ("; *_float64 from the same forward in float64" if float64 else ""),
        "top_k": TOP_K,
        "fixed_token_ids": FIXED_TOKEN_IDS,
        "fixed_tokens": [tok.id_to_token(i) for i in FIXED_TOKEN_IDS],
        "prompts": logit_entries,
    })
    write_json("qwen05_greedy.json", {
        "model": model_info(),
        "reference": reference + ", KV cache (checked against a cache-free recompute)",
        "n_tokens": N_GREEDY,
        "prompts": greedy_entries,
    })


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--float64", action="store_true", help="also run the float64 model (~5 GB)")
    ap.add_argument("--only", choices=["logits", "perplexity"], action="append",
                    help="logits: qwen05_logits.json + qwen05_greedy.json; perplexity: qwen05_perplexity.json "
                         "(default: all three)")
    ap.add_argument("--ppl-chunks", type=int, default=None, help="score only the first N chunks")
    args = ap.parse_args()
    todo = args.only or ["logits", "perplexity"]
    model_path = args.model or default_model_path()
    reader = open_model_file(model_path)
    if sha256_file(model_path) != MODEL_SHA256:
        sys.exit(f"{model_path}: unexpected sha256 (run scripts/fetch-model.sh qwen2.5-coder-0.5b)")
    t_start = time.time()
    check_dequantization(reader)
    tok = build_tokenizer(reader)

    t0 = time.time()
    m32 = Model(reader, np.float32)
    print(f"[float32 model loaded in {time.time() - t0:.1f}s]")
    if "perplexity" in todo:
        t0 = time.time()
        # The float64 model only while it is needed (the two together are ~7.5 GB).
        m64 = Model(reader, np.float64) if args.float64 else None
        make_perplexity(m32, m64, tok, args.ppl_chunks)
        del m64
        gc.collect()
        print(f"[perplexity: {time.time() - t0:.1f}s]")
    if "logits" in todo:
        t0 = time.time()
        entries = float32_entries(m32, tok, reader)
        print(f"[float32 logits + greedy: {time.time() - t0:.1f}s]")
    del m32  # before the float64 model is loaded
    gc.collect()
    if "logits" in todo:
        write_logits_and_greedy(reader, tok, *entries, args.float64)
    print(f"[total {time.time() - t_start:.1f}s]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
