//! The CPU engine on the real model against the independent numpy reference (scripts/reference/), whose
//! outputs are committed in tests/golden/. Float activations must match the reference closely; int8
//! activations (llama.cpp's approach) within the bounds llama.cpp itself shows.

mod common;

use common::{f64s, golden, smollm2_omex, u32s};
use omex::backend::{Activations, Engine, KvType, Logits};
use omex::runtime::perplexity::perplexity;
use omex::runtime::{BackendChoice, EngineOptions, GenerateOptions, Model};

fn engine(model: &Model, activations: Activations, kv: KvType, ctx: usize) -> Box<dyn Engine> {
    let opts = EngineOptions {
        backend: BackendChoice::Cpu,
        threads: 0,
        context_length: Some(ctx),
        activations,
        kv,
        ..Default::default()
    };
    model.engine(&opts).expect("engine")
}

/// Runs every golden prompt teacher-forced and calls `check(prompt, position entry, our logits row)`.
fn for_each_golden_position(
    activations: Activations,
    mut check: impl FnMut(&serde_json::Value, &serde_json::Value, &[f32]),
) {
    let model = Model::load(smollm2_omex("keep")).unwrap();
    let g = golden("smollm2_logits.json");
    let mut engine = engine(&model, activations, KvType::F32, 256);
    for p in g["prompts"].as_array().unwrap() {
        let ids = u32s(&p["token_ids"]);
        assert_eq!(model.tokenizer.encode(p["text"].as_str().unwrap()), ids, "tokenizer differs on {}", p["name"]);
        let logits = engine.forward(&ids, 0, Logits::All).unwrap();
        let vocab = logits.len() / ids.len();
        for pos in p["positions"].as_array().unwrap() {
            let i = pos["pos"].as_u64().unwrap() as usize;
            check(p, pos, &logits[i * vocab..(i + 1) * vocab]);
        }
    }
}

/// Largest |ours - reference| over the top-40 and the fixed token ids of one position.
fn max_diff(g: &serde_json::Value, pos: &serde_json::Value, row: &[f32]) -> f64 {
    let mut worst = 0f64;
    for (ids, vals) in [(&pos["top_ids"], &pos["top_logits"]), (&g["fixed_token_ids"], &pos["fixed_logits"])] {
        for (id, v) in u32s(ids).into_iter().zip(f64s(vals)) {
            worst = worst.max((row[id as usize] as f64 - v).abs());
        }
    }
    worst
}

#[test]
fn float_activations_match_the_reference_logits() {
    let g = golden("smollm2_logits.json");
    let mut worst = 0f64;
    for_each_golden_position(Activations::F32, |p, pos, row| {
        let d = max_diff(&g, pos, row);
        assert!(d < 1e-3, "prompt {} position {}: logits differ by {d}", p["name"], pos["pos"]);
        worst = worst.max(d);
    });
    eprintln!("float activations: max |logit - reference| = {worst:.2e}");
}

#[test]
fn int8_activations_stay_within_llama_cpp_bounds() {
    let g = golden("smollm2_logits.json");
    let (mut worst, mut checked) = (0f64, 0);
    for_each_golden_position(Activations::Int8, |p, pos, row| {
        let d = max_diff(&g, pos, row);
        assert!(d < 0.7, "prompt {} position {}: int8 logits differ by {d}", p["name"], pos["pos"]);
        worst = worst.max(d);
        if pos["top2_margin"].as_f64().unwrap() > 0.7 {
            let top = u32s(&pos["top_ids"])[0] as usize;
            assert_eq!(
                kernels_cpu::ops::argmax(row),
                top,
                "prompt {} position {}: top-1 changed",
                p["name"],
                pos["pos"]
            );
            checked += 1;
        }
    });
    eprintln!("int8 activations: max |logit - reference| = {worst:.3}, top-1 checked at {checked} positions");
}

#[test]
fn int8_activations_keep_the_top1_wherever_the_margin_is_clear() {
    // Teacher-forced over every prompt position (the golden stores the reference's argmax and top-2 margin at
    // each one).
    let model = Model::load(smollm2_omex("keep")).unwrap();
    let g = golden("smollm2_logits.json");
    let mut engine = engine(&model, Activations::Int8, KvType::F16, 256);
    let mut checked = 0;
    for p in g["prompts"].as_array().unwrap() {
        let ids = u32s(&p["token_ids"]);
        let logits = engine.forward(&ids, 0, Logits::All).unwrap();
        let vocab = logits.len() / ids.len();
        for (i, (top, margin)) in u32s(&p["argmax_ids"]).into_iter().zip(f64s(&p["top2_margins"])).enumerate() {
            if margin > 0.7 {
                assert_eq!(
                    kernels_cpu::ops::argmax(&logits[i * vocab..(i + 1) * vocab]) as u32,
                    top,
                    "prompt {} position {i}",
                    p["name"]
                );
                checked += 1;
            }
        }
    }
    assert!(checked > 20, "only {checked} positions had a clear margin");
}

#[test]
fn float_greedy_continuations_equal_the_reference() {
    let model = Model::load(smollm2_omex("keep")).unwrap();
    let opts = EngineOptions {
        backend: BackendChoice::Cpu,
        context_length: Some(256),
        activations: Activations::F32,
        kv: KvType::F32,
        ..Default::default()
    };
    let mut session = model.session(&opts).unwrap();
    let g = golden("smollm2_greedy.json");
    for p in g["prompts"].as_array().unwrap() {
        let want = u32s(&p["generated_ids"]);
        let gen = GenerateOptions { max_tokens: want.len(), ignore_eos: true, ..Default::default() };
        session.reset();
        let out = session.generate_from_ids(u32s(&p["token_ids"]), &gen, &mut |_| true).unwrap();
        assert_eq!(out.output_ids, want, "prompt {}: {:?} vs reference {:?}", p["name"], out.text, p["generated_text"]);
        // The reference decodes special tokens too; the session's text leaves them out.
        assert_eq!(model.tokenizer.decode(&out.output_ids), p["generated_text"].as_str().unwrap());
    }
}

/// Perplexity over tests/data/perplexity.txt in chunks of 128 (the golden's CI-sized entry).
fn perplexity_128(activations: Activations) -> (f64, f64) {
    let model = Model::load(smollm2_omex("keep")).unwrap();
    let g = golden("smollm2_perplexity.json");
    let entry = g["entries"].as_array().unwrap().iter().find(|e| e["ctx"] == 128).expect("ctx 128 entry").clone();
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/perplexity.txt")).unwrap();
    let tokens = model.tokenizer.encode(&text);
    assert_eq!(tokens.len() as u64, g["n_tokens_total"].as_u64().unwrap(), "tokenization of the text differs");
    let mut engine = engine(&model, activations, KvType::F16, 128);
    let p = perplexity(engine.as_mut(), &tokens, 128, &mut |_, _, _| {}).unwrap();
    assert_eq!(p.chunks as u64, entry["n_chunks"].as_u64().unwrap());
    (p.perplexity, entry["ppl"].as_f64().unwrap())
}

#[test]
fn float_perplexity_within_half_a_percent() {
    let (ours, reference) = perplexity_128(Activations::F32);
    let rel = (ours - reference).abs() / reference;
    eprintln!("float perplexity {ours:.4} vs reference {reference:.4} ({:+.3}%)", 100.0 * (ours / reference - 1.0));
    assert!(rel < 0.005, "perplexity {ours} vs reference {reference}");
}

#[test]
fn int8_perplexity_within_two_and_a_half_percent() {
    let (ours, reference) = perplexity_128(Activations::Int8);
    let rel = (ours - reference).abs() / reference;
    eprintln!("int8 perplexity {ours:.4} vs reference {reference:.4} ({:+.3}%)", 100.0 * (ours / reference - 1.0));
    assert!(rel < 0.025, "perplexity {ours} vs reference {reference}");
}
