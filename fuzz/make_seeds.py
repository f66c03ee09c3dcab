#!/usr/bin/env python3
"""Writes the seed inputs of every fuzz target into fuzz/seeds/<target>/: small, valid files of every shape the
readers handle (GGUF, safetensors, omex records, the index), and tiny models for `graph`, `metadata` and
`model_dir`. Also writes dicts/*.dict, the JSON field names of those three targets."""
import hashlib
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

# --- tiny models: graph.json, metadata.json and whole model directories ------------------------------------
# The layout of checks.rs: five parts separated by PART_SEP, every tensor in weights/layer_0.bin.
PART_SEP = b"\0OMEX-PART\0"
FILL = {"f32": 0x3C, "f16": 0x2C, "int8": 0x11, "int4": 0x3A, "ternary": 0x24}  # finite scales, valid codes


def tokenizer_json(n):
    """A byte-level BPE tokenizer of `n` tokens: the end-of-text token, letters, and merges of letters."""
    letters = [chr(ord("a") + i) for i in range(min(n - 1, 26))]
    merges = [f"{a} {b}" for a, b in zip(letters, letters[1:])][: n - 1 - len(letters)]
    tokens = ["<|endoftext|>"] + letters + [m.replace(" ", "") for m in merges]
    special = {"id": 0, "content": tokens[0], "single_word": False, "lstrip": False, "rstrip": False,
               "normalized": False, "special": True}
    return json.dumps({
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": [special], "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": {t: i for i, t in enumerate(tokens)}, "merges": merges}}).encode()


def tiny_model(vocab=48, hidden=32, ffn=64, heads=2, kv_heads=1, head_dim=16, layers=1, ctx=32, mats="int8",
               embed="int8", head=None, bias=False, rope=None, norm=None, activation="silu", checksums=False):
    """(metadata, graph, index, weight file, tokenizer) of a llama as `Transformer::to_graph` writes it."""
    d, f, q, kv = hidden, ffn, heads * head_dim, kv_heads * head_dim
    tensors = [("token_embd", embed, (vocab, d))]
    blocks = []
    for i in range(layers):
        n = lambda s: f"blk.{i}.{s}"
        b = {"file": "layer_0.bin", "attn_norm": n("attn_norm"), "attn_q": n("attn_q"), "attn_k": n("attn_k"),
             "attn_v": n("attn_v"), "attn_output": n("attn_output"), "ffn_norm": n("ffn_norm"),
             "ffn_gate": n("ffn_gate"), "ffn_up": n("ffn_up"), "ffn_down": n("ffn_down")}
        tensors += [(b["attn_norm"], "f32", (d,)), (b["attn_q"], mats, (q, d)), (b["attn_k"], mats, (kv, d)),
                    (b["attn_v"], mats, (kv, d)), (b["attn_output"], mats, (d, q)), (b["ffn_norm"], "f32", (d,)),
                    (b["ffn_gate"], mats, (f, d)), (b["ffn_up"], mats, (f, d)), (b["ffn_down"], mats, (d, f))]
        if bias:
            b["attn_qkv_bias"] = [n("attn_q.bias"), n("attn_k.bias"), n("attn_v.bias")]
            tensors += [(b["attn_qkv_bias"][0], "f32", (q,)), (b["attn_qkv_bias"][1], "f32", (kv,)),
                        (b["attn_qkv_bias"][2], "f32", (kv,))]
        blocks.append(b)
    tensors.append(("output_norm", "f32", (d,)))
    if head:
        tensors.append(("output", head, (vocab, d)))
    weights, entries = b"", []
    for name, dtype, shape in tensors:
        rec, desc = record(0, name, dtype, shape, FILL[dtype])
        quant = None
        if desc["quantized"]:
            quant = {"scheme": dtype, "group_size": 32, "scale_dtype": "f16", "symmetric": dtype != "int4",
                     "zero_point": "min" if dtype == "int4" else "none",
                     "bits_per_weight": {"int8": 8.5, "int4": 5.0, "ternary": 2.5}[dtype]}
        sections = [{"kind": k, "dtype": [n for n, (c, _) in DTYPES.items() if c == sd][0],
                     "offset": len(weights) + off, "bytes": size} for k, sd, off, size in desc["sections"]]
        entries.append({"name": name, "file": "layer_0.bin", "layer_id": 0, "offset": len(weights),
                        "record_bytes": desc["record_bytes"], "dtype": dtype, "shape": list(shape),
                        "quantization": quant, "sections": sections})
        weights += rec
    index = {"format": "omex-weights", "record_version": 1, "alignment": 256, "target": mats, "tensors": entries}
    norm = norm or {"type": "rmsnorm", "eps": 1e-5}
    rope = rope or {"base": 10000.0, "style": "half", "dims": head_dim, "scaling": None}
    nodes = [{"id": "embedding", "type": "embedding", "inputs": ["input_ids"], "outputs": ["hidden"],
              "config": {"vocab_size": vocab, "embedding_dim": d, "weight": "token_embd", "file": "layer_0.bin"}}]
    edges, prev = [], "embedding.hidden"
    for i, b in enumerate(blocks):
        nodes.append({"id": f"transformer_block_{i}", "type": "transformer_block", "inputs": ["input"],
                      "outputs": ["output"], "config": {
                          "layer": i, "hidden_size": d, "intermediate_size": f, "num_attention_heads": heads,
                          "num_key_value_heads": kv_heads, "attention_head_size": head_dim, "norm": norm,
                          "rope": rope, "activation": activation, "context_length": ctx, "weights": b}})
        edges.append({"from": prev, "to": f"transformer_block_{i}.input"})
        prev = f"transformer_block_{i}.output"
    nodes.append({"id": "final_norm", "type": "norm", "inputs": ["input"], "outputs": ["output"],
                  "config": {"norm": norm, "dim": d, "weight": "output_norm", "file": "layer_0.bin"}})
    nodes.append({"id": "lm_head", "type": "linear", "inputs": ["input"], "outputs": ["logits"],
                  "config": {"in_features": d, "out_features": vocab, "weight": "output" if head else "token_embd",
                             "file": "layer_0.bin", "tied_embeddings": not head}})
    edges += [{"from": prev, "to": "final_norm.input"}, {"from": "final_norm.output", "to": "lm_head.input"}]
    graph = json.dumps({"graph_id": "tiny", "graph_type": "transformer/llama", "nodes": nodes, "edges": edges,
                        "entry_points": {"default": {"inputs": ["input_ids"], "outputs": ["logits"]}}},
                       indent=1).encode()
    index_b, tok = json.dumps(index, indent=1).encode(), tokenizer_json(min(vocab, 40))
    files = []
    if checksums:
        for path, data in [("graph.json", graph), ("tokenizer/tokenizer.json", tok),
                           ("weights/layer_0.bin", weights), ("weights/quantization.json", index_b)]:
            files.append({"path": path, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()})
    req = {"ram": "1 MB", "compute": "any", "storage": "1 MB"}
    metadata = json.dumps({
        "omex_version": "1.0", "model_name": "tiny", "model_version": "1.0", "model_architecture": "llama",
        "parameters": "0K", "parameter_count": 0, "creation_date": "2026-01-01T00:00:00Z",
        "created_by": "fuzz/make_seeds.py", "license": "Apache-2.0", "description": "a tiny llama",
        "source_format": "synthetic", "quantization": {"type": mats, "method": "fill", "symmetric": True},
        "hardware_targets": ["cpu"], "minimum_requirements": req, "recommended_requirements": req,
        "files": files}, indent=1).encode()
    return metadata, graph, index_b, weights, tok


models = {
    # checks.rs's metadata target uses `int8` as its fixture: keep it valid.
    "int8": tiny_model(checksums=True),
    "int4-gqa": tiny_model(heads=4, kv_heads=2, head_dim=8, ffn=96, layers=2, mats="int4",
                           rope={"base": 500000.0, "style": "interleaved", "dims": 8,
                                 "scaling": {"type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                             "high_freq_factor": 4.0, "original_context_length": 16}}),
    "f32-bias": tiny_model(mats="f32", embed="f16", head="f16", bias=True,
                           rope={"base": 10000.0, "style": "half", "dims": 8,
                                 "scaling": {"type": "linear", "factor": 2.0}}),
    "ternary": tiny_model(mats="ternary", embed="f32", heads=1, kv_heads=1, head_dim=32, ffn=32),
}
for target in ["graph", "metadata", "model_dir"]:
    (root / target).mkdir(exist_ok=True)
for name, parts in models.items():
    assert all(PART_SEP not in p for p in parts)
    (root / "model_dir" / name).write_bytes(PART_SEP.join(parts))
    (root / "graph" / f"{name}.json").write_bytes(parts[1])
    (root / "metadata" / f"{name}.json").write_bytes(parts[0])
# Graphs the engines refuse but `check` accepts: LayerNorm, GeGLU.
(root / "graph" / "layernorm-gelu.json").write_bytes(
    tiny_model(norm={"type": "layernorm", "eps": 1e-6}, activation="gelu")[1])
(root / "model_dir" / "layernorm-gelu").write_bytes(
    PART_SEP.join(tiny_model(norm={"type": "layernorm", "eps": 1e-6}, activation="gelu")))

GRAPH_WORDS = ["graph_id", "graph_type", "nodes", "edges", "entry_points", "id", "type", "inputs", "outputs",
               "config", "from", "to", "transformer/llama", "embedding", "transformer_block", "transformer_block_0",
               "final_norm", "lm_head", "norm", "linear", "vocab_size", "embedding_dim", "weight", "file", "layer",
               "hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads",
               "attention_head_size", "rope", "base", "style", "dims", "scaling", "half", "interleaved", "llama3",
               "factor", "low_freq_factor", "high_freq_factor", "original_context_length", "activation", "silu",
               "gelu", "context_length", "weights", "rmsnorm", "layernorm", "eps", "tied_embeddings",
               "attn_qkv_bias", "in_features", "out_features", "embedding.hidden", "final_norm.input",
               "lm_head.input", "layer_0.bin"]
METADATA_WORDS = ["omex_version", "1.0", "model_name", "model_version", "model_architecture", "parameters",
                  "parameter_count", "creation_date", "created_by", "license", "description", "source_format",
                  "quantization", "type", "method", "symmetric", "hardware_targets", "minimum_requirements",
                  "recommended_requirements", "ram", "compute", "storage", "files", "path", "bytes", "sha256",
                  "graph.json", "weights/layer_0.bin", "tokenizer/tokenizer.json", "../", "/", "\\\\"]
INDEX_WORDS = ["format", "omex-weights", "record_version", "alignment", "target", "tensors", "name", "layer_id",
               "offset", "record_bytes", "dtype", "shape", "scheme", "group_size", "scale_dtype", "zero_point",
               "bits_per_weight", "sections", "kind", "data", "scales", "mins", "f32", "f16", "bf16", "int8",
               "int4", "ternary", "min", "none", "model", "vocab", "merges", "added_tokens", "BPE", "ByteLevel"]
NUMBERS = ["0", "1", "-1", "2", "32", "1e-45", "1e-5", "1e38", "3.4028235e38", "65536", "65537", "1024", "1025",
           "4194304", "4194305", "262144", "4294967295", "4294967296", "true", "false", "null"]
(Path(__file__).resolve().parent / "dicts").mkdir(exist_ok=True)


def write_dict(name, words, extra=()):
    lines = [f'"\\"{w}\\""' for w in words] + [f'"{n}"' for n in NUMBERS] + list(extra)
    (Path(__file__).resolve().parent / "dicts" / f"{name}.dict").write_text("\n".join(lines) + "\n")


write_dict("graph", GRAPH_WORDS)
write_dict("metadata", METADATA_WORDS)
write_dict("model_dir", GRAPH_WORDS + METADATA_WORDS + INDEX_WORDS, ['"\\x00OMEX-PART\\x00"', '"OMEX"'])
print(f"wrote graph, metadata and model_dir seeds under {root}, dictionaries under dicts/")
