#!/usr/bin/env python3
"""Cross-checks an `omex convert --quant keep` model against its GGUF with gguf-py: every tensor, dequantized
from the omex layout (weights/quantization.json + the .bin sections, decoded here with numpy from the layout
table of kernels-cpu/src/layout.rs), must equal `gguf.quants.dequantize` of the GGUF tensor bit for bit; and a
tensor kept in a GGUF block dtype (q4_k, q5_k, q6_k, q5_0, q5_1) must hold the GGUF tensor's bytes exactly.

    python3 scripts/check_keep_exact.py MODEL.gguf MODEL.omex

Exit status 0 when every tensor matches.
"""
import json
import sys
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader
from gguf.quants import dequantize


# omex dtypes that hold GGUF blocks as they are, and the GGUF type of those blocks.
GGML_KEPT = {"q4_k": "Q4_K", "q5_k": "Q5_K", "q6_k": "Q6_K", "q5_0": "Q5_0", "q5_1": "Q5_1"}


def omex_tensor(root: Path, entry: dict, cache: dict) -> np.ndarray:
    f = entry["file"]
    if f not in cache:
        cache[f] = np.fromfile(root / "weights" / f, dtype=np.uint8)
    raw = cache[f]
    sec = {s["kind"]: raw[s["offset"]:s["offset"] + s["bytes"]] for s in entry["sections"]}
    f16 = lambda k: sec[k].view(np.float16).astype(np.float32).reshape(-1, 1)  # noqa: E731
    dtype = entry["dtype"]
    if dtype == "f32":
        v = sec["data"].view(np.float32)
    elif dtype == "f16":
        v = sec["data"].view(np.float16).astype(np.float32)
    elif dtype == "int8":
        v = f16("scales") * sec["data"].view(np.int8).astype(np.float32).reshape(-1, 32)
    elif dtype == "int4":
        b = sec["data"].reshape(-1, 16)
        q = np.concatenate([b & 0x0F, b >> 4], axis=1).astype(np.float32)
        v = f16("scales") * q + f16("mins")
    elif dtype == "ternary":
        b = sec["data"].reshape(-1, 8)
        codes = np.concatenate([(b >> (2 * j)) & 3 for j in range(4)], axis=1).astype(np.float32)
        v = f16("scales") * (codes - 1.0)
    elif dtype in GGML_KEPT:
        v = dequantize(sec["data"], GGMLQuantizationType[GGML_KEPT[dtype]])
    else:
        raise ValueError(f"{entry['name']}: dtype {dtype}")
    return np.ascontiguousarray(v, dtype=np.float32).reshape(entry["shape"])


def main() -> int:
    gguf_path, omex_dir = Path(sys.argv[1]), Path(sys.argv[2])
    index = json.loads((omex_dir / "weights" / "quantization.json").read_text())
    entries = {t["name"]: t for t in index["tensors"]}
    reader = GGUFReader(gguf_path)
    cache: dict = {}
    checked, mismatched, values, same_bytes = {}, [], 0, 0
    for t in reader.tensors:
        name = t.name.removesuffix(".weight")
        ref = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32)
        ref = ref.reshape([int(d) for d in reversed(t.shape)])
        entry = entries[name]
        got = omex_tensor(omex_dir, entry, cache)
        if entry["dtype"] in GGML_KEPT:
            data = next(s for s in entry["sections"] if s["kind"] == "data")
            kept = cache[entry["file"]][data["offset"]:data["offset"] + data["bytes"]]
            if GGML_KEPT[entry["dtype"]] != t.tensor_type.name or not np.array_equal(kept, t.data.view(np.uint8).ravel()):
                mismatched.append(name + " (bytes)")
            same_bytes += 1
        if ref.shape != got.shape or not np.array_equal(ref.view(np.uint32), got.view(np.uint32)):
            mismatched.append(name)
        checked[t.tensor_type.name] = checked.get(t.tensor_type.name, 0) + 1
        values += ref.size
    summary = ", ".join(f"{k}: {v}" for k, v in sorted(checked.items()))
    if mismatched:
        print(f"MISMATCH in {len(mismatched)} tensors: {mismatched[:10]}")
        return 1
    print(f"all {sum(checked.values())} tensors ({values} values) bit-exact against gguf.quants.dequantize ({summary}); "
          f"{same_bytes} kept byte for byte")
    return 0


if __name__ == "__main__":
    sys.exit(main())
