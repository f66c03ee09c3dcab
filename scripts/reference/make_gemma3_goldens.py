#!/usr/bin/env python3
"""Regenerate the Gemma 3 270M golden files in tests/golden/ from the numpy reference
(scripts/reference/gemma3_reference.py), the prompts tokenized by SentencePiece itself
(scripts/reference/gemma3_tokenizer.py).

    python3 scripts/reference/make_gemma3_goldens.py            # float32 (~1.5 GB RAM)
    python3 scripts/reference/make_gemma3_goldens.py --float64  # + float64 comparison fields

Writes tests/golden/gemma3_logits.json (per prompt: ids, the last position's top-20 logits, fixed ids and
statistics, teacher-forced argmax and top-2 margin at every position) and tests/golden/gemma3_greedy.json
(24-token greedy continuations with the margin of every step). The "window" prompt is longer than the
model's 512-token sliding window, so its last positions see only part of the prompt in 15 of the 18 blocks.
"""

from __future__ import annotations

import os

_THREADS = os.environ.get("OMEX_REF_THREADS", "2")
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, _THREADS)

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from gguf import GGUFReader  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gemma3_reference import MODEL_FILE, Model, default_model_path  # noqa: E402
from gemma3_tokenizer import build  # noqa: E402
from make_goldens import f32, f64, sha256_file, top_k_ids, write_json  # noqa: E402
from smollm2_reference import top2_margins  # noqa: E402

TOP_K = 20
N_GREEDY = 24
FIXED_TOKEN_IDS = [0, 1, 2, 3, 106, 107, 108, 236761, 1000, 50000, 100000, 200000, 262143]

WINDOW_TEXT = " ".join(
    f"Day {i}: the river rose {i % 7} inches while the town council argued about bridge number {i * 3 % 11}."
    for i in range(40)
) + " In the end, the council decided that"


def prompts() -> list[tuple[str, str]]:
    return [
        ("prose", "The history of the printing press begins in"),
        ("code", "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n"),
        ("chat", "<start_of_turn>user\nName three primary colors.<end_of_turn>\n<start_of_turn>model\n"),
        ("window", WINDOW_TEXT),
    ]


def summarize(row: np.ndarray, pos: int, conv) -> dict:
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--float64", action="store_true")
    args = ap.parse_args()
    path = args.model or default_model_path()
    reader = GGUFReader(str(path))
    tok = build(reader)
    info = {"file": MODEL_FILE, "sha256": sha256_file(path), "fetch": "scripts/fetch-model.sh gemma3-270m"}
    t0 = time.time()
    m32 = Model(reader, np.float32)
    m64 = Model(reader, np.float64) if args.float64 else None
    logit_entries, greedy_entries = [], []
    for name, text in prompts():
        ids = tok.encode(text)
        logits = m32.forward(ids)
        entry = {
            "name": name,
            "text": text,
            "token_ids": ids,
            "last": summarize(logits[-1], len(ids) - 1, f32),
            "argmax_ids": [int(i) for i in np.argmax(logits, axis=-1)],
            "top2_margins": [float(x) for x in top2_margins(logits)],
        }
        if m64 is not None:
            l64 = m64.forward(ids)
            entry["max_abs_diff_f32_vs_f64_last"] = float(np.abs(logits[-1].astype(np.float64) - l64[-1]).max())
        logit_entries.append(entry)
        print(f"  logits {name:6s} T={len(ids):4d} top {entry['last']['top_ids'][0]} "
              f"margin {entry['last']['top2_margin']:.3f} ({time.time() - t0:.0f}s)")
        del logits
        if name == "window":
            continue
        gen, margins = m32.greedy(ids, N_GREEDY)
        greedy_entries.append({
            "name": name,
            "text": text,
            "token_ids": ids,
            "generated_ids": gen,
            "generated_text": tok.decode(gen),
            "top2_margins": margins,
            "min_top2_margin": float(min(margins)),
        })
        print(f"  greedy {name:6s} {tok.decode(gen)!r} min margin {min(margins):.3f}")
    reference = "scripts/reference/gemma3_reference.py (numpy, dequantized weights, float32)"
    write_json("gemma3_logits.json", {
        "model": info, "reference": reference, "top_k": TOP_K, "fixed_token_ids": FIXED_TOKEN_IDS,
        "prompts": logit_entries,
    })
    write_json("gemma3_greedy.json", {
        "model": info, "reference": reference + ", KV cache", "n_tokens": N_GREEDY, "prompts": greedy_entries,
    })
    print(f"[total {time.time() - t0:.0f}s]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
