//! The GGUF reader on synthetic files: a valid file reads back exactly, and every kind of corruption is an
//! error naming the field or tensor, never a panic.

#[path = "common/synth.rs"]
mod synth;

use omex::import::gguf::{GgufFile, Header, Value};
use omex::quant::GgmlType;
use std::path::Path;
use synth::{gstr, ty, GgufBuilder, Rng, GV};

fn small() -> GgufBuilder {
    let mut rng = Rng(7);
    GgufBuilder::default()
        .kv("general.architecture", GV::Str("llama".into()))
        .kv("llama.block_count", GV::U32(2))
        .kv("some.float", GV::F32(0.5))
        .kv("some.flag", GV::Bool(true))
        .kv("tokenizer.ggml.tokens", GV::Strs(vec!["a".into(), "é".into(), "<s>".into()]))
        .kv("tokenizer.ggml.scores", GV::F32s(vec![0.0, -1.0, -2.0]))
        .tensor("a.weight", &[64, 3], ty::Q8_0, synth::ggml_data(&mut rng, ty::Q8_0, 192))
        .tensor("b.weight", &[5], ty::F32, synth::ggml_data(&mut rng, ty::F32, 5))
        .tensor("c.weight", &[32, 2], ty::Q4_1, synth::ggml_data(&mut rng, ty::Q4_1, 64))
}

fn parse(b: &GgufBuilder) -> Result<Header, String> {
    Header::parse(&b.build())
}

fn err(b: &GgufBuilder) -> String {
    match parse(b) {
        Ok(_) => panic!("parsed a corrupt file"),
        Err(e) => e,
    }
}

#[test]
fn valid_file_reads_back() {
    for version in [2, 3] {
        let mut b = small();
        b.version = version;
        let bytes = b.build();
        let f = GgufFile::from_bytes(Path::new("small.gguf"), &bytes).unwrap();
        assert_eq!(f.header.version, version);
        assert_eq!(f.get("llama.block_count"), Some(&Value::U32(2)));
        assert_eq!(f.req_u32("llama.block_count").unwrap(), 2);
        assert_eq!(f.opt_f32("some.float").unwrap(), Some(0.5));
        assert_eq!(f.opt_bool("some.flag").unwrap(), Some(true));
        let toks = f.opt_array("tokenizer.ggml.tokens", "a string", |v| v.as_str().map(String::from)).unwrap().unwrap();
        assert_eq!(toks, ["a", "é", "<s>"]);
        assert_eq!(f.header.tensors.len(), 3);
        for (t, want) in f.header.tensors.iter().zip(&b.tensors) {
            assert_eq!(t.name, want.name);
            assert_eq!(t.dims, want.dims);
            assert_eq!(t.ty.code(), want.ty);
            assert_eq!(f.data(t), want.data.as_slice(), "{}", t.name);
            assert_eq!(t.offset % 32, 0);
        }
        assert_eq!(f.header.tensors[0].shape(), [3, 64]);
        assert_eq!(f.header.tensors[0].ty, GgmlType::Q8_0);
        // Typed getters name the key when the type is wrong.
        let e = f.req_u32("some.float").unwrap_err().to_string();
        assert!(e.contains("small.gguf") && e.contains("some.float"), "{e}");
        let e = f.req_str("missing.key").unwrap_err().to_string();
        assert!(e.contains("missing.key") && e.contains("missing"), "{e}");
    }
}

#[test]
fn custom_alignment() {
    let mut b = small().kv("general.alignment", GV::U32(64));
    b.alignment = 64;
    let h = parse(&b).unwrap();
    assert_eq!(h.alignment, 64);
    assert!(h.tensors.iter().all(|t| t.offset % 64 == 0));
    let bad = small().kv("general.alignment", GV::U32(48));
    assert!(err(&bad).contains("general.alignment"));
}

#[test]
fn every_truncation_is_an_error() {
    let bytes = small().build();
    for len in 0..bytes.len() {
        assert!(Header::parse(&bytes[..len]).is_err(), "truncated to {len} bytes parsed");
    }
    let e = Header::parse(&bytes[..bytes.len() - 1]).unwrap_err();
    assert!(e.contains("c.weight") && e.contains("past the end"), "{e}");
    for len in [3, 10, 30, 60, 200] {
        let e = Header::parse(&bytes[..len]).unwrap_err();
        assert!(e.contains("truncated"), "{len}: {e}");
    }
}

#[test]
fn bad_magic_and_versions() {
    let mut bytes = small().build();
    bytes[0] = b'X';
    assert!(Header::parse(&bytes).unwrap_err().contains("magic"));
    for (v, want) in [(1u32, "version 1"), (4, "version 4"), (0, "version 0"), (3u32.swap_bytes(), "big-endian")] {
        let mut b = small();
        b.version = v;
        let e = err(&b);
        assert!(e.contains(want), "version {v}: {e}");
    }
}

#[test]
fn strings_and_arrays() {
    // A key whose length runs past the end of the file.
    let mut b = small();
    b.kv.push(("x".into(), GV::Raw(8, u64::MAX.to_le_bytes().to_vec())));
    let e = err(&b);
    assert!(e.contains("\"x\"") && e.contains("string length"), "{e}");
    // Invalid UTF-8 in a string value, named by its key.
    let mut bad = 2u64.to_le_bytes().to_vec();
    bad.extend([0xC3, 0x28]);
    let b = small().kv("bad.utf8", GV::Raw(8, bad));
    let e = err(&b);
    assert!(e.contains("bad.utf8") && e.contains("UTF-8"), "{e}");
    // Invalid UTF-8 in a tensor name.
    let mut b = small();
    b.tensors[1].name = "zq".into();
    let mut bytes = b.build();
    let at = bytes.windows(10).position(|w| w == [2, 0, 0, 0, 0, 0, 0, 0, b'z', b'q']).unwrap();
    bytes[at + 8] = 0xFF;
    let e = Header::parse(&bytes).unwrap_err();
    assert!(e.contains("UTF-8") && e.contains("tensor 1"), "{e}");
    // An array count that overflows.
    let mut arr = 4u32.to_le_bytes().to_vec();
    arr.extend(u64::MAX.to_le_bytes());
    let e = err(&small().kv("big.array", GV::Raw(9, arr)));
    assert!(e.contains("big.array") && e.contains("array count"), "{e}");
    // Arrays nested too deep, unknown value and element types, bools that are not 0/1.
    let mut nested = Vec::new();
    for _ in 0..4 {
        nested.extend(9u32.to_le_bytes());
        nested.extend(1u64.to_le_bytes());
    }
    assert!(err(&small().kv("deep", GV::Raw(9, nested))).contains("nested"));
    assert!(err(&small().kv("t", GV::Raw(13, vec![0; 8]))).contains("unknown value type 13"));
    let mut arr = 99u32.to_le_bytes().to_vec();
    arr.extend(1u64.to_le_bytes());
    assert!(err(&small().kv("t", GV::Raw(9, arr))).contains("element type 99"));
    assert!(err(&small().kv("flag", GV::Raw(7, vec![2]))).contains("bool"));
    assert!(err(&small().kv("llama.block_count", GV::U32(3))).contains("twice"));
}

#[test]
fn absurd_counts() {
    let mut b = small();
    b.n_kv_override = Some(1 << 60);
    assert!(err(&b).contains("kv count"), "{}", err(&b));
    let mut b = small();
    b.n_tensors_override = Some(u64::MAX);
    assert!(err(&b).contains("tensor count"));
    // A count one larger than the real one runs into the tensor infos and fails there.
    let mut b = small();
    b.n_kv_override = Some(b.kv.len() as u64 + 1);
    assert!(parse(&b).is_err());
}

#[test]
fn tensor_infos() {
    let mut b = small();
    b.tensors[0].dims = vec![32, 2, 1, 1, 1];
    let e = err(&b);
    assert!(e.contains("a.weight") && e.contains("n_dims 5"), "{e}");
    let mut b = small();
    b.tensors[1].dims = vec![1 << 32, 1 << 32, 1 << 32];
    let e = err(&b);
    assert!(e.contains("b.weight") && e.contains("overflow"), "{e}");
    let mut b = small();
    b.tensors[1].ty = 99;
    let e = err(&b);
    assert!(e.contains("b.weight") && e.contains("unknown ggml type 99"), "{e}");
    let mut b = small();
    b.tensors[0].dims = vec![48, 4];
    assert!(err(&b).contains("blocks"));
    let mut b = small();
    b.tensors[2].offset = Some(1 << 40);
    let e = err(&b);
    assert!(e.contains("c.weight") && e.contains("past the end"), "{e}");
    let mut b = small();
    b.tensors[2].offset = Some(u64::MAX - 31);
    assert!(err(&b).contains("c.weight"));
    let mut b = small();
    b.tensors[2].offset = Some(40);
    let e = err(&b);
    assert!(e.contains("c.weight") && e.contains("alignment"), "{e}");
    let mut b = small();
    b.tensors[2].offset = Some(0);
    assert!(err(&b).contains("overlap"));
    let mut b = small();
    b.tensors[2].name = "a.weight".into();
    assert!(err(&b).contains("twice"));
}

#[test]
fn random_corruption_never_panics() {
    let bytes = small().build();
    let mut rng = Rng(99);
    for _ in 0..20_000 {
        let mut b = bytes.clone();
        for _ in 0..1 + rng.next_u64() % 4 {
            let at = (rng.next_u64() % b.len() as u64) as usize;
            b[at] = (rng.next_u64() >> 56) as u8;
        }
        let _ = Header::parse(&b);
    }
}

#[test]
fn gstr_helper_is_length_prefixed() {
    assert_eq!(gstr("ab"), [2, 0, 0, 0, 0, 0, 0, 0, b'a', b'b']);
}

/// Files written by gguf-py's `GGUFWriter` (fuzz/make_seeds.py) read back with the expected layout.
#[test]
fn gguf_py_written_files_parse() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/gguf");
    let f = GgufFile::open(&dir.join("tensors.gguf")).unwrap();
    assert_eq!(f.header.alignment, 64);
    let names: Vec<&str> = f.header.tensors.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "token_embd.weight",
            "blk.0.attn_norm.weight",
            "blk.0.attn_q.weight",
            "blk.0.ffn_up.weight",
            "blk.0.ffn_down.weight",
            "x"
        ]
    );
    assert_eq!(f.header.tensors[0].dims, [64, 4]);
    assert_eq!(f.header.tensors[5].dims, [2, 2, 3]);
    assert_eq!(f.header.tensors[3].ty, GgmlType::Q4_K);
    let f = GgufFile::open(&dir.join("kv.gguf")).unwrap();
    assert_eq!(f.req_str("general.name").unwrap(), "seed");
    assert_eq!(f.opt_bool("tokenizer.ggml.add_bos_token").unwrap(), Some(false));
    assert_eq!(f.req_f32("llama.rope.freq_base").unwrap(), 10000.0);
    let toks = f.opt_array("tokenizer.ggml.tokens", "a string", |v| v.as_str().map(String::from)).unwrap().unwrap();
    assert_eq!(toks, ["a", "b", "é", "<s>"]);
    assert!(GgufFile::open(&dir.join("empty.gguf")).unwrap().header.tensors.is_empty());
}
