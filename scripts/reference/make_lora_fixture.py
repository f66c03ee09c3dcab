#!/usr/bin/env python3
"""Two PEFT LoRA adapters for SmolLM2-135M-Instruct and their reference outputs, from `transformers` + `peft`.

The base is the project's GGUF (SmolLM2-135M-Instruct.Q4_1.gguf), which transformers dequantizes to float32 (and
un-permutes Q/K) on load; the adapters are PEFT's own (`init_lora_weights=False`: A and B drawn at random, both
non-zero), rounded to f16 before anything is computed and saved in f16 with `save_pretrained`, so the reference
runs on exactly the values omex imports. Writes tests/data/lora/:

- all7/: rank 4, alpha 8 (scale 2), on q, k, v, o, gate, up, down of every layer (~2.4 MB);
- qv/: rank 4, rsLoRA, alpha 6 with alpha_pattern {"v_proj": 3}, on q and v only (~0.5 MB);
- reference.json: per prompt its token ids; for the base and each adapter the logits of a few positions (top 40
  and fixed ids) and a greedy continuation (`model.generate(do_sample=False)`), all in float32.

    /root/.cache/torchvenv/bin/pip install peft gguf   # beside requirements-torch.txt
    OMEX_SMOLLM2_GGUF=~/.cache/omex/models/SmolLM2-135M-Instruct.Q4_1.gguf \\
        /root/.cache/torchvenv/bin/python scripts/reference/make_lora_fixture.py
"""
import json
import os
import shutil

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "data", "lora")
GGUF = os.environ.get(
    "OMEX_SMOLLM2_GGUF", os.path.expanduser("~/.cache/omex/models/SmolLM2-135M-Instruct.Q4_1.gguf"))
PROMPTS = [
    ("capital", "The capital of France is"),
    ("story", "Once upon a time, in a small village by the sea, there lived"),
]
GREEDY_TOKENS = 12
TOP_K = 40
FIXED_IDS = [0, 1, 2, 28, 198, 260, 314, 1604, 7042, 49151]
ADAPTERS = {
    "all7": dict(r=4, lora_alpha=8,
                 target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]),
    "qv": dict(r=4, lora_alpha=6, use_rslora=True, alpha_pattern={"v_proj": 3},
               target_modules=["q_proj", "v_proj"]),
}


def base_model():
    d, f = os.path.split(GGUF)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
    model.eval()
    return model


def positions_of(ids):
    n = len(ids)
    return sorted({0, n // 2, n - 1})


def outputs(model, prompts):
    """Logits of a few positions and a greedy continuation per prompt."""
    res = []
    for p in prompts:
        ids = torch.tensor([p["token_ids"]])
        with torch.no_grad():
            logits = model(ids).logits[0]
            gen = model.generate(ids, max_new_tokens=GREEDY_TOKENS, do_sample=False, min_new_tokens=GREEDY_TOKENS,
                                 pad_token_id=0)
        entry = {"name": p["name"], "positions": []}
        for pos in positions_of(p["token_ids"]):
            row = logits[pos]
            top = torch.topk(row, TOP_K)
            two = torch.topk(row, 2).values
            entry["positions"].append({
                "pos": pos,
                "top_ids": top.indices.tolist(),
                "top_logits": [float(v) for v in top.values],
                "fixed_logits": [float(row[i]) for i in FIXED_IDS],
                "top2_margin": float(two[0] - two[1]),
            })
        entry["greedy"] = gen[0, ids.shape[1]:].tolist()
        res.append(entry)
    return res


def make_adapter(name, spec, seed):
    torch.manual_seed(seed)
    model = base_model()
    cfg = LoraConfig(init_lora_weights=False, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM", **spec)
    peft_model = get_peft_model(model, cfg)
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_" in n:
                p.copy_(p.half().float())  # the f16 values omex will hold
    out = os.path.join(OUT, name)
    if os.path.isdir(out):
        shutil.rmtree(out)
    peft_model.save_pretrained(out)
    os.remove(os.path.join(out, "README.md"))  # PEFT's model card template: nothing the tests read
    st = os.path.join(out, "adapter_model.safetensors")
    save_file({k: v.half() for k, v in load_file(st).items()}, st, metadata={"format": "pt"})
    # Reload what was saved, as a user would, and run that.
    reloaded = PeftModel.from_pretrained(base_model(), out)
    reloaded.eval()
    return reloaded


def main():
    os.makedirs(OUT, exist_ok=True)
    d, f = os.path.split(GGUF)
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    prompts = [{"name": n, "text": t, "token_ids": tok(t)["input_ids"]} for n, t in PROMPTS]
    ref = {
        "model": os.path.basename(GGUF),
        "reference": "transformers + peft, float32 (scripts/reference/make_lora_fixture.py)",
        "fixed_token_ids": FIXED_IDS,
        "prompts": prompts,
        "base": outputs(base_model(), prompts),
        "adapters": {},
    }
    for i, (name, spec) in enumerate(ADAPTERS.items()):
        model = make_adapter(name, spec, 1000 + i)
        ref["adapters"][name] = outputs(model, prompts)
        print(name, [e["greedy"] for e in ref["adapters"][name]])
    print("base", [e["greedy"] for e in ref["base"]])
    with open(os.path.join(OUT, "reference.json"), "w") as fh:
        json.dump(ref, fh, indent=1)
        fh.write("\n")


if __name__ == "__main__":
    main()
