//! `omex validate` on damaged models: every problem is reported (not just the first), each naming the file,
//! with a non-zero exit; warnings are separate and do not fail validation.

#[path = "common/synth.rs"]
mod synth;

use serde_json::Value;
use std::path::{Path, PathBuf};

/// A fresh copy of the tiny GGUF llama converted with `quant`.
fn model(name: &str, quant: &str) -> PathBuf {
    let tmp = synth::tmp_dir(&format!("validate-{name}"));
    let gguf = synth::write(&tmp, "tiny.gguf", &synth::tiny_llama_gguf(3, true).build());
    let out = tmp.join("tiny.omex");
    let (ok, _, stderr) = omex!("convert", gguf, "-o", out, "--quant", quant);
    assert!(ok, "{stderr}");
    out
}

/// Runs `validate --json`: (exit ok, problems, warnings).
fn validate(dir: &Path) -> (bool, Vec<String>, Vec<String>) {
    let (ok, stdout, stderr) = omex!("validate", dir, "--json");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let v: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    let strings =
        |k: &str| v[k].as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect::<Vec<_>>();
    assert_eq!(v["ok"].as_bool().unwrap(), ok);
    (ok, strings("problems"), strings("warnings"))
}

fn has(list: &[String], all: &[&str]) -> bool {
    list.iter().any(|p| all.iter().all(|s| p.contains(s)))
}

fn index(dir: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(dir.join("weights/quantization.json")).unwrap()).unwrap()
}

/// Byte offset of a tensor's data section in its file.
fn data_offset(dir: &Path, tensor: &str) -> (String, usize) {
    let ix = index(dir);
    let t = ix["tensors"].as_array().unwrap().iter().find(|t| t["name"] == tensor).unwrap();
    let s = t["sections"].as_array().unwrap().iter().find(|s| s["kind"] == "data").unwrap();
    (t["file"].as_str().unwrap().to_string(), s["offset"].as_u64().unwrap() as usize)
}

#[test]
fn clean_model_is_valid() {
    let dir = model("clean", "keep");
    let (ok, problems, warnings) = validate(&dir);
    assert!(ok && problems.is_empty() && warnings.is_empty(), "{problems:?} {warnings:?}");
    let (ok, stdout, _) = omex!("validate", dir);
    assert!(ok && stdout.contains("valid"), "{stdout}");
}

#[test]
fn flipped_byte_is_a_checksum_error_naming_the_file() {
    let dir = model("flip", "keep");
    let (file, off) = data_offset(&dir, "blk.0.ffn_up");
    assert_eq!(file, "layer_0.bin");
    let path = dir.join("weights/layer_0.bin");
    let mut b = std::fs::read(&path).unwrap();
    b[off + 10] ^= 0x01;
    std::fs::write(&path, b).unwrap();
    let (ok, problems, _) = validate(&dir);
    assert!(!ok);
    assert!(has(&problems, &["weights/layer_0.bin", "checksum mismatch"]), "{problems:?}");
    let (ok, stdout, stderr) = omex!("validate", dir);
    assert!(!ok && stdout.contains("problem: weights/layer_0.bin: checksum mismatch"), "{stdout}");
    assert!(stderr.contains("1 problem found"), "{stderr}");
}

#[test]
fn truncated_layer_is_a_record_error() {
    let dir = model("trunc", "keep");
    let path = dir.join("weights/layer_1.bin");
    let b = std::fs::read(&path).unwrap();
    std::fs::write(&path, &b[..b.len() / 2]).unwrap();
    let (ok, problems, _) = validate(&dir);
    assert!(!ok);
    assert!(has(&problems, &["weights/layer_1.bin", "record of tensor"]), "{problems:?}");
    assert!(has(&problems, &["weights/layer_1.bin", "size mismatch"]), "{problems:?}");
}

#[test]
fn corrupted_index_offset() {
    let dir = model("offset", "keep");
    let mut ix = index(&dir);
    let t = ix["tensors"].as_array_mut().unwrap().iter_mut().find(|t| t["name"] == "blk.0.attn_k").unwrap();
    let off = t["offset"].as_u64().unwrap();
    t["offset"] = (off + 256).into();
    std::fs::write(dir.join("weights/quantization.json"), serde_json::to_vec_pretty(&ix).unwrap()).unwrap();
    let (ok, problems, _) = validate(&dir);
    assert!(!ok);
    assert!(has(&problems, &["weights/layer_0.bin", "blk.0.attn_k", &format!("offset {}", off + 256)]), "{problems:?}");
    assert!(has(&problems, &["weights/quantization.json", "checksum mismatch"]), "{problems:?}");
}

#[test]
fn missing_tokenizer_and_every_problem_listed() {
    let dir = model("many", "keep");
    std::fs::remove_dir_all(dir.join("tokenizer")).unwrap();
    std::fs::remove_file(dir.join("weights/head.bin")).unwrap();
    let mut meta: Value = serde_json::from_slice(&std::fs::read(dir.join("metadata.json")).unwrap()).unwrap();
    meta["omex_version"] = "0.9".into();
    std::fs::write(dir.join("metadata.json"), serde_json::to_vec(&meta).unwrap()).unwrap();
    let (ok, problems, _) = validate(&dir);
    assert!(!ok);
    assert!(has(&problems, &["tokenizer/tokenizer.json", "missing"]), "{problems:?}");
    assert!(has(&problems, &["weights/head.bin", "listed in metadata.json but missing"]), "{problems:?}");
    assert!(has(&problems, &["weights/head.bin", "cannot be read"]), "{problems:?}");
    assert!(has(&problems, &["omex_version", "0.9"]), "{problems:?}");
    assert!(problems.len() >= 5, "{problems:?}");
}

#[test]
fn graph_and_index_disagreements() {
    let dir = model("graph", "keep");
    let mut ix = index(&dir);
    let tensors = ix["tensors"].as_array_mut().unwrap();
    let t = tensors.iter_mut().find(|t| t["name"] == "blk.1.ffn_gate").unwrap();
    t["shape"] = serde_json::json!([256, 512]);
    tensors.retain(|t| t["name"] != "output_norm");
    std::fs::write(dir.join("weights/quantization.json"), serde_json::to_vec(&ix).unwrap()).unwrap();
    let mut g: Value = serde_json::from_slice(&std::fs::read(dir.join("graph.json")).unwrap()).unwrap();
    g["edges"].as_array_mut().unwrap().push(serde_json::json!({"from": "nowhere.out", "to": "lm_head.input"}));
    std::fs::write(dir.join("graph.json"), serde_json::to_vec(&g).unwrap()).unwrap();
    let (ok, problems, _) = validate(&dir);
    assert!(!ok);
    assert!(has(&problems, &["blk.1.ffn_gate", "shape [256, 512]"]), "{problems:?}");
    assert!(has(&problems, &["weights/layer_1.bin", "blk.1.ffn_gate", "index says shape"]), "{problems:?}");
    assert!(has(&problems, &["output_norm", "missing"]), "{problems:?}");
    assert!(has(&problems, &["graph.json", "nowhere"]), "{problems:?}");
}

/// The op program is checked: an architecture no file in src/arch/ builds, and a qwen2 graph whose blocks
/// name no q/k/v biases.
#[test]
fn graph_without_an_op_program() {
    let dir = model("arch", "keep");
    let graph = dir.join("graph.json");
    let original: Value = serde_json::from_slice(&std::fs::read(&graph).unwrap()).unwrap();
    for (kind, expected) in [("transformer/gpt9", "architecture \"gpt9\""), ("transformer/qwen2", "biases")] {
        let mut g = original.clone();
        g["graph_type"] = Value::from(kind);
        std::fs::write(&graph, serde_json::to_vec(&g).unwrap()).unwrap();
        let (ok, problems, _) = validate(&dir);
        assert!(!ok);
        assert!(has(&problems, &["graph.json", expected]), "{kind}: {problems:?}");
    }
}

#[test]
fn ternary_codes_and_optional_folders() {
    let dir = model("ternary", "ternary");
    let (file, off) = data_offset(&dir, "blk.0.attn_q");
    let path = dir.join("weights").join(&file);
    let mut b = std::fs::read(&path).unwrap();
    b[off] = 0xFF;
    std::fs::write(&path, b).unwrap();
    synth::write(&dir.join("agents"), "good.json", br#"{"agent_id": "default"}"#);
    synth::write(&dir.join("agents"), "bad.json", br#"{"name": "no id"}"#);
    synth::write(&dir.join("agents"), "notes.md", b"hello");
    synth::write(&dir.join("preprocessors"), "broken.json", b"{not json");
    synth::write(&dir.join("adapters"), "lora.bin", b"\x00\x01");
    synth::write(&dir, "README.txt", b"hi");
    let (ok, problems, warnings) = validate(&dir);
    assert!(!ok);
    assert!(has(&problems, &[&format!("weights/{file}"), "blk.0.attn_q", "invalid ternary codes"]), "{problems:?}");
    assert!(has(&problems, &["agents/bad.json", "agent_id"]), "{problems:?}");
    assert!(has(&problems, &["preprocessors/broken.json", "invalid JSON"]), "{problems:?}");
    assert!(!has(&problems, &["agents/good.json"]), "{problems:?}");
    assert!(has(&warnings, &["agents/notes.md", "not a JSON file"]), "{warnings:?}");
    assert!(has(&warnings, &["README.txt", "not part of the omex layout"]), "{warnings:?}");
    assert!(has(&warnings, &["adapters/lora.bin", "not listed"]), "{warnings:?}");
}

#[test]
fn warnings_alone_do_not_fail() {
    let dir = model("warn", "int4");
    synth::write(&dir, "extra.json", b"{}");
    let (ok, problems, warnings) = validate(&dir);
    assert!(ok, "{problems:?}");
    assert!(has(&warnings, &["extra.json"]), "{warnings:?}");
    let (ok, stdout, _) = omex!("validate", dir);
    assert!(ok && stdout.contains("warning: extra.json"), "{stdout}");
}

#[test]
fn not_a_model() {
    let tmp = synth::tmp_dir("validate-empty");
    let (ok, problems, _) = validate(&tmp);
    assert!(!ok);
    assert!(
        has(&problems, &["metadata.json"]) && has(&problems, &["graph.json"]) && has(&problems, &["quantization.json"]),
        "{problems:?}"
    );
    let (ok, problems, _) = validate(&tmp.join("nope"));
    assert!(!ok && has(&problems, &["not a directory"]), "{problems:?}");
}
