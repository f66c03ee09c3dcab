#!/usr/bin/env python3
"""Independent numpy reference for qwen2 GGUFs (Qwen2.5-Coder-0.5B-Instruct Q4_K_M).

The model is smollm2_reference.Model: the llama forward pass, which for a
qwen2 file adds the Q/K/V biases and rotates with NEOX RoPE (halves, not
adjacent pairs). This file holds what is Qwen's: the default model path, the
tokenizer (Qwen2.5's, rebuilt with HF `tokenizers` from the GGUF), the chat
prompt (the GGUF's Jinja template rendered with jinja2) and a small CLI.

    python3 scripts/reference/qwen2_reference.py generate "def quicksort(arr):"
    python3 scripts/reference/qwen2_reference.py generate --chat "Write hello world in C" -n 32
    python3 scripts/reference/qwen2_reference.py teacher-forced "Some text to score"
    python3 scripts/reference/qwen2_reference.py tokenize --chat "Hi"
    python3 scripts/reference/qwen2_reference.py check-dequant

The model file is $OMEX_QWEN05_GGUF, else
${OMEX_CACHE:-~/.cache/omex}/models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf
(scripts/fetch-model.sh qwen2.5-coder-0.5b puts it there); --model overrides it.

Numerics as in smollm2_reference.py: dense float32 (or --float64) weights and
activations, nothing imitating ggml's integer dot products. Dequantized to
float32 the 0.5B model takes ~2.5 GB (token_embd and the untied output.weight
are 0.55 GB each), float64 twice that.
"""

from __future__ import annotations

import os

_THREADS = os.environ.get("OMEX_REF_THREADS", "1")
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, _THREADS)

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from gguf import GGUFReader  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gguf_tokenizer import build_tokenizer, decode, encode  # noqa: E402
from gguf_weights import check_dequantization  # noqa: E402
from smollm2_reference import Model, top2_margins  # noqa: E402

MODEL_FILE = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."


def default_model_path() -> Path:
    if os.environ.get("OMEX_QWEN05_GGUF"):
        return Path(os.environ["OMEX_QWEN05_GGUF"])
    cache = os.environ.get("OMEX_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "omex")
    return Path(cache) / "models" / MODEL_FILE


def open_model_file(path: Path) -> GGUFReader:
    if not path.is_file():
        sys.exit(f"model file {path} not found: run scripts/fetch-model.sh qwen2.5-coder-0.5b (or pass --model)")
    reader = GGUFReader(str(path))
    arch = reader.fields["general.architecture"].contents()
    if arch != "qwen2":
        sys.exit(f"{path}: general.architecture is {arch!r}, not qwen2")
    return reader


def chat_prompt(reader: GGUFReader, user_message: str) -> str:
    """One user turn and the assistant's header, rendered with the GGUF's own chat template (jinja2, with
    transformers' settings). With no system message Qwen2.5's template inserts DEFAULT_SYSTEM; the assert
    pins the exact ChatML text so a changed template cannot slip by."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tokenizer_reference import chat_env

    template = reader.fields["tokenizer.chat_template"].contents()
    messages = [{"role": "user", "content": user_message}]
    text = chat_env().from_string(template).render(messages=messages, add_generation_prompt=True, tools=None)
    expected = (f"<|im_start|>system\n{DEFAULT_SYSTEM}<|im_end|>\n"
                f"<|im_start|>user\n{user_message}<|im_end|>\n<|im_start|>assistant\n")
    assert text == expected, f"chat template rendered {text!r}"
    return text


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=None, help="GGUF file (default: see above)")
    ap.add_argument("--float64", action="store_true", help="compute in float64 instead of float32")
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name, help_text in (("generate", "greedy continuation of a prompt"),
                            ("teacher-forced", "per-position argmax and top-2 margin over a prompt"),
                            ("tokenize", "print token ids and pieces")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("prompt")
        p.add_argument("--chat", action="store_true", help="wrap the prompt as a user turn (default system)")
        if name == "generate":
            p.add_argument("-n", "--n-tokens", type=int, default=32)
    sub.add_parser("check-dequant", help="compare our F32/Q8_0 dequantization with gguf.quants")
    args = ap.parse_args(argv)

    reader = open_model_file(args.model or default_model_path())
    if args.cmd == "check-dequant":
        check_dequantization(reader)
        return 0
    tok = build_tokenizer(reader)
    prompt = chat_prompt(reader, args.prompt) if args.chat else args.prompt
    ids = encode(tok, prompt)
    if args.cmd == "tokenize":
        print(ids)
        print([tok.id_to_token(i) for i in ids])
        return 0

    t0 = time.time()
    model = Model(reader, np.float64 if args.float64 else np.float32)
    print(f"[loaded in {time.time() - t0:.1f}s, dtype {model.dtype}, {len(ids)} prompt tokens]", file=sys.stderr)
    t0 = time.time()
    if args.cmd == "generate":
        new_ids, margins = model.greedy(ids, args.n_tokens)
        print(f"[{args.n_tokens} tokens in {time.time() - t0:.1f}s]", file=sys.stderr)
        print(prompt + decode(tok, new_ids))
        print("ids:", new_ids, file=sys.stderr)
        print("min top-2 margin: %.4f at step %d" % (min(margins), int(np.argmin(margins))), file=sys.stderr)
    else:
        logits = model.forward(ids)
        margins = top2_margins(logits)
        for pos, (tid, m) in enumerate(zip(ids, margins)):
            best = int(np.argmax(logits[pos]))
            print(f"{pos:4d} {tok.id_to_token(tid)!r:>20} -> argmax {best:6d} {tok.id_to_token(best)!r:20} "
                  f"margin {m:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
