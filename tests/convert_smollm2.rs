//! The real model (SmolLM2-135M-Instruct Q4_1 GGUF; `$OMEX_SMOLLM2_GGUF` or scripts/fetch-model.sh's cache):
//! every target converts and validates; `keep` is bit-exact for every tensor against an independent
//! dequantization of the GGUF bytes; a tampered copy fails validation naming the file.

mod common;
#[path = "common/synth.rs"]
mod synth;

use half::f16;
use omex::format::{DType, ModelDir};

#[test]
fn every_target_converts_and_validates() {
    let mut sizes = Vec::new();
    for quant in ["keep", "f16", "int8", "int4", "ternary"] {
        let dir = common::smollm2_omex(quant);
        let (ok, stdout, stderr) = omex!("validate", dir);
        assert!(ok, "validate --quant {quant}:\n{stdout}\n{stderr}");
        let m = ModelDir::open(&dir).unwrap();
        assert_eq!(m.metadata.quantization.kind, quant);
        assert_eq!(m.index.tensors.len(), 272);
        assert_eq!(m.metadata.parameter_count, 134_515_008);
        let t = omex::graph::Transformer::from_graph(&m.graph, &dir).unwrap();
        assert_eq!((t.n_layers(), t.hidden_size, t.n_heads, t.n_kv_heads, t.vocab_size), (30, 576, 9, 3, 49152));
        assert!(t.tied_embeddings);
        assert_eq!(t.rope.style, omex::graph::RopeStyle::Interleaved);
        for e in &m.index.tensors {
            let want = match (e.shape.len(), quant) {
                (1, _) => DType::F32,
                (_, "keep") if e.name == "token_embd" => DType::Int8,
                (_, "keep") => DType::Int4,
                (_, q) => q.parse().unwrap(),
            };
            assert_eq!(e.dtype, want, "{quant}: {}", e.name);
        }
        let weights: u64 = m.metadata.files.iter().filter(|f| f.path.ends_with(".bin")).map(|f| f.bytes).sum();
        sizes.push((quant, weights));
    }
    // keep (Q4_1 blocks + Q8_0 embedding) < int8 < f16; ternary smallest.
    let size = |q: &str| sizes.iter().find(|s| s.0 == q).unwrap().1;
    assert!(size("ternary") < size("int4") && size("int4") < size("int8") && size("int8") < size("f16"), "{sizes:?}");
    assert!(size("keep") < 100_000_000, "{sizes:?}");
}

/// ggml's block formulas, written straight from the GGUF bytes: Q8_0 `d * q`, Q4_1 `d * q + m`.
fn ggml_dequant(ty: u32, b: &[u8], n: usize) -> Vec<f32> {
    let h = |at: usize| f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]])).to_f32();
    let mut out = Vec::with_capacity(n);
    match ty {
        0 => out.extend(b[..4 * n].chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap()))),
        8 => {
            for blk in 0..n / 32 {
                let at = blk * 34;
                let d = h(at);
                out.extend((0..32).map(|j| d * (b[at + 2 + j] as i8) as f32));
            }
        }
        3 => {
            for blk in 0..n / 32 {
                let at = blk * 20;
                let (d, m) = (h(at), h(at + 2));
                let qs = &b[at + 4..at + 20];
                out.extend((0..32).map(|j| {
                    let q = if j < 16 { qs[j] & 0x0F } else { qs[j - 16] >> 4 };
                    d * q as f32 + m
                }));
            }
        }
        other => panic!("the SmolLM2 file has no ggml type {other}"),
    }
    out
}

#[test]
fn keep_is_bit_exact_for_every_tensor() {
    let gguf = std::fs::read(common::smollm2_gguf()).unwrap();
    let dir = ModelDir::open(&common::smollm2_omex("keep")).unwrap();
    let table = synth::gguf_tensor_table(&gguf);
    assert_eq!(table.len(), 272);
    let (mut values, mut by_type) = (0usize, std::collections::BTreeMap::new());
    for (name, dims, ty, offset) in &table {
        let n = dims.iter().product::<u64>() as usize;
        let want = ggml_dequant(*ty, &gguf[*offset..], n);
        let (_, shape, got) = synth::omex_values(&dir, name.strip_suffix(".weight").unwrap());
        let rev: Vec<u32> = dims.iter().rev().map(|&d| d as u32).collect();
        assert_eq!(shape, rev, "{name}");
        assert_eq!(got.len(), n, "{name}");
        for (i, (a, b)) in want.iter().zip(&got).enumerate() {
            assert_eq!(a.to_bits(), b.to_bits(), "{name} value {i}: ggml {a}, omex {b}");
        }
        values += n;
        *by_type.entry(*ty).or_insert(0) += 1;
    }
    assert_eq!(values, 134_515_008);
    assert_eq!(by_type.into_iter().collect::<Vec<_>>(), [(0, 61), (3, 210), (8, 1)]);
}

#[test]
fn tampered_real_model_fails_naming_the_file() {
    let src = common::smollm2_omex("keep");
    let tmp = synth::tmp_dir("smollm2-tamper");
    let dst = tmp.join("m.omex");
    for rel in omex::validate::walk(&src).unwrap() {
        let to = dst.join(&rel);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(src.join(&rel), &to).unwrap();
    }
    let m = ModelDir::open(&dst).unwrap();
    let e = m.index.get("blk.7.ffn_down").unwrap();
    let data = e.section(omex::format::SectionKind::Data).unwrap();
    let path = dst.join("weights").join(&e.file);
    let mut b = std::fs::read(&path).unwrap();
    b[data.offset as usize + 1234] ^= 0x80;
    std::fs::write(&path, b).unwrap();
    let (ok, stdout, _) = omex!("validate", dst);
    assert!(!ok);
    assert!(stdout.contains("problem: weights/layer_7.bin: checksum mismatch"), "{stdout}");
}
