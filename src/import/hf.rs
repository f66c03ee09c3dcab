//! A Hugging Face model directory (`config.json`, `*.safetensors` or a sharded index, `tokenizer.json`) of a
//! `LlamaForCausalLM`, `MistralForCausalLM` or `Qwen2ForCausalLM` as a [`SourceModel`].
//!
//! Hugging Face's llama rotates with `rotate_half` (pairs `i, i + d/2`) and its checkpoints are not permuted,
//! so the model is recorded with [`RopeStyle::Half`] and Q/K are copied as they are.

use super::safetensors::Checkpoint;
use super::{dims_u32, Loc, SourceModel, SourceTensor, Store, TokenizerSource};
use crate::error::{Error, Result};
use crate::graph::{Activation, BlockWeights, Norm, RopeConfig, RopeScaling, RopeStyle, Transformer};
use serde_json::Value;
use std::path::Path;

const ARCHITECTURES: [(&str, &str); 3] =
    [("LlamaForCausalLM", "llama"), ("MistralForCausalLM", "mistral"), ("Qwen2ForCausalLM", "qwen2")];

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
                 LlamaForCausalLM, MistralForCausalLM and Qwen2ForCausalLM",
                cfg_path.display()
            ))
        })?;
    let act = cfg.v.get("hidden_act").and_then(Value::as_str).unwrap_or("silu");
    if act != "silu" {
        return Err(Error::Unsupported(format!("{}: hidden_act {act:?} (omex runs silu)", cfg_path.display())));
    }
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
        let ty = st.ggml_type().ok_or_else(|| {
            Error::Unsupported(format!(
                "{}: tensor {name:?} has dtype {} (omex converts F32, F16 and BF16)",
                file.path.display(),
                st.dtype
            ))
        })?;
        let shape = dims_u32(&file.path, name, &st.shape)?;
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
            base: cfg.opt_f32("rope_theta")?.unwrap_or(10000.0),
            style: RopeStyle::Half,
            dims: head_dim,
            scaling: rope_scaling(&cfg)?,
        },
        activation: Activation::Silu,
        token_embedding: "token_embd".into(),
        embedding_file: "embedding.bin".into(),
        output_norm: "output_norm".into(),
        output: if tied { "token_embd".into() } else { "output".into() },
        head_file: "head.bin".into(),
        tied_embeddings: tied,
        blocks: (0..n_layers as usize).map(|i| BlockWeights::standard(i, with_bias)).collect(),
        sliding_window: None,
    };
    transformer.check().map_err(|e| Error::invalid(&cfg_path, e))?;
    let name = cfg.v.get("_name_or_path").and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_string);
    let name = name.unwrap_or_else(|| {
        let abs = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
        abs.file_name().map(|s| s.to_string_lossy().to_string()).unwrap_or_else(|| "model".into())
    });
    Ok(SourceModel {
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
    })
}

#[cfg(test)]
mod tests {
    use super::omex_name;

    #[test]
    fn names() {
        assert_eq!(omex_name("model.layers.2.self_attn.o_proj.weight", 4), Ok(Some("blk.2.attn_output".into())));
        assert_eq!(omex_name("model.layers.2.self_attn.k_proj.bias", 4), Ok(Some("blk.2.attn_k.bias".into())));
        assert_eq!(omex_name("model.layers.0.self_attn.rotary_emb.inv_freq", 4), Ok(None));
        assert_eq!(omex_name("model.layers.4.mlp.up_proj.weight", 4), Err(()));
        assert_eq!(omex_name("model.vision.weight", 4), Err(()));
        assert_eq!(omex_name("lm_head.weight", 4), Ok(Some("output".into())));
    }
}
