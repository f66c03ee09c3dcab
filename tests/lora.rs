//! LoRA adapters on the real SmolLM2 against `transformers` + `peft` (tests/data/lora/, made by
//! scripts/reference/make_lora_fixture.py): imported with `omex adapter add`, applied unmerged on the CPU
//! engine in f32, switched between requests of one session; and every kind of bad input refused with a message
//! naming what is wrong. The GPU engine (lavapipe on CI) is held to the same reference.

mod common;
mod gpu_common;
#[path = "common/tiny_model.rs"]
mod tiny_model;

use common::{f64s, omex_bin, smollm2_omex, u32s};
use omex::backend::{Activations, KvType, Logits};
use omex::runtime::{BackendChoice, EngineOptions, GenerateOptions, Model};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/lora")
}

fn reference() -> Value {
    serde_json::from_slice(&std::fs::read(fixture().join("reference.json")).unwrap()).unwrap()
}

/// A private model directory sharing the converted SmolLM2's files (hard links), so adapters can be added
/// without touching the copy other tests read.
fn private_model(label: &str) -> PathBuf {
    let src = smollm2_omex("keep");
    let dst = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("lora-{label}-{}.omex", std::process::id()));
    let _ = std::fs::remove_dir_all(&dst);
    link_tree(&src, &dst);
    dst
}

fn link_tree(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let to = dst.join(e.file_name());
        if e.path().is_dir() {
            link_tree(&e.path(), &to);
        } else if std::fs::hard_link(e.path(), &to).is_err() {
            std::fs::copy(e.path(), &to).unwrap();
        }
    }
}

fn omex(args: &[&std::ffi::OsStr]) -> (bool, String) {
    let out = Command::new(omex_bin()).args(args).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

fn add(model: &Path, peft: &Path, name: &str) -> (bool, String) {
    omex(&["adapter".as_ref(), "add".as_ref(), model.as_os_str(), peft.as_os_str(), "--name".as_ref(), name.as_ref()])
}

fn cpu_f32() -> EngineOptions {
    EngineOptions {
        backend: BackendChoice::Cpu,
        threads: 2,
        context_length: Some(128),
        activations: Activations::F32,
        kv: KvType::F32,
        ..Default::default()
    }
}

/// Largest |ours - reference| / max(1, |reference|) over one position's top-40 and fixed ids.
fn rel_diff(r: &Value, pos: &Value, row: &[f32]) -> f64 {
    let mut worst = 0f64;
    for (ids, vals) in [(&pos["top_ids"], &pos["top_logits"]), (&r["fixed_token_ids"], &pos["fixed_logits"])] {
        for (id, v) in u32s(ids).into_iter().zip(f64s(vals)) {
            worst = worst.max((row[id as usize] as f64 - v).abs() / v.abs().max(1.0));
        }
    }
    worst
}

/// Checks the engine's teacher-forced logits of every prompt against `expect` (the reference of one adapter
/// set); returns the worst relative difference.
fn check_logits(engine: &mut dyn omex::backend::Engine, r: &Value, expect: &Value, what: &str) -> f64 {
    let mut worst = 0f64;
    for (p, e) in r["prompts"].as_array().unwrap().iter().zip(expect.as_array().unwrap()) {
        let ids = u32s(&p["token_ids"]);
        let logits = engine.forward(&ids, 0, Logits::All).unwrap();
        let vocab = logits.len() / ids.len();
        for pos in e["positions"].as_array().unwrap() {
            let i = pos["pos"].as_u64().unwrap() as usize;
            let row = &logits[i * vocab..(i + 1) * vocab];
            let d = rel_diff(r, pos, row);
            assert!(d < 1e-3, "{what}, prompt {}, position {i}: logits differ by {d:.2e} (relative)", p["name"]);
            if pos["top2_margin"].as_f64().unwrap() > 1e-2 {
                assert_eq!(kernels_cpu::ops::argmax(row), u32s(&pos["top_ids"])[0] as usize, "{what}: top-1 at {i}");
            }
            worst = worst.max(d);
        }
    }
    worst
}

fn greedy(max_tokens: usize) -> GenerateOptions {
    GenerateOptions { max_tokens, ignore_eos: true, ..Default::default() }
}

#[test]
fn peft_adapters_match_transformers_and_switch_per_request() {
    let r = reference();
    let model_dir = private_model("match");
    for name in ["all7", "qv"] {
        let (ok, text) = add(&model_dir, &fixture().join(name), name);
        assert!(ok, "adapter add {name}: {text}");
        assert!(text.contains(&format!("added adapter {name}")), "{text}");
    }
    let (ok, text) = omex(&["adapter".as_ref(), "list".as_ref(), model_dir.as_os_str()]);
    assert!(ok && text.contains("all7: 210 matrices") && text.contains("qv: 60 matrices"), "{text}");

    let model = Model::load(&model_dir).unwrap();
    let mut engine = model.engine(&cpu_f32()).unwrap();
    let worst = check_logits(engine.as_mut(), &r, &r["base"], "base");
    eprintln!("base: worst relative logit difference {worst:.2e}");
    for name in ["all7", "qv"] {
        engine.set_adapters(&model.active_adapters(&[name.to_string()]).unwrap()).unwrap();
        let worst = check_logits(engine.as_mut(), &r, &r["adapters"][name], name);
        eprintln!("{name}: worst relative logit difference {worst:.2e}");
    }
    // The adapters do change the model: their reference logits are far from the base's.
    let top = |v: &Value| f64s(&v[0]["positions"][0]["top_logits"])[0];
    assert!((top(&r["adapters"]["all7"]) - top(&r["base"])).abs() > 0.05);

    // One session, requests alternating between adapters: each gives its own reference's greedy tokens.
    let mut session = model.session(&cpu_f32()).unwrap();
    let order = [("all7", 0), ("qv", 0), ("", 1), ("all7", 1), ("qv", 1), ("", 0)];
    let mut switch_us = Vec::new();
    for (name, p) in order {
        let specs: Vec<String> = if name.is_empty() { vec![] } else { vec![name.to_string()] };
        let active = model.active_adapters(&specs).unwrap();
        let t = std::time::Instant::now();
        session.set_adapters(active).unwrap();
        switch_us.push(t.elapsed().as_secs_f64() * 1e6);
        let expect = if name.is_empty() { &r["base"] } else { &r["adapters"][name] };
        let ids = u32s(&r["prompts"][p]["token_ids"]);
        let want = u32s(&expect[p]["greedy"]);
        let g = session.generate_from_ids(ids, &greedy(want.len()), &mut |_| true).unwrap();
        assert_eq!(g.output_ids, want, "greedy tokens of {name:?} on prompt {p}");
    }
    eprintln!("adapter switch times (model lookup excluded): {switch_us:.0?} us");
    let _ = std::fs::remove_dir_all(&model_dir);
}

/// The GPU engine applies the adapters unmerged too (f32 activations and KV cache, as the reference): each
/// adapter's teacher-forced logits within the same bound, greedy tokens equal to the reference's across
/// requests of one session that switch adapters. Every way a switch goes is taken (and timed): a set not run
/// before rebuilds the dispatch lists (all7, then qv); a set run before swaps its kept lists back (all7, qv);
/// a set of the same layout as the current one (llama.cpp's GGUF of all7, `g`: the same tensors at the same
/// rank) is copied into the current plan's slots; and one of a kept plan's layout (all7 after qv) takes that
/// plan over the same way.
#[test]
fn gpu_engine_applies_adapters_unmerged() {
    let Some(ctx) = gpu_common::gpu_arc() else { return };
    let r = reference();
    let model_dir = private_model("gpu");
    for name in ["all7", "qv"] {
        assert!(add(&model_dir, &fixture().join(name), name).0);
    }
    assert!(add(&model_dir, &fixture().join("all7.gguf"), "g").0);
    let model = Model::load(&model_dir).unwrap();
    let opts = EngineOptions {
        backend: BackendChoice::Gpu,
        context_length: Some(128),
        gpu_activations: Activations::F32,
        kv: KvType::F32,
        ..Default::default()
    };
    let gpu_opts = model.gpu_options(&opts).unwrap();
    let gpu = omex::backend::gpu::GpuEngine::load_blocking(ctx, &model.dir, &model.config, gpu_opts).unwrap();
    let mut engine: Box<dyn omex::backend::Engine> = Box::new(gpu);
    let ids = u32s(&r["prompts"][0]["token_ids"]);
    let base = engine.forward(&ids, 0, Logits::Last).unwrap();
    let mut switch_us = Vec::new();
    let ways = ["rebuilt", "rebuilt", "kept", "copied into the current", "kept", "copied into a kept"];
    for ((name, refer), way) in
        [("all7", "all7"), ("qv", "qv"), ("all7", "all7"), ("g", "all7"), ("qv", "qv"), ("all7", "all7")]
            .into_iter()
            .zip(ways)
    {
        let active = model.active_adapters(&[name.to_string()]).unwrap();
        let t = std::time::Instant::now();
        engine.set_adapters(&active).unwrap();
        switch_us.push((format!("{name} ({way})"), t.elapsed().as_secs_f64() * 1e6));
        let worst = check_logits(engine.as_mut(), &r, &r["adapters"][refer], &format!("GPU {name}"));
        eprintln!("GPU {name}: worst relative logit difference {worst:.2e}");
        let adapted = engine.forward(&ids, 0, Logits::Last).unwrap();
        let moved = adapted.iter().zip(&base).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(moved > 0.05, "GPU {name}: the logits moved by {moved} only: the adapter was not applied");
    }
    let t = std::time::Instant::now();
    engine.set_adapters(&[]).unwrap();
    switch_us.push(("base (kept)".into(), t.elapsed().as_secs_f64() * 1e6));
    check_logits(engine.as_mut(), &r, &r["base"], "GPU base after adapters");
    eprintln!("GPU adapter switches: {switch_us:.0?} us");

    // One session, requests switching adapters: each gives the first greedy tokens of its reference (a few:
    // lavapipe runs this model at about a second a token).
    let mut session = omex::runtime::Session::new(engine, model.tokenizer.clone());
    for (name, p) in [("all7", 0), ("qv", 1), ("", 0), ("all7", 1)] {
        let specs: Vec<String> = if name.is_empty() { vec![] } else { vec![name.to_string()] };
        session.set_adapters(model.active_adapters(&specs).unwrap()).unwrap();
        let expect = if name.is_empty() { &r["base"] } else { &r["adapters"][name] };
        let want = &u32s(&expect[p]["greedy"])[..5];
        let ids = u32s(&r["prompts"][p]["token_ids"]);
        let g = session.generate_from_ids(ids, &greedy(want.len()), &mut |_| true).unwrap();
        assert_eq!(g.output_ids, want, "GPU greedy tokens of {name:?} on prompt {p}");
    }
    let _ = std::fs::remove_dir_all(&model_dir);
}

/// The GPU engine's batched steps (several sequences' next tokens in one pass) under an adapter: the
/// scheduler runs two requests of `all7` together, each getting the first greedy tokens of its reference.
#[test]
fn gpu_engine_batched_steps_apply_adapters() {
    use futures::StreamExt;
    use omex::runtime::scheduler::{Event, Request, Scheduler, SchedulerOptions};
    if gpu_common::gpu_arc().is_none() {
        return;
    }
    let r = reference();
    let model_dir = private_model("gpubatch");
    assert!(add(&model_dir, &fixture().join("all7"), "all7").0);
    let model = std::sync::Arc::new(Model::load(&model_dir).unwrap());
    let m = model.clone();
    let opts = EngineOptions {
        backend: BackendChoice::Gpu,
        context_length: Some(128),
        gpu_activations: Activations::F32,
        kv: KvType::F32,
        kv_tokens: 2 * 128,
        max_sequences: 2,
        ..Default::default()
    };
    let sched = Scheduler::start(
        move || m.engine(&opts),
        model.tokenizer.clone(),
        SchedulerOptions { parallel: 2, ..Default::default() },
    )
    .unwrap();
    let mut streams = Vec::new();
    for p in [0, 1] {
        let want = u32s(&r["adapters"]["all7"][p]["greedy"])[..4].to_vec();
        let req = Request {
            max_tokens: Some(want.len()),
            ignore_eos: true,
            adapters: model.active_adapters(&["all7".to_string()]).unwrap(),
            ..Request::new(u32s(&r["prompts"][p]["token_ids"]))
        };
        streams.push((p, want, sched.submit(req).unwrap()));
    }
    for (p, want, mut s) in streams {
        let mut ids = None;
        while let Some(e) = futures::executor::block_on(s.next()) {
            match e {
                Event::Text(_) => {}
                Event::Done(f) => ids = Some(f.ids),
                Event::Error(e) => panic!("prompt {p}: {e}"),
            }
        }
        assert_eq!(ids.expect("Done"), want, "GPU scheduler, all7, prompt {p}");
    }
    drop(sched);
    let _ = std::fs::remove_dir_all(&model_dir);
}

/// A random rank-3 adapter (f32, scale 0.5 times 0.7) on every linear matrix of tiny random models (GQA with
/// int4 matrices; gemma3 blocks with GeGLU and post norms; q/k/v biases with mixed layouts): the GPU engine's
/// logits equal the CPU engine's through prefill chunks and single-token steps, and differ from the base's.
#[test]
fn gpu_engine_matches_cpu_with_adapters_on_tiny_models() {
    use omex::backend::cpu::{CpuEngine, CpuOptions};
    use omex::backend::gpu::{GpuEngine, GpuOptions};
    use omex::backend::lora::{ActiveAdapter, Adapter, LoraMat};
    use omex::backend::Engine;
    use omex::format::adapter::Values;
    use omex::format::{DType, ModelDir};
    use tiny_model::{write_tiny_model, TinySpec};
    let Some(ctx) = gpu_common::gpu_arc() else { return };
    let window = omex::graph::SlidingWindow { window: 5, global_every: 3, local_rope_base: 100.0 };
    let specs = [
        ("gqa", TinySpec::small()),
        (
            "gemma3",
            TinySpec { layers: 3, n_heads: 4, n_kv_heads: 1, head_dim: 32, gemma3: Some(window), ..TinySpec::small() },
        ),
        ("bias", TinySpec { qkv_bias: true, attn: DType::Int8, ffn: DType::F16, tied: false, ..TinySpec::small() }),
    ];
    let mut rng = gpu_common::Rng::new(0x1a7e);
    for (name, spec) in specs {
        let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("lora-tiny-{name}-{}", std::process::id()));
        let cfg = write_tiny_model(&path, &spec, 0x5eed ^ name.len() as u64);
        let dir = ModelDir::open(&path).unwrap();
        let program = omex::arch::program(&cfg).unwrap();
        let mut mats = std::collections::HashMap::new();
        for op in program.blocks.iter().flat_map(|b| &b.ops) {
            if let omex::arch::Op::Linear { mats: ms, .. } = op {
                for m in ms {
                    let (rows, cols, rank) = (m.rows as usize, m.cols as usize, 3);
                    let a = Values::F32(rng.vec(rank * cols, -0.3, 0.3));
                    let b = Values::F32(rng.vec(rows * rank, -0.3, 0.3));
                    mats.insert(m.weight.clone(), Arc::new(LoraMat { rows, cols, rank, scale: 0.5, a, b }));
                }
            }
        }
        let adapter = Arc::new(Adapter { name: "random".into(), mats });
        let active = [ActiveAdapter { adapter, scale: 0.7 }];
        let ctx_len = spec.context as usize;
        let cpu_opts = CpuOptions {
            threads: 2,
            context_length: ctx_len,
            activations: Activations::F32,
            kv: KvType::F32,
            max_batch: 512,
            kv_tokens: 0,
        };
        let mut cpu = CpuEngine::load(&dir, &cfg, cpu_opts).unwrap();
        let mut gpu_opts = GpuOptions::new(ctx_len);
        // Chunks of 5: the prompt runs as short prefill chunks and a single-token step.
        gpu_opts.max_batch = 5;
        gpu_opts.kv = KvType::F32;
        let mut gpu = GpuEngine::load_blocking(ctx.clone(), &dir, &cfg, gpu_opts).unwrap();
        let prompt: Vec<u32> = (0..11).map(|i| (i * 37 + 5) % spec.vocab).collect();
        let base = gpu.forward(&prompt, 0, Logits::All).unwrap();
        cpu.set_adapters(&active).unwrap();
        gpu.set_adapters(&active).unwrap();
        let (c, g) = (cpu.forward(&prompt, 0, Logits::All).unwrap(), gpu.forward(&prompt, 0, Logits::All).unwrap());
        let (c1, g1) = (cpu.forward(&[7], 11, Logits::Last).unwrap(), gpu.forward(&[7], 11, Logits::Last).unwrap());
        let rel = |a: &[f32], b: &[f32]| {
            let scale = b.iter().fold(1f32, |m, v| m.max(v.abs()));
            a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
        };
        let (d, d1, moved) = (rel(&g, &c), rel(&g1, &c1), rel(&g, &base));
        eprintln!("{name}: GPU against CPU with the adapter {d:.2e} (prompt), {d1:.2e} (step); the adapter moved the logits {moved:.2e}");
        assert!(d < 2e-4 && d1 < 2e-4, "{name}: the GPU engine's adapted logits differ from the CPU's by {d}, {d1}");
        assert!(moved > 1e-2, "{name}: the adapter moved the GPU logits by {moved} only");
        let _ = std::fs::remove_dir_all(&path);
    }
}

/// The same `all7` adapter converted to a LoRA GGUF by llama.cpp's own `convert_lora_to_gguf.py`
/// (scripts/reference/make_lora_gguf_fixture.py): imported by `omex adapter add`, it gives the transformers +
/// peft reference of the PEFT original (its B rows of q and k come permuted as the GGUF base's are).
#[test]
fn llama_cpp_lora_gguf_matches_transformers() {
    let r = reference();
    let model_dir = private_model("gguf");
    let (ok, text) = add(&model_dir, &fixture().join("all7.gguf"), "g");
    assert!(ok && text.contains("added adapter g"), "{text}");
    let (ok, text) = omex(&["adapter".as_ref(), "list".as_ref(), model_dir.as_os_str()]);
    assert!(ok && text.contains("g: 210 matrices") && text.contains("scale 2"), "{text}");
    let model = Model::load(&model_dir).unwrap();
    let mut engine = model.engine(&cpu_f32()).unwrap();
    engine.set_adapters(&model.active_adapters(&["g".to_string()]).unwrap()).unwrap();
    let worst = check_logits(engine.as_mut(), &r, &r["adapters"]["all7"], "all7 from GGUF");
    eprintln!("all7 from llama.cpp's GGUF: worst relative logit difference {worst:.2e}");
    let mut session = model.session(&cpu_f32()).unwrap();
    session.set_adapters(model.active_adapters(&["g".to_string()]).unwrap()).unwrap();
    let ids = u32s(&r["prompts"][1]["token_ids"]);
    let want = u32s(&r["adapters"]["all7"][1]["greedy"]);
    let g = session.generate_from_ids(ids, &greedy(want.len()), &mut |_| true).unwrap();
    assert_eq!(g.output_ids, want, "greedy tokens of the GGUF adapter");
    let _ = std::fs::remove_dir_all(&model_dir);
}

/// Bad LoRA GGUFs: each refused with a message naming the file and what is wrong, nothing written.
#[test]
fn bad_lora_ggufs_are_refused() {
    let model_dir = private_model("badgguf");
    let good = std::fs::read(fixture().join("all7.gguf")).unwrap();
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("badgguf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // Byte edits of the good file that keep it a well-formed GGUF: the same-length string values are
    // replaced in place.
    let swap = |from: &str, to: &str| -> Vec<u8> {
        assert_eq!(from.len(), to.len());
        let mut b = good.clone();
        let at = b.windows(from.len()).position(|w| w == from.as_bytes()).unwrap_or_else(|| panic!("{from} not found"));
        b[at..at + to.len()].copy_from_slice(to.as_bytes());
        b
    };
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("model", swap("adapter", "adaptor"), "not \"adapter\""),
        ("arch", swap("llama", "gemma"), "general.architecture is \"gemma\""),
        ("kind", swap("lora", "cvec"), "adapter.type"),
        ("target", swap("blk.0.attn_q.weight.lora_a", "blk.0.attn_z.weight.lora_a"), "blk.0.attn_z.weight"),
        ("pair", swap("blk.0.attn_q.weight.lora_b", "blk.0.attn_q.weight.lora_c"), "not a LoRA A or B"),
        ("layer", swap("blk.1.attn_q.weight.lora_a", "blk.9.attn_q.weight.lora_a"), "appears twice"),
        ("truncated", good[..good.len() / 2].to_vec(), "truncated.gguf"),
    ];
    for (label, bytes, want) in cases {
        let path = dir.join(format!("{label}.gguf"));
        std::fs::write(&path, bytes).unwrap();
        let (ok, text) = add(&model_dir, &path, label);
        assert!(!ok, "{label}: accepted: {text}");
        assert!(text.contains(want), "{label}: {text}");
        assert!(!model_dir.join("adapters").join(label).exists(), "{label}: something was written");
    }
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&model_dir);
}

#[test]
fn adapters_scale_and_add_up() {
    // `NAME:0` is the base; two adapters at once add both updates (checked against each alone: the logit change
    // of both is the sum of the changes, up to the nonlinearity of the layers after, so only the scale-0 case is
    // exact and the pair is checked to differ from either alone).
    let r = reference();
    let model_dir = private_model("scale");
    for name in ["all7", "qv"] {
        assert!(add(&model_dir, &fixture().join(name), name).0);
    }
    let model = Model::load(&model_dir).unwrap();
    let mut engine = model.engine(&cpu_f32()).unwrap();
    engine.set_adapters(&model.active_adapters(&["all7:0".to_string()]).unwrap()).unwrap();
    check_logits(engine.as_mut(), &r, &r["base"], "all7 at scale 0");
    let ids = u32s(&r["prompts"][0]["token_ids"]);
    let mut logits_of = |specs: &[&str]| {
        let specs: Vec<String> = specs.iter().map(|s| s.to_string()).collect();
        engine.set_adapters(&model.active_adapters(&specs).unwrap()).unwrap();
        engine.forward(&ids, 0, Logits::Last).unwrap()
    };
    let (a, b, both) = (logits_of(&["all7"]), logits_of(&["qv"]), logits_of(&["all7", "qv"]));
    let dist = |x: &[f32], y: &[f32]| x.iter().zip(y).map(|(p, q)| (p - q).abs()).fold(0f32, f32::max);
    assert!(dist(&both, &a) > 1e-3 && dist(&both, &b) > 1e-3, "the second adapter changed nothing");
    let _ = std::fs::remove_dir_all(&model_dir);
}

/// A minimal safetensors writer for the bad-input cases.
fn write_safetensors(path: &Path, tensors: &[(String, &str, Vec<u64>, Vec<u8>)]) {
    let mut header = serde_json::Map::new();
    let mut at = 0u64;
    for (name, dtype, shape, data) in tensors {
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [at, at + data.len() as u64]}),
        );
        at += data.len() as u64;
    }
    let mut h = serde_json::to_vec(&Value::Object(header)).unwrap();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    for (_, _, _, d) in tensors {
        out.extend_from_slice(d);
    }
    std::fs::write(path, out).unwrap();
}

/// The committed `all7` fixture's tensors, as (name, dtype, shape, bytes).
fn fixture_tensors() -> Vec<(String, &'static str, Vec<u64>, Vec<u8>)> {
    let bytes = std::fs::read(fixture().join("all7/adapter_model.safetensors")).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let mut out = Vec::new();
    for (name, v) in header.as_object().unwrap() {
        if name == "__metadata__" {
            continue;
        }
        assert_eq!(v["dtype"], "F16");
        let offs = u32s(&v["data_offsets"]);
        let data = bytes[8 + n + offs[0] as usize..8 + n + offs[1] as usize].to_vec();
        let shape = v["shape"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).collect();
        out.push((name.clone(), "F16", shape, data));
    }
    out
}

/// A PEFT directory made from the fixture, with its config and tensors passed through `edit`.
fn bad_peft(
    label: &str,
    edit_cfg: impl FnOnce(&mut Value),
    edit: impl FnOnce(&mut Vec<(String, &'static str, Vec<u64>, Vec<u8>)>),
) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("bad-peft-{label}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut cfg: Value =
        serde_json::from_slice(&std::fs::read(fixture().join("all7/adapter_config.json")).unwrap()).unwrap();
    edit_cfg(&mut cfg);
    std::fs::write(dir.join("adapter_config.json"), serde_json::to_vec(&cfg).unwrap()).unwrap();
    let mut t = fixture_tensors();
    edit(&mut t);
    write_safetensors(&dir.join("adapter_model.safetensors"), &t);
    dir
}

#[test]
fn bad_adapters_are_refused_with_clear_errors() {
    let model_dir = private_model("bad");
    let q0a = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight";
    let cases: Vec<(&str, PathBuf, &str)> = vec![
        ("rank 0", bad_peft("rank0", |c| c["r"] = 0.into(), |_| {}), "the rank must be an integer"),
        (
            "missing tensor",
            bad_peft("missing", |_| {}, |t| t.retain(|x| !x.0.contains("layers.7.mlp.up_proj.lora_B"))),
            "module model.layers.7.mlp.up_proj: no lora_B.weight",
        ),
        (
            "missing module",
            bad_peft("module", |_| {}, |t| t.retain(|x| !x.0.contains("layers.3.mlp.up_proj"))),
            "missing tensors: target module up_proj of layer 3",
        ),
        (
            "wrong shape",
            bad_peft(
                "shape",
                |_| {},
                |t| {
                    let x = t.iter_mut().find(|x| x.0 == q0a).unwrap();
                    x.2 = vec![4, 288];
                    x.3.truncate(4 * 288 * 2);
                },
            ),
            "\"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight\" has shape [4, 288]",
        ),
        (
            "another base",
            bad_peft(
                "other",
                |_| {},
                |t| {
                    // An adapter made for a wider model (Qwen2.5-0.5B's hidden size 896).
                    for x in t.iter_mut().filter(|x| x.0.contains("lora_A") && !x.0.contains("down_proj")) {
                        x.2 = vec![4, 896];
                        x.3 = vec![0; 4 * 896 * 2];
                    }
                },
            ),
            "base tensor blk.0.",
        ),
        (
            "NaN",
            bad_peft(
                "nan",
                |_| {},
                |t| {
                    let x = t.iter_mut().find(|x| x.0 == q0a).unwrap();
                    x.3[10..12].copy_from_slice(&half::f16::NAN.to_le_bytes());
                },
            ),
            "value 5 is NaN (not finite)",
        ),
        ("DoRA", bad_peft("dora", |c| c["use_dora"] = true.into(), |_| {}), "DoRA adapters are not supported"),
        (
            "extra tensor",
            bad_peft(
                "extra",
                |_| {},
                |t| t.push(("base_model.model.lm_head.weight".into(), "F16", vec![1], vec![0, 0])),
            ),
            "is not a LoRA A or B matrix",
        ),
    ];
    for (what, dir, want) in cases {
        let (ok, text) = add(&model_dir, &dir, "bad");
        assert!(!ok, "{what}: accepted\n{text}");
        assert!(text.contains(want), "{what}: message lacks {want:?}:\n{text}");
        assert!(!text.contains("panicked"), "{what}: {text}");
        assert!(!model_dir.join("adapters/bad").exists(), "{what}: left an adapter behind");
        let _ = std::fs::remove_dir_all(dir);
    }
    // A bad name, and an existing adapter is not overwritten.
    let (ok, text) = add(&model_dir, &fixture().join("qv"), "../x");
    assert!(!ok && text.contains("adapter name \"../x\""), "{text}");
    assert!(add(&model_dir, &fixture().join("qv"), "qv").0);
    let (ok, text) = add(&model_dir, &fixture().join("all7"), "qv");
    assert!(!ok && text.contains("adapter \"qv\" exists"), "{text}");

    // An adapter.json edited to claim another base is refused when loaded, naming what differs.
    let json = model_dir.join("adapters/qv/adapter.json");
    let orig = std::fs::read_to_string(&json).unwrap();
    for (from, to, want) in [
        ("\"architecture\": \"llama\"", "\"architecture\": \"qwen2\"", "made for a qwen2 model, this base is llama"),
        ("\"hidden_size\": 576", "\"hidden_size\": 896", "made for hidden size 896"),
        ("\"blk.0.attn_q\": [\n        576,", "\"blk.0.attn_q\": [\n        896,", "tensor blk.0.attn_q is [576, 576]"),
    ] {
        assert!(orig.contains(from), "{from} not in adapter.json");
        std::fs::write(&json, orig.replace(from, to)).unwrap();
        let model = Model::load(&model_dir).unwrap();
        let e = model.active_adapters(&["qv".to_string()]).unwrap_err().to_string();
        assert!(e.contains(want), "{e}");
        let (ok, text) = omex(&["validate".as_ref(), model_dir.as_os_str()]);
        assert!(!ok && text.contains(want), "validate: {text}");
    }
    std::fs::write(&json, &orig).unwrap();
    // A damaged lora.bin fails its checksum.
    let bin = model_dir.join("adapters/qv/lora.bin");
    let mut b = std::fs::read(&bin).unwrap();
    let last = b.len() - 300;
    b[last] ^= 1;
    std::fs::write(&bin, &b).unwrap();
    let model = Model::load(&model_dir).unwrap();
    let e = model.active_adapters(&["qv".to_string()]).unwrap_err().to_string();
    assert!(e.contains("lora.bin") && e.contains("sha256"), "{e}");
    let e = model.active_adapters(&["nope".to_string()]).unwrap_err().to_string();
    assert!(e.contains("no adapter \"nope\""), "{e}");
    let e = model.active_adapters(&["qv:abc".to_string()]).unwrap_err().to_string();
    assert!(e.contains("is not a number"), "{e}");
    // remove, then remove again.
    let rm = |n: &str| omex(&["adapter".as_ref(), "remove".as_ref(), model_dir.as_os_str(), n.as_ref()]);
    assert!(rm("qv").0);
    let (ok, text) = rm("qv");
    assert!(!ok && text.contains("no adapter \"qv\" to remove"), "{text}");
    let _ = std::fs::remove_dir_all(&model_dir);
}

#[test]
fn merge_equals_unmerged_within_f32_rounding() {
    let r = reference();
    let model_dir = private_model("merge");
    assert!(add(&model_dir, &fixture().join("all7"), "all7").0);
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let out = tmp.join(format!("lora-merged-{}.omex", std::process::id()));
    let zero = tmp.join(format!("lora-merged-zero-{}.omex", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let _ = std::fs::remove_dir_all(&zero);
    let merge = |spec: &str, out: &Path, quant: &str| {
        omex(&[
            "adapter".as_ref(),
            "merge".as_ref(),
            model_dir.as_os_str(),
            spec.as_ref(),
            "-o".as_ref(),
            out.as_os_str(),
            "--quant".as_ref(),
            quant.as_ref(),
        ])
    };
    let (ok, text) = merge("all7", &out, "f32");
    assert!(ok, "{text}");
    assert!(text.contains("into 210 matrices") && text.contains("same top token at"), "{text}");
    let (ok, text) = omex(&["validate".as_ref(), out.as_os_str()]);
    assert!(ok, "the merged model does not validate: {text}");
    // An existing output is never overwritten.
    let (ok, text) = merge("all7", &out, "f32");
    assert!(!ok && text.contains("exists"), "{text}");

    let base = Model::load(&model_dir).unwrap();
    let mut unmerged = base.engine(&cpu_f32()).unwrap();
    unmerged.set_adapters(&base.active_adapters(&["all7".to_string()]).unwrap()).unwrap();
    let merged_model = Model::load(&out).unwrap();
    let mut merged = merged_model.engine(&cpu_f32()).unwrap();
    let mut worst = 0f32;
    for p in r["prompts"].as_array().unwrap() {
        let ids = u32s(&p["token_ids"]);
        let (a, b) = (unmerged.forward(&ids, 0, Logits::All).unwrap(), merged.forward(&ids, 0, Logits::All).unwrap());
        for (x, y) in a.iter().zip(&b) {
            worst = worst.max((x - y).abs() / x.abs().max(1.0));
        }
    }
    eprintln!("merged (f32) vs unmerged: worst relative logit difference {worst:.2e}");
    assert!(worst < 2e-4, "merged and unmerged differ by {worst} (relative)");
    // And the merged model matches the reference on its own.
    check_logits(merged.as_mut(), &r, &r["adapters"]["all7"], "merged all7");

    // Scale 0 in the model's own layouts: every matrix re-encoded from its own values, so nothing changes.
    let (ok, text) = merge("all7:0", &zero, "keep");
    assert!(ok, "{text}");
    let zero_model = Model::load(&zero).unwrap();
    let ids = u32s(&r["prompts"][0]["token_ids"]);
    let a = zero_model.engine(&cpu_f32()).unwrap().forward(&ids, 0, Logits::All).unwrap();
    let b = base.engine(&cpu_f32()).unwrap().forward(&ids, 0, Logits::All).unwrap();
    assert_eq!(a, b, "merging at scale 0 changed the model");
    for d in [&out, &zero, &model_dir] {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// The scheduler (what `omex serve` runs) with requests for different adapters in flight at once: each gets
/// its own reference's greedy tokens, and a prompt repeated under another adapter never reuses the cached
/// keys and values of the first.
#[test]
fn scheduler_serves_requests_with_different_adapters_at_once() {
    use futures::StreamExt;
    use omex::runtime::scheduler::{Event, Request, Scheduler, SchedulerOptions};
    let r = reference();
    let model_dir = private_model("sched");
    for name in ["all7", "qv"] {
        assert!(add(&model_dir, &fixture().join(name), name).0);
    }
    let model = std::sync::Arc::new(Model::load(&model_dir).unwrap());
    let m = model.clone();
    let opts = EngineOptions { kv_tokens: 8 * 128, max_sequences: 8, ..cpu_f32() };
    let sched = Scheduler::start(
        move || m.engine(&opts),
        model.tokenizer.clone(),
        SchedulerOptions { parallel: 8, ..Default::default() },
    )
    .unwrap();
    let jobs = [("all7", 0), ("qv", 1), ("", 0), ("all7", 1), ("qv", 0), ("", 1), ("all7", 0)];
    let mut streams = Vec::new();
    for (name, p) in jobs {
        let specs: Vec<String> = if name.is_empty() { vec![] } else { vec![name.to_string()] };
        let want = u32s(&if name.is_empty() { &r["base"] } else { &r["adapters"][name] }[p]["greedy"]);
        let req = Request {
            max_tokens: Some(want.len()),
            ignore_eos: true,
            adapters: model.active_adapters(&specs).unwrap(),
            ..Request::new(u32s(&r["prompts"][p]["token_ids"]))
        };
        streams.push((name, p, want, sched.submit(req).unwrap()));
    }
    for (name, p, want, mut s) in streams {
        let mut ids = None;
        while let Some(e) = futures::executor::block_on(s.next()) {
            match e {
                Event::Text(_) => {}
                Event::Done(f) => ids = Some(f.ids),
                Event::Error(e) => panic!("{name:?} on prompt {p}: {e}"),
            }
        }
        assert_eq!(ids.expect("Done"), want, "scheduler, adapter {name:?}, prompt {p}");
    }
    drop(sched);
    let _ = std::fs::remove_dir_all(&model_dir);
}
