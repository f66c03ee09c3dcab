//! Llama (and Mistral, SmolLM2): pre-norm blocks, rotary attention, a gated MLP.
//!
//! ```text
//! x += o(attention(rope(qkv(norm(x)))))
//! x += down(act(gate(norm(x))) * up(norm(x)))
//! ```

use super::{
    dense, gate_up_projection, mat, model_rope, qkv_projection, refuse_extra, refuse_gpt2_parts, skeleton, Block, Buf,
    Op, Program,
};
use crate::error::Result;
use crate::graph::{BlockWeights, Transformer};

pub fn program(t: &Transformer) -> Result<Program> {
    refuse_extra(t, "q/k norms or post norms", |b| b.attn_qk_norm.is_some() || b.post_norms.is_some())?;
    refuse_gpt2_parts(t)?;
    let blocks =
        t.blocks.iter().enumerate().map(|(l, b)| block(t, l, b, b.attn_qkv_bias.as_ref())).collect::<Result<_>>()?;
    Ok(skeleton(t, vec![model_rope(t)], blocks))
}

/// One llama block; `bias`: the q, k, v biases (qwen2 has them, llama graphs may).
pub(super) fn block(t: &Transformer, l: usize, b: &BlockWeights, bias: Option<&[String; 3]>) -> Result<Block> {
    let (d, q, f) = (t.hidden_size, t.n_heads * t.head_dim, t.intermediate_size);
    let ops = vec![
        qkv_projection(t, b, bias),
        Op::RopeStore { rope: 0 },
        Op::Attention { window: None },
        Op::Linear {
            input: Buf::Attn,
            norm: None,
            mats: vec![mat(&b.attn_output, None, d, q)],
            output: Buf::Hidden,
            add: true,
        },
        gate_up_projection(t, l, b)?,
        Op::Glu { act: t.activation },
        Op::Linear {
            input: Buf::Act,
            norm: None,
            mats: vec![mat(dense(t, l, b)?.1, None, d, f)],
            output: Buf::Hidden,
            add: true,
        },
    ];
    Ok(Block { file: b.file.clone(), ops })
}
