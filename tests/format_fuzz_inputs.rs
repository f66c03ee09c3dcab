//! The fuzz targets' checks (fuzz/fuzz_targets/*.rs), run on stable over the committed seeds
//! (fuzz/seeds/<target>/) and every input a fuzzing run found crashing (fuzz/regressions/<target>/), plus a
//! deterministic random-mutation loop over the seeds, so `cargo test` keeps those inputs fixed.

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

/// A libFuzzer-free stand-in: random byte mutations of every seed through the same checks.
#[test]
fn mutated_seeds_never_panic() {
    let mut s = 0x9E3779B97F4A7C15u64;
    let mut next = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    let fixture = index_fixture();
    for target in ["gguf", "safetensors", "record", "index"] {
        for (_, seed) in inputs(target) {
            for _ in 0..2000 {
                let mut d = seed.clone();
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
