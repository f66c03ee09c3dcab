#!/usr/bin/env python3
"""Regenerate the SmolLM2 golden files in tests/golden/ from the numpy reference.

    python3 scripts/reference/make_goldens.py                 # all three files
    python3 scripts/reference/make_goldens.py --only logits   # or greedy / perplexity

Writes (see scripts/reference/README.md for the field names):
    tests/golden/smollm2_logits.json      per-prompt logits summaries (float32 + float64)
    tests/golden/smollm2_greedy.json      32-token greedy continuations (float64)
    tests/golden/smollm2_perplexity.json  llama-perplexity style perplexity of
                                          tests/data/perplexity.txt at ctx 512 and 128
"""

from __future__ import annotations

import os

_THREADS = os.environ.get("OMEX_REF_THREADS", "1")
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, _THREADS)

import argparse  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gguf_tokenizer import build_tokenizer, decode, encode  # noqa: E402
from gguf_weights import check_dequantization  # noqa: E402
from smollm2_reference import (MODEL_FILE, Model, chat_prompt, default_model_path,  # noqa: E402
                               open_model_file, top2_margins)

REPO = Path(__file__).resolve().parents[2]
GOLDEN_DIR = REPO / "tests" / "golden"
PPL_TEXT = REPO / "tests" / "data" / "perplexity.txt"
MODEL_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

TOP_K = 40
N_GREEDY = 32
PPL_CONTEXTS = (512, 128)

PROMPTS = [
    ("english", "The capital of France is"),
    ("story", "Once upon a time, in a small village at the edge of a great forest, there lived an old"),
    ("chat", chat_prompt("What is the tallest mountain in the world?")),
    ("code", "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n"),
    ("numbers", "1, 2, 3, 5, 8, 13, 21, 34,"),
    ("french", "La capitale de l'Allemagne est"),
    ("unicode", "Tokyo (東京) is the capital of Japan 🇯🇵; its population is about"),
]

# Logits of these ids are recorded at every stored position, whatever the top-k is.
FIXED_TOKEN_IDS = [0, 1, 2, 24, 28, 30, 33, 198, 253, 260, 314, 367, 378, 1604, 7042, 49151]


def f32(x) -> float:
    """A float32 value as the shortest decimal that round-trips to the same float32."""
    return float(str(np.float32(x)))


def f64(x) -> float:
    return float(x)


def top_k_ids(row: np.ndarray, k: int) -> np.ndarray:
    """Ids of the k largest logits, descending; ties broken by the smaller id."""
    order = np.lexsort((np.arange(len(row)), -row.astype(np.float64)))
    return order[:k]


def summarize(row: np.ndarray, pos: int, conv) -> dict:
    """Summary of one position's logit vector [vocab]."""
    ids = top_k_ids(row, TOP_K)
    r64 = row.astype(np.float64)
    return {
        "pos": pos,
        "top_ids": [int(i) for i in ids],
        "top_logits": [conv(row[i]) for i in ids],
        "fixed_logits": [conv(row[i]) for i in FIXED_TOKEN_IDS],
        "mean": float(r64.mean()),
        "std": float(r64.std()),
        "top2_margin": float(r64[ids[0]] - r64[ids[1]]),
    }


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def to_json(obj, indent: int = 0) -> str:
    """JSON with one key per line but lists of scalars kept on one line."""
    pad = " " * indent
    if isinstance(obj, dict):
        items = [f'{pad} {json.dumps(k)}: {to_json(v, indent + 1).lstrip()}' for k, v in obj.items()]
        return pad + "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(obj, list) and any(isinstance(v, (dict, list)) for v in obj):
        return pad + "[\n" + ",\n".join(to_json(v, indent + 1) for v in obj) + "\n" + pad + "]"
    return pad + json.dumps(obj, ensure_ascii=False)


def write_json(name: str, obj: dict) -> None:
    GOLDEN_DIR.mkdir(parents=True, exist_ok=True)
    path = GOLDEN_DIR / name
    text = to_json(obj)
    assert json.loads(text) == obj
    path.write_text(text + "\n", encoding="utf-8")
    print(f"wrote {path.relative_to(REPO)} ({path.stat().st_size} bytes)")


def model_info() -> dict:
    return {"file": MODEL_FILE, "sha256": MODEL_SHA256, "fetch": "scripts/fetch-model.sh"}


# ---------------------------------------------------------------------------
def make_logits(m32: Model, m64: Model, tok) -> None:
    prompts = []
    for name, text in PROMPTS:
        ids = encode(tok, text)
        T = len(ids)
        logits32 = m32.forward(ids)                     # [T, vocab]
        logits64 = m64.forward(ids)
        positions = sorted({0, T // 2, T - 1})
        diff = np.abs(logits32[-1].astype(np.float64) - logits64[-1])
        entry = {
            "name": name,
            "text": text,
            "token_ids": ids,
            "positions": [summarize(logits32[p], p, f32) for p in positions],
            "argmax_ids": [int(i) for i in np.argmax(logits32, axis=-1)],
            "top2_margins": [float(x) for x in top2_margins(logits32)],
            "last_float64": summarize(logits64[-1], T - 1, f64),
            "argmax_ids_float64": [int(i) for i in np.argmax(logits64, axis=-1)],
            "top2_margins_float64": [float(x) for x in top2_margins(logits64)],
            "max_abs_diff_f32_vs_f64_last": float(diff.max()),
            "max_abs_diff_f32_vs_f64_all_positions": float(
                np.abs(logits32.astype(np.float64) - logits64).max()),
        }
        prompts.append(entry)
        print(f"  logits {name:8s} T={T:3d}  last argmax {entry['positions'][-1]['top_ids'][0]:6d}"
              f" margin {entry['positions'][-1]['top2_margin']:.4f}"
              f"  |f32-f64| last {entry['max_abs_diff_f32_vs_f64_last']:.2e}")
    write_json("smollm2_logits.json", {
        "model": model_info(),
        "reference": "scripts/reference/smollm2_reference.py (numpy, dequantized weights, float32; "
                     "last_float64 from the same forward in float64)",
        "top_k": TOP_K,
        "fixed_token_ids": FIXED_TOKEN_IDS,
        "fixed_tokens": [tok.id_to_token(i) for i in FIXED_TOKEN_IDS],
        "prompts": prompts,
    })


# ---------------------------------------------------------------------------
def make_greedy(m32: Model, m64: Model, tok) -> None:
    prompts = []
    for name, text in PROMPTS:
        ids = encode(tok, text)
        gen, margins = m64.greedy(ids, N_GREEDY)
        # Self-check: one cache-free forward over prompt+generated must pick the
        # same token at every generated step (validates the KV-cache path).
        full = m64.forward(ids + gen[:-1])
        recomputed = [int(i) for i in np.argmax(full[len(ids) - 1:], axis=-1)]
        assert recomputed == gen, f"{name}: KV-cache and full recompute disagree"
        gen32, margins32 = m32.greedy(ids, N_GREEDY)
        first_diff = next((i for i, (a, b) in enumerate(zip(gen, gen32)) if a != b), None)
        entry = {
            "name": name,
            "text": text,
            "token_ids": ids,
            "generated_ids": gen,
            "generated_text": decode(tok, gen),
            "top2_margins": margins,
            "min_top2_margin": float(min(margins)),
            "generated_ids_float32": gen32,
            "first_divergence_float32": first_diff,
        }
        prompts.append(entry)
        print(f"  greedy {name:8s} min margin {min(margins):.4f} at step {int(np.argmin(margins))}"
              f" f32 diverges at {first_diff}: {entry['generated_text']!r}")
    write_json("smollm2_greedy.json", {
        "model": model_info(),
        "reference": "scripts/reference/smollm2_reference.py, float64, KV cache "
                     "(checked against a cache-free recompute)",
        "n_tokens": N_GREEDY,
        "prompts": prompts,
    })


# ---------------------------------------------------------------------------
def chunk_nlls(model: Model, tokens: list[int], ctx: int) -> list[float]:
    """llama-perplexity's scoring: per chunk, mean NLL over the second half.

    The token stream is cut into len//ctx chunks of ctx tokens (remainder
    dropped); each chunk is evaluated from position 0 with no BOS. With
    first = ctx//2, the logits at positions first .. ctx-2 are scored against
    the tokens at first+1 .. ctx-1 (ctx-1-first predictions per chunk).
    """
    first = ctx // 2
    out = []
    for c in range(len(tokens) // ctx):
        chunk = tokens[c * ctx:(c + 1) * ctx]
        logits = model.forward(chunk).astype(np.float64)[first:ctx - 1]   # [ctx-1-first, vocab]
        targets = np.asarray(chunk[first + 1:ctx])
        mx = logits.max(axis=-1, keepdims=True)
        log_z = np.log(np.exp(logits - mx).sum(axis=-1)) + mx[:, 0]
        nll = log_z - logits[np.arange(len(targets)), targets]
        out.append(float(nll.mean()))
    return out


def perplexity_entry(ctx: int, nll32: list[float], nll64: list[float] | None = None,
                     n_chunks_total: int | None = None) -> dict:
    """A golden's perplexity entry from chunk_nlls' output (float32, and float64 when given); `n_chunks_total`
    is recorded when only the first chunks were scored."""
    n_chunks = len(nll32)
    entry = {"ctx": ctx, "n_chunks": n_chunks}
    if n_chunks_total is not None:
        entry["n_chunks_total"] = n_chunks_total
    entry.update({
        "n_tokens_used": n_chunks * ctx,
        "n_scored_per_chunk": ctx - 1 - ctx // 2,
        "n_scored": n_chunks * (ctx - 1 - ctx // 2),
        "chunk_nll": nll32,
        "mean_nll": float(np.mean(nll32)),
        "ppl": float(np.exp(np.mean(nll32))),
    })
    if nll64 is not None:
        entry["chunk_nll_float64"] = nll64
        entry["ppl_float64"] = float(np.exp(np.mean(nll64)))
    return entry


def make_perplexity(m32: Model, m64: Model, tok) -> None:
    text = PPL_TEXT.read_text(encoding="utf-8")
    tokens = encode(tok, text)
    entries = []
    for ctx in PPL_CONTEXTS:
        t0 = time.time()
        nll32 = chunk_nlls(m32, tokens, ctx)
        t32 = time.time() - t0
        nll64 = chunk_nlls(m64, tokens, ctx)
        entry = perplexity_entry(ctx, nll32, nll64)
        entries.append(entry)
        print(f"  perplexity ctx={ctx}: {entry['n_chunks']} chunks, ppl f32 {entry['ppl']:.6f}"
              f" f64 {entry['ppl_float64']:.6f} ({t32:.1f}s f32)")
    write_json("smollm2_perplexity.json", {
        "model": model_info(),
        "reference": "scripts/reference/make_goldens.py chunk_nlls (llama-perplexity definition, no BOS); "
                     "chunk_nll/ppl from the float32 forward, *_float64 from the float64 forward",
        "text_file": "tests/data/perplexity.txt",
        "text_sha256": sha256_file(PPL_TEXT),
        "n_tokens_total": len(tokens),
        "entries": entries,
        "token_ids": tokens,
    })


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--only", choices=["logits", "greedy", "perplexity"], action="append")
    args = ap.parse_args()
    model_path = args.model or default_model_path()
    if sha256_file(model_path) != MODEL_SHA256:
        sys.exit(f"{model_path}: unexpected sha256 (run scripts/fetch-model.sh)")
    reader = open_model_file(model_path)
    t_start = time.time()
    check_dequantization(reader)
    tok = build_tokenizer(reader)
    m32 = Model(reader, np.float32)
    m64 = Model(reader, np.float64)
    todo = args.only or ["logits", "greedy", "perplexity"]
    for what, fn in (("logits", make_logits), ("greedy", make_greedy), ("perplexity", make_perplexity)):
        if what in todo:
            t0 = time.time()
            fn(m32, m64, tok)
            print(f"[{what}: {time.time() - t0:.1f}s]")
    print(f"[total {time.time() - t_start:.1f}s]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
