//! A Hugging Face model directory (`config.json`, `*.safetensors` or a sharded index, `tokenizer.json`) of a
//! `LlamaForCausalLM`, `MistralForCausalLM`, `Qwen2ForCausalLM` or `GPT2LMHeadModel` as a [`SourceModel`].
//!
//! Hugging Face's llama rotates with `rotate_half` (pairs `i, i + d/2`) and its checkpoints are not permuted,
//! so the model is recorded with [`RopeStyle::Half`] and Q/K are copied as they are. GPT-2 stores its
//! projections as `Conv1D` (`[in, out]`, q, k and v in one tensor): they are taken apart and transposed into
//! omex's `[out, in]` matrices ([`Loc::Conv1d`]).

use super::safetensors::{Checkpoint, StTensor};
use super::{dims_u32, Loc, SourceModel, SourceTensor, Store, TokenizerSource};
use crate::error::{Error, Result};
use crate::graph::{Activation, BlockWeights, MoeConfig, Norm, RopeConfig, RopeScaling, RopeStyle, Transformer};
use serde_json::Value;
use std::path::Path;

const ARCHITECTURES: [(&str, &str); 5] = [
    ("LlamaForCausalLM", "llama"),
    ("MistralForCausalLM", "mistral"),
    ("Qwen2ForCausalLM", "qwen2"),
    ("GPT2LMHeadModel", "gpt2"),
    ("MixtralForCausalLM", "mixtral"),
];

/// The omex name of a Hugging Face tensor; `Ok(None)` for tensors the model does not need (rotary caches);
/// `Err` with the unknown name otherwise.
fn omex_name(hf: &str, n_layers: u32) -> std::result::Result<Option<String>, ()> {
    match hf {
        "model.embed_tokens.weight" => return Ok(Some("token_embd".into())),
        "model.norm.weight" => return Ok(Some("output_norm".into())),
        "lm_head.weight" => return Ok(Some("output".into())),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.").ok_or(())?;
    let (i, rest) = rest.split_once('.').ok_or(())?;
    let layer: u32 = i.parse::<u32>().ok().filter(|&l| l < n_layers && i == l.to_string()).ok_or(())?;
    if rest.ends_with("rotary_emb.inv_freq") {
        return Ok(None);
    }
    if let Some(moe) = rest.strip_prefix("block_sparse_moe.") {
        return expert_name(layer, moe).map(Some);
    }
    let base = match rest {
        "input_layernorm.weight" => "attn_norm",
        "self_attn.q_proj.weight" => "attn_q",
        "self_attn.k_proj.weight" => "attn_k",
        "self_attn.v_proj.weight" => "attn_v",
        "self_attn.o_proj.weight" => "attn_output",
        "post_attention_layernorm.weight" => "ffn_norm",
        "mlp.gate_proj.weight" => "ffn_gate",
        "mlp.up_proj.weight" => "ffn_up",
        "mlp.down_proj.weight" => "ffn_down",
        "self_attn.q_proj.bias" => "attn_q.bias",
        "self_attn.k_proj.bias" => "attn_k.bias",
        "self_attn.v_proj.bias" => "attn_v.bias",
        _ => return Err(()),
    };
    Ok(Some(format!("blk.{layer}.{base}")))
}

/// The omex name of a Mixtral `block_sparse_moe` tensor (`gate` is the router; experts' `w1`, `w3`, `w2` are
/// gate, up and down).
fn expert_name(layer: u32, hf: &str) -> std::result::Result<String, ()> {
    if hf == "gate.weight" {
        return Ok(format!("blk.{layer}.ffn_gate_inp"));
    }
    let (e, w) = hf.strip_prefix("experts.").and_then(|r| r.split_once('.')).ok_or(())?;
    let e: u32 = e.parse::<u32>().ok().filter(|x| e == x.to_string()).ok_or(())?;
    let base = match w {
        "w1.weight" => "ffn_gate",
        "w3.weight" => "ffn_up",
        "w2.weight" => "ffn_down",
        _ => return Err(()),
    };
    Ok(format!("blk.{layer}.{base}.{e}"))
}

/// The experts of a `MixtralForCausalLM` config: `num_local_experts` and `num_experts_per_tok`, refused unless
/// omex runs them exactly.
fn moe_config(cfg: &Config) -> Result<MoeConfig> {
    let experts = cfg.u32("num_local_experts")?;
    let top_k = cfg.u32("num_experts_per_tok")?;
    if experts == 0 || experts > crate::graph::limits::MAX_EXPERTS {
        return Err(Error::invalid(
            cfg.path,
            format!("field \"num_local_experts\" is {experts}: omex runs 1 to {}", crate::graph::limits::MAX_EXPERTS),
        ));
    }
    if top_k == 0 || top_k > experts {
        return Err(Error::invalid(
            cfg.path,
            format!("field \"num_experts_per_tok\" is {top_k}: it must be 1 to num_local_experts ({experts})"),
        ));
    }
    if cfg.opt_u32("sliding_window")?.is_some() {
        return Err(Error::Unsupported(format!(
            "{}: field \"sliding_window\" is set: omex runs mixtral with full attention only",
            cfg.path.display()
        )));
    }
    Ok(MoeConfig { experts, top_k })
}

struct Config<'a> {
    path: &'a Path,
    v: Value,
}

impl Config<'_> {
    fn opt_u32(&self, key: &str) -> Result<Option<u32>> {
        match self.v.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => {
                v.as_u64().and_then(|n| u32::try_from(n).ok()).map(Some).ok_or_else(|| self.bad(key, "a u32", v))
            }
        }
    }

    fn u32(&self, key: &str) -> Result<u32> {
        self.opt_u32(key)?.ok_or_else(|| Error::invalid(self.path, format!("field {key:?} is missing")))
    }

    fn opt_f32(&self, key: &str) -> Result<Option<f32>> {
        match self.v.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_f64().map(|f| Some(f as f32)).ok_or_else(|| self.bad(key, "a number", v)),
        }
    }

    fn bad(&self, key: &str, want: &str, v: &Value) -> Error {
        Error::invalid(self.path, format!("field {key:?}: expected {want}, found {v}"))
    }
}

/// `rope_theta`, at the top of the config or (transformers 5) in `rope_parameters`, whose `rope_type` must then
/// be "default" unless a `rope_scaling` says how to scale; `default` when neither names one.
fn rope_theta(cfg: &Config, default: f32) -> Result<f32> {
    if let Some(t) = cfg.opt_f32("rope_theta")? {
        return Ok(t);
    }
    let Some(params) = cfg.v.get("rope_parameters").filter(|v| !v.is_null()) else {
        return Ok(default);
    };
    let kind = params.get("rope_type").and_then(Value::as_str).unwrap_or("default");
    if kind != "default" && cfg.v.get("rope_scaling").is_none_or(Value::is_null) {
        return Err(Error::Unsupported(format!(
            "{}: field \"rope_parameters.rope_type\" is {kind:?}: omex reads default rope parameters (scaling \
             from rope_scaling)",
            cfg.path.display()
        )));
    }
    match params.get("rope_theta") {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v.as_f64().map(|f| f as f32).ok_or_else(|| cfg.bad("rope_parameters.rope_theta", "a number", v)),
    }
}

fn rope_scaling(cfg: &Config) -> Result<Option<RopeScaling>> {
    let Some(s) = cfg.v.get("rope_scaling").filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let kind = s.get("rope_type").or_else(|| s.get("type")).and_then(Value::as_str).unwrap_or("");
    let num = |k: &str, default: Option<f64>| {
        s.get(k)
            .and_then(Value::as_f64)
            .or(default)
            .ok_or_else(|| Error::invalid(cfg.path, format!("rope_scaling.{k} is missing")))
    };
    Ok(match kind {
        "default" => None,
        "linear" => Some(RopeScaling::Linear { factor: num("factor", None)? as f32 }),
        "llama3" => Some(RopeScaling::Llama3 {
            factor: num("factor", None)? as f32,
            low_freq_factor: num("low_freq_factor", Some(1.0))? as f32,
            high_freq_factor: num("high_freq_factor", Some(4.0))? as f32,
            original_context_length: num("original_max_position_embeddings", Some(8192.0))? as u32,
        }),
        other => {
            return Err(Error::Unsupported(format!(
                "{}: rope_scaling type {other:?} is not supported (omex has linear and llama3)",
                cfg.path.display()
            )))
        }
    })
}

pub fn open(dir: &Path) -> Result<SourceModel> {
    let cfg_path = dir.join("config.json");
    if !cfg_path.exists() {
        return Err(Error::Usage(format!("{}: no config.json: not a Hugging Face model directory", dir.display())));
    }
    let cfg = Config { path: &cfg_path, v: crate::format::reader::read_json(&cfg_path)? };
    let declared = cfg.v.get("architectures").and_then(|a| a.get(0)).and_then(Value::as_str).unwrap_or("");
    let model_type = cfg.v.get("model_type").and_then(Value::as_str).unwrap_or("");
    let arch = ARCHITECTURES
        .iter()
        .find(|(a, t)| *a == declared || (declared.is_empty() && *t == model_type))
        .map(|(_, t)| *t)
        .ok_or_else(|| {
            Error::Unsupported(format!(
                "{}: architecture {declared:?} (model_type {model_type:?}) is not supported; omex converts \
                 LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM and GPT2LMHeadModel",
                cfg_path.display()
            ))
        })?;
    if arch == "gpt2" {
        return open_gpt2(dir, &cfg);
    }
    let act = cfg.v.get("hidden_act").and_then(Value::as_str).unwrap_or("silu");
    if act != "silu" {
        return Err(Error::Unsupported(format!("{}: hidden_act {act:?} (omex runs silu)", cfg_path.display())));
    }
    let moe = if arch == "mixtral" { Some(moe_config(&cfg)?) } else { None };
    let n_layers = cfg.u32("num_hidden_layers")?;
    let hidden = cfg.u32("hidden_size")?;
    let n_heads = cfg.u32("num_attention_heads")?;
    let n_kv_heads = cfg.opt_u32("num_key_value_heads")?.unwrap_or(n_heads);
    if n_heads == 0 {
        return Err(Error::invalid(&cfg_path, "num_attention_heads is 0"));
    }
    let head_dim = cfg.opt_u32("head_dim")?.unwrap_or(hidden / n_heads);
    let mut warnings = Vec::new();
    if cfg.v.get("use_sliding_window").and_then(Value::as_bool).unwrap_or(arch == "mistral")
        && cfg
            .opt_u32("sliding_window")?
            .is_some_and(|w| w < cfg.opt_u32("max_position_embeddings").ok().flatten().unwrap_or(0))
    {
        warnings.push("sliding-window attention is not implemented: attention is full (exact up to the window)".into());
    }
    let ckpt = Checkpoint::open_dir(dir)?;
    if ckpt.names().iter().any(|n| n.ends_with("o_proj.bias") || (n.contains(".mlp.") && n.ends_with(".bias"))) {
        return Err(Error::Unsupported(format!(
            "{}: output-projection or MLP biases are not supported",
            dir.display()
        )));
    }
    let mut tensors = Vec::new();
    let tie = cfg.v.get("tie_word_embeddings").and_then(Value::as_bool).unwrap_or(false);
    for name in ckpt.names() {
        let (file, st) = ckpt.get(name).expect("listed name");
        let omex = omex_name(name, n_layers).map_err(|()| {
            Error::Unsupported(format!(
                "{}: tensor {name:?} is not part of a {arch} model; omex cannot place it",
                file.path.display()
            ))
        })?;
        let Some(omex) = omex else { continue };
        if omex == "output" && tie {
            continue;
        }
        let (ty, shape) = type_and_shape(&file.path, name, st)?;
        tensors.push(SourceTensor {
            name: omex,
            shape,
            ty,
            loc: Loc::Safetensors(name.to_string()),
            source_name: name.to_string(),
        });
    }
    let tied = !tensors.iter().any(|t| t.name == "output");
    let with_bias = tensors.iter().any(|t| t.name == "blk.0.attn_q.bias");
    let eps = cfg.opt_f32("rms_norm_eps")?.unwrap_or(1e-6);
    let transformer = Transformer {
        architecture: arch.to_string(),
        vocab_size: cfg.u32("vocab_size")?,
        hidden_size: hidden,
        intermediate_size: cfg.u32("intermediate_size")?,
        n_heads,
        n_kv_heads,
        head_dim,
        context_length: cfg.opt_u32("max_position_embeddings")?.unwrap_or(2048),
        norm: Norm::RmsNorm { eps },
        rope: RopeConfig {
            base: rope_theta(&cfg, if arch == "mixtral" { 1e6 } else { 10000.0 })?,
            style: RopeStyle::Half,
            dims: head_dim,
            scaling: rope_scaling(&cfg)?,
        },
        activation: Activation::Silu,
        token_embedding: "token_embd".into(),
        embedding_file: "embedding.bin".into(),
        position_embedding: None,
        output_norm: "output_norm".into(),
        output_norm_bias: None,
        output: if tied { "token_embd".into() } else { "output".into() },
        head_file: "head.bin".into(),
        tied_embeddings: tied,
        blocks: (0..n_layers as usize)
            .map(|i| match moe {
                Some(m) => BlockWeights::mixtral(i, m.experts),
                None => BlockWeights::standard(i, with_bias),
            })
            .collect(),
        sliding_window: None,
        moe,
    };
    transformer.check().map_err(|e| Error::invalid(&cfg_path, e))?;
    Ok(source_model(dir, &cfg, ckpt, transformer, tensors, warnings))
}

/// A checkpoint tensor's type (F32, F16 or BF16) and its shape in u32s, or an error naming the file and tensor.
fn type_and_shape(path: &Path, name: &str, st: &StTensor) -> Result<(crate::quant::GgmlType, Vec<u32>)> {
    let ty = st.ggml_type().ok_or_else(|| {
        Error::Unsupported(format!(
            "{}: tensor {name:?} has dtype {} (omex converts F32, F16 and BF16)",
            path.display(),
            st.dtype
        ))
    })?;
    Ok((ty, dims_u32(path, name, &st.shape)?))
}

fn source_model(
    dir: &Path,
    cfg: &Config,
    ckpt: Checkpoint,
    transformer: Transformer,
    tensors: Vec<SourceTensor>,
    warnings: Vec<String>,
) -> SourceModel {
    let name = cfg.v.get("_name_or_path").and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_string);
    let name = name.unwrap_or_else(|| {
        let abs = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
        abs.file_name().map(|s| s.to_string_lossy().to_string()).unwrap_or_else(|| "model".into())
    });
    SourceModel {
        path: dir.to_path_buf(),
        store: Store::Safetensors(ckpt),
        transformer,
        tensors,
        tokenizer: TokenizerSource::HfDir(dir.to_path_buf()),
        name,
        license: None,
        version: None,
        format: "safetensors".into(),
        warnings,
    }
}

/// Where a GPT-2 tensor goes: whole under one omex name, or split by outputs (`c_attn`: q, k, v).
enum Gpt2Place {
    Whole(String),
    /// A `Conv1D` weight or bias: its outputs in `parts` equal slices, the i-th named `names[i]`.
    Conv1d(Vec<String>),
    Skip,
}

/// The omex place of a GPT-2 tensor (`transformer.` prefix optional); `Err` for a name GPT-2 does not have.
fn gpt2_place(hf: &str, n_layers: u32) -> std::result::Result<Gpt2Place, ()> {
    let hf = hf.strip_prefix("transformer.").unwrap_or(hf);
    let whole = |s: &str| Ok(Gpt2Place::Whole(s.to_string()));
    match hf {
        "wte.weight" => return whole("token_embd"),
        "wpe.weight" => return whole("position_embd"),
        "ln_f.weight" => return whole("output_norm"),
        "ln_f.bias" => return whole("output_norm.bias"),
        "lm_head.weight" => return whole("output"),
        _ => {}
    }
    let rest = hf.strip_prefix("h.").ok_or(())?;
    let (i, rest) = rest.split_once('.').ok_or(())?;
    let layer: u32 = i.parse::<u32>().ok().filter(|&l| l < n_layers && i == l.to_string()).ok_or(())?;
    let n = |s: &str| format!("blk.{layer}.{s}");
    let conv = |names: &[&str]| Ok(Gpt2Place::Conv1d(names.iter().map(|s| n(s)).collect()));
    match rest {
        "ln_1.weight" => whole(&n("attn_norm")),
        "ln_1.bias" => whole(&n("attn_norm.bias")),
        "ln_2.weight" => whole(&n("ffn_norm")),
        "ln_2.bias" => whole(&n("ffn_norm.bias")),
        "attn.c_attn.weight" => conv(&["attn_q", "attn_k", "attn_v"]),
        "attn.c_attn.bias" => conv(&["attn_q.bias", "attn_k.bias", "attn_v.bias"]),
        "attn.c_proj.weight" => conv(&["attn_output"]),
        "attn.c_proj.bias" => whole(&n("attn_output.bias")),
        "mlp.c_fc.weight" => conv(&["ffn_up"]),
        "mlp.c_fc.bias" => whole(&n("ffn_up.bias")),
        "mlp.c_proj.weight" => conv(&["ffn_down"]),
        "mlp.c_proj.bias" => whole(&n("ffn_down.bias")),
        // The causal mask buffers of older checkpoints.
        "attn.bias" | "attn.masked_bias" => Ok(Gpt2Place::Skip),
        _ => Err(()),
    }
}

/// A `GPT2LMHeadModel` directory.
fn open_gpt2(dir: &Path, cfg: &Config) -> Result<SourceModel> {
    let unsupported = |what: String| Error::Unsupported(format!("{}: {what}", cfg.path.display()));
    let act = cfg.v.get("activation_function").and_then(Value::as_str).unwrap_or("gelu_new");
    if !matches!(act, "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast") {
        return Err(unsupported(format!("activation_function {act:?} (omex runs GELU's tanh form: gelu_new)")));
    }
    for (key, default, want) in [
        ("scale_attn_weights", true, true),
        ("scale_attn_by_inverse_layer_idx", false, false),
        ("add_cross_attention", false, false),
    ] {
        if cfg.v.get(key).and_then(Value::as_bool).unwrap_or(default) != want {
            return Err(unsupported(format!("{key} = {} is not supported", !want)));
        }
    }
    let n_layers = cfg.u32("n_layer")?;
    let hidden = cfg.u32("n_embd")?;
    let n_heads = cfg.u32("n_head")?;
    if n_heads == 0 || hidden % n_heads != 0 {
        return Err(Error::invalid(cfg.path, format!("n_embd {hidden} is not a multiple of n_head {n_heads}")));
    }
    let ffn = match cfg.opt_u32("n_inner")? {
        Some(f) => f,
        None => hidden.checked_mul(4).ok_or_else(|| Error::invalid(cfg.path, "n_embd is too large"))?,
    };
    let eps = cfg.opt_f32("layer_norm_epsilon")?.unwrap_or(1e-5);
    let ckpt = Checkpoint::open_dir(dir)?;
    let tie = cfg.v.get("tie_word_embeddings").and_then(Value::as_bool).unwrap_or(true);
    let mut tensors = Vec::new();
    for name in ckpt.names() {
        let (file, st) = ckpt.get(name).expect("listed name");
        let place = gpt2_place(name, n_layers).map_err(|()| {
            Error::Unsupported(format!("{}: tensor {name:?} is not part of a GPT-2 model", file.path.display()))
        })?;
        let (ty, shape) = type_and_shape(&file.path, name, st)?;
        let source = |omex: String, shape: Vec<u32>, loc: Loc| SourceTensor {
            name: omex,
            shape,
            ty,
            loc,
            source_name: name.to_string(),
        };
        match place {
            Gpt2Place::Skip => {}
            Gpt2Place::Whole(omex) if omex == "output" && tie => {}
            Gpt2Place::Whole(omex) => tensors.push(source(omex, shape, Loc::Safetensors(name.to_string()))),
            Gpt2Place::Conv1d(names) => {
                // [in, out] (or [out]): each part a slice of the outputs, stored [len, in] (or [len]).
                let (inputs, out) = match shape[..] {
                    [out] => (None, out),
                    [inputs, out] => (Some(inputs), out),
                    _ => return Err(Error::invalid(&file.path, format!("tensor {name:?}: shape {shape:?}"))),
                };
                let parts = names.len() as u32;
                if out % parts != 0 {
                    return Err(Error::invalid(&file.path, format!("tensor {name:?}: {out} outputs in {parts} parts")));
                }
                let len = out / parts;
                for (i, omex) in (0..).zip(names) {
                    let shape = inputs.map_or(vec![len], |inputs| vec![len, inputs]);
                    let loc = Loc::Conv1d { name: name.to_string(), outputs: i * len..(i + 1) * len };
                    tensors.push(source(omex, shape, loc));
                }
            }
        }
    }
    let tied = !tensors.iter().any(|t| t.name == "output");
    let transformer = Transformer {
        architecture: "gpt2".into(),
        vocab_size: cfg.u32("vocab_size")?,
        hidden_size: hidden,
        intermediate_size: ffn,
        n_heads,
        n_kv_heads: n_heads,
        head_dim: hidden / n_heads,
        context_length: cfg.opt_u32("n_positions")?.unwrap_or(1024),
        norm: Norm::LayerNorm { eps },
        // No rotation: the positions are learned (position_embd).
        rope: RopeConfig { base: 10000.0, style: RopeStyle::Half, dims: 0, scaling: None },
        activation: Activation::Gelu,
        token_embedding: "token_embd".into(),
        embedding_file: "embedding.bin".into(),
        position_embedding: Some("position_embd".into()),
        output_norm: "output_norm".into(),
        output_norm_bias: Some("output_norm.bias".into()),
        output: if tied { "token_embd".into() } else { "output".into() },
        head_file: "head.bin".into(),
        tied_embeddings: tied,
        blocks: (0..n_layers as usize).map(BlockWeights::gpt2).collect(),
        sliding_window: None,
        moe: None,
    };
    transformer.check().map_err(|e| Error::invalid(cfg.path, e))?;
    Ok(source_model(dir, cfg, ckpt, transformer, tensors, Vec::new()))
}

#[cfg(test)]
mod tests {
    use super::{gpt2_place, omex_name, Gpt2Place};

    #[test]
    fn names() {
        assert_eq!(omex_name("model.layers.2.self_attn.o_proj.weight", 4), Ok(Some("blk.2.attn_output".into())));
        assert_eq!(omex_name("model.layers.2.self_attn.k_proj.bias", 4), Ok(Some("blk.2.attn_k.bias".into())));
        assert_eq!(omex_name("model.layers.0.self_attn.rotary_emb.inv_freq", 4), Ok(None));
        assert_eq!(omex_name("model.layers.4.mlp.up_proj.weight", 4), Err(()));
        assert_eq!(omex_name("model.vision.weight", 4), Err(()));
        assert_eq!(omex_name("lm_head.weight", 4), Ok(Some("output".into())));
    }

    #[test]
    fn gpt2_places() {
        let names = |p| match p {
            Ok(Gpt2Place::Whole(n)) => vec![n],
            Ok(Gpt2Place::Conv1d(v)) => v,
            Ok(Gpt2Place::Skip) => vec!["skip".into()],
            Err(()) => vec!["unknown".into()],
        };
        assert_eq!(names(gpt2_place("transformer.wpe.weight", 2)), ["position_embd"]);
        assert_eq!(names(gpt2_place("wte.weight", 2)), ["token_embd"]);
        assert_eq!(
            names(gpt2_place("transformer.h.1.attn.c_attn.bias", 2)),
            ["blk.1.attn_q.bias", "blk.1.attn_k.bias", "blk.1.attn_v.bias"]
        );
        assert_eq!(names(gpt2_place("transformer.h.0.mlp.c_proj.weight", 2)), ["blk.0.ffn_down"]);
        assert_eq!(names(gpt2_place("transformer.h.0.attn.masked_bias", 2)), ["skip"]);
        assert_eq!(names(gpt2_place("transformer.h.2.ln_1.weight", 2)), ["unknown"]);
        assert_eq!(names(gpt2_place("transformer.h.01.ln_1.weight", 2)), ["unknown"]);
    }
}
