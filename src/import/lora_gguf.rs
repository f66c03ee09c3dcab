//! A llama.cpp LoRA GGUF (`convert_lora_to_gguf.py`'s output, what `llama-cli --lora` loads) as an omex adapter.
//!
//! Such a file says `general.type = "adapter"`, `adapter.type = "lora"`, the base's `general.architecture` and
//! `adapter.lora.alpha`, and holds per adapted base tensor `NAME.lora_a` (ggml ne `[cols, rank]`, i.e. `[rank,
//! cols]` outermost first, like PEFT's A) and `NAME.lora_b` (ne `[rank, rows]`), where `NAME` is the base's GGUF
//! tensor name (`blk.3.attn_q.weight`). The converter reorders B's rows exactly as it reorders the base's, so
//! B is already in the layout of a base converted from a GGUF of the same architecture. The scale is
//! `alpha / rank`, or 1 when the file gives no alpha (llama.cpp's rule).

use super::lora::StoreAs;
use crate::error::{Error, Result};
use crate::format::adapter::{AdapterFile, BaseIdentity, NewTensor, Target, Values, WeightsFile, MAX_RANK};
use crate::format::ModelDir;
use crate::graph::{RopeStyle, Transformer};
use crate::import::gguf::{GgufFile, TensorInfo};
use crate::quant::ggml::GgmlType;
use std::collections::BTreeMap;
use std::path::Path;

/// Whether `path` is a GGUF file (by its magic), so `omex adapter add` can take either kind of adapter.
pub fn is_gguf(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    path.is_file() && std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut magic)).is_ok() && &magic == b"GGUF"
}

/// The block tensors an adapter may change (the base's GGUF names without `blk.N.` and `.weight`).
const TARGETS: [&str; 7] = ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"];

/// `blk.N.ROLE.weight` as (N, ROLE) for the adaptable roles.
fn place(name: &str) -> Option<(usize, &str)> {
    let rest = name.strip_prefix("blk.")?;
    let (n, rest) = rest.split_once('.')?;
    let layer: usize = n.parse().ok().filter(|l: &usize| l.to_string() == n)?;
    let role = rest.strip_suffix(".weight")?;
    TARGETS.contains(&role).then_some((layer, role))
}

fn values(f: &GgufFile, t: &TensorInfo) -> Result<Vec<f32>> {
    let n = usize::try_from(t.numel()).map_err(|_| Error::invalid(&f.path, format!("tensor {}: too large", t.name)))?;
    if !crate::quant::dequant::supported(t.ty) {
        return Err(Error::Unsupported(format!("{}: tensor {} has type {}", f.path.display(), t.name, t.ty)));
    }
    let mut v = vec![0f32; n];
    crate::quant::dequant::dequantize(t.ty, f.data(t), &mut v)
        .map_err(|e| Error::invalid(&f.path, format!("tensor {}: {e}", t.name)))?;
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        return Err(Error::invalid(&f.path, format!("tensor {}: value {i} is {} (not finite)", t.name, v[i])));
    }
    Ok(v)
}

/// Reads the LoRA GGUF at `path` for the base `base` (its graph `t`); returns the adapter file (tensors and
/// weights to be filled by the writer) and its tensors.
pub fn import_gguf(
    path: &Path,
    base: &ModelDir,
    t: &Transformer,
    name: &str,
    store: StoreAs,
) -> Result<(AdapterFile, Vec<NewTensor>)> {
    crate::format::adapter::check_name(name).map_err(Error::Usage)?;
    let f = GgufFile::open(path)?;
    let kind = f.opt_str("general.type")?;
    if kind != Some("adapter") {
        return Err(Error::invalid(
            path,
            format!(
                "general.type is {kind:?}, not \"adapter\": a model, not a LoRA adapter (give omex convert a model)"
            ),
        ));
    }
    let adapter_type = f.opt_str("adapter.type")?;
    if adapter_type != Some("lora") {
        return Err(Error::Unsupported(format!(
            "{}: adapter.type is {adapter_type:?}; omex imports LoRA adapters (\"lora\")",
            path.display()
        )));
    }
    let arch = f.req_str("general.architecture")?;
    if arch != t.architecture {
        return Err(Error::invalid(
            path,
            format!("general.architecture is {arch:?}, but the base model is {:?}", t.architecture),
        ));
    }
    let alpha = f.opt_f32("adapter.lora.alpha")?;
    if let Some(a) = alpha.filter(|a| !a.is_finite() || *a < 0.0) {
        return Err(Error::invalid(
            path,
            format!("adapter.lora.alpha is {a} (a finite, non-negative number expected)"),
        ));
    }
    // A GGUF base of a llama-family architecture stores Q and K rows permuted for interleaved RoPE, and so
    // does the converter for B; a base imported without that permutation needs B in the original order.
    let converter_permutes = arch == "llama";
    let base_permuted = t.rope.style == RopeStyle::Interleaved;
    if converter_permutes != base_permuted {
        return Err(Error::Unsupported(format!(
            "{}: the adapter's Q/K rows are {} for interleaved RoPE but the base's are {}",
            path.display(),
            if converter_permutes { "permuted" } else { "not permuted" },
            if base_permuted { "permuted" } else { "not permuted" }
        )));
    }

    // base tensor name -> its (layer, role) and (A, B)
    type Pair<'a> = ((usize, &'a str), [Option<&'a TensorInfo>; 2]);
    let mut pairs: BTreeMap<&str, Pair> = BTreeMap::new();
    for tensor in &f.header.tensors {
        let (target, which) = match (tensor.name.strip_suffix(".lora_a"), tensor.name.strip_suffix(".lora_b")) {
            (Some(n), _) => (n, 0),
            (_, Some(n)) => (n, 1),
            _ => {
                return Err(Error::Unsupported(format!(
                    "{}: tensor {:?} is not a LoRA A or B matrix (norm and other non-LoRA tensors in an adapter are \
                     not supported)",
                    path.display(),
                    tensor.name
                )))
            }
        };
        let placed = place(target).ok_or_else(|| {
            Error::Unsupported(format!(
                "{}: tensor {:?} adapts {target:?}, which is not one of blk.N.{{{}}}.weight",
                path.display(),
                tensor.name,
                TARGETS.join(",")
            ))
        })?;
        let slot = &mut pairs.entry(target).or_insert((placed, [None, None])).1[which];
        if slot.is_some() {
            return Err(Error::invalid(path, format!("tensor {:?} appears twice", tensor.name)));
        }
        *slot = Some(tensor);
    }
    if pairs.is_empty() {
        return Err(Error::invalid(path, "holds no LoRA tensors"));
    }

    let mut shapes = BTreeMap::new();
    let mut targets = Vec::new();
    let mut tensors = Vec::new();
    for (target, &((layer, role), [a, b])) in &pairs {
        let missing = |which: &str| Error::invalid(path, format!("{target}: no {target}.lora_{which} tensor"));
        let (a, b) = (a.ok_or_else(|| missing("a"))?, b.ok_or_else(|| missing("b"))?);
        let block = t.blocks.get(layer).ok_or_else(|| {
            Error::invalid(path, format!("{target}: layer {layer}, the base has {} layers", t.blocks.len()))
        })?;
        let weight = match role {
            "attn_q" => Some(block.attn_q.clone()),
            "attn_k" => Some(block.attn_k.clone()),
            "attn_v" => Some(block.attn_v.clone()),
            "attn_output" => Some(block.attn_output.clone()),
            "ffn_gate" => block.ffn_gate.clone(),
            "ffn_up" => block.ffn_up.clone(),
            _ => block.ffn_down.clone(),
        }
        .ok_or_else(|| Error::invalid(path, format!("{target}: the base has no dense {role} projection")))?;
        let entry = base.index.get(&weight).ok_or_else(|| {
            Error::invalid(base.root.join(crate::format::index::INDEX_FILE), format!("no tensor {weight} for {target}"))
        })?;
        let (rows, cols) = match entry.shape.as_slice() {
            [r, c] => (*r, *c),
            s => return Err(Error::invalid(path, format!("base tensor {weight} has shape {s:?}, not a matrix"))),
        };
        // ggml order: A ne = [cols, rank], B ne = [rank, rows].
        let (a_dims, b_dims) = (a.dims.as_slice(), b.dims.as_slice());
        let rank = match (a_dims, b_dims) {
            ([ac, ar], [br, bo]) if *ac == cols as u64 && *bo == rows as u64 && ar == br => *ar,
            _ => {
                return Err(Error::invalid(
                    path,
                    format!(
                        "{target}: lora_a ne {a_dims:?} and lora_b ne {b_dims:?} do not fit base tensor {weight} \
                         [{rows}, {cols}] (ne [{cols}, r] and [r, {rows}] expected)"
                    ),
                ))
            }
        };
        if rank == 0 || rank > MAX_RANK as u64 {
            return Err(Error::invalid(path, format!("{target}: rank {rank} (1 to {MAX_RANK})")));
        }
        let rank = rank as u32;
        let av = values(&f, a)?;
        let bv = values(&f, b)?;
        let keep_f16 = |ty: GgmlType| matches!((store, ty), (StoreAs::F16, _) | (StoreAs::Keep, GgmlType::F16));
        let store_as = |v: Vec<f32>, ty: GgmlType| -> Values {
            if keep_f16(ty) {
                Values::F16(v.iter().map(|&x| half::f16::from_f32(x).to_bits()).collect())
            } else {
                Values::F32(v)
            }
        };
        let (an, bn) = (format!("{weight}.lora_a"), format!("{weight}.lora_b"));
        tensors.push(NewTensor { name: an.clone(), shape: [rank, cols], values: store_as(av, a.ty) });
        tensors.push(NewTensor { name: bn.clone(), shape: [rows, rank], values: store_as(bv, b.ty) });
        shapes.insert(weight.clone(), vec![rows, cols]);
        // llama.cpp: no alpha (or 0) means the product is added unscaled.
        let alpha = alpha.filter(|&a| a > 0.0).unwrap_or(rank as f32);
        targets.push(Target {
            weight,
            rank,
            alpha,
            scale: alpha / rank as f32,
            a: an,
            b: bn,
            source: Some(target.to_string()),
        });
    }
    for v in tensors.iter().filter(|t| matches!(t.values, Values::F16(_))) {
        if let Some(i) = v.values.to_f32().iter().position(|x| !x.is_finite()) {
            return Err(Error::invalid(path, format!("tensor {}: value {i} overflows f16 (store as f32)", v.name)));
        }
    }
    let file = AdapterFile {
        format: crate::format::adapter::ADAPTER_FORMAT.into(),
        version: crate::format::adapter::ADAPTER_VERSION,
        name: name.to_string(),
        source: "gguf".into(),
        use_rslora: false,
        base: BaseIdentity {
            architecture: t.architecture.clone(),
            hidden_size: t.hidden_size,
            model_name: base.metadata.model_name.clone(),
            shapes,
        },
        targets,
        weights: WeightsFile { file: String::new(), bytes: 0, sha256: String::new() },
        tensors: Vec::new(),
    };
    Ok((file, tensors))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places() {
        assert_eq!(place("blk.3.attn_q.weight"), Some((3, "attn_q")));
        assert_eq!(place("blk.12.ffn_down.weight"), Some((12, "ffn_down")));
        assert_eq!(place("blk.03.attn_q.weight"), None);
        assert_eq!(place("blk.3.attn_norm.weight"), None);
        assert_eq!(place("token_embd.weight"), None);
        assert_eq!(place("blk.3.attn_q.bias"), None);
    }
}
