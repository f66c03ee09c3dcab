//! The fuzz targets' checks (fuzz/fuzz_targets/*.rs), run on stable over the committed seeds
//! (fuzz/seeds/<target>/) and every input a fuzzing run found crashing (fuzz/regressions/<target>/), plus a
//! deterministic random-mutation loop over the seeds, so `cargo test` keeps those inputs fixed. The `graph`,
//! `metadata` and `model_dir` targets' checks are fuzz/checks.rs itself, included here.

#[path = "../fuzz/checks.rs"]
mod checks;

use omex::format::{DType, ModelDir, Record, SectionKind};
use omex::import::gguf::GgufFile;
use omex::import::safetensors::{dtype_size, Header};
use omex::quant::dequant;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut out = Vec::new();
    for kind in ["seeds", "regressions"] {
        let Ok(rd) = std::fs::read_dir(root.join(kind).join(target)) else {
            continue;
        };
        for e in rd {
            let p = e.unwrap().path();
            out.push((p.clone(), std::fs::read(&p).unwrap()));
        }
    }
    out.sort();
    out
}

fn check_gguf(data: &[u8]) -> bool {
    let Ok(f) = GgufFile::from_bytes(Path::new("fuzz.gguf"), data) else {
        return false;
    };
    for t in &f.header.tensors {
        assert_eq!(t.offset % f.header.alignment, 0);
        assert_eq!(f.data(t).len() as u64, t.bytes);
        if dequant::supported(t.ty) && t.numel() <= 1 << 16 {
            let mut out = vec![0f32; t.numel() as usize];
            dequant::dequantize(t.ty, f.data(t), &mut out).unwrap();
        }
    }
    true
}

fn check_safetensors(data: &[u8]) -> bool {
    let Ok(h) = Header::parse(data) else {
        return false;
    };
    for t in &h.tensors {
        let end = t.offset.checked_add(t.bytes).unwrap();
        assert!(end <= data.len() as u64 && t.offset >= h.data_offset);
        let size = dtype_size(&t.dtype).unwrap();
        assert_eq!(t.shape.iter().try_fold(size, |a, &d| a.checked_mul(d)), Some(t.bytes));
    }
    true
}

fn check_record(data: &[u8]) -> bool {
    let Ok(rec) = Record::decode(data) else {
        return false;
    };
    assert!(rec.record_bytes <= data.len() as u64);
    for s in &rec.sections {
        assert!(s.offset.checked_add(s.bytes).unwrap() <= rec.record_bytes);
    }
    let enc = rec.encode();
    assert_eq!(&data[..enc.len()], enc.as_slice());
    true
}

/// The index target's fixture: records a (int4 [4, 64]), b (f32 [7]), c (ternary [2, 32]) in layer_0.bin.
fn index_fixture() -> Vec<u8> {
    let mut file = Vec::new();
    for (name, dtype, shape) in
        [("a", DType::Int4, vec![4u32, 64]), ("b", DType::F32, vec![7]), ("c", DType::Ternary, vec![2, 32])]
    {
        let rec = Record::new(0, name, dtype, &shape).unwrap();
        let start = file.len();
        file.extend(rec.encode());
        file.resize(start + rec.record_bytes as usize, 0x11);
    }
    file
}

/// Resolves every tensor of the index `data`; returns how many resolved.
fn check_index(data: &[u8], fixture: &[u8]) -> usize {
    let metadata = br#"{"omex_version":"1.0","model_name":"m","model_version":"1","model_architecture":"llama",
        "parameters":"1K","creation_date":"","created_by":"","license":"","description":"","source_format":"",
        "quantization":{"type":"keep","method":"","symmetric":true},"hardware_targets":[],
        "minimum_requirements":{"ram":"","compute":"","storage":""},
        "recommended_requirements":{"ram":"","compute":"","storage":""},"files":[]}"#;
    let graph = br#"{"graph_id":"g","graph_type":"transformer/llama","nodes":[],"edges":[],"entry_points":{}}"#;
    let mut files = HashMap::new();
    files.insert("metadata.json".to_string(), metadata.to_vec());
    files.insert("graph.json".to_string(), graph.to_vec());
    files.insert("weights/quantization.json".to_string(), data.to_vec());
    files.insert("weights/layer_0.bin".to_string(), fixture.to_vec());
    let Ok(dir) = ModelDir::from_memory("fuzz", files) else {
        return 0;
    };
    let names: Vec<String> = dir.index.tensors.iter().map(|t| t.name.clone()).collect();
    let mut ok = 0;
    for name in names {
        if let Ok(t) = dir.tensor(&name) {
            for kind in [SectionKind::Data, SectionKind::Scales, SectionKind::Mins] {
                if let Some(s) = t.section(kind) {
                    assert_eq!(s.len() as u64, t.entry.section(kind).unwrap().bytes);
                }
            }
            ok += 1;
        }
    }
    ok
}

#[test]
fn seeds_and_regressions() {
    let gguf = inputs("gguf");
    assert!(gguf.len() >= 3);
    for (p, d) in &gguf {
        let ok = check_gguf(d);
        assert!(ok || p.to_string_lossy().contains("regressions"), "seed {} does not parse", p.display());
    }
    for (p, d) in &inputs("safetensors") {
        let ok = check_safetensors(d);
        assert!(ok || p.to_string_lossy().contains("regressions"), "seed {} does not parse", p.display());
    }
    for (p, d) in &inputs("record") {
        let ok = check_record(d);
        assert!(ok || p.to_string_lossy().contains("regressions"), "seed {} does not parse", p.display());
    }
    let fixture = index_fixture();
    for (p, d) in &inputs("index") {
        let n = check_index(d, &fixture);
        if p.ends_with("valid.json") {
            assert_eq!(n, 3, "every tensor of {} resolves", p.display());
        }
        if p.ends_with("shifted.json") {
            assert_eq!(n, 2, "a and c resolve in {}, b (shifted) does not", p.display());
        }
    }
}

/// xorshift64, the mutation loops' generator.
fn rng(seed: u64) -> impl FnMut() -> u64 {
    let mut s = seed;
    move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    }
}

/// One to three random byte edits of `seed`: overwrite, truncate or insert.
fn mutate(seed: &[u8], next: &mut impl FnMut() -> u64) -> Vec<u8> {
    let mut d = seed.to_vec();
    for _ in 0..1 + next() % 3 {
        match next() % 3 {
            0 if !d.is_empty() => {
                let at = (next() % d.len() as u64) as usize;
                d[at] = next() as u8;
            }
            1 if !d.is_empty() => {
                let at = (next() % d.len() as u64) as usize;
                d.truncate(at);
            }
            _ => {
                let at = (next() % (d.len() as u64 + 1)) as usize;
                d.insert(at, next() as u8);
            }
        }
    }
    d
}

/// A libFuzzer-free stand-in: random byte mutations of every seed through the same checks.
#[test]
fn mutated_seeds_never_panic() {
    let mut next = rng(0x9E3779B97F4A7C15);
    let fixture = index_fixture();
    for target in ["gguf", "safetensors", "record", "index"] {
        for (_, seed) in inputs(target) {
            for _ in 0..2000 {
                let d = mutate(&seed, &mut next);
                match target {
                    "gguf" => drop(check_gguf(&d)),
                    "safetensors" => drop(check_safetensors(&d)),
                    "record" => drop(check_record(&d)),
                    _ => drop(check_index(&d, &fixture)),
                }
            }
        }
    }
}

/// Found by `mutated_seeds_never_panic`: a record whose name padding is not zero decoded, and re-encoded to
/// different bytes. The descriptor is canonical now: the padding must be zero.
#[test]
fn nonzero_name_padding_is_rejected() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions/record/nonzero-name-padding");
    let e = Record::decode(&std::fs::read(path).unwrap()).unwrap_err();
    assert!(e.contains("padding"), "{e}");
}

/// The model directory of the `int8` seed (the `metadata` target's fixture), written under `what`.
fn model_fixture(what: &str) -> PathBuf {
    let dir = checks::scratch_dir(what);
    let seed = inputs("model_dir").into_iter().find(|(p, _)| p.ends_with("seeds/model_dir/int8")).unwrap();
    checks::write_model_dir(&seed.1, &dir).unwrap();
    dir
}

#[test]
fn graph_metadata_and_model_dir_seeds_and_regressions() {
    let graphs = inputs("graph");
    assert!(graphs.len() >= 5);
    for (p, d) in &graphs {
        let r = checks::graph(d);
        assert!(r.is_ok() || p.to_string_lossy().contains("regressions"), "{}: {r:?}", p.display());
    }
    let dir = model_fixture("test-seeds-metadata");
    for (p, d) in &inputs("metadata") {
        let r = checks::metadata(d, &dir);
        assert!(r.is_ok() || p.to_string_lossy().contains("regressions"), "{}: {r:?}", p.display());
    }
    let _ = std::fs::remove_dir_all(&dir);
    let dir = checks::scratch_dir("test-seeds-model_dir");
    for (p, d) in &inputs("model_dir") {
        let r = checks::model_dir(d, &dir);
        if p.to_string_lossy().contains("regressions") {
            continue;
        }
        // (The `layernorm-gelu` seed runs too: the CPU engine lowers LayerNorm and GeGLU ops.)
        let runs = r.unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        assert_eq!(runs.len(), 2, "{}: int8 and f32 activations both ran", p.display());
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The committed seeds of `target`, without its regressions.
fn seeds(target: &str) -> Vec<Vec<u8>> {
    inputs(target).into_iter().filter(|(p, _)| !p.to_string_lossy().contains("regressions")).map(|(_, d)| d).collect()
}

/// The mutation loop for the model targets, over their seeds only: fewer rounds, as each validates (and may
/// run) a model.
#[test]
fn mutated_model_seeds_never_panic() {
    let mut next = rng(0x2545F4914F6CDD1D);
    for seed in seeds("graph") {
        for _ in 0..2000 {
            let _ = checks::graph(&mutate(&seed, &mut next));
        }
    }
    let dir = model_fixture("test-mutated-metadata");
    for seed in seeds("metadata") {
        for _ in 0..200 {
            let _ = checks::metadata(&mutate(&seed, &mut next), &dir);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    let dir = checks::scratch_dir("test-mutated-model_dir");
    for seed in seeds("model_dir") {
        for _ in 0..100 {
            let _ = checks::model_dir(&mutate(&seed, &mut next), &dir);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// For the model_dir target, from reading the CPU engine, then replayed through the harness: a model whose f32
/// or f16 matrices are not a multiple of 32 wide (hidden size 48; 1 head of 16) validates, and the CPU engine's
/// default int8 activations panic in `Q8Activations::quantize_into` ("cols = 48 must be a positive multiple of
/// 32"). Fails until the engine refuses such a model with an error, or runs it.
#[test]
fn matrix_widths_not_a_multiple_of_32_do_not_panic() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions/model_dir");
    for name in ["q8-cols-hidden-48", "q8-cols-attention-16"] {
        let dir = checks::scratch_dir(&format!("test-{name}"));
        let r = checks::model_dir(&std::fs::read(root.join(name)).unwrap(), &dir);
        let _ = std::fs::remove_dir_all(&dir);
        if let Err(e) = r {
            assert!(e.contains("32"), "{name}: refused without naming the multiple of 32: {e}");
        }
    }
}

/// For the graph target, from reading `Transformer::check`, then replayed through the harness (10 minutes of
/// libFuzzer did not reach it): a linear rope scaling factor that is positive and finite but tiny (1e-45, a
/// subnormal) passes `check`, and `RopeConfig::inv_freq` divides by it to an infinite frequency, so RoPE turns
/// every query and key into NaN. Fails until `check` refuses the factor (naming the rope) or the table stays
/// finite.
#[test]
fn a_rope_factor_that_overflows_the_rope_table_is_refused() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions/graph/rope-linear-factor-1e-45.json");
    let e = checks::graph(&std::fs::read(path).unwrap()).unwrap_err();
    assert!(e.contains("rope"), "{e}");
}
