//! Mixtral: llama's blocks with a sparse mixture of experts in place of the MLP. A router picks `top_k` of the
//! block's experts for each token; only those run, their outputs weighted by the router's renormalised scores.
//!
//! ```text
//! x += o(attention(rope(qkv(norm(x)))))
//! n = norm(x); p = softmax(n @ router^T); E = top_k(p); w = p[E] / sum(p[E])
//! x += sum over e in E of w_e * down_e(silu(gate_e(n)) * up_e(n))
//! ```

use super::{mat, model_rope, norm, qkv_projection, refuse_extra, refuse_gpt2_parts, skeleton, Block, Buf, Expert};
use super::{Op, Program};
use crate::error::{Error, Result};
use crate::graph::Transformer;

pub fn program(t: &Transformer) -> Result<Program> {
    let moe = t.moe.ok_or_else(|| Error::Unsupported("mixtral graphs have experts: the blocks name no moe".into()))?;
    refuse_extra(t, "q/k norms, post norms or q/k/v biases", |b| {
        b.attn_qk_norm.is_some() || b.post_norms.is_some() || b.attn_qkv_bias.is_some()
    })?;
    refuse_gpt2_parts(t)?;
    let (d, q, f) = (t.hidden_size, t.n_heads * t.head_dim, t.intermediate_size);
    let mut blocks = Vec::with_capacity(t.blocks.len());
    for (l, b) in t.blocks.iter().enumerate() {
        let w = b.moe.as_ref().ok_or_else(|| {
            Error::Unsupported(format!("mixtral graphs have experts in every block: block {l} names none"))
        })?;
        let experts = w
            .experts
            .iter()
            .map(|[gate, up, down]| Expert {
                gate: mat(gate, None, f, d),
                up: mat(up, None, f, d),
                down: mat(down, None, d, f),
            })
            .collect();
        let ops = vec![
            qkv_projection(t, b, None),
            Op::RopeStore { rope: 0 },
            Op::Attention { window: None },
            Op::Linear {
                input: Buf::Attn,
                norm: None,
                mats: vec![mat(&b.attn_output, None, d, q)],
                output: Buf::Hidden,
                add: true,
            },
            Op::MoeRoute {
                norm: norm(t, &b.ffn_norm),
                router: mat(&w.router, None, w.experts.len() as u32, d),
                top_k: moe.top_k,
            },
            Op::Experts { act: t.activation, experts },
        ];
        blocks.push(Block { file: b.file.clone(), ops });
    }
    let mut p = skeleton(t, vec![model_rope(t)], blocks);
    p.experts = moe.experts;
    Ok(p)
}
