#!/usr/bin/env python3
"""Writes the seed inputs of the `gguf` and `safetensors` fuzz targets into fuzz/seeds/ (small, valid files of
every shape the readers handle). The `record` and `index` seeds come from `examples/make_seeds.rs`."""
import json
import struct
import tempfile
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import GGUFWriter
from gguf.constants import GGML_QUANT_SIZES

root = Path(__file__).resolve().parent / "seeds"
(root / "gguf").mkdir(parents=True, exist_ok=True)
(root / "safetensors").mkdir(parents=True, exist_ok=True)
rng = np.random.default_rng(1)


def gguf_seed(name, tensors, kv):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "x.gguf"
        w = GGUFWriter(str(path), "llama")
        for k, v in kv.items():
            if k == "general.alignment":
                w.add_custom_alignment(v)
            elif isinstance(v, str):
                w.add_string(k, v)
            elif isinstance(v, bool):
                w.add_bool(k, v)
            elif isinstance(v, int):
                w.add_uint32(k, v)
            elif isinstance(v, float):
                w.add_float32(k, v)
            else:
                w.add_array(k, v)
        for tname, qtype, shape in tensors:
            bv, bb = GGML_QUANT_SIZES[qtype]
            n = int(np.prod(shape))
            raw = rng.integers(0, 256, size=n // bv * bb, dtype=np.uint8)
            if qtype == T.F32:
                raw = rng.standard_normal(n).astype(np.float32).view(np.uint8)
            byte_shape = list(shape[:-1]) + [shape[-1] // bv * bb]
            w.add_tensor(tname, raw.reshape(byte_shape), raw_dtype=qtype)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        (root / "gguf" / name).write_bytes(path.read_bytes())


gguf_seed("empty.gguf", [], {})
gguf_seed("kv.gguf", [], {"llama.block_count": 2, "llama.rope.freq_base": 10000.0, "general.name": "seed",
                           "tokenizer.ggml.add_bos_token": False,
                           "tokenizer.ggml.tokens": ["a", "b", "é", "<s>"], "tokenizer.ggml.scores": [0.0, -1.0]})
gguf_seed("tensors.gguf", [("token_embd.weight", T.Q8_0, (4, 64)), ("blk.0.attn_norm.weight", T.F32, (8,)),
                           ("blk.0.attn_q.weight", T.Q4_1, (2, 32)), ("blk.0.ffn_up.weight", T.Q4_K, (1, 256)),
                           ("blk.0.ffn_down.weight", T.Q6_K, (1, 256)), ("x", T.F16, (3, 2, 2))],
          {"general.alignment": 64})


def safetensors_seed(name, tensors):
    header, data = {"__metadata__": {"format": "pt"}}, b""
    for tname, dtype, shape, size in tensors:
        n = int(np.prod(shape)) * size
        header[tname] = {"dtype": dtype, "shape": list(shape), "data_offsets": [len(data), len(data) + n]}
        data += rng.integers(0, 256, size=n, dtype=np.uint8).tobytes()
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    (root / "safetensors" / name).write_bytes(struct.pack("<Q", len(h)) + h + data)


safetensors_seed("one.safetensors", [("w", "F32", (2, 3), 4)])
safetensors_seed("mixed.safetensors", [("a", "BF16", (4,), 2), ("b", "F16", (1, 2, 2), 2), ("c", "I64", (2,), 8),
                                       ("d", "U8", (0,), 1)])
print(f"wrote seeds under {root}")

# --- omex records (the layout of src/format/record.rs) and the index target's fixture -----------------------
DTYPES = {"f32": (0, 4.0), "f16": (1, 2.0), "bf16": (2, 2.0), "int8": (3, 1.0), "int4": (4, 0.5), "ternary": (5, 0.25)}
PARAMS = {"int8": ["scales"], "ternary": ["scales"], "int4": ["scales", "mins"]}
KINDS = {"data": 0, "scales": 1, "mins": 2}


def align(x, a=256):
    return -(-x // a) * a


def record(layer, name, dtype, shape, fill=0x3C):
    """(bytes, descriptor dict) of one record, with its sections filled with `fill`."""
    n = int(np.prod(shape))
    code, per = DTYPES[dtype]
    quantized = dtype in PARAMS
    sections = [(k, 1, n // 32 * 2) for k in PARAMS.get(dtype, [])] + [("data", code, int(n * per))]
    name_b = name.encode()
    desc_len = 24 + 4 * len(shape) + 8 + align(len(name_b), 4) + 4 + 24 * len(sections) + 8
    at, placed = align(desc_len), []
    for kind, sdtype, size in sections:
        placed.append((kind, sdtype, at, size))
        at = align(at + size)
    out = b"OMEX" + struct.pack("<5I", 1, layer, code, len(shape), n) + struct.pack(f"<{len(shape)}I", *shape)
    out += struct.pack("<2I", 32 if quantized else 0, len(name_b)) + name_b + b"\0" * (-len(name_b) % 4)
    out += struct.pack("<I", len(placed))
    for kind, sdtype, off, size in placed:
        out += struct.pack("<2I2Q", KINDS[kind], sdtype, off, size)
    out += struct.pack("<Q", at)
    out += bytes([fill]) * (at - len(out))
    return out, {"name": name, "layer_id": layer, "dtype": dtype, "shape": list(shape), "record_bytes": at,
                 "sections": placed, "quantized": quantized}


(root / "record").mkdir(exist_ok=True)
for i, (name, dtype, shape) in enumerate([("blk.0.attn_q", "int4", (64, 64)), ("token_embd", "int8", (3, 96)),
                                          ("blk.1.ffn_norm", "f32", (5,)), ("w", "f16", (2, 3, 4)),
                                          ("t", "ternary", (1, 32)), ("b", "bf16", (1, 1, 1, 7))]):
    (root / "record" / f"{i}-{dtype}").write_bytes(record(i, name, dtype, shape)[0])

# Must match the fixture built in fuzz_targets/index.rs: records a (int4 [4, 64]), b (f32 [7]), c (ternary [2, 32]).
entries, at = [], 0
for name, dtype, shape in [("a", "int4", (4, 64)), ("b", "f32", (7,)), ("c", "ternary", (2, 32))]:
    _, d = record(0, name, dtype, shape)
    quant = None
    if d["quantized"]:
        quant = {"scheme": dtype, "group_size": 32, "scale_dtype": "f16", "symmetric": dtype != "int4",
                 "zero_point": "min" if dtype == "int4" else "none", "bits_per_weight": {"int4": 5.0, "ternary": 2.5}[dtype]}
    sections = [{"kind": k, "dtype": [n for n, (c, _) in DTYPES.items() if c == sd][0],
                 "offset": at + off, "bytes": size} for k, sd, off, size in d["sections"]]
    entries.append({"name": name, "file": "layer_0.bin", "layer_id": 0, "offset": at, "record_bytes": d["record_bytes"],
                    "dtype": dtype, "shape": list(shape), "quantization": quant, "sections": sections})
    at += d["record_bytes"]
index = {"format": "omex-weights", "record_version": 1, "alignment": 256, "target": "keep", "tensors": entries}
(root / "index").mkdir(exist_ok=True)
(root / "index" / "valid.json").write_text(json.dumps(index, indent=1))
index["tensors"][1] = dict(index["tensors"][1], offset=index["tensors"][1]["offset"] + 256)
(root / "index" / "shifted.json").write_text(json.dumps(index))
print(f"wrote record and index seeds under {root}")
