//! Bad inputs to `omex convert`: each is a clear error naming the file and the field, a non-zero exit, never
//! a panic, and no output directory (not even a half-written one) is left behind.

#[path = "common/synth.rs"]
mod synth;

use std::path::Path;
use synth::GV;

/// Runs a conversion that must fail; returns stderr after checking the failure is clean.
fn fails(input: &Path, out: &Path) -> String {
    let (ok, stdout, stderr) = omex!("convert", input, "-o", out);
    assert!(!ok, "converting {} succeeded:\n{stdout}", input.display());
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(!out.exists(), "a failed conversion left {}", out.display());
    let parent = out.parent().unwrap();
    let leftovers: Vec<_> = std::fs::read_dir(parent)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".partial"))
        .collect();
    assert!(leftovers.is_empty(), "staging directories left: {leftovers:?}");
    stderr
}

fn gguf_case(tmp: &Path, name: &str, bytes: &[u8]) -> String {
    let input = synth::write(tmp, &format!("{name}.gguf"), bytes);
    let e = fails(&input, &tmp.join(format!("{name}.omex")));
    assert!(e.contains(&format!("{name}.gguf")), "the error does not name the file: {e}");
    e
}

#[test]
fn bad_gguf_files() {
    let tmp = synth::tmp_dir("bad-gguf");
    let good = synth::tiny_llama_gguf(1, false);
    let bytes = good.build();

    let e = gguf_case(&tmp, "truncated", &bytes[..bytes.len() - 100]);
    assert!(e.contains("output_norm.weight") && e.contains("past the end"), "{e}");
    let e = gguf_case(&tmp, "header-only", &bytes[..40]);
    assert!(e.contains("truncated"), "{e}");
    let mut wrong = bytes.clone();
    wrong[..4].copy_from_slice(b"GGML");
    let e = gguf_case(&tmp, "magic", &wrong);
    assert!(e.contains("magic"), "{e}");
    let e = gguf_case(&tmp, "empty", &[]);
    assert!(e.contains("truncated"), "{e}");

    let mut b = good.clone();
    b.tensors[1].dims = vec![1 << 40, 1 << 40];
    let e = gguf_case(&tmp, "overflow", &b.build());
    assert!(e.contains("blk.0.attn_norm.weight") && e.contains("overflow"), "{e}");
    let mut b = good.clone();
    b.tensors[2].ty = 77;
    let e = gguf_case(&tmp, "dtype", &b.build());
    assert!(e.contains("blk.0.attn_q.weight") && e.contains("unknown ggml type 77"), "{e}");
    let mut b = good.clone();
    b.tensors[3].offset = Some(1 << 50);
    let e = gguf_case(&tmp, "offset", &b.build());
    assert!(e.contains("blk.0.attn_k.weight") && e.contains("past the end"), "{e}");

    let mut bad = 3u64.to_le_bytes().to_vec();
    bad.extend([b'a', 0xFF, b'b']);
    let b = good.clone().kv("general.description", GV::Raw(8, bad));
    let e = gguf_case(&tmp, "utf8", &b.build());
    assert!(e.contains("general.description") && e.contains("UTF-8"), "{e}");

    // A type ggml has but omex does not convert, named with its tensor.
    let mut b = good.clone();
    b.tensors[2].ty = 16; // IQ2_XXS: 66 bytes per 256 values
    b.tensors[2].data = vec![0; (synth::HIDDEN * synth::HIDDEN / 256 * 66) as usize];
    let e = gguf_case(&tmp, "iq2", &b.build());
    assert!(e.contains("blk.0.attn_q.weight") && e.contains("IQ2_XXS"), "{e}");
}

#[test]
fn bad_gguf_models() {
    let tmp = synth::tmp_dir("bad-gguf-model");
    let good = synth::tiny_llama_gguf(2, false);
    let without = |key: &str| {
        let mut b = good.clone();
        b.kv.retain(|(k, _)| k != key);
        b.build()
    };
    let e = gguf_case(&tmp, "no-tokenizer", &without("tokenizer.ggml.tokens"));
    assert!(e.contains("tokenizer") && e.contains("tokenizer.ggml.tokens"), "{e}");
    let e = gguf_case(&tmp, "no-layers", &without("llama.block_count"));
    assert!(e.contains("llama.block_count") && e.contains("missing"), "{e}");
    let mut b = good.clone();
    b.kv.retain(|(k, _)| k != "general.architecture");
    let b = b.kv("general.architecture", GV::Str("gpt2".into()));
    let e = gguf_case(&tmp, "arch", &b.build());
    assert!(e.contains("\"gpt2\"") && e.contains("not supported"), "{e}");
    let b = good.clone().kv("llama.attention.head_count_kv", GV::Str("three".into()));
    let e = gguf_case(&tmp, "kv-type", &b.build());
    assert!(e.contains("llama.attention.head_count_kv"), "{e}");
    let mut b = good.clone();
    b.tensors.retain(|t| t.name != "blk.1.ffn_up.weight");
    let e = gguf_case(&tmp, "missing-tensor", &b.build());
    assert!(e.contains("blk.1.ffn_up") && e.contains("missing"), "{e}");
    let mut b = good.clone();
    b.tensors[0].name = "pos_embd.weight".into();
    let e = gguf_case(&tmp, "unknown-tensor", &b.build());
    assert!(e.contains("pos_embd.weight"), "{e}");
    let mut b = good.clone();
    b.kv.retain(|(k, _)| k != "tokenizer.ggml.model");
    let b = b.kv("tokenizer.ggml.model", GV::Str("bert".into()));
    let e = gguf_case(&tmp, "tok-model", &b.build());
    assert!(e.contains("tokenizer") && e.contains("bert"), "{e}");
}

#[test]
fn bad_hf_directories() {
    let tmp = synth::tmp_dir("bad-hf");
    let dir = tmp.join("model");
    let vocab = synth::tiny_vocab().0.len() as u64;
    let config = serde_json::json!({"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 64,
        "num_hidden_layers": 1, "num_attention_heads": 2, "vocab_size": vocab, "tie_word_embeddings": true});
    synth::write(&dir, "config.json", config.to_string().as_bytes());
    let f32s = |n: u64| vec![0u8; 4 * n as usize];
    let mut tensors = vec![("model.embed_tokens.weight".to_string(), "F32", vec![vocab, 64], f32s(vocab * 64))];
    for (n, shape) in [
        ("input_layernorm", vec![64]),
        ("self_attn.q_proj", vec![64, 64]),
        ("self_attn.k_proj", vec![64, 64]),
        ("self_attn.v_proj", vec![64, 64]),
        ("self_attn.o_proj", vec![64, 64]),
        ("post_attention_layernorm", vec![64]),
        ("mlp.gate_proj", vec![64, 64]),
        ("mlp.up_proj", vec![64, 64]),
        ("mlp.down_proj", vec![64, 64]),
    ] {
        let n_el = shape.iter().product();
        tensors.push((format!("model.layers.0.{n}.weight"), "F32", shape, f32s(n_el)));
    }
    tensors.push(("model.norm.weight".into(), "F32", vec![64], f32s(64)));
    synth::write(&dir, "model.safetensors", &synth::safetensors(&tensors));

    // No tokenizer.json.
    let e = fails(&dir, &tmp.join("a.omex"));
    assert!(e.contains("tokenizer.json") && e.contains("not found"), "{e}");
    synth::write(&dir, "tokenizer.json", synth::tiny_tokenizer_json().as_bytes());
    let (ok, _, stderr) = omex!("convert", dir, "-o", tmp.join("ok.omex"));
    assert!(ok, "{stderr}");
    // The output exists now: refused without --force, replaced with it.
    let (ok, _, stderr) = omex!("convert", dir, "-o", tmp.join("ok.omex"));
    assert!(!ok && stderr.contains("--force"), "{stderr}");
    let (ok, _, stderr) = omex!("convert", dir, "-o", tmp.join("ok.omex"), "--force", "--quant", "int8");
    assert!(ok, "{stderr}");
    let (ok, stdout, _) = omex!("validate", tmp.join("ok.omex"));
    assert!(ok, "{stdout}");

    // Offsets past the data, an unknown dtype, a dtype omex does not convert, a wrong shape.
    let st = std::fs::read(dir.join("model.safetensors")).unwrap();
    let n = u64::from_le_bytes(st[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&st[8..8 + n]).unwrap();
    let patch = |tensor: &str, field: &str, value: serde_json::Value, name: &str| {
        let mut h = header.clone();
        h[tensor][field] = value;
        let h = serde_json::to_vec(&h).unwrap();
        let mut out = (h.len() as u64).to_le_bytes().to_vec();
        out.extend(h);
        out.extend(&st[8 + n..]);
        let d = tmp.join(name);
        for f in ["config.json", "tokenizer.json"] {
            synth::write(&d, f, &std::fs::read(dir.join(f)).unwrap());
        }
        synth::write(&d, "model.safetensors", &out);
        fails(&d, &tmp.join(format!("{name}.omex")))
    };
    let norm = "model.norm.weight";
    let e = patch(norm, "data_offsets", serde_json::json!([1u64 << 40, (1u64 << 40) + 256]), "offsets");
    assert!(e.contains("model.safetensors") && e.contains(norm) && e.contains("outside"), "{e}");
    let e = patch(norm, "dtype", serde_json::json!("Q9"), "dtype");
    assert!(e.contains(norm) && e.contains("unknown dtype"), "{e}");
    let e = patch(norm, "dtype", serde_json::json!("I32"), "i32");
    assert!(e.contains(norm) && e.contains("I32"), "{e}");
    let e = patch("model.layers.0.mlp.up_proj.weight", "shape", serde_json::json!([32, 128]), "shape");
    assert!(e.contains("blk.0.ffn_up") && e.contains("[32, 128]"), "{e}");

    // Not a model at all.
    let junk = synth::write(&tmp, "junk.bin", b"hello");
    let e = fails(&junk, &tmp.join("junk.omex"));
    assert!(e.contains("junk.bin"), "{e}");
    let e = fails(&tmp.join("does-not-exist.gguf"), &tmp.join("dne.omex"));
    assert!(e.contains("does-not-exist.gguf"), "{e}");
}
