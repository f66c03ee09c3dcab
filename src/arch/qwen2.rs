//! Qwen2 (Qwen2.5, Qwen2.5-Coder): a llama block whose q, k and v projections carry biases.

use super::{llama, model_rope, refuse_extra, refuse_gpt2_parts, skeleton, Program};
use crate::error::{Error, Result};
use crate::graph::Transformer;

pub fn program(t: &Transformer) -> Result<Program> {
    refuse_extra(t, "q/k norms or post norms", |b| b.attn_qk_norm.is_some() || b.post_norms.is_some())?;
    refuse_gpt2_parts(t)?;
    let mut blocks = Vec::with_capacity(t.blocks.len());
    for (l, b) in t.blocks.iter().enumerate() {
        let bias = b
            .attn_qkv_bias
            .as_ref()
            .ok_or_else(|| Error::Unsupported(format!("qwen2 graphs have q, k and v biases: block {l} names none")))?;
        blocks.push(llama::block(t, l, b, Some(bias))?);
    }
    Ok(skeleton(t, vec![model_rope(t)], blocks))
}
