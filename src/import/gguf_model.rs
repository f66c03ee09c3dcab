//! A GGUF llama (also Mistral, which llama.cpp writes as llama), qwen2 or gemma3 file as a [`SourceModel`]: the
//! hyper-parameters from the `{arch}.*` keys, the tokenizer from `tokenizer.ggml.*`, the tensors renamed to
//! omex's names (GGUF's without the `.weight` suffix) and their ggml dims reversed to `[rows, cols]`.
//!
//! A llama GGUF with `llama.expert_count` is a Mixtral (a sparse mixture of experts): its router
//! `blk.N.ffn_gate_inp` and its experts stacked three to a block (`blk.N.ffn_{gate,up,down}_exps`, ggml dims
//! `[cols, rows, experts]`), each expert's matrix a contiguous slab of the stack that becomes a tensor of its
//! own, `blk.N.ffn_gate.E` and so on, byte for byte.
//!
//! RoPE: llama.cpp's converter permutes llama's Q and K rows so that the rotated pairs are adjacent, so a
//! GGUF llama uses [`RopeStyle::Interleaved`]; qwen2 and gemma3 are not permuted and use [`RopeStyle::Half`].

use super::gguf::{GgufFile, Value};
use super::{dims_u32, Loc, SourceModel, SourceTensor, Store, TokenizerSource};
use crate::error::{Error, Result};
use crate::graph::limits;
use crate::graph::{
    Activation, BlockWeights, MoeConfig, Norm, RopeConfig, RopeScaling, RopeStyle, SlidingWindow, Transformer,
};
use crate::quant::{dequant, GgmlType};
use crate::tokenizer::GgufVocab;
use std::path::Path;

/// The per-block tensor names GGUF llama/qwen2 use (with `.weight`, or `.bias` for the qwen2 biases).
const BLOCK_TENSORS: [&str; 9] =
    ["attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down"];

/// The per-block tensors gemma3 has besides those.
const GEMMA3_TENSORS: [&str; 4] = ["attn_q_norm", "attn_k_norm", "post_attention_norm", "post_ffw_norm"];

/// Gemma 3's local attention, which its GGUF does not spell out: llama.cpp's loader fixes five local blocks
/// per global one and a local rope base of 10,000 (as the Hugging Face config does).
const GEMMA3_GLOBAL_EVERY: u32 = 6;
const GEMMA3_LOCAL_ROPE_BASE: f32 = 10_000.0;

/// The block of a `blk.N.rest` tensor name (N below `n_layers`, written without leading zeros) and `rest`.
fn block_tensor(gguf: &str, n_layers: u32) -> Option<(u32, &str)> {
    let rest = gguf.strip_prefix("blk.")?;
    let (i, rest) = rest.split_once('.')?;
    let layer: u32 = i.parse::<u32>().ok().filter(|&l| l < n_layers && i == l.to_string())?;
    Some((layer, rest))
}

/// The block and omex part name (`ffn_gate`, `ffn_up`, `ffn_down`) of a stack of experts' matrices,
/// `blk.N.ffn_{gate,up,down}_exps.weight`.
fn expert_stack(gguf: &str, n_layers: u32) -> Option<(u32, &'static str)> {
    let (layer, rest) = block_tensor(gguf, n_layers)?;
    let part = match rest {
        "ffn_gate_exps.weight" => "ffn_gate",
        "ffn_up_exps.weight" => "ffn_up",
        "ffn_down_exps.weight" => "ffn_down",
        _ => return None,
    };
    Some((layer, part))
}

/// The omex name of a GGUF tensor, or `None` if a model of `arch` has no such tensor.
fn omex_name(gguf: &str, arch: &str, n_layers: u32, moe: bool) -> Option<String> {
    match gguf {
        "token_embd.weight" => return Some("token_embd".into()),
        "output_norm.weight" => return Some("output_norm".into()),
        "output.weight" => return Some("output".into()),
        _ => {}
    }
    let (layer, rest) = block_tensor(gguf, n_layers)?;
    if let Some(base) = rest.strip_suffix(".weight") {
        let dense_mlp = ["ffn_gate", "ffn_up", "ffn_down"].contains(&base);
        let known = (BLOCK_TENSORS.contains(&base) && !(moe && dense_mlp))
            || (arch == "gemma3" && GEMMA3_TENSORS.contains(&base))
            || (moe && base == "ffn_gate_inp");
        return known.then(|| format!("blk.{layer}.{base}"));
    }
    let base = rest.strip_suffix(".bias")?;
    ["attn_q", "attn_k", "attn_v"].contains(&base).then(|| format!("blk.{layer}.{base}.bias"))
}

pub fn open(path: &Path) -> Result<SourceModel> {
    let file = GgufFile::open(path)?;
    let arch = file.req_str("general.architecture")?.to_string();
    let style = match arch.as_str() {
        "llama" => RopeStyle::Interleaved,
        "qwen2" | "gemma3" => RopeStyle::Half,
        other => {
            return Err(Error::Unsupported(format!(
                "{}: GGUF architecture {other:?} is not supported (omex converts llama, mistral, qwen2 and gemma3)",
                path.display()
            )))
        }
    };
    let key = |k: &str| format!("{arch}.{k}");
    let bad = |what: String| Error::parse(path, what);
    let n_layers = file.req_u32(&key("block_count"))?;
    // Bounded before the per-block names are built: every block needs its own tensors in the file.
    let max_layers = (file.header.tensors.len() / BLOCK_TENSORS.len()).min(limits::MAX_BLOCKS);
    if n_layers as usize > max_layers {
        return Err(bad(format!(
            "{} {n_layers} is more than the file's {} tensors can hold (at most {max_layers} blocks)",
            key("block_count"),
            file.header.tensors.len()
        )));
    }
    let hidden = file.req_u32(&key("embedding_length"))?;
    let ffn = file.req_u32(&key("feed_forward_length"))?;
    let n_heads = file.req_u32(&key("attention.head_count"))?;
    let n_kv_heads = file.opt_u32(&key("attention.head_count_kv"))?.unwrap_or(n_heads);
    if n_heads == 0 || (hidden % n_heads != 0 && file.get(&key("attention.key_length")).is_none()) {
        return Err(bad(format!(
            "{} {hidden} is not a multiple of {} {n_heads}",
            key("embedding_length"),
            key("attention.head_count")
        )));
    }
    let head_dim = file.opt_u32(&key("attention.key_length"))?.unwrap_or(hidden / n_heads);
    let eps = file.req_f32(&key("attention.layer_norm_rms_epsilon"))?;
    let context_length = file.opt_u32(&key("context_length"))?.unwrap_or(2048);
    let base = file.opt_f32(&key("rope.freq_base"))?.unwrap_or(10000.0);
    let dims = file.opt_u32(&key("rope.dimension_count"))?.unwrap_or(head_dim);
    let mut rope = RopeConfig { base, style, dims, scaling: rope_scaling(&file, &arch)? };
    let moe = match file.opt_u32(&key("expert_count"))? {
        None | Some(0) => None,
        Some(experts) => Some(moe_config(&file, &arch, experts).map_err(bad)?),
    };

    let mut warnings = Vec::new();
    let mut tensors = Vec::new();
    let mut rope_freqs = None;
    for (i, t) in file.header.tensors.iter().enumerate() {
        if t.name == "rope_freqs.weight" {
            rope_freqs = Some(i);
            continue;
        }
        if let (Some(m), Some((layer, part))) = (&moe, expert_stack(&t.name, n_layers)) {
            let shape = dims_u32(path, &t.name, &t.shape())?;
            if shape.len() != 3 || shape[0] != m.experts || file.data(t).len() % m.experts as usize != 0 {
                return Err(bad(format!(
                    "tensor {:?} of shape {shape:?} does not stack {} experts' matrices",
                    t.name, m.experts
                )));
            }
            for expert in 0..m.experts {
                tensors.push(SourceTensor {
                    name: format!("blk.{layer}.{part}.{expert}"),
                    shape: shape[1..].to_vec(),
                    ty: t.ty,
                    loc: Loc::GgufExpert { tensor: i, expert, experts: m.experts },
                    source_name: format!("{}[{expert}]", t.name),
                });
            }
            continue;
        }
        let name = omex_name(&t.name, &arch, n_layers, moe.is_some()).ok_or_else(|| {
            Error::Unsupported(format!(
                "{}: tensor {:?} is not part of a {arch} model; omex cannot place it",
                path.display(),
                t.name
            ))
        })?;
        let shape = dims_u32(path, &t.name, &t.shape())?;
        tensors.push(SourceTensor { name, shape, ty: t.ty, loc: Loc::Gguf(i), source_name: t.name.clone() });
    }
    if let Some(i) = rope_freqs {
        rope.scaling = Some(llama3_from_rope_freqs(&file, i, &rope, context_length)?);
    }
    let embd =
        tensors.iter().find(|t| t.name == "token_embd").ok_or_else(|| bad("no token_embd.weight tensor".into()))?;
    let vocab_size = embd.shape[0];
    let tied = !tensors.iter().any(|t| t.name == "output");
    let with_bias = tensors.iter().any(|t| t.name == "blk.0.attn_q.bias");
    let gemma3 = arch == "gemma3";
    let sliding_window = match (gemma3, file.opt_u32(&key("attention.sliding_window"))?) {
        (true, Some(window)) => {
            Some(SlidingWindow { window, global_every: GEMMA3_GLOBAL_EVERY, local_rope_base: GEMMA3_LOCAL_ROPE_BASE })
        }
        _ => None,
    };
    let transformer = Transformer {
        architecture: if moe.is_some() { "mixtral".into() } else { arch.clone() },
        vocab_size,
        hidden_size: hidden,
        intermediate_size: ffn,
        n_heads,
        n_kv_heads,
        head_dim,
        context_length,
        norm: Norm::RmsNorm { eps },
        rope,
        activation: if gemma3 { Activation::Gelu } else { Activation::Silu },
        token_embedding: "token_embd".into(),
        embedding_file: "embedding.bin".into(),
        position_embedding: None,
        output_norm: "output_norm".into(),
        output_norm_bias: None,
        output: if tied { "token_embd".into() } else { "output".into() },
        head_file: "head.bin".into(),
        tied_embeddings: tied,
        blocks: (0..n_layers as usize)
            .map(|i| match (gemma3, &moe) {
                (true, _) => BlockWeights::gemma3(i),
                (false, Some(m)) => BlockWeights::mixtral(i, m.experts),
                (false, None) => BlockWeights::standard(i, with_bias),
            })
            .collect(),
        sliding_window,
        moe,
    };
    transformer.check().map_err(bad)?;

    let vocab = read_vocab(&file)?;
    if vocab.tokens.len() != vocab_size as usize {
        warnings.push(format!(
            "the tokenizer has {} tokens, the embedding {vocab_size} rows{}",
            vocab.tokens.len(),
            if vocab.tokens.len() > vocab_size as usize { ": ids past the embedding cannot be run" } else { "" }
        ));
    }
    let name = file.opt_str("general.name")?.map(str::to_string);
    let name = name
        .unwrap_or_else(|| path.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_else(|| "model".into()));
    Ok(SourceModel {
        path: path.to_path_buf(),
        license: file.opt_str("general.license")?.map(str::to_string),
        version: file.opt_str("general.version")?.map(str::to_string),
        format: format!("GGUF v{}", file.header.version),
        store: Store::Gguf(file),
        transformer,
        tensors,
        tokenizer: TokenizerSource::Gguf(Box::new(vocab)),
        name,
        warnings,
    })
}

/// The experts of a GGUF with `{arch}.expert_count` = `experts` (a llama: Mixtral) and `expert_used_count`,
/// refused unless omex runs them exactly.
fn moe_config(file: &GgufFile, arch: &str, experts: u32) -> std::result::Result<MoeConfig, String> {
    if arch != "llama" {
        return Err(format!(
            "{arch}.expert_count is {experts}: omex runs a mixture of experts of llama GGUFs (Mixtral) only"
        ));
    }
    if experts > limits::MAX_EXPERTS {
        return Err(format!("llama.expert_count {experts}: omex runs 1 to {} experts", limits::MAX_EXPERTS));
    }
    let top_k = file.req_u32("llama.expert_used_count").map_err(|e| e.to_string())?;
    if top_k == 0 || top_k > experts {
        return Err(format!("llama.expert_used_count {top_k}: it must be 1 to llama.expert_count ({experts})"));
    }
    Ok(MoeConfig { experts, top_k })
}

/// `{arch}.rope.scaling.*` (and the older `rope.scale_linear`).
fn rope_scaling(file: &GgufFile, arch: &str) -> Result<Option<RopeScaling>> {
    let key = |k: &str| format!("{arch}.rope.{k}");
    let factor = file.opt_f32(&key("scaling.factor"))?;
    match file.opt_str(&key("scaling.type"))? {
        None | Some("none") => {}
        Some("linear") => {
            let factor = factor.ok_or_else(|| {
                Error::parse(
                    &file.path,
                    format!("{} is linear but {} is missing", key("scaling.type"), key("scaling.factor")),
                )
            })?;
            return Ok((factor != 1.0).then_some(RopeScaling::Linear { factor }));
        }
        Some(other) => {
            return Err(Error::Unsupported(format!(
                "{}: rope scaling {other:?} is not supported (omex has linear and llama3)",
                file.path.display()
            )))
        }
    }
    Ok(file.opt_f32(&key("scale_linear"))?.filter(|&f| f != 1.0).map(|factor| RopeScaling::Linear { factor }))
}

/// llama.cpp writes Llama 3.1's rope scaling as a `rope_freqs` tensor of per-pair divisors instead of keys.
/// omex describes it by its parameters: take the factor from the tensor, the usual low/high frequency
/// factors, and check that they reproduce every divisor.
fn llama3_from_rope_freqs(file: &GgufFile, i: usize, rope: &RopeConfig, ctx: u32) -> Result<RopeScaling> {
    let t = &file.header.tensors[i];
    let unsupported =
        |why: String| Error::Unsupported(format!("{}: tensor rope_freqs.weight: {why}", file.path.display()));
    if t.dims != [rope.dims as u64 / 2] || !dequant::supported(t.ty) {
        return Err(unsupported(format!(
            "expected {} {} values, found {:?} {}",
            rope.dims / 2,
            GgmlType::F32,
            t.dims,
            t.ty
        )));
    }
    let mut div = vec![0f32; t.numel() as usize];
    dequant::dequantize(t.ty, file.data(t), &mut div)
        .map_err(|e| Error::parse(&file.path, format!("rope_freqs.weight: {e}")))?;
    let factor = div.iter().cloned().fold(1f32, f32::max);
    let orig = file
        .opt_u32(&format!("{}.rope.scaling.original_context_length", file.req_str("general.architecture")?))?
        .unwrap_or(8192);
    let plain = RopeConfig { scaling: None, ..*rope }.inv_freq();
    for orig in [orig, 8192, ctx] {
        let scaling =
            RopeScaling::Llama3 { factor, low_freq_factor: 1.0, high_freq_factor: 4.0, original_context_length: orig };
        let ours = RopeConfig { scaling: Some(scaling), ..*rope }.inv_freq();
        let ok = plain.iter().zip(&ours).zip(&div).all(|((p, o), d)| ((p / d) - o).abs() <= 1e-4 * o.abs().max(1e-30));
        if ok {
            return Ok(scaling);
        }
    }
    Err(unsupported(
        "its frequency divisors do not match llama3 scaling with low/high frequency factors 1 and 4".into(),
    ))
}

fn read_vocab(file: &GgufFile) -> Result<GgufVocab> {
    let tokens = file.opt_array("tokenizer.ggml.tokens", "a string", |v| v.as_str().map(str::to_string))?;
    let tokens = tokens.ok_or_else(|| {
        Error::Tokenizer(format!("{}: no tokenizer: the GGUF has no tokenizer.ggml.tokens", file.path.display()))
    })?;
    let id = |k: &str| file.opt_u32(k);
    Ok(GgufVocab {
        model: file.opt_str("tokenizer.ggml.model")?.unwrap_or("llama").to_string(),
        pre: file.opt_str("tokenizer.ggml.pre")?.map(str::to_string),
        tokens,
        token_types: file
            .opt_array("tokenizer.ggml.token_type", "an i32", |v| v.as_i64().and_then(|n| i32::try_from(n).ok()))?
            .unwrap_or_default(),
        scores: file
            .opt_array("tokenizer.ggml.scores", "a number", |v| v.as_f64().map(|f| f as f32))?
            .unwrap_or_default(),
        merges: file
            .opt_array("tokenizer.ggml.merges", "a string", |v: &Value| v.as_str().map(str::to_string))?
            .unwrap_or_default(),
        bos_id: id("tokenizer.ggml.bos_token_id")?,
        eos_id: id("tokenizer.ggml.eos_token_id")?,
        unk_id: id("tokenizer.ggml.unknown_token_id")?,
        pad_id: id("tokenizer.ggml.padding_token_id")?,
        add_bos: file.opt_bool("tokenizer.ggml.add_bos_token")?,
        add_eos: file.opt_bool("tokenizer.ggml.add_eos_token")?,
        add_space_prefix: file.opt_bool("tokenizer.ggml.add_space_prefix")?,
        chat_template: file.opt_str("tokenizer.chat_template")?.map(str::to_string),
    })
}

#[cfg(test)]
mod tests {
    use super::{expert_stack, omex_name};

    #[test]
    fn names() {
        assert_eq!(omex_name("blk.3.attn_q.weight", "llama", 30, false).as_deref(), Some("blk.3.attn_q"));
        assert_eq!(omex_name("blk.3.attn_k.bias", "llama", 30, false).as_deref(), Some("blk.3.attn_k.bias"));
        assert_eq!(omex_name("blk.30.attn_q.weight", "llama", 30, false), None);
        assert_eq!(omex_name("blk.03.attn_q.weight", "llama", 30, false), None);
        assert_eq!(omex_name("blk.1.attn_norm.bias", "llama", 30, false), None);
        assert_eq!(omex_name("token_embd.weight", "llama", 30, false).as_deref(), Some("token_embd"));
        assert_eq!(omex_name("pos_embd.weight", "llama", 30, false), None);
        // A mixture of experts has a router and no dense MLP; its stacks are taken apart, not renamed.
        assert_eq!(omex_name("blk.2.ffn_gate_inp.weight", "llama", 30, true).as_deref(), Some("blk.2.ffn_gate_inp"));
        assert_eq!(omex_name("blk.2.ffn_gate_inp.weight", "llama", 30, false), None);
        assert_eq!(omex_name("blk.2.ffn_up.weight", "llama", 30, true), None);
        assert_eq!(expert_stack("blk.2.ffn_down_exps.weight", 30), Some((2, "ffn_down")));
        assert_eq!(expert_stack("blk.30.ffn_down_exps.weight", 30), None);
        assert_eq!(expert_stack("blk.2.ffn_down.weight", 30), None);
    }
}
