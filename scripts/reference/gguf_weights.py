"""Reading a llama- or qwen2-architecture GGUF file into numpy arrays.

This module holds the two pieces of the reference that are about the file
format rather than the model:

* our own numpy dequantization of the tensor types in the SmolLM2 file
  (F32, Q8_0, Q4_1), written from the ggml block layouts, and a check of it
  against ``gguf.quants.dequantize`` (the gguf-py implementation); the other
  types (Q4_K, Q5_0, Q6_K, ... in the Qwen2.5 Q4_K_M file) are expanded by
  ``gguf.quants.dequantize`` itself, which is independent of omex too;
* ``Config.from_reader`` / ``load_weights``: hyper-parameters from the
  ``{general.architecture}.*`` metadata and the weights as dense float arrays
  in the row-major [out, in] orientation that ``y = x @ W.T`` expects.

Shapes: gguf-py reports ``tensor.shape`` in ggml order (ne0 first, ne0 being
the contiguous "input" dimension), i.e. reversed with respect to numpy. The
raw ``tensor.data`` array of a quantized tensor is [rows, bytes_per_row], with
one row per output feature, so after dequantization a matrix comes out as
[ne1, ne0] = [out_features, in_features]; for token_embd that is
[n_vocab, dim] = [49152, 576].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader
from gguf.quants import dequantize as gguf_dequantize

# ---------------------------------------------------------------------------
# Block layouts (ggml-common.h):
#   Q8_0: 32 weights per 34-byte block = f16 scale d, then 32 x int8 q.
#         w[j] = d * q[j]
#   Q4_1: 32 weights per 20-byte block = f16 scale d, f16 min m, then 16 bytes;
#         byte j holds weight j in its low nibble and weight j+16 in its high
#         nibble.  w = d * q + m with q in 0..15.
# ---------------------------------------------------------------------------
QK = 32
Q8_0_BLOCK_BYTES = 2 + QK
Q4_1_BLOCK_BYTES = 2 + 2 + QK // 2


def _f16_field(blocks: np.ndarray, start: int) -> np.ndarray:
    """Little-endian f16 at byte offset `start` of each block, as float64 [..., 1]."""
    raw = np.ascontiguousarray(blocks[..., start:start + 2])
    return raw.view(np.float16).astype(np.float64)


def dequantize_q8_0(raw: np.ndarray, n_cols: int) -> np.ndarray:
    rows = raw.reshape(-1, n_cols // QK, Q8_0_BLOCK_BYTES)
    d = _f16_field(rows, 0)                                   # [rows, nb, 1]
    q = rows[..., 2:].view(np.int8).astype(np.float64)        # [rows, nb, 32]
    return (d * q).reshape(-1, n_cols)


def dequantize_q4_1(raw: np.ndarray, n_cols: int) -> np.ndarray:
    rows = raw.reshape(-1, n_cols // QK, Q4_1_BLOCK_BYTES)
    d = _f16_field(rows, 0)                                   # [rows, nb, 1]
    m = _f16_field(rows, 2)                                   # [rows, nb, 1]
    packed = rows[..., 4:]                                    # [rows, nb, 16]
    q = np.concatenate([packed & 0x0F, packed >> 4], axis=-1)  # weights 0..15, then 16..31
    return (d * q.astype(np.float64) + m).reshape(-1, n_cols)


# Tensor types whose dequantization is written here; the rest go to gguf.quants.
OWN_TYPES = (GGMLQuantizationType.F32, GGMLQuantizationType.Q8_0, GGMLQuantizationType.Q4_1)


def dequantize(tensor) -> np.ndarray:
    """Dequantize a gguf-py ReaderTensor to float64, numpy shape = reversed ggml shape.

    For OWN_TYPES all values are computed exactly in float64 (an f16 scale
    times a 4- or 8-bit integer plus an f16 min needs far fewer than 53
    mantissa bits), so casting the result to float32 gives the same numbers as
    ggml's own float32 dequantization, which rounds once after an exact
    product. Other types come from gguf.quants.dequantize (float32; the
    k-quants' two-level scales make that differ from ggml by at most an ulp).
    """
    shape = tuple(int(n) for n in reversed(tensor.shape))    # numpy order
    n_cols = shape[-1]
    kind = tensor.tensor_type
    if kind == GGMLQuantizationType.F32:
        out = np.asarray(tensor.data, dtype=np.float32).astype(np.float64)
    elif kind == GGMLQuantizationType.Q8_0:
        out = dequantize_q8_0(np.asarray(tensor.data), n_cols)
    elif kind == GGMLQuantizationType.Q4_1:
        out = dequantize_q4_1(np.asarray(tensor.data), n_cols)
    else:
        out = np.asarray(gguf_dequantize(tensor.data, kind), dtype=np.float32).astype(np.float64)
    return out.reshape(shape)


def check_dequantization(reader: GGUFReader, verbose: bool = True) -> dict:
    """Compare our dequantization with gguf.quants.dequantize on every tensor of OWN_TYPES.

    Returns {type_name: number_of_tensors_checked}; raises AssertionError on
    the first mismatch. The comparison is bit-exact in float32.
    """
    checked: dict[str, int] = {}
    for t in reader.tensors:
        if t.tensor_type not in OWN_TYPES:
            continue
        ours = dequantize(t).astype(np.float32)
        theirs = np.asarray(gguf_dequantize(t.data, t.tensor_type), dtype=np.float32)
        theirs = theirs.reshape(ours.shape)
        if not np.array_equal(ours, theirs):
            bad = np.max(np.abs(ours - theirs))
            raise AssertionError(f"{t.name} ({t.tensor_type.name}): max abs diff {bad}")
        checked[t.tensor_type.name] = checked.get(t.tensor_type.name, 0) + 1
    if verbose:
        summary = ", ".join(f"{k}: {v} tensors" for k, v in sorted(checked.items()))
        print(f"dequantization matches gguf.quants.dequantize bit-exactly ({summary})")
        others = sorted({t.tensor_type.name for t in reader.tensors if t.tensor_type not in OWN_TYPES})
        if others:
            print(f"taken from gguf.quants.dequantize unchecked: {', '.join(others)}")
    return checked


# ---------------------------------------------------------------------------
# Hyper-parameters and weights
# ---------------------------------------------------------------------------
SUPPORTED_ARCHS = ("llama", "qwen2")


@dataclass(frozen=True)
class Config:
    arch: str              # general.architecture: "llama" or "qwen2"
    n_layers: int
    dim: int
    ffn_dim: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    vocab_size: int
    rope_base: float
    rms_eps: float
    context_length: int

    @property
    def rope_neox(self) -> bool:
        """Whether RoPE rotates the halves (x[i], x[i+d/2]) of a head (ggml's NEOX mode) instead of adjacent
        pairs. llama.cpp permutes llama's Q/K weights at conversion for adjacent pairs, not qwen2's."""
        return self.arch == "qwen2"

    @staticmethod
    def from_reader(reader: GGUFReader) -> "Config":
        def field(key):
            return reader.fields[key].contents()

        arch = field("general.architecture")
        if arch not in SUPPORTED_ARCHS:
            raise ValueError(f"expected one of {SUPPORTED_ARCHS} as general.architecture, got {arch!r}")
        dim = int(field(f"{arch}.embedding_length"))
        n_heads = int(field(f"{arch}.attention.head_count"))
        return Config(
            arch=arch,
            n_layers=int(field(f"{arch}.block_count")),
            dim=dim,
            ffn_dim=int(field(f"{arch}.feed_forward_length")),
            n_heads=n_heads,
            n_kv_heads=int(field(f"{arch}.attention.head_count_kv")),
            head_dim=dim // n_heads,
            vocab_size=len(reader.fields["tokenizer.ggml.tokens"].data),
            rope_base=float(field(f"{arch}.rope.freq_base")),
            rms_eps=float(field(f"{arch}.attention.layer_norm_rms_epsilon")),
            context_length=int(field(f"{arch}.context_length")),
        )


def load_weights(reader: GGUFReader, dtype=np.float32) -> dict[str, np.ndarray]:
    """All tensors by GGUF name, dequantized to `dtype` (contiguous)."""
    return {t.name: np.ascontiguousarray(dequantize(t).astype(dtype)) for t in reader.tensors}
