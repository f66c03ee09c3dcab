#!/usr/bin/env python3
"""Independent numpy reference of the llama forward pass, for SmolLM2-135M (GGUF).

Read this file top to bottom: the whole model is `Model.forward`. The same
`Model` also runs qwen2 GGUFs (Q/K/V biases, NEOX RoPE); qwen2_reference.py
is the command line for those.

    python3 scripts/reference/smollm2_reference.py generate "The capital of France is"
    python3 scripts/reference/smollm2_reference.py generate --chat "What is 2+2?" --float64
    python3 scripts/reference/smollm2_reference.py teacher-forced "Some text to score"
    python3 scripts/reference/smollm2_reference.py tokenize "Hello world 123"
    python3 scripts/reference/smollm2_reference.py check-dequant

The model file defaults to ${OMEX_CACHE:-~/.cache/omex}/models/SmolLM2-135M-Instruct.Q4_1.gguf
(scripts/fetch-model.sh puts it there); --model overrides it.

Numerics: everything (weights, activations, softmax, norms) is in float32 by
default, or in float64 with --float64. The quantized weights are expanded to
dense matrices once at load time; no step imitates ggml's integer dot
products or quantized activations, so this is the "ideal" model the
quantized file describes.

BLAS threads default to 1 (the dev machines are small and shared); set
OMEX_REF_THREADS to use more.
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
from gguf_weights import Config, check_dequantization, load_weights  # noqa: E402

MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_model_path() -> Path:
    cache = os.environ.get("OMEX_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "omex")
    return Path(cache) / "models" / MODEL_FILE


def chat_prompt(user_message: str) -> str:
    """ChatML prompt for one user turn, ready for the assistant's answer.

    (The GGUF's chat template would also insert a default system turn; the
    goldens use this shorter form, which is what the brief specifies.)
    """
    return f"<|im_start|>user\n{user_message}<|im_end|>\n<|im_start|>assistant\n"


# ---------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------
def rmsnorm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """x / sqrt(mean(x^2) + eps) * weight, over the last axis."""
    mean_sq = np.mean(x * x, axis=-1, keepdims=True)
    return x / np.sqrt(mean_sq + x.dtype.type(eps)) * weight


def linear(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    """x @ weight.T (+ bias): weight is [out, in]."""
    y = x @ weight.T
    return y if bias is None else y + bias


def silu(x: np.ndarray) -> np.ndarray:
    return x / (x.dtype.type(1) + np.exp(-x))


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True)


def rope_tables(positions: np.ndarray, head_dim: int, base: float, dtype):
    """cos/sin of pos * base^(-2i/head_dim) for i in [0, head_dim/2): each [T, head_dim/2].

    Angles are computed in float64 and then rounded to `dtype`.
    """
    i = np.arange(head_dim // 2, dtype=np.float64)
    inv_freq = base ** (-2.0 * i / head_dim)
    angles = positions.astype(np.float64)[:, None] * inv_freq[None, :]
    return np.cos(angles).astype(dtype), np.sin(angles).astype(dtype)


def apply_rope_neox(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """Rotate the pairs (x[i], x[i + head_dim/2]) of every head by angle theta_i.

    x: [T, n_heads, head_dim]; cos/sin: [T, head_dim/2].
    ggml's NEOX rope mode = HF's rotate_half; qwen2 GGUFs keep HF's Q/K
    layout (llama.cpp does not permute them), so they need this one.
    """
    half = x.shape[-1] // 2
    x0 = x[..., :half]
    x1 = x[..., half:]
    c = cos[:, None, :]
    s = sin[:, None, :]
    return np.concatenate([x0 * c - x1 * s, x0 * s + x1 * c], axis=-1)


def apply_rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """Rotate adjacent pairs (x[2i], x[2i+1]) of every head by angle theta_i.

    x: [T, n_heads, head_dim]; cos/sin: [T, head_dim/2].
    This is ggml's "normal" rope mode (llama.cpp permutes the Q/K weights of
    HF llama checkpoints at conversion time so that adjacent pairs, not
    HF's rotate_half halves, are rotated).
    """
    x0 = x[..., 0::2]                      # [T, H, head_dim/2]
    x1 = x[..., 1::2]
    c = cos[:, None, :]                    # broadcast over heads
    s = sin[:, None, :]
    out = np.empty_like(x)
    out[..., 0::2] = x0 * c - x1 * s
    out[..., 1::2] = x0 * s + x1 * c
    return out


class KVCache:
    """Per-layer key/value arrays [max_seq, n_kv_heads, head_dim], filled as tokens arrive."""

    def __init__(self, cfg: Config, max_seq: int, dtype):
        shape = (cfg.n_layers, max_seq, cfg.n_kv_heads, cfg.head_dim)
        self.k = np.zeros(shape, dtype=dtype)
        self.v = np.zeros(shape, dtype=dtype)
        self.length = 0          # number of positions already stored


# ---------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------
class Model:
    def __init__(self, reader: GGUFReader, dtype=np.float32):
        self.cfg = Config.from_reader(reader)
        self.dtype = np.dtype(dtype)
        w = load_weights(reader, self.dtype)
        cfg = self.cfg
        self.tok_embd = w["token_embd.weight"]                  # [vocab, dim]
        assert self.tok_embd.shape == (cfg.vocab_size, cfg.dim), self.tok_embd.shape
        self.output_norm = w["output_norm.weight"]               # [dim]
        # Tied embeddings: the lm head is token_embd unless the file has its own.
        self.lm_head = w.get("output.weight", self.tok_embd)     # [vocab, dim]
        self.layers = []
        for l in range(cfg.n_layers):
            p = f"blk.{l}."
            layer = {
                "attn_norm": w[p + "attn_norm.weight"],          # [dim]
                "wq": w[p + "attn_q.weight"],                    # [n_heads*head_dim, dim]
                "wk": w[p + "attn_k.weight"],                    # [n_kv*head_dim, dim]
                "wv": w[p + "attn_v.weight"],                    # [n_kv*head_dim, dim]
                # qwen2 only: biases of the Q/K/V projections (None for llama)
                "bq": w.get(p + "attn_q.bias"),                  # [n_heads*head_dim]
                "bk": w.get(p + "attn_k.bias"),                  # [n_kv*head_dim]
                "bv": w.get(p + "attn_v.bias"),                  # [n_kv*head_dim]
                "wo": w[p + "attn_output.weight"],               # [dim, n_heads*head_dim]
                "ffn_norm": w[p + "ffn_norm.weight"],            # [dim]
                "w_gate": w[p + "ffn_gate.weight"],              # [ffn, dim]
                "w_up": w[p + "ffn_up.weight"],                  # [ffn, dim]
                "w_down": w[p + "ffn_down.weight"],              # [dim, ffn]
            }
            assert layer["wq"].shape == (cfg.n_heads * cfg.head_dim, cfg.dim)
            assert layer["wk"].shape == (cfg.n_kv_heads * cfg.head_dim, cfg.dim)
            assert layer["w_down"].shape == (cfg.dim, cfg.ffn_dim)
            self.layers.append(layer)

    def new_cache(self, max_seq: int) -> KVCache:
        return KVCache(self.cfg, max_seq, self.dtype)

    def forward(self, tokens, cache: KVCache | None = None) -> np.ndarray:
        """Run `tokens` (positions cache.length, cache.length+1, ...) through the model.

        Returns logits [len(tokens), vocab] for every new position. With no
        cache, the tokens are a whole sequence starting at position 0.
        """
        cfg, dt = self.cfg, self.dtype
        tokens = np.asarray(tokens, dtype=np.int64)
        T = len(tokens)
        if cache is None:
            cache = self.new_cache(T)
        start = cache.length
        end = start + T
        assert end <= cache.k.shape[1], "KV cache too small"
        positions = np.arange(start, end)
        cos, sin = rope_tables(positions, cfg.head_dim, cfg.rope_base, dt)
        rope = apply_rope_neox if cfg.rope_neox else apply_rope

        group = cfg.n_heads // cfg.n_kv_heads      # query heads per kv head (3; qwen2-0.5B: 7)
        scale = dt.type(1.0 / np.sqrt(cfg.head_dim))
        # causal mask: new token t (at position start+t) sees cached positions s <= start+t
        visible = np.arange(end)[None, :] <= positions[:, None]       # [T, end]

        x = self.tok_embd[tokens]                                      # [T, dim]
        for l, layer in enumerate(self.layers):
            # ---- attention ----
            h = rmsnorm(x, layer["attn_norm"], cfg.rms_eps)
            q, k, v = (linear(h, layer["w" + n], layer["b" + n]) for n in "qkv")
            q = rope(q.reshape(T, cfg.n_heads, cfg.head_dim), cos, sin)
            k = rope(k.reshape(T, cfg.n_kv_heads, cfg.head_dim), cos, sin)
            v = v.reshape(T, cfg.n_kv_heads, cfg.head_dim)
            cache.k[l, start:end] = k
            cache.v[l, start:end] = v
            keys = cache.k[l, :end].transpose(1, 2, 0)                 # [n_kv, head_dim, end]
            values = cache.v[l, :end].transpose(1, 0, 2)               # [n_kv, end, head_dim]

            # query head hq uses kv head hq // group
            qg = q.reshape(T, cfg.n_kv_heads, group, cfg.head_dim).transpose(1, 2, 0, 3)
            scores = (qg @ keys[:, None]) * scale                      # [n_kv, group, T, end]
            scores = np.where(visible, scores, dt.type(-np.inf))
            probs = softmax(scores, axis=-1)
            att = probs @ values[:, None]                              # [n_kv, group, T, head_dim]
            att = att.transpose(2, 0, 1, 3).reshape(T, cfg.n_heads * cfg.head_dim)
            x = x + att @ layer["wo"].T

            # ---- SwiGLU MLP ----
            h = rmsnorm(x, layer["ffn_norm"], cfg.rms_eps)
            gate = h @ layer["w_gate"].T                               # [T, ffn]
            up = h @ layer["w_up"].T
            x = x + (silu(gate) * up) @ layer["w_down"].T

        cache.length = end
        x = rmsnorm(x, self.output_norm, cfg.rms_eps)
        return x @ self.lm_head.T                                      # [T, vocab]

    def greedy(self, prompt_ids, n_new: int):
        """Greedy continuation with the KV cache.

        Returns (new_ids, margins): margins[i] = top1 - top2 logit at the step
        that produced new_ids[i].
        """
        cache = self.new_cache(len(prompt_ids) + n_new)
        logits = self.forward(prompt_ids, cache)[-1]
        new_ids, margins = [], []
        for i in range(n_new):
            top2 = np.argsort(logits)[::-1][:2]
            new_ids.append(int(top2[0]))
            margins.append(float(logits[top2[0]] - logits[top2[1]]))
            if i + 1 < n_new:
                logits = self.forward([top2[0]], cache)[-1]
        return new_ids, margins


def top2_margins(logits: np.ndarray) -> np.ndarray:
    """top1 - top2 logit at every row of [T, vocab]."""
    part = np.partition(logits, -2, axis=-1)[:, -2:]
    return (part[:, 1] - part[:, 0]).astype(np.float64)


def open_model_file(path: Path) -> GGUFReader:
    if not path.is_file():
        sys.exit(f"model file {path} not found: run scripts/fetch-model.sh (or pass --model)")
    return GGUFReader(str(path))


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=None, help="GGUF file (default: the fetch-model.sh cache)")
    ap.add_argument("--float64", action="store_true", help="compute in float64 instead of float32")
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate", help="greedy continuation of a prompt")
    g.add_argument("prompt")
    g.add_argument("-n", "--n-tokens", type=int, default=32)
    g.add_argument("--chat", action="store_true", help="wrap the prompt as a ChatML user turn")
    tf = sub.add_parser("teacher-forced", help="per-position argmax and top-2 margin over a prompt")
    tf.add_argument("prompt")
    tf.add_argument("--chat", action="store_true")
    tk = sub.add_parser("tokenize", help="print token ids and pieces")
    tk.add_argument("prompt")
    sub.add_parser("check-dequant", help="compare our dequantization with gguf.quants on all tensors")
    args = ap.parse_args(argv)

    reader = open_model_file(args.model or default_model_path())
    if args.cmd == "check-dequant":
        check_dequantization(reader)
        return 0
    tok = build_tokenizer(reader)
    prompt = chat_prompt(args.prompt) if getattr(args, "chat", False) else args.prompt
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
    elif args.cmd == "teacher-forced":
        logits = model.forward(ids)
        margins = top2_margins(logits)
        for pos, (tid, m) in enumerate(zip(ids, margins)):
            best = int(np.argmax(logits[pos]))
            print(f"{pos:4d} {tok.id_to_token(tid)!r:>20} -> argmax {best:6d} {tok.id_to_token(best)!r:20} margin {m:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
