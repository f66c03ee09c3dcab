//! The op program: what a model computes, as a short list of typed ops per block over a few named buffers.
//! One file per architecture builds it from the graph ([`program`]); each engine lowers it (the CPU engine
//! onto `kernels-cpu`, the GPU engine into dispatch lists) and knows no architecture. Fusion is the
//! lowering's business: the program says "norm, then these matrices, then add into the hidden state", and an
//! engine may do that in one kernel or three.
//!
//! A block reads and writes these buffers, each `[tokens, width]` f32:
//!
//! | buffer | width | holds |
//! |---|---|---|
//! | `Hidden` | hidden | the residual stream |
//! | `Qkv` | q + 2 kv | the fused q, k, v projections |
//! | `Q` | q | the rotated queries ([`Op::RopeStore`] writes them; K and V go to the block's cache) |
//! | `Attn` | q | the attention output |
//! | `GateUp` | 2 ffn | gate and up projections |
//! | `Act` | ffn | the MLP's activation |
//! | `Out` | hidden | a block output before its residual add (post-norm architectures) |
//! | `MoeIn` | hidden | the normed hidden state the router and the experts read (mixtral) |
//! | `Route` | experts | per token, each expert's weight: the router's renormalised probability for the `top_k` chosen, 0 for the rest |

mod gemma3;
mod gpt2;
mod llama;
mod mixtral;
mod qwen2;

use crate::error::{Error, Result};
use crate::graph::{Activation, Norm, RopeStyle, Transformer};

/// The buffers ops read and write; see the module table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Buf {
    Hidden,
    Qkv,
    Q,
    Attn,
    GateUp,
    Act,
    Out,
    MoeIn,
    Route,
}

impl Buf {
    pub const ALL: [Buf; 9] =
        [Buf::Hidden, Buf::Qkv, Buf::Q, Buf::Attn, Buf::GateUp, Buf::Act, Buf::Out, Buf::MoeIn, Buf::Route];
}

/// A normalisation over rows (or heads) with its weight (and, for LayerNorm, bias) tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct NormOp {
    pub kind: Norm,
    pub weight: String,
    pub bias: Option<String>,
}

impl NormOp {
    pub fn eps(&self) -> f32 {
        match self.kind {
            Norm::RmsNorm { eps } | Norm::LayerNorm { eps } => eps,
        }
    }
}

/// One matrix of a [`Op::Linear`]: `rows` outputs of `cols` inputs, with an optional bias of `rows`.
#[derive(Clone, Debug, PartialEq)]
pub struct Mat {
    pub weight: String,
    pub bias: Option<String>,
    pub rows: u32,
    pub cols: u32,
}

/// The first of q and k in the `Qkv` buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QkPart {
    Q,
    K,
}

/// One expert of [`Op::Experts`]: a gated MLP `down(act(gate(x)) * up(x))`.
#[derive(Clone, Debug, PartialEq)]
pub struct Expert {
    pub gate: Mat,
    pub up: Mat,
    pub down: Mat,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// `output = [norm(input)] @ [m0 | m1 | ..]^T (+ biases)`, the matrices' outputs side by side in each row;
    /// with `add`, added into `output` instead of stored (the residual).
    Linear { input: Buf, norm: Option<NormOp>, mats: Vec<Mat>, output: Buf, add: bool },
    /// A norm over each head of q or k in `Qkv`, in place (weight of `head_dim`).
    HeadNorm { part: QkPart, norm: NormOp },
    /// RoPE with table `rope` on q and k of `Qkv`: q into `Q`, k and v into this block's KV cache.
    RopeStore { rope: usize },
    /// Causal attention of `Q` over this block's cache into `Attn`; with a window, over the last `window`
    /// positions only (the query's own included).
    Attention { window: Option<u32> },
    /// `Act = act(gate) * up` from `GateUp`.
    Glu { act: Activation },
    /// `buf = act(buf)`, elementwise (a plain MLP's activation).
    Activation { buf: Buf, act: Activation },
    /// `buf = norm(buf)`.
    Norm { buf: Buf, norm: NormOp },
    /// `to += from`.
    Add { from: Buf, to: Buf },
    /// Routes each token to `top_k` of `router.rows` experts: `MoeIn = norm(Hidden)`, router logits
    /// `MoeIn @ router^T`, their softmax (over all experts, in f32), the `top_k` largest probabilities (ties to
    /// the lower expert id) divided by their sum into `Route`, every other expert's weight 0
    /// (`kernels_cpu::ops::route` on each row).
    MoeRoute { norm: NormOp, router: Mat, top_k: u32 },
    /// `Hidden += sum over each token's routed experts e of weight_e * down_e(act(gate_e(x)) * up_e(x))`,
    /// `x` the token's `MoeIn` row; an engine runs an expert only for the tokens whose weight for it is not 0. An
    /// engine may use `GateUp`, `Act` and `Out` as its scratch for one expert at a time.
    Experts { act: Activation, experts: Vec<Expert> },
}

impl Op {
    /// A short name for timelines and logs: the op's kind and, for a linear op, its matrices without the
    /// block prefix ("linear attn_q|attn_k|attn_v").
    pub fn label(&self) -> String {
        let short = |name: &str| {
            let rest = name.strip_prefix("blk.").map_or(name, |r| r.split_once('.').map_or(r, |(_, t)| t));
            rest.strip_suffix(".weight").unwrap_or(rest).to_string()
        };
        match self {
            Op::Linear { mats, add, .. } => {
                let names: Vec<String> = mats.iter().map(|m| short(&m.weight)).collect();
                format!("linear {}{}", names.join("|"), if *add { " +=" } else { "" })
            }
            Op::HeadNorm { part: QkPart::Q, .. } => "head_norm q".into(),
            Op::HeadNorm { part: QkPart::K, .. } => "head_norm k".into(),
            Op::RopeStore { .. } => "rope_store".into(),
            Op::Attention { window: Some(w) } => format!("attention (window {w})"),
            Op::Attention { window: None } => "attention".into(),
            Op::Glu { .. } => "glu".into(),
            Op::Activation { .. } => "activation".into(),
            Op::Norm { .. } => "norm".into(),
            Op::Add { .. } => "add".into(),
            Op::MoeRoute { top_k, router, .. } => format!("moe_route top {top_k} of {}", router.rows),
            Op::Experts { experts, .. } => format!("experts ({})", experts.len()),
        }
    }
}

/// One block: the layer file its weights live in and its ops.
#[derive(Clone, Debug, PartialEq)]
pub struct Block {
    pub file: String,
    pub ops: Vec<Op>,
}

/// A RoPE table: the frequencies of `dims` rotated dimensions per head.
#[derive(Clone, Debug, PartialEq)]
pub struct Rope {
    pub inv_freq: Vec<f32>,
    pub dims: u32,
    pub style: RopeStyle,
}

/// Attention shapes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Heads {
    pub n_heads: u32,
    pub n_kv: u32,
    pub head_dim: u32,
}

impl Heads {
    pub fn q_dim(&self) -> u32 {
        self.n_heads * self.head_dim
    }
    pub fn kv_dim(&self) -> u32 {
        self.n_kv * self.head_dim
    }
}

/// A whole model: embedding, blocks, final norm and head.
#[derive(Clone, Debug, PartialEq)]
pub struct Program {
    pub architecture: String,
    pub vocab: u32,
    pub hidden: u32,
    pub ffn: u32,
    /// Experts of each [`Op::MoeRoute`] (the width of `Route`); 0 when no op routes.
    pub experts: u32,
    pub heads: Heads,
    /// Scores are `attention_scale * q . k`.
    pub attention_scale: f32,
    /// The token embedding `[vocab, hidden]`, its rows multiplied by `embed_scale` when set.
    pub embedding: String,
    pub embed_scale: Option<f32>,
    /// Learned position embeddings `[context, hidden]`: row `p` is added to the embedding of the token at
    /// position `p` (gpt2).
    pub position_embedding: Option<String>,
    pub ropes: Vec<Rope>,
    pub blocks: Vec<Block>,
    pub final_norm: NormOp,
    /// The head `[vocab, hidden]` (the embedding itself when tied).
    pub head: String,
}

impl Program {
    /// Values per token of `buf`.
    pub fn width(&self, buf: Buf) -> u32 {
        let h = self.heads;
        match buf {
            Buf::Hidden | Buf::Out => self.hidden,
            Buf::Qkv => h.q_dim() + 2 * h.kv_dim(),
            Buf::Q | Buf::Attn => h.q_dim(),
            Buf::GateUp => 2 * self.ffn,
            Buf::Act => self.ffn,
            Buf::MoeIn => self.hidden,
            Buf::Route => self.experts,
        }
    }

    /// The buffers some op of the program touches.
    pub fn buffers(&self) -> Vec<Buf> {
        let mut used = vec![Buf::Hidden];
        for op in self.blocks.iter().flat_map(|b| &b.ops) {
            used.extend(match op {
                Op::Linear { input, output, .. } => vec![*input, *output],
                Op::HeadNorm { .. } => vec![Buf::Qkv],
                Op::RopeStore { .. } => vec![Buf::Qkv, Buf::Q],
                Op::Attention { .. } => vec![Buf::Q, Buf::Attn],
                Op::Glu { .. } => vec![Buf::GateUp, Buf::Act],
                Op::Activation { buf, .. } | Op::Norm { buf, .. } => vec![*buf],
                Op::Add { from, to } => vec![*from, *to],
                Op::MoeRoute { .. } => vec![Buf::Hidden, Buf::MoeIn, Buf::Route],
                Op::Experts { .. } => vec![Buf::MoeIn, Buf::Route, Buf::Hidden, Buf::GateUp, Buf::Act, Buf::Out],
            });
        }
        used.sort();
        used.dedup();
        used
    }

    /// Checks what every engine relies on: matrix shapes add up to the buffers they write, reads come after
    /// writes within a block, and tables exist. `Err` names the block and op.
    fn check(&self) -> std::result::Result<(), String> {
        for (l, b) in self.blocks.iter().enumerate() {
            let mut written = vec![Buf::Hidden];
            // The experts of the block's last MoeRoute.
            let mut routed = None;
            for (i, op) in b.ops.iter().enumerate() {
                let at = |what: String| format!("block {l}, op {i} ({op:?}): {what}");
                let (reads, writes): (Vec<Buf>, Vec<Buf>) = match op {
                    Op::Linear { input, norm: _, mats, output, add } => {
                        let cols_ok = mats.iter().all(|m| m.cols == self.width(*input));
                        let rows: u32 = mats.iter().map(|m| m.rows).sum();
                        if input == output {
                            return Err(at("reads and writes one buffer".into()));
                        }
                        if mats.is_empty() || !cols_ok || rows != self.width(*output) {
                            return Err(at(format!(
                                "matrices do not map {:?} ({}) to {:?} ({})",
                                input,
                                self.width(*input),
                                output,
                                self.width(*output)
                            )));
                        }
                        (if *add { vec![*input, *output] } else { vec![*input] }, vec![*output])
                    }
                    Op::HeadNorm { .. } => (vec![Buf::Qkv], vec![Buf::Qkv]),
                    Op::RopeStore { rope } => {
                        let r = self.ropes.get(*rope).ok_or_else(|| at("no such rope table".into()))?;
                        if r.dims > self.heads.head_dim || r.dims % 2 != 0 {
                            return Err(at(format!("rope dims {} for head dim {}", r.dims, self.heads.head_dim)));
                        }
                        (vec![Buf::Qkv], vec![Buf::Q])
                    }
                    Op::Attention { window } => {
                        if *window == Some(0) {
                            return Err(at("a window of 0 positions".into()));
                        }
                        (vec![Buf::Q], vec![Buf::Attn])
                    }
                    Op::Glu { .. } => (vec![Buf::GateUp], vec![Buf::Act]),
                    Op::Activation { buf, .. } | Op::Norm { buf, .. } => (vec![*buf], vec![*buf]),
                    Op::Add { from, to } if from == to => return Err(at("adds a buffer to itself".into())),
                    Op::Add { from, to } => (vec![*from, *to], vec![*to]),
                    Op::MoeRoute { norm: _, router, top_k } => {
                        if router.rows == 0 || router.cols != self.hidden || router.bias.is_some() {
                            return Err(at(format!(
                                "router of {} x {} for hidden {}",
                                router.rows, router.cols, self.hidden
                            )));
                        }
                        if *top_k == 0 || *top_k > router.rows || router.rows != self.experts {
                            return Err(at(format!(
                                "top_k {top_k} of {} experts (the program routes over {})",
                                router.rows, self.experts
                            )));
                        }
                        routed = Some(router.rows);
                        (vec![Buf::Hidden], vec![Buf::MoeIn, Buf::Route])
                    }
                    Op::Experts { act: _, experts } => {
                        if routed != Some(experts.len() as u32) {
                            return Err(at(format!("{} experts after a route over {routed:?}", experts.len())));
                        }
                        for (e, x) in experts.iter().enumerate() {
                            let f = x.gate.rows;
                            let shapes =
                                [(&x.gate, f, self.hidden), (&x.up, f, self.hidden), (&x.down, self.hidden, f)];
                            if f == 0 || shapes.iter().any(|(m, r, c)| m.rows != *r || m.cols != *c || m.bias.is_some())
                            {
                                return Err(at(format!("expert {e}: gate, up and down do not map hidden to hidden")));
                            }
                        }
                        (vec![Buf::MoeIn, Buf::Route, Buf::Hidden], vec![Buf::Hidden])
                    }
                };
                if let Some(r) = reads.iter().find(|r| !written.contains(r)) {
                    return Err(at(format!("reads {r:?} before any op of the block writes it")));
                }
                written.extend(writes);
            }
        }
        Ok(())
    }
}

/// The op program of `t`, by its architecture.
pub fn program(t: &Transformer) -> Result<Program> {
    let p = match t.architecture.as_str() {
        "llama" | "mistral" => llama::program(t),
        "qwen2" => qwen2::program(t),
        "gemma3" => gemma3::program(t),
        "gpt2" => gpt2::program(t),
        "mixtral" => mixtral::program(t),
        other => {
            return Err(Error::Unsupported(format!(
                "architecture {other:?}: omex runs llama, mistral, qwen2, gemma3, gpt2 and mixtral graphs"
            )))
        }
    }?;
    p.check().map_err(|e| Error::Unsupported(format!("the {} op program is inconsistent: {e}", p.architecture)))?;
    Ok(p)
}

/// The parts every architecture shares: shapes, the embedding, the final norm and the head.
fn skeleton(t: &Transformer, ropes: Vec<Rope>, blocks: Vec<Block>) -> Program {
    let heads = Heads { n_heads: t.n_heads, n_kv: t.n_kv_heads, head_dim: t.head_dim };
    Program {
        architecture: t.architecture.clone(),
        vocab: t.vocab_size,
        hidden: t.hidden_size,
        ffn: t.intermediate_size,
        experts: 0,
        heads,
        attention_scale: 1.0 / (t.head_dim as f32).sqrt(),
        embedding: t.token_embedding.clone(),
        embed_scale: None,
        position_embedding: None,
        ropes,
        blocks,
        final_norm: NormOp { kind: t.norm, weight: t.output_norm.clone(), bias: t.output_norm_bias.clone() },
        head: t.output.clone(),
    }
}

/// The model's own RoPE table.
fn model_rope(t: &Transformer) -> Rope {
    Rope { inv_freq: t.rope.inv_freq(), dims: t.rope.dims, style: t.rope.style }
}

fn norm(t: &Transformer, weight: &str) -> NormOp {
    NormOp { kind: t.norm, weight: weight.to_string(), bias: None }
}

fn mat(weight: &str, bias: Option<&String>, rows: u32, cols: u32) -> Mat {
    Mat { weight: weight.to_string(), bias: bias.cloned(), rows, cols }
}

/// `Qkv = norm(Hidden) @ [q | k | v]`, with the q, k, v biases when given.
fn qkv_projection(t: &Transformer, b: &crate::graph::BlockWeights, bias: Option<&[String; 3]>) -> Op {
    let (d, q, kv) = (t.hidden_size, t.n_heads * t.head_dim, t.n_kv_heads * t.head_dim);
    let bias = |i: usize| bias.map(|b| &b[i]);
    Op::Linear {
        input: Buf::Hidden,
        norm: Some(norm(t, &b.attn_norm)),
        mats: vec![mat(&b.attn_q, bias(0), q, d), mat(&b.attn_k, bias(1), kv, d), mat(&b.attn_v, bias(2), kv, d)],
        output: Buf::Qkv,
        add: false,
    }
}

/// `GateUp = norm(Hidden) @ [gate | up]`; block `l` must have a gate.
fn gate_up_projection(t: &Transformer, l: usize, b: &crate::graph::BlockWeights) -> Result<Op> {
    let (d, f) = (t.hidden_size, t.intermediate_size);
    let gate = b.ffn_gate.as_ref().ok_or_else(|| {
        Error::Unsupported(format!("{} graphs have a gated MLP: block {l} names no ffn_gate", t.architecture))
    })?;
    Ok(Op::Linear {
        input: Buf::Hidden,
        norm: Some(norm(t, &b.ffn_norm)),
        mats: vec![mat(gate, None, f, d), mat(dense(t, l, b)?.0, None, f, d)],
        output: Buf::GateUp,
        add: false,
    })
}

/// The dense MLP's up and down of block `l`; `Err` for a block of experts (a graph of another architecture).
fn dense<'a>(t: &Transformer, l: usize, b: &'a crate::graph::BlockWeights) -> Result<(&'a str, &'a str)> {
    match (&b.ffn_up, &b.ffn_down, &b.moe) {
        (Some(up), Some(down), None) => Ok((up, down)),
        _ => Err(Error::Unsupported(format!(
            "{} graphs have a dense MLP: block {l} names experts or no ffn_up/ffn_down",
            t.architecture
        ))),
    }
}

/// Refuses graph tensors the llama-like architectures (llama, qwen2, gemma3) do not read.
fn refuse_gpt2_parts(t: &Transformer) -> Result<()> {
    refuse_extra(t, "LayerNorm or projection biases", |b| b.norm_biases.is_some() || b.proj_biases.is_some())?;
    if t.position_embedding.is_some() || t.output_norm_bias.is_some() {
        return Err(Error::Unsupported(format!(
            "{} graphs have no learned position embedding or final norm bias",
            t.architecture
        )));
    }
    Ok(())
}

/// Refuses block tensors an architecture does not read, so that a graph is never run without part of itself.
fn refuse_extra(t: &Transformer, what: &str, present: impl Fn(&crate::graph::BlockWeights) -> bool) -> Result<()> {
    match t.blocks.iter().position(present) {
        Some(l) => Err(Error::Unsupported(format!("{} graphs have no {what} (block {l} has)", t.architecture))),
        None => Ok(()),
    }
}
