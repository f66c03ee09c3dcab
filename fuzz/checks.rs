//! The checks of the `graph`, `metadata` and `model_dir` fuzz targets. The targets include this file with
//! `#[path]`, and so does tests/format_fuzz_inputs.rs, so libFuzzer and `cargo test` assert the same things.
//! Each check returns what the library accepted, or why it refused (refusing is fine; panicking is not).
#![allow(dead_code)]

use omex::backend::{Activations, Logits};
use omex::format::graph::GraphFile;
use omex::format::metadata::{Metadata, METADATA_FILE, OMEX_VERSION};
use omex::graph::{limits, Norm, RopeScaling, Transformer};
use omex::runtime::{BackendChoice, EngineOptions, Model};
use std::path::{Path, PathBuf};

/// graph.json through `Transformer::from_graph` (which ends in `check`). An accepted model keeps every
/// guarantee `check` documents, and `to_graph` writes it back to a graph that reads as the same model.
pub fn graph(data: &[u8]) -> Result<Transformer, String> {
    let g: GraphFile = serde_json::from_slice(data).map_err(|e| e.to_string())?;
    let _ = g.problems();
    let t = Transformer::from_graph(&g, Path::new("graph.json")).map_err(|e| e.to_string())?;
    assert_checked(&t);
    let again = Transformer::from_graph(&t.to_graph("fuzz"), Path::new("graph.json"))
        .unwrap_or_else(|e| panic!("to_graph of an accepted model is refused: {e}"));
    assert_eq!(again, t, "graph -> model -> graph -> model changed the model");
    Ok(t)
}

/// What `Transformer::check` promises (src/graph/config.rs): every count non-zero and within `limits`,
/// heads x head dim within MAX_DIM, eps in (0, 1), rope base above 1, positive finite scaling factors, heads a
/// multiple of KV heads, even head dim, even rope dims at most the head dim; and so every size derived from
/// them (tensor shapes, KV cache, rope table) computes without overflow and the rope table is finite.
pub fn assert_checked(t: &Transformer) {
    use limits::*;
    let counts = [
        ("vocab_size", t.vocab_size as u64, MAX_VOCAB),
        ("hidden_size", t.hidden_size as u64, MAX_DIM),
        ("intermediate_size", t.intermediate_size as u64, MAX_FFN),
        ("num_attention_heads", t.n_heads as u64, MAX_HEADS),
        ("num_key_value_heads", t.n_kv_heads as u64, MAX_HEADS),
        ("attention_head_size", t.head_dim as u64, MAX_HEAD_DIM),
        ("context_length", t.context_length as u64, MAX_CONTEXT),
        ("blocks", t.blocks.len() as u64, MAX_BLOCKS as u64),
    ];
    for (k, v, max) in counts {
        assert!((1..=max).contains(&v), "{k} {v} outside 1..={max}");
    }
    let q_dim = (t.n_heads as u64).checked_mul(t.head_dim as u64).expect("heads x head dim overflows");
    assert!(q_dim <= MAX_DIM, "heads x head dim {q_dim} above {MAX_DIM}");
    let eps = match t.norm {
        Norm::RmsNorm { eps } | Norm::LayerNorm { eps } => eps,
    };
    assert!(eps.is_finite() && eps > 0.0 && eps < 1.0, "eps {eps}");
    assert!(t.rope.base.is_finite() && t.rope.base > 1.0, "rope base {}", t.rope.base);
    match t.rope.scaling {
        None => {}
        Some(RopeScaling::Linear { factor }) => assert!(factor.is_finite() && factor > 0.0, "factor {factor}"),
        Some(RopeScaling::Llama3 { factor, low_freq_factor: lo, high_freq_factor: hi, original_context_length }) => {
            assert!([factor, lo, hi].iter().all(|f| f.is_finite() && *f > 0.0), "llama3 factors {factor} {lo} {hi}");
            assert!(hi > lo && original_context_length > 0, "llama3 {lo} {hi} {original_context_length}");
        }
    }
    assert_eq!(t.n_heads % t.n_kv_heads, 0, "heads not a multiple of KV heads");
    assert_eq!(t.head_dim % 2, 0, "odd head dim");
    assert!(
        t.rope.dims.is_multiple_of(2) && t.rope.dims <= t.head_dim,
        "rope dims {} head dim {}",
        t.rope.dims,
        t.head_dim
    );

    // Derived sizes: u32 shapes (expected_tensors multiplies in u32), u64 byte counts.
    let mut total = 0u64;
    for (name, shape) in t.expected_tensors() {
        assert!(shape.iter().all(|&d| d > 0), "tensor {name}: shape {shape:?} has a zero");
        let numel = shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d as u64)).expect("numel overflows");
        total = total.checked_add(numel.checked_mul(4).expect("bytes overflow")).expect("model bytes overflow");
    }
    let kv_dim = t.n_kv_heads as u64 * t.head_dim as u64;
    let kv = [2, t.blocks.len() as u64, t.context_length as u64, kv_dim, 4];
    assert!(kv.iter().try_fold(1u64, |a, &x| a.checked_mul(x)).is_some(), "KV cache bytes overflow");
    let inv_freq = t.rope.inv_freq();
    assert_eq!(inv_freq.len(), t.rope.dims as usize / 2);
    assert!(
        inv_freq.iter().all(|f| f.is_finite() && *f >= 0.0),
        "rope table not finite: base {}, dims {}, scaling {:?}: {:?}",
        t.rope.base,
        t.rope.dims,
        t.rope.scaling,
        inv_freq.iter().find(|f| !f.is_finite())
    );
}

/// metadata.json written into the model directory `dir` (otherwise valid, see [`write_model_dir`]), then
/// `omex::validate::validate`: a report that says valid means the metadata parses, has this omex's version and
/// a name, and lists only files inside `dir` with their true sizes, which `verify_files` also accepts.
/// Whatever parses serializes back to the same metadata.
pub fn metadata(data: &[u8], dir: &Path) -> Result<Metadata, String> {
    let parsed = serde_json::from_slice::<Metadata>(data);
    if let Ok(m) = &parsed {
        let text = serde_json::to_string(m).expect("metadata serializes");
        assert_eq!(&serde_json::from_str::<Metadata>(&text).expect("its own output parses"), m);
    }
    std::fs::write(dir.join(METADATA_FILE), data).map_err(|e| e.to_string())?;
    let report = omex::validate::validate(dir);
    assert_eq!(report.ok, report.problems.is_empty());
    if !report.ok {
        return Err(report.problems.join("; "));
    }
    let m = parsed.expect("a valid model's metadata.json parses");
    assert_eq!(m.omex_version, OMEX_VERSION);
    assert!(!m.model_name.trim().is_empty());
    for f in &m.files {
        let inside =
            !f.path.starts_with('/') && !f.path.contains('\\') && !f.path.split('/').any(|c| c.is_empty() || c == "..");
        assert!(inside, "valid with a file path {:?} that leaves the directory", f.path);
        let len = std::fs::metadata(dir.join(&f.path)).map(|m| m.len());
        assert_eq!(len.ok(), Some(f.bytes), "valid with {} listed at {} bytes", f.path, f.bytes);
    }
    assert_eq!(omex::validate::verify_files(dir, &m), Ok(m.files.len()));
    Ok(m)
}

/// The five files of a `model_dir` input, in order, separated by [`PART_SEP`] (JSON has no NUL bytes, and a
/// separator survives libFuzzer's byte insertions, which would shift every later part of a length-prefixed
/// input). All tensors live in the one weight file.
pub const PARTS: [&str; 5] =
    ["metadata.json", "graph.json", "weights/quantization.json", "weights/layer_0.bin", "tokenizer/tokenizer.json"];
pub const PART_SEP: &[u8] = b"\0OMEX-PART\0";
/// Larger inputs are skipped: the weight file of a model worth running fits, and each input stays fast.
pub const MAX_MODEL_INPUT: usize = 1 << 17;

/// The parts of a `model_dir` input, or `None` when it does not have exactly [`PARTS`]`.len()` of them.
pub fn split_parts(data: &[u8]) -> Option<Vec<&[u8]>> {
    let mut parts = Vec::new();
    let mut rest = data;
    while let Some(at) = rest.windows(PART_SEP.len()).position(|w| w == PART_SEP) {
        parts.push(&rest[..at]);
        rest = &rest[at + PART_SEP.len()..];
        if parts.len() == PARTS.len() {
            return None;
        }
    }
    parts.push(rest);
    (parts.len() == PARTS.len()).then_some(parts)
}

/// Writes the parts of `data` as a fresh model directory `dir`.
pub fn write_model_dir(data: &[u8], dir: &Path) -> Result<(), String> {
    let parts = split_parts(data).ok_or("not five parts")?;
    let _ = std::fs::remove_dir_all(dir);
    for (rel, bytes) in PARTS.iter().zip(parts) {
        let path = dir.join(rel);
        std::fs::create_dir_all(path.parent().expect("a file has a parent")).map_err(|e| e.to_string())?;
        std::fs::write(&path, bytes).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// A model directory from the input, checked as `omex validate` checks it; one that validates must load
/// (`Model::load` reads nothing validate has not checked), and then runs two tokens on the CPU engine with
/// int8 and with f32 activations (the engine may refuse what it cannot run, e.g. GeGLU or LayerNorm).
/// Returns the last logits of each activation precision that ran.
pub fn model_dir(data: &[u8], dir: &Path) -> Result<Vec<Vec<f32>>, String> {
    if data.len() > MAX_MODEL_INPUT {
        return Err("input too large".into());
    }
    write_model_dir(data, dir)?;
    let report = omex::validate::validate(dir);
    assert_eq!(report.ok, report.problems.is_empty());
    if !report.ok {
        return Err(report.problems.join("; "));
    }
    let model = Model::load(dir).unwrap_or_else(|e| panic!("a model that validates does not load: {e}"));
    assert_checked(&model.config);
    let vocab = model.config.vocab_size as usize;
    let ctx = (model.config.context_length as usize).min(8);
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for activations in [Activations::Int8, Activations::F32] {
        let opts = EngineOptions {
            backend: BackendChoice::Cpu,
            threads: 1,
            context_length: Some(ctx),
            activations,
            ..EngineOptions::default()
        };
        let mut engine = match model.engine(&opts) {
            Ok(e) => e,
            Err(e) => {
                errors.push(e.to_string());
                continue;
            }
        };
        let mut steps = [0u32, (vocab as u32 - 1).min(1)].into_iter().enumerate().take(ctx);
        let run: Result<Vec<f32>, String> = steps.try_fold(Vec::new(), |_, (pos, id)| {
            let logits = engine.forward(&[id], pos, Logits::Last).map_err(|e| e.to_string())?;
            assert_eq!(logits.len(), vocab, "one row of logits");
            Ok(logits)
        });
        match run {
            Ok(logits) => out.push(logits),
            Err(e) => errors.push(e),
        }
    }
    if out.is_empty() {
        return Err(errors.join("; "));
    }
    Ok(out)
}

/// A scratch directory for one process and `what`: under /dev/shm where there is one (no disk writes per input).
pub fn scratch_dir(what: &str) -> PathBuf {
    let shm = Path::new("/dev/shm");
    let base = if shm.is_dir() { shm.to_path_buf() } else { std::env::temp_dir() };
    base.join(format!("omex-fuzz-{what}-{}", std::process::id()))
}
