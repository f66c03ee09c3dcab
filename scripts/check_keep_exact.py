#!/usr/bin/env python3
"""Cross-checks an `omex convert --quant keep` model against its GGUF with gguf-py: every tensor, dequantized
from the omex layout (weights/quantization.json + the .bin sections, decoded here with numpy from the layout
table of kernels-cpu/src/layout.rs), must equal `gguf.quants.dequantize` of the GGUF tensor bit for bit.

    python3 scripts/check_keep_exact.py MODEL.gguf MODEL.omex

Exit status 0 when every tensor matches.
"""
import json
import sys
from pathlib import Path

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize


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
    else:
        raise ValueError(f"{entry['name']}: dtype {dtype}")
    return np.ascontiguousarray(v, dtype=np.float32).reshape(entry["shape"])


def main() -> int:
    gguf_path, omex_dir = Path(sys.argv[1]), Path(sys.argv[2])
    index = json.loads((omex_dir / "weights" / "quantization.json").read_text())
    entries = {t["name"]: t for t in index["tensors"]}
    reader = GGUFReader(gguf_path)
    cache: dict = {}
    checked, mismatched, values = {}, [], 0
    for t in reader.tensors:
        name = t.name.removesuffix(".weight")
        ref = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32)
        ref = ref.reshape([int(d) for d in reversed(t.shape)])
        got = omex_tensor(omex_dir, entries[name], cache)
        if ref.shape != got.shape or not np.array_equal(ref.view(np.uint32), got.view(np.uint32)):
            mismatched.append(name)
        checked[t.tensor_type.name] = checked.get(t.tensor_type.name, 0) + 1
        values += ref.size
    summary = ", ".join(f"{k}: {v}" for k, v in sorted(checked.items()))
    if mismatched:
        print(f"MISMATCH in {len(mismatched)} tensors: {mismatched[:10]}")
        return 1
    print(f"all {sum(checked.values())} tensors ({values} values) bit-exact against gguf.quants.dequantize ({summary})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
