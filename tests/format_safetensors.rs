//! The safetensors reader: a valid file reads back; every corruption is an error naming the tensor or field.

#[path = "common/synth.rs"]
mod synth;

use omex::import::safetensors::{Checkpoint, Header};
use synth::Rng;

fn sample() -> Vec<(String, &'static str, Vec<u64>, Vec<u8>)> {
    let mut rng = Rng(3);
    vec![
        ("w.f32".into(), "F32", vec![3, 5], rng.bytes(60)),
        ("w.bf16".into(), "BF16", vec![7], rng.bytes(14)),
        ("w.f16".into(), "F16", vec![2, 2, 2], rng.bytes(16)),
        ("w.i64".into(), "I64", vec![1], rng.bytes(8)),
    ]
}

/// The file with its JSON header replaced by `json` (data unchanged).
fn with_header(json: &str) -> Vec<u8> {
    let data: Vec<u8> = sample().into_iter().flat_map(|t| t.3).collect();
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend(json.as_bytes());
    out.extend(data);
    out
}

#[test]
fn valid_file_reads_back() {
    let bytes = synth::safetensors(&sample());
    let h = Header::parse(&bytes).unwrap();
    assert_eq!(h.metadata.get("format").map(String::as_str), Some("pt"));
    for (name, dtype, shape, data) in sample() {
        let t = h.tensors.iter().find(|t| t.name == name).unwrap();
        assert_eq!(t.dtype, dtype);
        assert_eq!(t.shape, shape);
        assert_eq!(&bytes[t.offset as usize..(t.offset + t.bytes) as usize], data.as_slice());
    }
    let i64t = h.tensors.iter().find(|t| t.name == "w.i64").unwrap();
    assert_eq!(i64t.ggml_type(), None);
}

#[test]
fn every_truncation_is_an_error() {
    let bytes = synth::safetensors(&sample());
    for len in 0..bytes.len() {
        assert!(Header::parse(&bytes[..len]).is_err(), "truncated to {len} bytes parsed");
    }
}

#[test]
fn corrupt_headers_are_named() {
    let cases: &[(&str, &str)] = &[
        (r#"{"a": {"dtype": "F32", "shape": [3, 5], "data_offsets": [0, 61]}}"#, "\"a\""),
        (r#"{"a": {"dtype": "F32", "shape": [3, 5], "data_offsets": [0, 100000]}}"#, "outside"),
        (r#"{"a": {"dtype": "F32", "shape": [3, 5], "data_offsets": [60, 0]}}"#, "outside"),
        (r#"{"a": {"dtype": "F9", "shape": [1], "data_offsets": [0, 4]}}"#, "unknown dtype \"F9\""),
        (r#"{"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}"#, "shape"),
        (r#"{"a": {"dtype": "F32", "shape": [4294967296, 4294967296, 4294967296], "data_offsets": [0, 4]}}"#, "needs"),
        (r#"{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0]}}"#, "data_offsets"),
        (r#"{"a": {"shape": [1], "data_offsets": [0, 4]}}"#, "dtype"),
        (
            r#"{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}"#,
            "overlap",
        ),
        (r#"{"__metadata__": {"x": 1}}"#, "__metadata__"),
        (r#"[1, 2]"#, "not a JSON object"),
        (r#"{"a": "#, "not valid JSON"),
    ];
    for (json, want) in cases {
        let e = Header::parse(&with_header(json)).unwrap_err();
        assert!(e.contains(want), "{json}: {e}");
    }
    let mut huge = with_header("{}");
    huge[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(Header::parse(&huge).unwrap_err().contains("absurd"));
    huge[..8].copy_from_slice(&1000u64.to_le_bytes());
    assert!(Header::parse(&huge).unwrap_err().contains("past the end"));
}

#[test]
fn random_corruption_never_panics() {
    let bytes = synth::safetensors(&sample());
    let mut rng = Rng(5);
    for _ in 0..20_000 {
        let mut b = bytes.clone();
        let at = (rng.next_u64() % b.len() as u64) as usize;
        b[at] = (rng.next_u64() >> 56) as u8;
        let _ = Header::parse(&b);
    }
}

#[test]
fn sharded_checkpoint() {
    let dir = synth::tmp_dir("st-shards");
    let s = sample();
    synth::write(&dir, "model-00001-of-00002.safetensors", &synth::safetensors(&s[..2]));
    synth::write(&dir, "model-00002-of-00002.safetensors", &synth::safetensors(&s[2..]));
    let index = serde_json::json!({"metadata": {}, "weight_map": {
        "w.f32": "model-00001-of-00002.safetensors", "w.bf16": "model-00001-of-00002.safetensors",
        "w.f16": "model-00002-of-00002.safetensors", "w.i64": "model-00002-of-00002.safetensors"}});
    synth::write(&dir, "model.safetensors.index.json", index.to_string().as_bytes());
    let c = Checkpoint::open_dir(&dir).unwrap();
    assert_eq!(c.names(), ["w.bf16", "w.f16", "w.f32", "w.i64"]);
    let (f, t) = c.get("w.f16").unwrap();
    assert_eq!(f.data(t), s[2].3.as_slice());
    // A weight_map naming the wrong shard is an error naming the index and the tensor.
    let bad = index.to_string().replace(r#""w.f16":"model-00002"#, r#""w.f16":"model-00001"#);
    synth::write(&dir, "model.safetensors.index.json", bad.as_bytes());
    let e = Checkpoint::open_dir(&dir).err().unwrap().to_string();
    assert!(e.contains("model.safetensors.index.json") && e.contains("w.f16"), "{e}");
    let evil = index.to_string().replace("model-00002-of-00002.safetensors", "../x.safetensors");
    synth::write(&dir, "model.safetensors.index.json", evil.as_bytes());
    assert!(Checkpoint::open_dir(&dir).err().unwrap().to_string().contains("leaves"));
}

/// Files written by fuzz/make_seeds.py (Python) read back with the expected layout.
#[test]
fn python_written_files_parse() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/safetensors");
    let h = Header::parse(&std::fs::read(dir.join("mixed.safetensors")).unwrap()).unwrap();
    let names: Vec<(&str, &str, &[u64])> =
        h.tensors.iter().map(|t| (t.name.as_str(), t.dtype.as_str(), t.shape.as_slice())).collect();
    assert_eq!(
        names,
        [("a", "BF16", &[4][..]), ("b", "F16", &[1, 2, 2][..]), ("c", "I64", &[2][..]), ("d", "U8", &[0][..])]
    );
    assert_eq!(h.data_offset % 8, 0);
}
