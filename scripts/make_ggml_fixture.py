#!/usr/bin/env python3
"""Writes tests/data/ggml/dequant_reference.json: random blocks of each ggml type omex dequantizes, with the
values gguf-py's `gguf.quants.dequantize` gives for them (as f32 bit patterns), so the Rust dequantization
is checked bit for bit against an independent implementation.

    python3 scripts/make_ggml_fixture.py
"""
import json
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf.constants import GGML_QUANT_SIZES
from gguf.quants import dequantize

# Byte offsets of the f16 parameters of one block (set to finite, moderate values).
F16_PARAMS = {"Q4_0": [0], "Q4_1": [0, 2], "Q5_0": [0], "Q5_1": [0, 2], "Q8_0": [0],
              "Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [208]}

rng = np.random.default_rng(20240611)
out = {}
for name in ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K", "F16", "BF16"]:
    qtype = T[name]
    block_values, block_bytes = GGML_QUANT_SIZES[qtype]
    n_blocks = 3 if block_values > 1 else 96
    if name == "F16":
        raw = rng.standard_normal(n_blocks).astype(np.float16).view(np.uint8)
    elif name == "BF16":
        raw = (rng.standard_normal(n_blocks).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16).view(np.uint8)
    else:
        raw = rng.integers(0, 256, size=(n_blocks, block_bytes), dtype=np.uint8)
        for off in F16_PARAMS[name]:
            vals = (rng.standard_normal(n_blocks) * 0.05).astype(np.float16)
            raw[:, off:off + 2] = vals.view(np.uint8).reshape(n_blocks, 2)
        raw = raw.reshape(-1)
    values = dequantize(raw, qtype).astype(np.float32).reshape(-1)
    out[name] = {"n": int(values.size), "bytes": raw.tobytes().hex(), "f32_bits": values.view(np.uint32).tolist()}

path = Path(__file__).resolve().parent.parent / "tests/data/ggml/dequant_reference.json"
path.write_text(json.dumps(out, separators=(",", ":")) + "\n")
print(f"wrote {path} ({path.stat().st_size} bytes)")
