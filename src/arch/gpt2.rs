//! GPT-2: pre-norm blocks with LayerNorms (weight and bias), learned position embeddings added to the token
//! embedding instead of RoPE, biases on every projection, a plain GELU MLP, and the head tied to the embedding.
//!
//! ```text
//! x = wte[token] + wpe[position]
//! x += o(attention(qkv(layernorm(x))))
//! x += down(gelu(up(layernorm(x))))
//! ```

use super::{mat, skeleton, Block, Buf, Mat, NormOp, Op, Program, Rope};
use crate::error::{Error, Result};
use crate::graph::{Norm, Transformer};

pub fn program(t: &Transformer) -> Result<Program> {
    let unsupported = |what: String| Error::Unsupported(format!("gpt2 graphs {what}"));
    if !matches!(t.norm, Norm::LayerNorm { .. }) {
        return Err(unsupported("normalise with LayerNorm".into()));
    }
    if t.rope.dims != 0 {
        return Err(unsupported(format!("have learned positions, not RoPE (rope dims {})", t.rope.dims)));
    }
    let position = t.position_embedding.clone().ok_or_else(|| unsupported("have a position embedding".into()))?;
    if t.output_norm_bias.is_none() {
        return Err(unsupported("have a final norm bias".into()));
    }
    let (d, q, kv, f) = (t.hidden_size, t.n_heads * t.head_dim, t.n_kv_heads * t.head_dim, t.intermediate_size);
    let mut blocks = Vec::with_capacity(t.blocks.len());
    for (l, b) in t.blocks.iter().enumerate() {
        let missing = |what: &str| unsupported(format!("have {what}: block {l} names none"));
        if b.ffn_gate.is_some() || b.attn_qk_norm.is_some() || b.post_norms.is_some() {
            return Err(unsupported(format!("have a plain MLP, no q/k norms and no post norms (block {l} has)")));
        }
        let [bq, bk, bv] = b.attn_qkv_bias.as_ref().ok_or_else(|| missing("q, k and v biases"))?;
        let [attn_norm_bias, ffn_norm_bias] = b.norm_biases.as_ref().ok_or_else(|| missing("LayerNorm biases"))?;
        let [bo, bup, bdown] = b.proj_biases.as_ref().ok_or_else(|| missing("projection biases"))?;
        let layer_norm =
            |weight: &str, bias: &str| NormOp { kind: t.norm, weight: weight.into(), bias: Some(bias.into()) };
        let biased =
            |weight: &str, bias: &str, rows, cols| Mat { bias: Some(bias.into()), ..mat(weight, None, rows, cols) };
        let (up, down) = super::dense(t, l, b)?;
        let ops = vec![
            Op::Linear {
                input: Buf::Hidden,
                norm: Some(layer_norm(&b.attn_norm, attn_norm_bias)),
                mats: vec![biased(&b.attn_q, bq, q, d), biased(&b.attn_k, bk, kv, d), biased(&b.attn_v, bv, kv, d)],
                output: Buf::Qkv,
                add: false,
            },
            // A table of no rotated dimensions: q is copied and k, v stored as they are.
            Op::RopeStore { rope: 0 },
            Op::Attention { window: None },
            Op::Linear {
                input: Buf::Attn,
                norm: None,
                mats: vec![biased(&b.attn_output, bo, d, q)],
                output: Buf::Hidden,
                add: true,
            },
            Op::Linear {
                input: Buf::Hidden,
                norm: Some(layer_norm(&b.ffn_norm, ffn_norm_bias)),
                mats: vec![biased(up, bup, f, d)],
                output: Buf::Act,
                add: false,
            },
            Op::Activation { buf: Buf::Act, act: t.activation },
            Op::Linear {
                input: Buf::Act,
                norm: None,
                mats: vec![biased(down, bdown, d, f)],
                output: Buf::Hidden,
                add: true,
            },
        ];
        blocks.push(Block { file: b.file.clone(), ops });
    }
    let none = Rope { inv_freq: Vec::new(), dims: 0, style: t.rope.style };
    let mut p = skeleton(t, vec![none], blocks);
    p.position_embedding = Some(position);
    Ok(p)
}
