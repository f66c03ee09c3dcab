//! A PEFT LoRA adapter directory (`adapter_config.json` + `adapter_model.safetensors`) as an omex adapter
//! for a given base model (written by [`crate::format::adapter::write`]).
//!
//! PEFT names each adapted module by its Hugging Face path (`base_model.model.model.layers.3.self_attn.q_proj`)
//! and stores `lora_A.weight` `[r, in]` and `lora_B.weight` `[out, r]` as `nn.Linear` weights whatever
//! `fan_in_fan_out` says (that flag only transposes the merged delta for `Conv1D` bases). The module's layer and
//! role (q, k, v, o, gate, up, down) pick the base tensor from the base's own graph, so the base's naming is
//! never guessed. A GGUF llama base stores Q and K with their rows permuted for interleaved RoPE (llama.cpp's
//! conversion); B's rows of q and k are permuted the same way, A is untouched.

use crate::error::{Error, Result};
use crate::format::adapter::{lora_scale, AdapterFile, BaseIdentity, NewTensor, Target, Values, WeightsFile};
use crate::format::ModelDir;
use crate::graph::{RopeStyle, Transformer};
use crate::import::safetensors::{SafetensorsFile, StTensor};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;

pub const PEFT_CONFIG: &str = "adapter_config.json";
pub const PEFT_WEIGHTS: &str = "adapter_model.safetensors";

/// The seven projections an adapter may target, by PEFT's module suffix.
const ROLES: [(&str, Role); 7] = [
    ("self_attn.q_proj", Role::Q),
    ("self_attn.k_proj", Role::K),
    ("self_attn.v_proj", Role::V),
    ("self_attn.o_proj", Role::O),
    ("mlp.gate_proj", Role::Gate),
    ("mlp.up_proj", Role::Up),
    ("mlp.down_proj", Role::Down),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

/// How the adapter's matrices are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum StoreAs {
    /// f16 stays f16, f32 stays f32, bf16 becomes f32 (exactly).
    #[default]
    Keep,
    F16,
    F32,
}

impl std::str::FromStr for StoreAs {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "keep" => Ok(StoreAs::Keep),
            "f16" => Ok(StoreAs::F16),
            "f32" => Ok(StoreAs::F32),
            _ => Err(format!("unknown adapter dtype {s:?} (keep, f16 or f32)")),
        }
    }
}

/// The PEFT config fields that change what the adapter computes.
struct PeftConfig {
    r: u32,
    alpha: f32,
    rslora: bool,
    rank_pattern: BTreeMap<String, u32>,
    alpha_pattern: BTreeMap<String, f32>,
    /// Module suffixes listed in `target_modules` (`None`: a regex string or `all-linear`, not checked).
    target_modules: Option<Vec<String>>,
    layers: Option<Vec<u32>>,
}

fn read_config(path: &Path) -> Result<PeftConfig> {
    let v: Value = crate::format::reader::read_json(path)?;
    let bad = |what: String| Error::invalid(path, what);
    let field = |k: &str| v.get(k).filter(|x| !x.is_null());
    if let Some(t) = field("peft_type").and_then(Value::as_str) {
        if t != "LORA" {
            return Err(bad(format!("peft_type {t:?}: omex imports LORA adapters")));
        }
    }
    for (flag, what) in [("use_dora", "DoRA"), ("use_qalora", "QA-LoRA")] {
        if field(flag).and_then(Value::as_bool) == Some(true) {
            return Err(Error::Unsupported(format!(
                "{}: {flag} is set: {what} adapters are not supported",
                path.display()
            )));
        }
    }
    if let Some(b) = field("bias").and_then(Value::as_str) {
        if b != "none" {
            return Err(Error::Unsupported(format!(
                "{}: bias {b:?}: adapters that train biases are not supported",
                path.display()
            )));
        }
    }
    for (key, what) in [
        ("lora_bias", "a bias on lora_B"),
        ("target_parameters", "LoRA on parameters rather than modules"),
        ("layer_replication", "replicated layers"),
    ] {
        let set = match field(key) {
            None | Some(Value::Bool(false)) => false,
            Some(Value::Array(a)) => !a.is_empty(),
            Some(_) => true,
        };
        if set {
            return Err(Error::Unsupported(format!("{}: {key} is set: {what} is not supported", path.display())));
        }
    }
    if field("modules_to_save").and_then(Value::as_array).is_some_and(|a| !a.is_empty()) {
        return Err(Error::Unsupported(format!(
            "{}: modules_to_save replaces whole base modules; omex applies LoRA matrices only",
            path.display()
        )));
    }
    let r = field("r").ok_or_else(|| bad("no \"r\" (the rank)".into()))?;
    let r =
        r.as_u64().filter(|&r| r >= 1 && r <= crate::format::adapter::MAX_RANK as u64).ok_or_else(|| {
            bad(format!("r {r}: the rank must be an integer in 1..={}", crate::format::adapter::MAX_RANK))
        })? as u32;
    let alpha = match field("lora_alpha") {
        None => 8.0,
        Some(a) => a
            .as_f64()
            .map(|a| a as f32)
            .filter(|a| a.is_finite())
            .ok_or_else(|| bad(format!("lora_alpha {a} is not a finite number")))?,
    };
    let rslora = field("use_rslora")
        .map(|x| x.as_bool().ok_or_else(|| bad("use_rslora is not a boolean".into())))
        .transpose()?
        .unwrap_or(false);
    let mut rank_pattern = BTreeMap::new();
    if let Some(m) = field("rank_pattern").and_then(Value::as_object) {
        for (k, x) in m {
            let rk = x.as_u64().filter(|&r| r >= 1 && r <= crate::format::adapter::MAX_RANK as u64);
            rank_pattern
                .insert(k.clone(), rk.ok_or_else(|| bad(format!("rank_pattern[{k:?}] = {x}: not a rank")))? as u32);
        }
    }
    let mut alpha_pattern = BTreeMap::new();
    if let Some(m) = field("alpha_pattern").and_then(Value::as_object) {
        for (k, x) in m {
            let a = x.as_f64().map(|a| a as f32).filter(|a| a.is_finite());
            alpha_pattern
                .insert(k.clone(), a.ok_or_else(|| bad(format!("alpha_pattern[{k:?}] = {x}: not a finite number")))?);
        }
    }
    let target_modules = field("target_modules")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect::<Vec<_>>());
    let layers = match field("layers_to_transform") {
        None => None,
        Some(Value::Array(a)) => Some(
            a.iter()
                .map(|x| x.as_u64().map(|l| l as u32))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| bad("layers_to_transform is not a list of layer numbers".into()))?,
        ),
        Some(x) => {
            Some(vec![x.as_u64().ok_or_else(|| bad("layers_to_transform is not a layer number".into()))? as u32])
        }
    };
    Ok(PeftConfig { r, alpha, rslora, rank_pattern, alpha_pattern, target_modules, layers })
}

/// PEFT's pattern keys match a module by its full name or a dotted suffix of it.
fn pattern<'a, T>(map: &'a BTreeMap<String, T>, module: &str) -> Option<&'a T> {
    map.iter().find(|(k, _)| module == k.as_str() || module.ends_with(&format!(".{k}"))).map(|(_, v)| v)
}

/// `model.layers.N.ROLE` (PEFT's `base_model.model.` prefix removed) as (N, role).
fn place(module: &str) -> Option<(usize, Role)> {
    let rest = module.strip_prefix("model.layers.")?;
    let (n, rest) = rest.split_once('.')?;
    let layer: usize = n.parse().ok().filter(|l: &usize| l.to_string() == n)?;
    ROLES.iter().find(|(s, _)| *s == rest).map(|&(_, r)| (layer, r))
}

/// A PEFT tensor's values as f32, checked finite; the error names file and tensor.
fn values(f: &SafetensorsFile, t: &StTensor) -> Result<Vec<f32>> {
    let data = f.data(t);
    let v: Vec<f32> = match t.dtype.as_str() {
        "F32" => data.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect(),
        "F16" => data.chunks_exact(2).map(|c| half::f16::from_le_bytes(c.try_into().unwrap()).to_f32()).collect(),
        "BF16" => data.chunks_exact(2).map(|c| half::bf16::from_le_bytes(c.try_into().unwrap()).to_f32()).collect(),
        d => {
            return Err(Error::Unsupported(format!(
                "{}: tensor {:?} has dtype {d} (F32, F16 or BF16 expected)",
                f.path.display(),
                t.name
            )))
        }
    };
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        return Err(Error::invalid(&f.path, format!("tensor {:?}: value {i} is {} (not finite)", t.name, v[i])));
    }
    Ok(v)
}

/// Rows of a `[heads * head_dim, cols]` matrix reordered as llama.cpp reorders Q and K for interleaved RoPE:
/// row `h*hd + 2i + t` of the result is row `h*hd + t*hd/2 + i` of `m`.
pub fn permute_rows_for_interleaved(m: &[f32], heads: usize, head_dim: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0f32; m.len()];
    let half = head_dim / 2;
    for h in 0..heads {
        for i in 0..half {
            for t in 0..2 {
                let (dst, src) = (h * head_dim + 2 * i + t, h * head_dim + t * half + i);
                out[dst * cols..(dst + 1) * cols].copy_from_slice(&m[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

/// Reads the PEFT adapter in `peft_dir` for the base model `base` (its graph `t`) and returns the adapter
/// file (tensors and weights to be filled by the writer) and its tensors.
pub fn import_peft(
    peft_dir: &Path,
    base: &ModelDir,
    t: &Transformer,
    name: &str,
    store: StoreAs,
) -> Result<(AdapterFile, Vec<NewTensor>)> {
    crate::format::adapter::check_name(name).map_err(Error::Usage)?;
    let cfg_path = peft_dir.join(PEFT_CONFIG);
    if !cfg_path.is_file() {
        return Err(Error::Usage(format!("{}: no {PEFT_CONFIG}: not a PEFT adapter directory", peft_dir.display())));
    }
    let cfg = read_config(&cfg_path)?;
    let st_path = peft_dir.join(PEFT_WEIGHTS);
    if !st_path.is_file() {
        let hint = if peft_dir.join("adapter_model.bin").is_file() {
            " (adapter_model.bin is a pickle: save it again with save_pretrained(..., safe_serialization=True))"
        } else {
            ""
        };
        return Err(Error::Usage(format!("{}: no {PEFT_WEIGHTS}{hint}", peft_dir.display())));
    }
    let st = SafetensorsFile::open(&st_path)?;
    // module -> (A, B)
    let mut modules: BTreeMap<String, [Option<&StTensor>; 2]> = BTreeMap::new();
    for tensor in &st.header.tensors {
        let n = tensor.name.strip_prefix("base_model.model.").unwrap_or(&tensor.name);
        let (module, which) = match (n.strip_suffix(".lora_A.weight"), n.strip_suffix(".lora_B.weight")) {
            (Some(m), _) => (m, 0),
            (_, Some(m)) => (m, 1),
            _ => {
                return Err(Error::Unsupported(format!(
                    "{}: tensor {:?} is not a LoRA A or B matrix (embedding LoRA, DoRA magnitudes and saved \
                     modules are not supported)",
                    st_path.display(),
                    tensor.name
                )))
            }
        };
        let slot = &mut modules.entry(module.to_string()).or_default()[which];
        if slot.is_some() {
            return Err(Error::invalid(&st_path, format!("tensor {:?} appears twice", tensor.name)));
        }
        *slot = Some(tensor);
    }
    if modules.is_empty() {
        return Err(Error::invalid(&st_path, "holds no LoRA tensors"));
    }
    let permute = t.rope.style == RopeStyle::Interleaved;
    let mut shapes = BTreeMap::new();
    let mut targets = Vec::new();
    let mut tensors = Vec::new();
    let mut seen_roles: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (module, [a, b]) in &modules {
        let missing = |which: &str| Error::invalid(&st_path, format!("module {module}: no lora_{which}.weight tensor"));
        let (a, b) = (a.ok_or_else(|| missing("A"))?, b.ok_or_else(|| missing("B"))?);
        let (layer, role) = place(module).ok_or_else(|| {
            Error::Unsupported(format!(
                "{}: module {module:?} is not one of model.layers.N.{{{}}}",
                st_path.display(),
                ROLES.map(|(s, _)| s).join(",")
            ))
        })?;
        let block = t.blocks.get(layer).ok_or_else(|| {
            Error::invalid(&st_path, format!("module {module}: layer {layer}, the base has {} layers", t.blocks.len()))
        })?;
        let weight = match role {
            Role::Q => block.attn_q.clone(),
            Role::K => block.attn_k.clone(),
            Role::V => block.attn_v.clone(),
            Role::O => block.attn_output.clone(),
            Role::Gate | Role::Up | Role::Down => {
                let (what, name) = match role {
                    Role::Gate => ("gate", &block.ffn_gate),
                    Role::Up => ("up", &block.ffn_up),
                    _ => ("down", &block.ffn_down),
                };
                // A mixture-of-experts block has no dense MLP to adapt.
                name.clone().ok_or_else(|| {
                    Error::invalid(&st_path, format!("module {module}: the base has no dense {what} projection"))
                })?
            }
        };
        let suffix = ROLES.iter().find(|(_, r)| *r == role).expect("a role").0;
        seen_roles.entry(suffix.rsplit('.').next().unwrap()).or_default().push(layer);
        let entry = base.index.get(&weight).ok_or_else(|| {
            Error::invalid(base.root.join(crate::format::index::INDEX_FILE), format!("no tensor {weight} for {module}"))
        })?;
        let (rows, cols) = match entry.shape.as_slice() {
            [r, c] => (*r, *c),
            s => return Err(Error::invalid(&st_path, format!("base tensor {weight} has shape {s:?}, not a matrix"))),
        };
        let rank = pattern(&cfg.rank_pattern, module).copied().unwrap_or(cfg.r);
        let alpha = pattern(&cfg.alpha_pattern, module).copied().unwrap_or(cfg.alpha);
        let want_a = [rank as u64, cols as u64];
        let want_b = [rows as u64, rank as u64];
        for (tensor, want, what) in [(a, want_a, "A"), (b, want_b, "B")] {
            if tensor.shape != want {
                return Err(Error::invalid(
                    &st_path,
                    format!(
                        "tensor {:?} has shape {:?}; LoRA {what} of rank {rank} for base tensor {weight} {:?} needs {want:?}",
                        tensor.name, tensor.shape, entry.shape
                    ),
                ));
            }
        }
        let av = values(&st, a)?;
        let mut bv = values(&st, b)?;
        if permute && matches!(role, Role::Q | Role::K) {
            let heads = if role == Role::Q { t.n_heads } else { t.n_kv_heads } as usize;
            if heads * t.head_dim as usize != rows as usize || !t.head_dim.is_multiple_of(2) {
                return Err(Error::invalid(
                    &st_path,
                    format!("module {module}: {rows} rows are not {heads} heads of {}", t.head_dim),
                ));
            }
            bv = permute_rows_for_interleaved(&bv, heads, t.head_dim as usize, rank as usize);
        }
        let store_as = |v: Vec<f32>, src: &str| -> Values {
            match (store, src) {
                (StoreAs::F16, _) | (StoreAs::Keep, "F16") => {
                    Values::F16(v.iter().map(|&x| half::f16::from_f32(x).to_bits()).collect())
                }
                _ => Values::F32(v),
            }
        };
        let (an, bn) = (format!("{weight}.lora_a"), format!("{weight}.lora_b"));
        tensors.push(NewTensor { name: an.clone(), shape: [rank, cols], values: store_as(av, &a.dtype) });
        tensors.push(NewTensor { name: bn.clone(), shape: [rows, rank], values: store_as(bv, &b.dtype) });
        shapes.insert(weight.clone(), vec![rows, cols]);
        targets.push(Target {
            weight,
            rank,
            alpha,
            scale: lora_scale(alpha, rank, cfg.rslora),
            a: an,
            b: bn,
            source: Some(module.clone()),
        });
    }
    for v in tensors.iter().filter(|t| matches!(t.values, Values::F16(_))) {
        if let Some(i) = v.values.to_f32().iter().position(|x| !x.is_finite()) {
            return Err(Error::invalid(&st_path, format!("tensor {}: value {i} overflows f16 (store as f32)", v.name)));
        }
    }
    // Every listed target module is present in every layer the config transforms.
    if let Some(listed) = &cfg.target_modules {
        let layers: Vec<usize> = match &cfg.layers {
            Some(l) => l.iter().map(|&l| l as usize).collect(),
            None => (0..t.blocks.len()).collect(),
        };
        for m in listed {
            let short = m.rsplit('.').next().unwrap_or(m);
            if !ROLES.iter().any(|(s, _)| s.ends_with(&format!(".{short}"))) {
                return Err(Error::Unsupported(format!(
                    "{}: target module {m:?}: omex applies adapters to q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj and down_proj",
                    cfg_path.display()
                )));
            }
            let have = seen_roles.get(short).cloned().unwrap_or_default();
            if let Some(l) = layers.iter().find(|l| !have.contains(l)) {
                return Err(Error::invalid(
                    &st_path,
                    format!("missing tensors: target module {m} of layer {l} (base_model.model.model.layers.{l}.*.{short}.lora_A/B.weight)"),
                ));
            }
        }
    }
    let file = AdapterFile {
        format: crate::format::adapter::ADAPTER_FORMAT.into(),
        version: crate::format::adapter::ADAPTER_VERSION,
        name: name.to_string(),
        source: "peft".into(),
        use_rslora: cfg.rslora,
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
        assert_eq!(place("model.layers.12.self_attn.k_proj"), Some((12, Role::K)));
        assert_eq!(place("model.layers.0.mlp.down_proj"), Some((0, Role::Down)));
        assert_eq!(place("model.layers.01.mlp.down_proj"), None);
        assert_eq!(place("model.layers.0.mlp.c_fc"), None);
        assert_eq!(place("lm_head"), None);
    }

    #[test]
    fn patterns_match_whole_dotted_suffixes() {
        let m: BTreeMap<String, u32> = [("q_proj".to_string(), 4), ("layers.2.mlp.up_proj".to_string(), 2)].into();
        assert_eq!(pattern(&m, "model.layers.0.self_attn.q_proj"), Some(&4));
        assert_eq!(pattern(&m, "model.layers.2.mlp.up_proj"), Some(&2));
        assert_eq!(pattern(&m, "model.layers.12.mlp.up_proj"), None);
        assert_eq!(pattern(&m, "model.layers.0.self_attn.xq_proj"), None);
    }

    #[test]
    fn permutation_matches_llama_cpp() {
        // 1 head of dim 4, 1 column: rows [a0 a1 b0 b1] (rotate_half pairs a_i, b_i) become [a0 b0 a1 b1].
        let m = [0.0, 1.0, 10.0, 11.0];
        assert_eq!(permute_rows_for_interleaved(&m, 1, 4, 1), vec![0.0, 10.0, 1.0, 11.0]);
    }
}
