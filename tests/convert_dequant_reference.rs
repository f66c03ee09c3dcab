//! omex's dequantization of every source type against gguf-py's `gguf.quants.dequantize`, bit for bit, on
//! random blocks (tests/data/ggml/dequant_reference.json, made by scripts/make_ggml_fixture.py).

use omex::quant::{dequant, GgmlType};

#[test]
fn dequantization_matches_gguf_py_bit_for_bit() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/ggml/dequant_reference.json");
    let fixture: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let fixture = fixture.as_object().unwrap();
    assert_eq!(fixture.len(), 10);
    for (name, case) in fixture {
        let ty = (0..64).filter_map(GgmlType::from_code).find(|t| t.name() == name).unwrap();
        let n = case["n"].as_u64().unwrap() as usize;
        let hex = case["bytes"].as_str().unwrap();
        let bytes: Vec<u8> =
            (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect();
        let want: Vec<u32> = case["f32_bits"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        let mut got = vec![0f32; n];
        dequant::dequantize(ty, &bytes, &mut got).unwrap();
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g.to_bits(), *w, "{name} value {i}: omex {g}, gguf-py {}", f32::from_bits(*w));
        }
    }
}
