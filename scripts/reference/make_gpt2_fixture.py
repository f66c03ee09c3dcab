#!/usr/bin/env python3
"""A tiny randomly initialised GPT-2 and its reference outputs, from `transformers` itself (no GPT-2 weights ship
in any registry package). Writes tests/data/gpt2-tiny/:

- config.json, model.safetensors: `GPT2LMHeadModel.save_pretrained` of a 2-block, 64-wide model (f32, ~0.6 MB);
- tokenizer.json: a byte-level BPE (GPT-2's pre-tokenizer and decoder) trained here on a few paragraphs;
- reference.json: for each prompt its token ids (the tokenizer's), the logits of every position (f32, from the
  model's forward pass), and greedy continuations from `model.generate(do_sample=False)`.

The weights are drawn wider than GPT-2's init (std 0.02 makes every logit nearly equal, and a test of greedy tokens
then tests nothing), and the LayerNorm weights and every bias are random too, so each of them is exercised.

    python3 -m venv /tmp/tv && /tmp/tv/bin/pip install -r scripts/reference/requirements-torch.txt
    /tmp/tv/bin/python scripts/reference/make_gpt2_fixture.py
"""
import json
import os
import sys

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2LMHeadModel

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "data", "gpt2-tiny")

CORPUS = [
    "The capital of France is Paris. The capital of Italy is Rome. The capital of Spain is Madrid.",
    "Once upon a time there was a little model that wanted to run on every GPU, in every browser and on every CPU.",
    "def add(a, b):\n    return a + b\n\nprint(add(2, 3))  # 5\n",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 11 12 100 1000 3.14159 2026-12-06",
    "Hello, world! How are you today? I'm fine, thanks; and you?",
    "Weights are mapped from disk and read by the kernels as they are: no conversion at load time.",
]

PROMPTS = [
    "The capital of France is",
    "Once upon a time",
    "def add(a, b):",
    "Hello, world! How are you today? I'm fine, thanks; and you? The capital of Italy is Rome. "
    "Weights are mapped from disk and read by the kernels as they are: no conversion at load time.",
]


def tokenizer():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=384, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS * 4, trainer)
    return tok


def main():
    os.makedirs(OUT, exist_ok=True)
    torch.manual_seed(20261206)
    tok = tokenizer()
    eos = tok.token_to_id("<|endoftext|>")
    cfg = GPT2Config(vocab_size=tok.get_vocab_size(), n_positions=128, n_embd=64, n_layer=2, n_head=4,
                     activation_function="gelu_new", layer_norm_epsilon=1e-5, bos_token_id=eos, eos_token_id=eos,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("ln_1.weight") or name.endswith("ln_2.weight") or name == "transformer.ln_f.weight":
                p.uniform_(0.5, 1.5)
            elif name.endswith(".bias"):
                p.normal_(0.0, 0.1)
            else:
                p.normal_(0.0, 0.15)
    model.save_pretrained(OUT, safe_serialization=True)
    tok.save(os.path.join(OUT, "tokenizer.json"))
    with open(os.path.join(OUT, "tokenizer_config.json"), "w") as f:
        json.dump({"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "model_max_length": 128}, f)

    cases = []
    for prompt in PROMPTS:
        ids = tok.encode(prompt).ids
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0]
            greedy = model.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False, pad_token_id=eos,
                                    eos_token_id=None)[0, len(ids):].tolist()
        cases.append({"prompt": prompt, "ids": ids, "greedy": greedy,
                      "logits": [[round(float(v), 6) for v in row] for row in logits]})
        print(f"{len(ids):3} tokens, greedy {greedy}", file=sys.stderr)
    ref = {"transformers": __import__("transformers").__version__, "torch": torch.__version__, "cases": cases}
    with open(os.path.join(OUT, "reference.json"), "w") as f:
        json.dump(ref, f, separators=(",", ":"))
    print(f"wrote {OUT}", file=sys.stderr)


if __name__ == "__main__":
    main()
