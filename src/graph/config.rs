//! Typed node configs of a decoder-only transformer and their mapping to and from `graph.json` nodes:
//! `embedding -> transformer_block_0 .. transformer_block_{N-1} -> final_norm -> lm_head`.

use crate::error::{Error, Result};
use crate::format::graph::{Edge, EntryPoint, GraphFile, Node};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Norm {
    RmsNorm { eps: f32 },
    LayerNorm { eps: f32 },
}

/// Which dimensions RoPE rotates together.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RopeStyle {
    /// Pairs (2i, 2i+1): GGUF llama (its converter permutes Q and K for this).
    Interleaved,
    /// Pairs (i, i + d/2): Hugging Face llama, qwen2, GPT-NeoX.
    Half,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum RopeScaling {
    /// Position interpolation: every frequency divided by `factor`.
    Linear { factor: f32 },
    /// Llama 3.1's frequency-dependent scaling.
    Llama3 { factor: f32, low_freq_factor: f32, high_freq_factor: f32, original_context_length: u32 },
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct RopeConfig {
    pub base: f32,
    pub style: RopeStyle,
    /// Rotated dimensions per head (the head dim for llama; 0 for none: gpt2's positions are learned).
    pub dims: u32,
    pub scaling: Option<RopeScaling>,
}

impl RopeConfig {
    /// Inverse frequencies, one per rotated pair, with the scaling applied.
    pub fn inv_freq(&self) -> Vec<f32> {
        let half = (self.dims / 2) as usize;
        (0..half)
            .map(|i| {
                let f = 1.0 / (self.base as f64).powf(2.0 * i as f64 / self.dims as f64);
                let f = match self.scaling {
                    None => f,
                    Some(RopeScaling::Linear { factor }) => f / factor as f64,
                    Some(RopeScaling::Llama3 {
                        factor,
                        low_freq_factor,
                        high_freq_factor,
                        original_context_length,
                    }) => {
                        let (factor, lo, hi) = (factor as f64, low_freq_factor as f64, high_freq_factor as f64);
                        let wavelen = 2.0 * std::f64::consts::PI / f;
                        let (low_wavelen, high_wavelen) =
                            (original_context_length as f64 / lo, original_context_length as f64 / hi);
                        if wavelen < high_wavelen {
                            f
                        } else if wavelen > low_wavelen {
                            f / factor
                        } else {
                            let smooth = (original_context_length as f64 / wavelen - lo) / (hi - lo);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    }
                };
                f as f32
            })
            .collect()
    }
}

/// The MLP's activation: gated (`down(act(gate(x)) * up(x))`) when the blocks name an `ffn_gate`, else plain
/// (`down(act(up(x)))`, GPT-2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    /// SiLU (SwiGLU when gated).
    Silu,
    /// GELU with the tanh approximation (GeGLU when gated; GPT-2's `gelu_new`).
    Gelu,
}

/// Local attention (gemma3): most blocks attend to the last `window` positions only, with their own rope base;
/// every `global_every`-th block (the last of each group) attends to the whole context with the model's rope.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct SlidingWindow {
    pub window: u32,
    pub global_every: u32,
    pub local_rope_base: f32,
}

impl SlidingWindow {
    /// Whether block `layer` attends locally.
    pub fn is_local(&self, layer: usize) -> bool {
        !(layer + 1).is_multiple_of(self.global_every as usize)
    }
}

/// A block's sparse mixture of experts (mixtral): the router and each expert's gated MLP, every expert its own
/// tensor records so that it can be read, uploaded or streamed alone.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MoeWeights {
    /// The router `[experts, hidden]`.
    pub router: String,
    /// Per expert: gate and up `[ffn, hidden]`, down `[hidden, ffn]`.
    pub experts: Vec<[String; 3]>,
}

/// How many experts each MoE block has and how many a token is routed to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoeConfig {
    pub experts: u32,
    pub top_k: u32,
}

/// The tensor names one transformer block reads (from its own layer file).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BlockWeights {
    /// The weight file, relative to `weights/`.
    pub file: String,
    pub attn_norm: String,
    pub attn_q: String,
    pub attn_k: String,
    pub attn_v: String,
    pub attn_output: String,
    pub ffn_norm: String,
    /// The gate of a gated MLP; `None`: a plain MLP (GPT-2) or experts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ffn_gate: Option<String>,
    /// The dense MLP's up and down; `None` in a block of experts (`moe`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ffn_up: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ffn_down: Option<String>,
    /// A sparse mixture of experts in place of the dense MLP (mixtral).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moe: Option<MoeWeights>,
    /// Q/K/V biases (qwen2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attn_qkv_bias: Option<[String; 3]>,
    /// Per-head RMS norms of the queries and keys before RoPE (gemma3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attn_qk_norm: Option<[String; 2]>,
    /// Norms of the attention and FFN outputs before their residual adds (gemma3's "sandwich" norms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post_norms: Option<[String; 2]>,
    /// The LayerNorm biases of `attn_norm` and `ffn_norm` (gpt2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub norm_biases: Option<[String; 2]>,
    /// The biases of `attn_output`, `ffn_up` and `ffn_down` (gpt2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proj_biases: Option<[String; 3]>,
}

impl BlockWeights {
    /// The standard names of block `i` (GGUF's naming, which omex keeps).
    pub fn standard(i: usize, with_bias: bool) -> BlockWeights {
        let n = |s: &str| format!("blk.{i}.{s}");
        BlockWeights {
            file: format!("layer_{i}.bin"),
            attn_norm: n("attn_norm"),
            attn_q: n("attn_q"),
            attn_k: n("attn_k"),
            attn_v: n("attn_v"),
            attn_output: n("attn_output"),
            ffn_norm: n("ffn_norm"),
            ffn_gate: Some(n("ffn_gate")),
            ffn_up: Some(n("ffn_up")),
            ffn_down: Some(n("ffn_down")),
            moe: None,
            attn_qkv_bias: with_bias.then(|| [n("attn_q.bias"), n("attn_k.bias"), n("attn_v.bias")]),
            attn_qk_norm: None,
            post_norms: None,
            norm_biases: None,
            proj_biases: None,
        }
    }

    /// [`BlockWeights::standard`] with gemma3's q/k norms and post norms.
    pub fn gemma3(i: usize) -> BlockWeights {
        let n = |s: &str| format!("blk.{i}.{s}");
        BlockWeights {
            attn_qk_norm: Some([n("attn_q_norm"), n("attn_k_norm")]),
            post_norms: Some([n("post_attention_norm"), n("post_ffw_norm")]),
            ..BlockWeights::standard(i, false)
        }
    }

    /// [`BlockWeights::standard`] with gpt2's plain MLP and its LayerNorm and projection biases.
    pub fn gpt2(i: usize) -> BlockWeights {
        let n = |s: &str| format!("blk.{i}.{s}");
        BlockWeights {
            ffn_gate: None,
            norm_biases: Some([n("attn_norm.bias"), n("ffn_norm.bias")]),
            proj_biases: Some([n("attn_output.bias"), n("ffn_up.bias"), n("ffn_down.bias")]),
            ..BlockWeights::standard(i, true)
        }
    }

    /// [`BlockWeights::standard`] with `experts` experts in place of the dense MLP (mixtral; llama.cpp's names
    /// of per-expert tensors: `blk.N.ffn_gate_inp`, `blk.N.ffn_{gate,up,down}.E`).
    pub fn mixtral(i: usize, experts: u32) -> BlockWeights {
        let n = |s: &str| format!("blk.{i}.{s}");
        let expert = |e: u32| [n(&format!("ffn_gate.{e}")), n(&format!("ffn_up.{e}")), n(&format!("ffn_down.{e}"))];
        BlockWeights {
            ffn_gate: None,
            ffn_up: None,
            ffn_down: None,
            moe: Some(MoeWeights { router: n("ffn_gate_inp"), experts: (0..experts).map(expert).collect() }),
            ..BlockWeights::standard(i, false)
        }
    }

    /// Every tensor the block reads.
    pub fn names(&self) -> Vec<&str> {
        let mut v = vec![&self.attn_norm, &self.attn_q, &self.attn_k, &self.attn_v, &self.attn_output, &self.ffn_norm];
        v.extend(&self.ffn_gate);
        v.extend(&self.ffn_up);
        v.extend(&self.ffn_down);
        if let Some(m) = &self.moe {
            v.push(&m.router);
            v.extend(m.experts.iter().flatten());
        }
        v.extend(self.attn_qkv_bias.iter().flatten());
        v.extend(self.attn_qk_norm.iter().flatten());
        v.extend(self.post_norms.iter().flatten());
        v.extend(self.norm_biases.iter().flatten());
        v.extend(self.proj_biases.iter().flatten());
        v.into_iter().map(String::as_str).collect()
    }
}

/// Upper bounds on the hyper-parameters omex accepts from a file: far above any model in use (Llama 3 405B has
/// 126 blocks, 128 heads of 128, a 16384 hidden size and a 128k vocabulary), and low enough that every size
/// derived from them fits a u64 and is checked against memory before it is allocated.
pub mod limits {
    pub const MAX_BLOCKS: usize = 1024;
    pub const MAX_VOCAB: u64 = 1 << 22;
    pub const MAX_DIM: u64 = 1 << 16;
    pub const MAX_FFN: u64 = 1 << 18;
    pub const MAX_HEADS: u64 = 1024;
    pub const MAX_HEAD_DIM: u64 = 1024;
    pub const MAX_CONTEXT: u64 = 1 << 22;
    /// Experts per MoE block (Mixtral has 8, DeepSeek-V3 256).
    pub const MAX_EXPERTS: u32 = 256;
    /// Rope scaling factors: real models use 1 to 64; outside this range the rope table overflows.
    pub const ROPE_FACTOR: std::ops::RangeInclusive<f32> = 1.0 / 1024.0..=65536.0;
}

/// A decoder-only transformer: every hyper-parameter the runtime needs, and the tensor each op reads.
#[derive(Clone, Debug, PartialEq)]
pub struct Transformer {
    pub architecture: String,
    pub vocab_size: u32,
    pub hidden_size: u32,
    pub intermediate_size: u32,
    pub n_heads: u32,
    pub n_kv_heads: u32,
    pub head_dim: u32,
    pub context_length: u32,
    pub norm: Norm,
    pub rope: RopeConfig,
    pub activation: Activation,
    pub token_embedding: String,
    pub embedding_file: String,
    /// Learned position embeddings `[context_length, hidden]`, added to the token embedding (gpt2), in
    /// `embedding_file`.
    pub position_embedding: Option<String>,
    pub output_norm: String,
    /// The final LayerNorm's bias (gpt2), in `head_file`.
    pub output_norm_bias: Option<String>,
    /// The lm head's weight: the token embedding itself when `tied`.
    pub output: String,
    pub head_file: String,
    pub tied_embeddings: bool,
    pub blocks: Vec<BlockWeights>,
    /// `None`: every block attends to the whole context.
    pub sliding_window: Option<SlidingWindow>,
    /// `Some`: every block's MLP is a mixture of experts (mixtral).
    pub moe: Option<MoeConfig>,
}

/// Reads a typed field of a node's config, naming the node and field when it is missing or mistyped.
fn field<T: serde::de::DeserializeOwned>(path: &Path, node: &Node, key: &str) -> Result<T> {
    let v =
        node.config.get(key).ok_or_else(|| Error::invalid(path, format!("node {}: config has no {key:?}", node.id)))?;
    serde_json::from_value(v.clone())
        .map_err(|e| Error::invalid(path, format!("node {}: config {key:?}: {e}", node.id)))
}

/// [`field`] for a key that may be absent (or null).
fn optional<T: serde::de::DeserializeOwned>(path: &Path, node: &Node, key: &str) -> Result<Option<T>> {
    match node.config.get(key) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(_) => field(path, node, key).map(Some),
    }
}

impl Transformer {
    pub fn n_layers(&self) -> usize {
        self.blocks.len()
    }

    /// The graph.json of this model.
    pub fn to_graph(&self, graph_id: &str) -> GraphFile {
        let mut nodes = vec![Node {
            id: "embedding".into(),
            kind: "embedding".into(),
            inputs: vec!["input_ids".into()],
            outputs: vec!["hidden".into()],
            config: json!({"vocab_size": self.vocab_size, "embedding_dim": self.hidden_size,
                           "weight": self.token_embedding, "file": self.embedding_file}),
        }];
        if let Some(pos) = &self.position_embedding {
            nodes[0].config["position_weight"] = json!(pos);
        }
        let mut edges = Vec::new();
        let mut prev = "embedding.hidden".to_string();
        for (i, b) in self.blocks.iter().enumerate() {
            let id = format!("transformer_block_{i}");
            nodes.push(Node {
                id: id.clone(),
                kind: "transformer_block".into(),
                inputs: vec!["input".into()],
                outputs: vec!["output".into()],
                config: json!({
                    "layer": i, "hidden_size": self.hidden_size, "intermediate_size": self.intermediate_size,
                    "num_attention_heads": self.n_heads, "num_key_value_heads": self.n_kv_heads,
                    "attention_head_size": self.head_dim, "norm": self.norm, "rope": self.rope,
                    "activation": self.activation, "context_length": self.context_length, "weights": b,
                    "sliding_window": self.sliding_window,
                }),
            });
            if let Some(moe) = &self.moe {
                let config = &mut nodes.last_mut().expect("the block just pushed").config;
                config["moe"] = json!({"experts": moe.experts, "top_k": moe.top_k});
            }
            edges.push(Edge { from: prev, to: format!("{id}.input") });
            prev = format!("{id}.output");
        }
        nodes.push(Node {
            id: "final_norm".into(),
            kind: "norm".into(),
            inputs: vec!["input".into()],
            outputs: vec!["output".into()],
            config: json!({"norm": self.norm, "dim": self.hidden_size, "weight": self.output_norm, "file": self.head_file}),
        });
        if let Some(bias) = &self.output_norm_bias {
            nodes.last_mut().expect("the final norm").config["bias"] = json!(bias);
        }
        edges.push(Edge { from: prev, to: "final_norm.input".into() });
        let head_file = if self.tied_embeddings { &self.embedding_file } else { &self.head_file };
        nodes.push(Node {
            id: "lm_head".into(),
            kind: "linear".into(),
            inputs: vec!["input".into()],
            outputs: vec!["logits".into()],
            config: json!({"in_features": self.hidden_size, "out_features": self.vocab_size, "weight": self.output,
                           "file": head_file, "tied_embeddings": self.tied_embeddings}),
        });
        edges.push(Edge { from: "final_norm.output".into(), to: "lm_head.input".into() });
        let mut entry_points = BTreeMap::new();
        entry_points
            .insert("default".into(), EntryPoint { inputs: vec!["input_ids".into()], outputs: vec!["logits".into()] });
        GraphFile {
            graph_id: graph_id.into(),
            graph_type: format!("transformer/{}", self.architecture),
            nodes,
            edges,
            entry_points,
        }
    }

    /// Builds the model from graph.json (`path` is used in error messages). Blocks are taken in edge order
    /// from the embedding to the lm head, so the file's node order does not matter.
    pub fn from_graph(graph: &GraphFile, path: &Path) -> Result<Transformer> {
        let bad = |what: String| Error::invalid(path, what);
        let node = |id: &str| graph.node(id).ok_or_else(|| bad(format!("no node {id:?}")));
        let embed = node("embedding")?;
        let final_norm = node("final_norm")?;
        let head = node("lm_head")?;
        let architecture = graph.graph_type.strip_prefix("transformer/").unwrap_or("llama").to_string();

        let next: BTreeMap<&str, &str> = graph
            .edges
            .iter()
            .map(|e| (e.from.split('.').next().unwrap_or(""), e.to.split('.').next().unwrap_or("")))
            .collect();
        let mut chain = Vec::new();
        let mut at = "embedding";
        while let Some(&to) = next.get(at) {
            if to == "final_norm" {
                break;
            }
            if chain.len() > graph.nodes.len() {
                return Err(bad("edges form a cycle".into()));
            }
            let n = node(to)?;
            if n.kind != "transformer_block" {
                return Err(bad(format!(
                    "node {to}: expected a transformer_block between embedding and final_norm, found {:?}",
                    n.kind
                )));
            }
            chain.push(n);
            at = to;
        }
        if next.get(at) != Some(&"final_norm") || next.get("final_norm") != Some(&"lm_head") {
            return Err(bad("edges do not lead embedding -> blocks -> final_norm -> lm_head".into()));
        }
        let first = chain.first().ok_or_else(|| bad("no transformer blocks".into()))?;
        let mut blocks = Vec::with_capacity(chain.len());
        for n in &chain {
            for key in [
                "hidden_size",
                "intermediate_size",
                "num_attention_heads",
                "num_key_value_heads",
                "attention_head_size",
                "sliding_window",
                "moe",
            ] {
                if n.config.get(key) != first.config.get(key) {
                    return Err(bad(format!(
                        "node {}: {key} differs from block 0 (mixed block shapes are not supported)",
                        n.id
                    )));
                }
            }
            blocks.push(field::<BlockWeights>(path, n, "weights")?);
        }
        let t = Transformer {
            architecture,
            vocab_size: field(path, embed, "vocab_size")?,
            hidden_size: field(path, first, "hidden_size")?,
            intermediate_size: field(path, first, "intermediate_size")?,
            n_heads: field(path, first, "num_attention_heads")?,
            n_kv_heads: field(path, first, "num_key_value_heads")?,
            head_dim: field(path, first, "attention_head_size")?,
            context_length: field(path, first, "context_length")?,
            norm: field(path, first, "norm")?,
            rope: field(path, first, "rope")?,
            activation: field(path, first, "activation")?,
            token_embedding: field(path, embed, "weight")?,
            embedding_file: field(path, embed, "file")?,
            position_embedding: optional(path, embed, "position_weight")?,
            output_norm: field(path, final_norm, "weight")?,
            output_norm_bias: optional(path, final_norm, "bias")?,
            output: field(path, head, "weight")?,
            head_file: field(path, final_norm, "file")?,
            tied_embeddings: field(path, head, "tied_embeddings")?,
            blocks,
            sliding_window: optional(path, first, "sliding_window")?,
            moe: optional(path, first, "moe")?,
        };
        t.check().map_err(bad)?;
        Ok(t)
    }

    /// Consistency of the hyper-parameters among themselves, and each within [`limits`]: every size the
    /// runtime derives from them (weights, KV cache, rope tables) is then computable without overflow and
    /// bounded before anything is allocated; every float is finite and in its domain.
    pub fn check(&self) -> std::result::Result<(), String> {
        use limits::*;
        let bounded: [(&str, u64, u64); 8] = [
            ("vocab_size", self.vocab_size as u64, MAX_VOCAB),
            ("hidden_size", self.hidden_size as u64, MAX_DIM),
            ("intermediate_size", self.intermediate_size as u64, MAX_FFN),
            ("num_attention_heads", self.n_heads as u64, MAX_HEADS),
            ("num_key_value_heads", self.n_kv_heads as u64, MAX_HEADS),
            ("attention_head_size", self.head_dim as u64, MAX_HEAD_DIM),
            ("context_length", self.context_length as u64, MAX_CONTEXT),
            ("blocks", self.blocks.len() as u64, MAX_BLOCKS as u64),
        ];
        if let Some((k, v, max)) = bounded.iter().find(|(_, v, max)| v > max) {
            return Err(format!("{k} {v} is above the {max} omex accepts"));
        }
        if self.n_heads as u64 * self.head_dim as u64 > MAX_DIM {
            return Err(format!(
                "num_attention_heads {} x attention_head_size {} is above the {MAX_DIM} omex accepts",
                self.n_heads, self.head_dim
            ));
        }
        let eps = match self.norm {
            Norm::RmsNorm { eps } | Norm::LayerNorm { eps } => eps,
        };
        if !(eps.is_finite() && eps > 0.0 && eps < 1.0) {
            return Err(format!("norm eps {eps} must be a finite number in (0, 1)"));
        }
        let base = self.rope.base;
        if !(base.is_finite() && base > 1.0) {
            return Err(format!("rope base {base} must be a finite number above 1"));
        }
        match self.rope.scaling {
            None => {}
            Some(RopeScaling::Linear { factor }) if !limits::ROPE_FACTOR.contains(&factor) => {
                return Err(format!(
                    "rope scaling factor {factor} must be in [{}, {}]",
                    limits::ROPE_FACTOR.start(),
                    limits::ROPE_FACTOR.end()
                ));
            }
            Some(RopeScaling::Linear { .. }) => {}
            Some(RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_context_length }) => {
                let ok = [factor, low_freq_factor, high_freq_factor].iter().all(|f| limits::ROPE_FACTOR.contains(f));
                if !ok
                    || high_freq_factor <= low_freq_factor
                    || original_context_length == 0
                    || original_context_length as u64 > limits::MAX_CONTEXT
                {
                    return Err(format!(
                        "llama3 rope scaling needs factors in [{}, {}] with high_freq_factor > low_freq_factor \
                         and an original_context_length in 1..={} (got factor {factor}, low {low_freq_factor}, \
                         high {high_freq_factor}, original {original_context_length})",
                        limits::ROPE_FACTOR.start(),
                        limits::ROPE_FACTOR.end(),
                        limits::MAX_CONTEXT
                    ));
                }
            }
        }
        let nonzero = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_attention_heads", self.n_heads),
            ("num_key_value_heads", self.n_kv_heads),
            ("attention_head_size", self.head_dim),
            ("context_length", self.context_length),
        ];
        if let Some((k, _)) = nonzero.iter().find(|(_, v)| *v == 0) {
            return Err(format!("{k} is 0"));
        }
        if !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return Err(format!("{} attention heads are not a multiple of {} KV heads", self.n_heads, self.n_kv_heads));
        }
        if self.rope.dims > self.head_dim || !self.rope.dims.is_multiple_of(2) {
            return Err(format!(
                "rope dims {} must be even and at most the head dim {}",
                self.rope.dims, self.head_dim
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(format!("head dim {} is odd", self.head_dim));
        }
        self.check_mlp()?;
        if let Some(w) = &self.sliding_window {
            if w.window == 0 || w.window as u64 > MAX_CONTEXT || w.global_every == 0 {
                return Err(format!(
                    "sliding window {} every {} must be positive and at most {MAX_CONTEXT}",
                    w.window, w.global_every
                ));
            }
            if !(w.local_rope_base.is_finite() && w.local_rope_base > 1.0) {
                return Err(format!("local rope base {} must be a finite number above 1", w.local_rope_base));
            }
        }
        Ok(())
    }

    /// Every block has a dense MLP (up and down) and no experts, or, with `moe`, exactly `moe.experts` experts
    /// and no dense MLP; `top_k` is between 1 and the experts.
    fn check_mlp(&self) -> std::result::Result<(), String> {
        if let Some(m) = &self.moe {
            if m.experts == 0 || m.experts > limits::MAX_EXPERTS {
                return Err(format!("moe.experts {} must be in 1..={}", m.experts, limits::MAX_EXPERTS));
            }
            if m.top_k == 0 || m.top_k > m.experts {
                return Err(format!("moe.top_k {} must be in 1..={} (the experts)", m.top_k, m.experts));
            }
        }
        for (l, b) in self.blocks.iter().enumerate() {
            let dense = b.ffn_up.is_some() && b.ffn_down.is_some();
            match (&self.moe, &b.moe) {
                (None, None) if dense => {}
                (None, None) => return Err(format!("block {l}: weights name no ffn_up and ffn_down")),
                (None, Some(_)) => return Err(format!("block {l}: weights name experts but the block has no moe")),
                (Some(_), None) => return Err(format!("block {l}: moe blocks need weights.moe")),
                (Some(_), Some(_)) if dense || b.ffn_gate.is_some() => {
                    return Err(format!("block {l}: a block of experts names a dense MLP too"))
                }
                (Some(m), Some(w)) if w.experts.len() != m.experts as usize => {
                    return Err(format!("block {l}: {} experts named, moe.experts is {}", w.experts.len(), m.experts))
                }
                (Some(_), Some(_)) => {}
            }
        }
        Ok(())
    }

    /// Every (tensor name, expected shape) the graph reads, for validation against the index.
    pub fn expected_tensors(&self) -> Vec<(String, Vec<u32>)> {
        let (d, f, hd) = (self.hidden_size, self.intermediate_size, self.head_dim);
        let (q, kv) = (self.n_heads * hd, self.n_kv_heads * hd);
        let mut v = vec![(self.token_embedding.clone(), vec![self.vocab_size, d]), (self.output_norm.clone(), vec![d])];
        v.extend(self.position_embedding.iter().map(|p| (p.clone(), vec![self.context_length, d])));
        v.extend(self.output_norm_bias.iter().map(|b| (b.clone(), vec![d])));
        if !self.tied_embeddings {
            v.push((self.output.clone(), vec![self.vocab_size, d]));
        }
        for b in &self.blocks {
            v.push((b.attn_norm.clone(), vec![d]));
            v.push((b.attn_q.clone(), vec![q, d]));
            v.push((b.attn_k.clone(), vec![kv, d]));
            v.push((b.attn_v.clone(), vec![kv, d]));
            v.push((b.attn_output.clone(), vec![d, q]));
            v.push((b.ffn_norm.clone(), vec![d]));
            v.extend(b.ffn_gate.iter().map(|g| (g.clone(), vec![f, d])));
            v.extend(b.ffn_up.iter().map(|u| (u.clone(), vec![f, d])));
            v.extend(b.ffn_down.iter().map(|w| (w.clone(), vec![d, f])));
            if let Some(m) = &b.moe {
                v.push((m.router.clone(), vec![m.experts.len() as u32, d]));
                for [gate, up, down] in &m.experts {
                    v.extend([(gate.clone(), vec![f, d]), (up.clone(), vec![f, d]), (down.clone(), vec![d, f])]);
                }
            }
            if let Some([bq, bk, bv]) = &b.attn_qkv_bias {
                v.push((bq.clone(), vec![q]));
                v.push((bk.clone(), vec![kv]));
                v.push((bv.clone(), vec![kv]));
            }
            for name in b.attn_qk_norm.iter().flatten() {
                v.push((name.clone(), vec![hd]));
            }
            for name in b.post_norms.iter().flatten().chain(b.norm_biases.iter().flatten()) {
                v.push((name.clone(), vec![d]));
            }
            if let Some([o, up, down]) = &b.proj_biases {
                v.extend([(o.clone(), vec![d]), (up.clone(), vec![f]), (down.clone(), vec![d])]);
            }
        }
        v
    }
}
