//! Conversion of synthetic models: a tiny GGUF llama holding every source type omex converts, and tiny
//! Hugging Face llama/qwen2 directories (F32 and BF16 safetensors, single and sharded). Each converts with
//! every target, validates, and its tensors come back exactly (lossless layouts) or within the quantizer's
//! error bound.

#[path = "common/synth.rs"]
mod synth;

use omex::format::{DType, ModelDir};
use omex::quant::{dequant, GgmlType};
use std::path::{Path, PathBuf};
use synth::{ty, Rng};

const TARGETS: [&str; 5] = ["keep", "f16", "int8", "int4", "ternary"];

fn convert(input: &Path, out: &Path, quant: &str) {
    let (ok, stdout, stderr) = omex!("convert", input, "-o", out, "--quant", quant);
    assert!(ok, "convert --quant {quant} failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("tensors") && stdout.contains("time"), "{stdout}");
    let (ok, stdout, stderr) = omex!("validate", out);
    assert!(ok, "validate {} failed:\n{stdout}\n{stderr}", out.display());
    assert!(stdout.contains("valid"), "{stdout}");
}

/// The omex dtype a source type must become under `quant` (2-D tensors).
fn expected_dtype(src: u32, quant: &str) -> DType {
    match quant {
        "keep" => match src {
            ty::Q8_0 => DType::Int8,
            ty::Q4_0 | ty::Q4_1 => DType::Int4,
            // GGUF blocks omex reads as they are.
            ty::Q4_K => DType::Q4K,
            ty::Q5_K => DType::Q5K,
            ty::Q6_K => DType::Q6K,
            ty::Q5_0 => DType::Q5_0,
            ty::F16 => DType::F16,
            _ => DType::F32,
        },
        other => other.parse().unwrap(),
    }
}

/// Compares a converted tensor with its source values: bit-exact for lossless layouts, else within the bound.
fn check_tensor(dir: &ModelDir, name: &str, src: &[f32], want: DType, exact: bool) {
    let (dtype, _, got) = synth::omex_values(dir, name);
    assert_eq!(dtype, want, "{name}");
    assert_eq!(got.len(), src.len(), "{name}");
    if exact {
        for (i, (a, b)) in src.iter().zip(&got).enumerate() {
            assert!(a == b, "{name} value {i}: source {a}, omex {b}");
        }
        return;
    }
    for (g, (sg, og)) in src.chunks(32).zip(got.chunks(32)).enumerate() {
        let Some(bound) = synth::quant_bound(dtype, sg) else {
            continue;
        };
        for (a, b) in sg.iter().zip(og) {
            assert!((a - b).abs() <= bound, "{name} group {g}: source {a}, omex {b}, bound {bound}");
        }
    }
}

#[test]
fn tiny_gguf_every_type_every_target() {
    let tmp = synth::tmp_dir("tiny-gguf");
    for untied in [true, false] {
        let b = synth::tiny_llama_gguf(11, untied);
        let gguf = synth::write(&tmp, &format!("tiny-{untied}.gguf"), &b.build());
        for quant in TARGETS {
            let out = tmp.join(format!("tiny-{untied}-{quant}.omex"));
            convert(&gguf, &out, quant);
            let dir = ModelDir::open(&out).unwrap();
            assert_eq!(dir.index.tensors.len(), b.tensors.len());
            for t in &b.tensors {
                let gt = GgmlType::from_code(t.ty).unwrap();
                let mut src = vec![0f32; t.dims.iter().product::<u64>() as usize];
                dequant::dequantize(gt, &t.data, &mut src).unwrap();
                let name = t.name.strip_suffix(".weight").unwrap();
                let one_d = t.dims.len() == 1;
                let want = if one_d { DType::F32 } else { expected_dtype(t.ty, quant) };
                let kept_blocks = [ty::Q4_K, ty::Q5_K, ty::Q6_K, ty::Q5_0];
                let lossless = one_d
                    || (quant == "keep" && [ty::Q8_0, ty::Q4_0, ty::Q4_1, ty::F32, ty::F16, ty::BF16].contains(&t.ty))
                    || (quant == "keep" && kept_blocks.contains(&t.ty))
                    || (quant == "f16" && t.ty == ty::F16);
                check_tensor(&dir, name, &src, want, lossless);
                if quant == "keep" && !one_d && kept_blocks.contains(&t.ty) {
                    let view = dir.tensor(name).unwrap();
                    assert!(view.data() == t.data.as_slice(), "{name}: the kept blocks are not the GGUF's bytes");
                    assert_eq!(view.entry.sections.len(), 1, "{name}: a kept block tensor has its data section only");
                }
                let e = dir.index.get(name).unwrap();
                let source = e.source.as_ref().unwrap();
                assert_eq!(source["format"], "gguf");
                assert_eq!(source["type"], gt.name());
            }
            let graph = omex::graph::Transformer::from_graph(&dir.graph, &out).unwrap();
            assert_eq!(graph.tied_embeddings, !untied);
            assert_eq!(graph.rope.style, omex::graph::RopeStyle::Interleaved);
            assert_eq!(dir.metadata.quantization.kind, quant);
        }
    }
}

#[test]
fn tiny_gguf_tokenizer_and_inspect() {
    let tmp = synth::tmp_dir("tiny-gguf-tok");
    let gguf = synth::write(&tmp, "tiny.gguf", &synth::tiny_llama_gguf(5, false).build());
    let out = tmp.join("tiny.omex");
    convert(&gguf, &out, "keep");
    let (ok, stdout, stderr) = omex!("tokenize", out, "--text", "hello world", "--json");
    assert!(ok, "{stderr}");
    let ids: Vec<u32> = serde_json::from_str(stdout.trim()).unwrap();
    let (tokens, _) = synth::tiny_vocab();
    let pieces: Vec<&str> = ids.iter().map(|&i| tokens[i as usize].as_str()).collect();
    assert_eq!(pieces, ["hell", "o", "Ġw", "o", "r", "l", "d"]);
    let list = ids.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
    let (ok, stdout, _) = omex!("tokenize", out, "--decode", list);
    assert!(ok);
    assert_eq!(stdout.trim_end_matches('\n'), "hello world");
    let (ok, stdout, _) = omex!("tokenize", out, "--decode", "5 6 7");
    assert!(ok && !stdout.is_empty());
    let (ok, _, stderr) = omex!("tokenize", out, "--decode", "1,x");
    assert!(!ok && stderr.contains("\"x\""), "{stderr}");
    let (ok, _, stderr) = omex!("tokenize", out, "--decode", "999999");
    assert!(!ok && stderr.contains("999999"), "{stderr}");

    let (ok, stdout, _) = omex!("layer-inspect", out, "--json");
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let files = v["files"].as_array().unwrap();
    assert_eq!(files.len(), 2 + synth::LAYERS);
    assert_eq!(files[0]["file"], "embedding.bin");
    assert_eq!(files.last().unwrap()["file"], "head.bin");
    assert_eq!(v["tensors"].as_u64().unwrap() as usize, synth::tiny_llama_tensors(false).len());
    let on_disk: u64 = files
        .iter()
        .map(|f| std::fs::metadata(out.join("weights").join(f["file"].as_str().unwrap())).unwrap().len())
        .sum();
    assert_eq!(v["disk_bytes"].as_u64().unwrap(), on_disk);
    assert!(v["gpu_bytes"].as_u64().unwrap() < on_disk);
    let (ok, stdout, _) = omex!("layer-inspect", out);
    assert!(ok && stdout.contains("layer_1.bin") && stdout.contains("blk.1.ffn_down"), "{stdout}");
}

/// Hidden 96, 3 heads of 32, 1 KV head, FFN 160, vocabulary 262: odd sizes, columns multiples of 32.
const H: u64 = 96;
const F: u64 = 160;
const KV: u64 = 32;

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Values exactly representable in bf16, and their bytes.
fn bf16_tensor(rng: &mut Rng, n: usize) -> (Vec<f32>, Vec<u8>) {
    let v: Vec<f32> = rng.f32s(n, 0.3).iter().map(|x| f32::from_bits(x.to_bits() & 0xFFFF_0000)).collect();
    let b = v.iter().flat_map(|x| ((x.to_bits() >> 16) as u16).to_le_bytes()).collect();
    (v, b)
}

struct HfModel {
    dir: PathBuf,
    /// omex name -> source values.
    values: Vec<(String, Vec<f32>)>,
}

fn hf_model(tmp: &Path, name: &str, arch: &str, tied: bool, shards: usize) -> HfModel {
    let dir = tmp.join(name);
    let vocab = synth::tiny_vocab().0.len() as u64;
    let mut rng = Rng(17 + shards as u64);
    let mut tensors: Vec<(String, &str, Vec<u64>, Vec<u8>)> = Vec::new();
    let mut values = Vec::new();
    let mut add = |hf: String, omex: String, shape: Vec<u64>, rng: &mut Rng| {
        let n = shape.iter().product::<u64>() as usize;
        let (v, bytes, dtype) = if tensors.len().is_multiple_of(2) {
            let v = rng.f32s(n, 0.3);
            let b = f32_bytes(&v);
            (v, b, "F32")
        } else {
            let (v, b) = bf16_tensor(rng, n);
            (v, b, "BF16")
        };
        tensors.push((hf, dtype, shape, bytes));
        values.push((omex, v));
    };
    add("model.embed_tokens.weight".into(), "token_embd".into(), vec![vocab, H], &mut rng);
    for i in 0..2 {
        let p = |s: &str| format!("model.layers.{i}.{s}");
        let o = |s: &str| format!("blk.{i}.{s}");
        add(p("input_layernorm.weight"), o("attn_norm"), vec![H], &mut rng);
        add(p("self_attn.q_proj.weight"), o("attn_q"), vec![H, H], &mut rng);
        add(p("self_attn.k_proj.weight"), o("attn_k"), vec![KV, H], &mut rng);
        add(p("self_attn.v_proj.weight"), o("attn_v"), vec![KV, H], &mut rng);
        add(p("self_attn.o_proj.weight"), o("attn_output"), vec![H, H], &mut rng);
        add(p("post_attention_layernorm.weight"), o("ffn_norm"), vec![H], &mut rng);
        add(p("mlp.gate_proj.weight"), o("ffn_gate"), vec![F, H], &mut rng);
        add(p("mlp.up_proj.weight"), o("ffn_up"), vec![F, H], &mut rng);
        add(p("mlp.down_proj.weight"), o("ffn_down"), vec![H, F], &mut rng);
        if arch == "Qwen2ForCausalLM" {
            add(p("self_attn.q_proj.bias"), o("attn_q.bias"), vec![H], &mut rng);
            add(p("self_attn.k_proj.bias"), o("attn_k.bias"), vec![KV], &mut rng);
            add(p("self_attn.v_proj.bias"), o("attn_v.bias"), vec![KV], &mut rng);
        }
    }
    add("model.norm.weight".into(), "output_norm".into(), vec![H], &mut rng);
    if !tied {
        add("lm_head.weight".into(), "output".into(), vec![vocab, H], &mut rng);
    }
    let config = serde_json::json!({
        "architectures": [arch], "hidden_size": H, "intermediate_size": F, "num_hidden_layers": 2,
        "num_attention_heads": 3, "num_key_value_heads": 1, "vocab_size": vocab, "max_position_embeddings": 1024,
        "rms_norm_eps": 1e-5, "rope_theta": 50000.0, "tie_word_embeddings": tied, "hidden_act": "silu",
        "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 256},
    });
    synth::write(&dir, "config.json", config.to_string().as_bytes());
    synth::write(&dir, "tokenizer.json", synth::tiny_tokenizer_json().as_bytes());
    if shards == 1 {
        synth::write(&dir, "model.safetensors", &synth::safetensors(&tensors));
    } else {
        let per = tensors.len().div_ceil(shards);
        let mut map = serde_json::Map::new();
        for (s, chunk) in tensors.chunks(per).enumerate() {
            let file = format!("model-{:05}-of-{shards:05}.safetensors", s + 1);
            synth::write(&dir, &file, &synth::safetensors(chunk));
            for t in chunk {
                map.insert(t.0.clone(), serde_json::json!(file));
            }
        }
        let index = serde_json::json!({"metadata": {"total_size": 0}, "weight_map": map});
        synth::write(&dir, "model.safetensors.index.json", index.to_string().as_bytes());
    }
    HfModel { dir, values }
}

#[test]
fn tiny_hf_models_convert_and_round_trip() {
    let tmp = synth::tmp_dir("tiny-hf");
    let variants = [
        ("llama-untied", "LlamaForCausalLM", false, 1),
        ("llama-tied-sharded", "LlamaForCausalLM", true, 3),
        ("qwen2", "Qwen2ForCausalLM", true, 1),
        ("mistral", "MistralForCausalLM", false, 2),
    ];
    for (name, arch, tied, shards) in variants {
        let m = hf_model(&tmp, name, arch, tied, shards);
        for quant in ["keep", "f16", "int8", "int4", "ternary"] {
            let out = tmp.join(format!("{name}-{quant}.omex"));
            convert(&m.dir, &out, quant);
            let dir = ModelDir::open(&out).unwrap();
            assert_eq!(dir.index.tensors.len(), m.values.len(), "{name}");
            for (tname, src) in &m.values {
                let one_d = dir.index.get(tname).unwrap().shape.len() == 1;
                let want = if one_d || quant == "keep" { DType::F32 } else { quant.parse().unwrap() };
                check_tensor(&dir, tname, src, want, want == DType::F32);
            }
            let t = omex::graph::Transformer::from_graph(&dir.graph, &out).unwrap();
            assert_eq!(t.rope.style, omex::graph::RopeStyle::Half, "HF checkpoints are not permuted");
            assert_eq!(t.tied_embeddings, tied);
            assert_eq!((t.n_heads, t.n_kv_heads, t.head_dim, t.hidden_size), (3, 1, 32, 96));
            assert!(matches!(
                t.rope.scaling,
                Some(omex::graph::RopeScaling::Llama3 { original_context_length: 256, .. })
            ));
            assert_eq!(t.blocks[0].attn_qkv_bias.is_some(), arch == "Qwen2ForCausalLM");
            assert_eq!(t.architecture, arch.strip_suffix("ForCausalLM").unwrap().to_lowercase());
        }
    }
    // A .safetensors file inside a model directory is accepted as the directory.
    let m = hf_model(&tmp, "by-file", "LlamaForCausalLM", false, 1);
    let out = tmp.join("by-file.omex");
    convert(&m.dir.join("model.safetensors"), &out, "keep");
}

#[test]
fn gguf_qwen2_biases_and_half_rope() {
    let tmp = synth::tmp_dir("tiny-qwen2");
    let mut b = synth::tiny_llama_gguf(21, true);
    for (k, v) in b.kv.iter_mut() {
        if let Some(rest) = k.strip_prefix("llama.") {
            *k = format!("qwen2.{rest}");
        }
        if k == "general.architecture" {
            *v = synth::GV::Str("qwen2".into());
        }
    }
    let mut rng = Rng(4);
    let kv = synth::HIDDEN / synth::HEADS as u64 * synth::KV_HEADS as u64;
    let mut biases = Vec::new();
    for i in 0..synth::LAYERS {
        for (n, len) in [("attn_q", synth::HIDDEN), ("attn_k", kv), ("attn_v", kv)] {
            let v = rng.f32s(len as usize, 0.1);
            b = b.tensor(
                &format!("blk.{i}.{n}.bias"),
                &[len],
                ty::F32,
                v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            );
            biases.push((format!("blk.{i}.{n}.bias"), v));
        }
    }
    let gguf = synth::write(&tmp, "qwen2.gguf", &b.build());
    for quant in ["keep", "int4"] {
        let out = tmp.join(format!("qwen2-{quant}.omex"));
        convert(&gguf, &out, quant);
        let dir = ModelDir::open(&out).unwrap();
        let t = omex::graph::Transformer::from_graph(&dir.graph, &out).unwrap();
        assert_eq!(t.architecture, "qwen2");
        assert_eq!(t.rope.style, omex::graph::RopeStyle::Half);
        assert_eq!(t.blocks[1].attn_qkv_bias.as_ref().unwrap()[2], "blk.1.attn_v.bias");
        for (name, v) in &biases {
            check_tensor(&dir, name, v, DType::F32, true);
            assert_eq!(dir.index.get(name).unwrap().file, format!("layer_{}.bin", &name[4..5]));
        }
    }
}

/// llama.cpp stores Llama 3.1 rope scaling as `rope_freqs.weight` (a divisor per rotated pair).
fn llama3_divisors(base: f64, dims: usize, factor: f64, low: f64, high: f64, orig: f64) -> Vec<f32> {
    (0..dims / 2)
        .map(|i| {
            let f = 1.0 / base.powf(2.0 * i as f64 / dims as f64);
            let wavelen = 2.0 * std::f64::consts::PI / f;
            if wavelen < orig / high {
                1.0
            } else if wavelen > orig / low {
                factor as f32
            } else {
                let smooth = (orig / wavelen - low) / (high - low);
                (1.0 / ((1.0 - smooth) / factor + smooth)) as f32
            }
        })
        .collect()
}

#[test]
fn gguf_llama3_rope_freqs_become_llama3_scaling() {
    let tmp = synth::tmp_dir("tiny-llama3");
    let head_dim = (synth::HIDDEN / synth::HEADS as u64) as usize;
    let div = llama3_divisors(10000.0, head_dim, 8.0, 1.0, 4.0, 8192.0);
    assert!(div.contains(&1.0) && div.contains(&8.0) && div.iter().any(|&d| d > 1.0 && d < 8.0));
    let bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let b = synth::tiny_llama_gguf(31, true).tensor("rope_freqs.weight", &[head_dim as u64 / 2], ty::F32, bytes(&div));
    let gguf = synth::write(&tmp, "llama3.gguf", &b.build());
    let out = tmp.join("llama3.omex");
    convert(&gguf, &out, "keep");
    let dir = ModelDir::open(&out).unwrap();
    let t = omex::graph::Transformer::from_graph(&dir.graph, &out).unwrap();
    let want = omex::graph::RopeScaling::Llama3 {
        factor: 8.0,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_context_length: 8192,
    };
    assert_eq!(t.rope.scaling, Some(want));
    assert!(dir.index.get("rope_freqs").is_none());
    // Divisors that are not llama3's are refused, naming the tensor.
    let mut odd = div.clone();
    odd[3] = 2.5;
    let b = synth::tiny_llama_gguf(31, true).tensor("rope_freqs.weight", &[head_dim as u64 / 2], ty::F32, bytes(&odd));
    let gguf = synth::write(&tmp, "odd.gguf", &b.build());
    let (ok, _, stderr) = omex!("convert", gguf, "-o", tmp.join("odd.omex"));
    assert!(!ok && stderr.contains("rope_freqs.weight"), "{stderr}");
}
