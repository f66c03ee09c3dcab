#!/usr/bin/env python3
"""Independent numpy reference for Gemma 3 GGUFs (Gemma 3 270M Q4_K_M), written from Hugging Face's
Gemma3 text model, not from omex:

    x = embed[ids] * sqrt(hidden)
    per block:  h = rmsnorm(x, attn_norm)
                q, k, v = h @ Wq.T, h @ Wk.T, h @ Wv.T
                q, k = rmsnorm of each head (q_norm, k_norm), then NEOX RoPE: base 10,000 in sliding-window
                       blocks, the file's rope base (1e6) in the global ones (every 6th block, the last of
                       each group of six)
                attention with scale 1/sqrt(head_dim) (query_pre_attn_scalar = 256 = head_dim for 270M),
                       a sliding-window block seeing keys p - window < j <= p
                x = x + rmsnorm(att @ Wo.T, post_attention_norm)
                h = rmsnorm(x, ffn_norm)
                x = x + rmsnorm((gelu_tanh(h @ Wgate.T) * (h @ Wup.T)) @ Wdown.T, post_ffw_norm)
    logits = rmsnorm(x, output_norm) @ embed.T

The GGUF's norm weights already hold Gemma's `1 + w` (llama.cpp's converter adds the 1), so the norms here
are plain RMS norms. Dense float32 (or --float64) weights dequantized with the `gguf` package.

    python3 scripts/reference/gemma3_reference.py generate "The capital of France is" -n 16
    python3 scripts/reference/gemma3_reference.py teacher-forced "Some text"

The model file is $OMEX_GEMMA3_GGUF, else ${OMEX_CACHE:-~/.cache/omex}/models/gemma-3-270m-q4_k_m.gguf
(scripts/fetch-model.sh gemma3-270m puts it there); --model overrides it.
"""

from __future__ import annotations

import os

_THREADS = os.environ.get("OMEX_REF_THREADS", "1")
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, _THREADS)

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from gguf import GGUFReader  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gguf_weights import load_weights  # noqa: E402
from smollm2_reference import apply_rope_neox, rmsnorm, softmax, top2_margins  # noqa: E402

MODEL_FILE = "gemma-3-270m-q4_k_m.gguf"
# Hugging Face's Gemma3TextConfig: five sliding-window blocks per global one, local rope base 10,000.
GLOBAL_EVERY = 6
LOCAL_ROPE_BASE = 10_000.0


def default_model_path() -> Path:
    if os.environ.get("OMEX_GEMMA3_GGUF"):
        return Path(os.environ["OMEX_GEMMA3_GGUF"])
    cache = os.environ.get("OMEX_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "omex")
    return Path(cache) / "models" / MODEL_FILE


@dataclass
class Config:
    n_layers: int
    dim: int
    ffn_dim: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    eps: float
    rope_base: float
    window: int

    @staticmethod
    def from_reader(reader: GGUFReader) -> "Config":
        f = lambda k: reader.fields[f"gemma3.{k}"].contents()  # noqa: E731
        return Config(f("block_count"), f("embedding_length"), f("feed_forward_length"), f("attention.head_count"),
                      f("attention.head_count_kv"), f("attention.key_length"), f("attention.layer_norm_rms_epsilon"),
                      f("rope.freq_base"), f("attention.sliding_window"))

    def is_local(self, layer: int) -> bool:
        return (layer + 1) % GLOBAL_EVERY != 0


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    c = x.dtype.type(np.sqrt(2.0 / np.pi))
    return x.dtype.type(0.5) * x * (x.dtype.type(1) + np.tanh(c * (x + x.dtype.type(0.044715) * x * x * x)))


def rope_tables(positions: np.ndarray, head_dim: int, base: float, dtype):
    """cos/sin of pos * base^(-2i/head_dim), i < head_dim/2, in float64 rounded to dtype."""
    inv_freq = base ** (-2.0 * np.arange(head_dim // 2, dtype=np.float64) / head_dim)
    angles = positions.astype(np.float64)[:, None] * inv_freq[None, :]
    return np.cos(angles).astype(dtype), np.sin(angles).astype(dtype)


class Model:
    def __init__(self, reader: GGUFReader, dtype=np.float32):
        if reader.fields["general.architecture"].contents() != "gemma3":
            sys.exit("not a gemma3 GGUF")
        self.cfg = Config.from_reader(reader)
        self.dtype = np.dtype(dtype)
        self.w = load_weights(reader, self.dtype)
        self.embed = self.w["token_embd.weight"]

    def forward(self, tokens, cache=None) -> np.ndarray:
        """Logits [T, vocab] of `tokens` at positions cache['len'].. (a new sequence without a cache)."""
        cfg, dt, w = self.cfg, self.dtype, self.w
        T = len(tokens)
        if cache is None:
            cache = self.new_cache(T)
        start, end = cache["len"], cache["len"] + T
        pos = np.arange(start, end)
        tables = {b: rope_tables(pos, cfg.head_dim, b, dt) for b in (LOCAL_ROPE_BASE, cfg.rope_base)}
        group = cfg.n_heads // cfg.n_kv_heads
        scale = dt.type(1.0 / np.sqrt(cfg.head_dim))
        keys_at = np.arange(end)[None, :]
        causal = keys_at <= pos[:, None]
        local = causal & (keys_at > pos[:, None] - cfg.window)
        x = self.embed[np.asarray(tokens)] * dt.type(np.sqrt(cfg.dim))
        for l in range(cfg.n_layers):
            p = lambda n: w[f"blk.{l}.{n}.weight"]  # noqa: E731
            cos, sin = tables[LOCAL_ROPE_BASE if cfg.is_local(l) else cfg.rope_base]
            h = rmsnorm(x, p("attn_norm"), cfg.eps)
            q = (h @ p("attn_q").T).reshape(T, cfg.n_heads, cfg.head_dim)
            k = (h @ p("attn_k").T).reshape(T, cfg.n_kv_heads, cfg.head_dim)
            v = (h @ p("attn_v").T).reshape(T, cfg.n_kv_heads, cfg.head_dim)
            q = apply_rope_neox(rmsnorm(q, p("attn_q_norm"), cfg.eps), cos, sin)
            k = apply_rope_neox(rmsnorm(k, p("attn_k_norm"), cfg.eps), cos, sin)
            cache["k"][l, start:end], cache["v"][l, start:end] = k, v
            keys = cache["k"][l, :end].transpose(1, 2, 0)                   # [n_kv, hd, end]
            values = cache["v"][l, :end].transpose(1, 0, 2)                 # [n_kv, end, hd]
            qg = q.reshape(T, cfg.n_kv_heads, group, cfg.head_dim).transpose(1, 2, 0, 3)
            scores = (qg @ keys[:, None]) * scale                           # [n_kv, group, T, end]
            scores = np.where(local if cfg.is_local(l) else causal, scores, dt.type(-np.inf))
            att = (softmax(scores, axis=-1) @ values[:, None]).transpose(2, 0, 1, 3).reshape(T, -1)
            x = x + rmsnorm(att @ p("attn_output").T, p("post_attention_norm"), cfg.eps)
            h = rmsnorm(x, p("ffn_norm"), cfg.eps)
            mlp = (gelu_tanh(h @ p("ffn_gate").T) * (h @ p("ffn_up").T)) @ p("ffn_down").T
            x = x + rmsnorm(mlp, p("post_ffw_norm"), cfg.eps)
        cache["len"] = end
        return rmsnorm(x, w["output_norm.weight"], cfg.eps) @ self.embed.T

    def new_cache(self, max_seq: int) -> dict:
        cfg = self.cfg
        shape = (cfg.n_layers, max_seq, cfg.n_kv_heads, cfg.head_dim)
        return {"k": np.zeros(shape, self.dtype), "v": np.zeros(shape, self.dtype), "len": 0}

    def greedy(self, prompt_ids, n_new: int):
        """(new ids, top-1 minus top-2 logit at each step), with the KV cache."""
        cache = self.new_cache(len(prompt_ids) + n_new)
        logits = self.forward(prompt_ids, cache)[-1]
        ids, margins = [], []
        for i in range(n_new):
            top2 = np.argsort(logits)[::-1][:2]
            ids.append(int(top2[0]))
            margins.append(float(logits[top2[0]] - logits[top2[1]]))
            if i + 1 < n_new:
                logits = self.forward([int(top2[0])], cache)[-1]
        return ids, margins


def main(argv=None) -> int:
    from gemma3_tokenizer import build

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--float64", action="store_true")
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("generate", "teacher-forced"):
        p = sub.add_parser(name)
        p.add_argument("prompt")
        if name == "generate":
            p.add_argument("-n", "--n-tokens", type=int, default=16)
    args = ap.parse_args(argv)
    path = args.model or default_model_path()
    if not path.is_file():
        sys.exit(f"{path} not found: run scripts/fetch-model.sh gemma3-270m (or pass --model)")
    reader = GGUFReader(str(path))
    tok = build(reader)
    ids = tok.encode(args.prompt)
    t0 = time.time()
    model = Model(reader, np.float64 if args.float64 else np.float32)
    print(f"[loaded in {time.time() - t0:.1f}s, {len(ids)} prompt tokens]", file=sys.stderr)
    if args.cmd == "generate":
        new, margins = model.greedy(ids, args.n_tokens)
        print(args.prompt + tok.decode(new))
        print("ids:", new, file=sys.stderr)
        print("min top-2 margin: %.4f" % min(margins), file=sys.stderr)
    else:
        logits = model.forward(ids)
        for i, m in enumerate(top2_margins(logits)):
            print(f"{i:4d} {ids[i]:7d} -> {int(np.argmax(logits[i])):7d} margin {m:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
