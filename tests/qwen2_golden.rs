//! The CPU and GPU engines on Qwen2.5-Coder-0.5B-Instruct Q4_K_M against the independent numpy reference
//! (scripts/reference/qwen2_reference.py, goldens from scripts/reference/make_qwen_goldens.py in
//! tests/golden/qwen05_*.json). Skipped, saying why, when the GGUF is absent: `$OMEX_QWEN05_GGUF`, else
//! `~/.cache/omex/models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf` (scripts/fetch-model.sh qwen2.5-coder-0.5b).
//!
//! The bounds, measured on this model (x86-64 with AVX-512, 2 cores) and set with a margin:
//! - f32 activations, f32 KV cache: the stored logits (top-20 and 17 fixed ids at each prompt's last
//!   position) and the whole row's mean and std within 1e-3 of the reference; measured 1.3e-5, the size of
//!   the reference's own float32 rounding (its |f32 - f64| is 1.4e-5 to 1.6e-5, in the golden). In the
//!   reference, dropping the Q/K/V biases or rotating adjacent pairs instead of halves moves these logits by
//!   27 and 18 and changes the top-1. Teacher-forced top-1 agrees at every prompt position whose reference
//!   top-2 margin exceeds 0.02 (all 93).
//! - Greedy with f32 activations equals the reference up to the first step whose reference top-2 margin is
//!   below 0.02: measured 24 of 24 tokens at every prompt (the chat prompt has a 0.010 near-tie at step 12).
//! - int8 activations, f16 KV cache (the default path): stored logits within 0.5 (measured 0.113); the first
//!   generated token equals the reference's at every prompt (margins 1.7 to 5.3); teacher-forced top-1 equal
//!   where the margin exceeds 1.0 (58 of 93 positions); greedy equals the reference up to the first step whose
//!   margin is below 0.5, i.e. at least 11, 12 and 24 tokens; measured 24, 24 and 24.
//! - Perplexity of tests/data/perplexity.txt at ctx 128 (29 chunks, llama-perplexity's definition; golden
//!   tests/golden/qwen05_perplexity.json, reference 40.7048): f32 activations and KV cache within 0.5% (measured
//!   40.7048, every chunk's mean NLL within 1.1e-6), int8 activations and f16 KV cache within 2.5% (measured
//!   40.8266, +0.30%, chunk NLLs within 0.013); both are issue 14's bounds. omex's tokenization of the text must
//!   equal the reference's.

mod common;
mod gpu_common;

use common::logits::{argmax, clear_steps, common_prefix, max_diff, mean_std, teacher_forced_top1};
use common::{f64s, golden, omex_bin, u32s};
use omex::backend::{Activations, Engine, KvType, Logits};
use omex::runtime::perplexity::{perplexity, Perplexity};
use omex::runtime::{BackendChoice, EngineOptions, GenerateOptions, Model};
use omex::tokenizer::ChatMessage;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Largest |omex - reference| over the stored logits with f32 activations (measured 1.3e-5).
const F32_LOGIT_TOL: f64 = 1e-3;
/// The same with int8 activations (llama.cpp's approach) and an f16 KV cache (measured 0.113).
const INT8_LOGIT_TOL: f64 = 0.5;
/// Largest |omex - reference| over the stored logits on the GPU engine (f32 activations and KV cache; the GGUF
/// blocks decoded by quant.wgsl's `ggml16`, sums in another order than the CPU's): measured 1.9e-5 on lavapipe.
const GPU_LOGIT_TOL: f64 = 1e-3;
/// Greedy steps the GPU engine test takes (lavapipe runs this model at about one token a second).
const GPU_GREEDY_STEPS: usize = 6;

/// Greedy steps or prompt positions whose reference top-2 margin is below this may pick differently in f32
/// (10x the 2 * F32_LOGIT_TOL that can swap two logits).
const F32_NEAR_TIE: f64 = 0.02;
/// Teacher-forced top-1 is compared with int8 activations where the reference's margin exceeds this
/// (2 * INT8_LOGIT_TOL).
const INT8_NEAR_TIE: f64 = 1.0;
/// Int8 greedy must follow the reference up to the first step whose margin is below this (4x the measured
/// 0.113 that would have to move both logits the wrong way; the stored logits bound is for prompt positions,
/// and generated ones add f16 KV cache drift).
const INT8_GREEDY_NEAR_TIE: f64 = 0.5;

/// Largest relative difference of omex's perplexity of tests/data/perplexity.txt (ctx 128, 29 chunks) from the
/// reference's (40.7048) with f32 activations and KV cache: issue 14's bound; measured -1.2e-7.
const PPL_F32_TOL: f64 = 0.005;
/// Largest |omex - reference| of one chunk's mean NLL with f32 activations (measured 1.1e-6; the same bound as
/// F32_LOGIT_TOL: a mean NLL moves by at most twice the largest logit error).
const CHUNK_NLL_F32_TOL: f64 = 1e-3;
/// The relative bound with int8 activations and an f16 KV cache: issue 14's bound; measured +0.30%.
const PPL_INT8_TOL: f64 = 0.025;

/// The GGUF converted with `--quant keep`, once per build; `None` when the GGUF is absent.
fn qwen05_omex() -> Option<&'static Path> {
    static DIR: OnceLock<Option<PathBuf>> = OnceLock::new();
    DIR.get_or_init(|| Some(common::converted(&common::qwen_gguf("0.5b")?, "qwen05", "keep"))).as_deref()
}

fn options(activations: Activations, kv: KvType) -> EngineOptions {
    EngineOptions {
        backend: BackendChoice::Cpu,
        threads: 1,
        context_length: Some(128),
        activations,
        kv,
        ..Default::default()
    }
}

/// Every logits-golden prompt run teacher-forced: `check(prompt, all logit rows, vocab)`.
fn for_each_prompt(dir: &Path, activations: Activations, kv: KvType, mut check: impl FnMut(&Value, &[f32], usize)) {
    let model = Model::load(dir).unwrap();
    let mut engine: Box<dyn Engine> = model.engine(&options(activations, kv)).unwrap();
    for p in golden("qwen05_logits.json")["prompts"].as_array().unwrap() {
        let ids = u32s(&p["token_ids"]);
        let logits = engine.forward(&ids, 0, Logits::All).unwrap();
        check(p, &logits, logits.len() / ids.len());
    }
}

#[test]
fn prompt_ids_equal_the_reference_tokenizer() {
    let Some(dir) = qwen05_omex() else { return };
    let model = Model::load(dir).unwrap();
    for file in ["qwen05_logits.json", "qwen05_greedy.json"] {
        for p in golden(file)["prompts"].as_array().unwrap() {
            let text = p["text"].as_str().unwrap();
            assert_eq!(model.tokenizer.encode(text), u32s(&p["token_ids"]), "{file} prompt {}", p["name"]);
            // The chat prompt is the GGUF's template rendered by jinja2 (default system turn included).
            if let Some(rest) = text.split_once("<|im_start|>user\n").map(|(_, r)| r) {
                let user = &rest[..rest.find("<|im_end|>").unwrap()];
                let ours = model.tokenizer.apply_chat_template(&[ChatMessage::user(user)], true).unwrap();
                assert_eq!(ours, text, "chat template of prompt {}", p["name"]);
            }
        }
    }
}

#[test]
fn float_activations_match_the_reference_logits() {
    let Some(dir) = qwen05_omex() else { return };
    let g = golden("qwen05_logits.json");
    let (mut worst, mut checked) = (0f64, 0);
    for_each_prompt(dir, Activations::F32, KvType::F32, |p, logits, vocab| {
        let last = &p["last"];
        let t = last["pos"].as_u64().unwrap() as usize;
        let row = &logits[t * vocab..(t + 1) * vocab];
        let d = max_diff(&g, last, row);
        assert!(d < F32_LOGIT_TOL, "prompt {}: logits differ by {d}", p["name"]);
        worst = worst.max(d);
        let (mean, std) = mean_std(row);
        assert!((mean - last["mean"].as_f64().unwrap()).abs() < F32_LOGIT_TOL, "prompt {}: mean {mean}", p["name"]);
        assert!((std - last["std"].as_f64().unwrap()).abs() < F32_LOGIT_TOL, "prompt {}: std {std}", p["name"]);
        // Teacher-forced top-1 at every prompt position whose margin is not a near-tie.
        checked += teacher_forced_top1(p, logits, vocab, F32_NEAR_TIE);
    });
    eprintln!("f32 activations: max |logit - reference| = {worst:.2e}; top-1 equal at {checked} prompt positions");
}

#[test]
fn int8_activations_stay_close_to_the_reference_logits() {
    let Some(dir) = qwen05_omex() else { return };
    let g = golden("qwen05_logits.json");
    let (mut worst, mut checked, mut positions) = (0f64, 0, 0);
    for_each_prompt(dir, Activations::Int8, KvType::F16, |p, logits, vocab| {
        let last = &p["last"];
        let t = last["pos"].as_u64().unwrap() as usize;
        let row = &logits[t * vocab..(t + 1) * vocab];
        let d = max_diff(&g, last, row);
        assert!(d < INT8_LOGIT_TOL, "prompt {}: int8 logits differ by {d}", p["name"]);
        worst = worst.max(d);
        // The first generated token, whatever the margin.
        assert_eq!(argmax(row) as u32, u32s(&last["top_ids"])[0], "prompt {}: first generated token", p["name"]);
        positions += logits.len() / vocab;
        checked += teacher_forced_top1(p, logits, vocab, INT8_NEAR_TIE);
    });
    eprintln!(
        "int8 activations: max |logit - reference| = {worst:.3}; top-1 equal at {checked} of {positions} positions"
    );
    assert!(checked > positions / 3, "only {checked} of {positions} positions had a clear margin");
}

/// omex's perplexity of tests/data/perplexity.txt with the golden's ctx and chunks (tokenized by omex, which must
/// give the reference's ids), and the golden's entry.
fn perplexity_vs_reference(dir: &Path, activations: Activations, kv: KvType) -> (Perplexity, Value) {
    let model = Model::load(dir).unwrap();
    let g = golden("qwen05_perplexity.json");
    let entry = g["entries"][0].clone();
    let ctx = entry["ctx"].as_u64().unwrap() as usize;
    let n_chunks = entry["n_chunks"].as_u64().unwrap() as usize;
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/perplexity.txt")).unwrap();
    let tokens = model.tokenizer.encode(&text);
    assert!(tokens == u32s(&g["token_ids"]), "omex tokenizes tests/data/perplexity.txt differently from the reference");
    let mut engine = model.engine(&EngineOptions { context_length: Some(ctx), ..options(activations, kv) }).unwrap();
    let p = perplexity(engine.as_mut(), &tokens[..n_chunks * ctx], ctx, &mut |_, _, _| {}).unwrap();
    assert_eq!((p.chunks, p.tokens_scored as u64), (n_chunks, entry["n_scored"].as_u64().unwrap()));
    (p, entry)
}

/// Relative difference of our perplexity from the reference's, printed.
fn relative_ppl(what: &str, ours: &Perplexity, entry: &Value) -> f64 {
    let reference = entry["ppl"].as_f64().unwrap();
    let rel = ours.perplexity / reference - 1.0;
    eprintln!(
        "{what} perplexity (ctx {}, {} chunks) {:.4} vs reference {reference:.4} ({:+.3}%)",
        ours.ctx,
        ours.chunks,
        ours.perplexity,
        100.0 * rel
    );
    rel.abs()
}

#[test]
fn float_perplexity_within_half_a_percent_of_the_reference() {
    let Some(dir) = qwen05_omex() else { return };
    let (ours, entry) = perplexity_vs_reference(dir, Activations::F32, KvType::F32);
    let worst = ours
        .chunk_nll
        .iter()
        .zip(f64s(&entry["chunk_nll"]))
        .enumerate()
        .map(|(i, (a, b))| {
            assert!((a - b).abs() < CHUNK_NLL_F32_TOL, "chunk {i}: mean NLL {a} vs reference {b}");
            (a - b).abs()
        })
        .fold(0f64, f64::max);
    eprintln!("f32 activations: max |chunk NLL - reference| = {worst:.2e}");
    let rel = relative_ppl("f32", &ours, &entry);
    assert!(rel < PPL_F32_TOL, "f32 perplexity {} is {:.3}% from the reference", ours.perplexity, 100.0 * rel);
}

#[test]
fn int8_perplexity_within_two_and_a_half_percent_of_the_reference() {
    let Some(dir) = qwen05_omex() else { return };
    let (ours, entry) = perplexity_vs_reference(dir, Activations::Int8, KvType::F16);
    let worst = ours.chunk_nll.iter().zip(f64s(&entry["chunk_nll"])).map(|(a, b)| (a - b).abs()).fold(0f64, f64::max);
    eprintln!("int8 activations: max |chunk NLL - reference| = {worst:.4}");
    let rel = relative_ppl("int8", &ours, &entry);
    assert!(rel < PPL_INT8_TOL, "int8 perplexity {} is {:.3}% from the reference", ours.perplexity, 100.0 * rel);
}

/// Greedy continuations of every greedy-golden prompt: (reference prompt entry, our ids).
fn greedy(dir: &Path, activations: Activations, kv: KvType) -> Vec<(Value, Vec<u32>)> {
    let model = Model::load(dir).unwrap();
    let mut session = model.session(&options(activations, kv)).unwrap();
    let g = golden("qwen05_greedy.json");
    let mut out = Vec::new();
    for p in g["prompts"].as_array().unwrap() {
        let n = u32s(&p["generated_ids"]).len();
        let gen = GenerateOptions { max_tokens: n, ignore_eos: true, ..Default::default() };
        session.reset();
        let ids = session.generate_from_ids(u32s(&p["token_ids"]), &gen, &mut |_| true).unwrap().output_ids;
        out.push((p.clone(), ids));
    }
    out
}

#[test]
fn float_greedy_follows_the_reference_until_a_near_tie() {
    let Some(dir) = qwen05_omex() else { return };
    for (p, ours) in greedy(dir, Activations::F32, KvType::F32) {
        let want = u32s(&p["generated_ids"]);
        // Steps before the first near-tie must agree; after it the two may legitimately part.
        let clear = clear_steps(&p, F32_NEAR_TIE);
        let same = common_prefix(&ours, &want);
        eprintln!("f32 greedy {}: {same}/{} tokens equal ({clear} before the first near-tie)", p["name"], want.len());
        assert!(
            same >= clear,
            "prompt {}: ours {ours:?}\nreference {want:?} ({:?}) differ at step {same}",
            p["name"],
            p["generated_text"]
        );
    }
}

#[test]
fn int8_greedy_shares_a_prefix_with_the_reference() {
    let Some(dir) = qwen05_omex() else { return };
    for (p, ours) in greedy(dir, Activations::Int8, KvType::F16) {
        let want = u32s(&p["generated_ids"]);
        let clear = clear_steps(&p, INT8_GREEDY_NEAR_TIE);
        let same = common_prefix(&ours, &want);
        eprintln!("int8 greedy {}: {same}/{} tokens equal (required {clear})", p["name"], want.len());
        assert!(same >= clear, "prompt {}: only {same} tokens equal: {ours:?} vs {want:?}", p["name"]);
    }
}

#[test]
fn cli_run_json_gives_the_reference_ids() {
    let Some(dir) = qwen05_omex() else { return };
    let g = golden("qwen05_greedy.json");
    let p = &g["prompts"][0];
    let want = u32s(&p["generated_ids"]);
    let n = clear_steps(p, F32_NEAR_TIE).min(8);
    let out = Command::new(omex_bin())
        .arg("run")
        .arg(dir)
        .args(["-p", p["text"].as_str().unwrap(), "--backend", "cpu", "--json", "--activations", "f32"])
        .args(["--kv", "f32", "--ignore-eos", "-t", "1", "-n", &n.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "omex run failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let json: Value = serde_json::from_slice(&out.stdout).expect("one JSON object on stdout");
    assert_eq!(u32s(&json["prompt_ids"]), u32s(&p["token_ids"]));
    assert_eq!(u32s(&json["output_ids"]), want[..n]);
}

/// The GPU engine on the GGUF's own blocks (Q4_K, Q5_0, Q6_K as stored; lavapipe on CI, where the 145 MB head
/// exceeds the 128 MiB binding and is bound in row pieces): the shortest logits prompt's stored logits within
/// GPU_LOGIT_TOL of the reference, and greedy up to a near-tie on the shortest greedy prompt.
#[test]
fn gpu_engine_matches_the_reference() {
    use omex::backend::gpu::{GpuEngine, GpuOptions};
    let Some(dir) = qwen05_omex() else { return };
    let Some(ctx) = gpu_common::gpu_arc() else { return };
    let model = Model::load(dir).unwrap();
    // An f32 KV cache, as the f32 reference.
    let opts = GpuOptions { kv: KvType::F32, ..GpuOptions::new(64) };
    let mut engine = GpuEngine::load_blocking(ctx, &model.dir, &model.config, opts).unwrap();
    let shortest = |file: &str| {
        let g = golden(file);
        let prompts = g["prompts"].as_array().unwrap().clone();
        prompts.into_iter().min_by_key(|p| p["token_ids"].as_array().unwrap().len()).unwrap()
    };
    let g = golden("qwen05_logits.json");
    let p = shortest("qwen05_logits.json");
    let ids = u32s(&p["token_ids"]);
    let logits = engine.forward(&ids, 0, Logits::Last).unwrap();
    let d = max_diff(&g, &p["last"], &logits);
    eprintln!("GPU engine, prompt {}: max |logit - reference| = {d:.2e}", p["name"]);
    assert!(d < GPU_LOGIT_TOL, "prompt {}: GPU logits differ from the reference by {d}", p["name"]);

    let p = shortest("qwen05_greedy.json");
    let want = u32s(&p["generated_ids"]);
    let steps = clear_steps(&p, F32_NEAR_TIE).min(GPU_GREEDY_STEPS);
    let mut ids = u32s(&p["token_ids"]);
    let mut ours = Vec::new();
    let mut row = engine.forward(&ids, 0, Logits::Last).unwrap();
    while ours.len() < steps {
        let next = argmax(&row) as u32;
        ours.push(next);
        ids.push(next);
        row = engine.forward(&[next], ids.len() - 1, Logits::Last).unwrap();
    }
    assert_eq!(ours, want[..steps], "prompt {}: GPU greedy against the reference", p["name"]);

    // The decode loop `omex run` uses (chained on the device where it can; here the embedding, larger than a
    // lavapipe binding, is gathered on the host every step).
    let prompt = u32s(&p["token_ids"]);
    let first = argmax(&engine.forward(&prompt, 0, Logits::Last).unwrap()) as u32;
    let rest = pollster::block_on(engine.decode_greedy(first, prompt.len(), steps - 1)).unwrap();
    assert_eq!([&[first], &rest[..]].concat(), want[..steps], "prompt {}: GPU decode loop", p["name"]);
}
