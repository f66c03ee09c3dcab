//! Gemma 3: llama's layout with norms around both halves of the block ("sandwich" norms), RMS norms of each
//! query and key head before RoPE, GELU gating, the embedding scaled by `sqrt(hidden)`, and local attention:
//! five of every six blocks attend to a sliding window with their own rope base, the sixth to everything.
//!
//! ```text
//! x += post_attn_norm(o(attention(rope(head_norm(qkv(norm(x)))))))
//! x += post_ffn_norm(down(gelu(gate(norm(x))) * up(norm(x))))
//! ```
//! (The norm weights are stored with Gemma's `1 + w` already applied, as GGUF files hold them.)

use super::{
    dense, gate_up_projection, mat, model_rope, norm, qkv_projection, refuse_gpt2_parts, skeleton, Block, Buf, Op,
    Program, QkPart, Rope,
};
use crate::error::{Error, Result};
use crate::graph::Transformer;

pub fn program(t: &Transformer) -> Result<Program> {
    refuse_gpt2_parts(t)?;
    let (d, q, f) = (t.hidden_size, t.n_heads * t.head_dim, t.intermediate_size);
    let window = t.sliding_window;
    let mut ropes = vec![model_rope(t)];
    if let Some(w) = &window {
        let local = crate::graph::RopeConfig { base: w.local_rope_base, scaling: None, ..t.rope };
        ropes.push(Rope { inv_freq: local.inv_freq(), dims: local.dims, style: local.style });
    }
    let mut blocks = Vec::with_capacity(t.blocks.len());
    for (l, b) in t.blocks.iter().enumerate() {
        let missing = |what: &str| Error::Unsupported(format!("gemma3 graphs have {what}: block {l} names none"));
        let [qn, kn] = b.attn_qk_norm.as_ref().ok_or_else(|| missing("q and k norms"))?;
        let [post_attn, post_ffn] = b.post_norms.as_ref().ok_or_else(|| missing("post norms"))?;
        let local = window.filter(|w| w.is_local(l));
        let ops = vec![
            qkv_projection(t, b, None),
            Op::HeadNorm { part: QkPart::Q, norm: norm(t, qn) },
            Op::HeadNorm { part: QkPart::K, norm: norm(t, kn) },
            Op::RopeStore { rope: if local.is_some() { 1 } else { 0 } },
            Op::Attention { window: local.map(|w| w.window) },
            Op::Linear {
                input: Buf::Attn,
                norm: None,
                mats: vec![mat(&b.attn_output, None, d, q)],
                output: Buf::Out,
                add: false,
            },
            Op::Norm { buf: Buf::Out, norm: norm(t, post_attn) },
            Op::Add { from: Buf::Out, to: Buf::Hidden },
            gate_up_projection(t, l, b)?,
            Op::Glu { act: t.activation },
            Op::Linear {
                input: Buf::Act,
                norm: None,
                mats: vec![mat(dense(t, l, b)?.1, None, d, f)],
                output: Buf::Out,
                add: false,
            },
            Op::Norm { buf: Buf::Out, norm: norm(t, post_ffn) },
            Op::Add { from: Buf::Out, to: Buf::Hidden },
        ];
        blocks.push(Block { file: b.file.clone(), ops });
    }
    let mut p = skeleton(t, ropes, blocks);
    p.embed_scale = Some((t.hidden_size as f32).sqrt());
    Ok(p)
}
