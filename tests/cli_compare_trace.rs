//! `omex compare` and `omex trace` on the real SmolLM2: the JSON each writes, parsed and checked.

mod common;
mod gpu_common;

use common::{omex_bin, smollm2_omex};
use serde_json::Value;
use std::collections::BTreeMap;
use std::process::{Command, Output};

fn omex(args: &[&str]) -> Output {
    Command::new(omex_bin()).args(args).output().unwrap()
}

fn compare(a: &str, b: &str) -> Value {
    let out = omex(&["compare", a, b, "--backend", "cpu", "--json", "-n", "4", "--activations", "f32"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["comparison"].clone()
}

fn finite(v: &Value) -> f64 {
    let x = v.as_f64().unwrap_or_else(|| panic!("{v} is not a number"));
    assert!(x.is_finite());
    x
}

#[test]
fn a_model_compared_with_itself_agrees_fully_and_with_int8_nearly() {
    let keep = smollm2_omex("keep");
    let keep = keep.to_str().unwrap();
    let c = compare(keep, keep);
    let n = c["tokens"].as_u64().unwrap() as usize;
    assert!(n > 50, "{n} tokens");
    assert_eq!(c["positions"].as_array().unwrap().len(), n);
    assert_eq!(finite(&c["max_abs_diff"]), 0.0);
    assert_eq!(finite(&c["top1_agreement"]), 1.0);
    assert_eq!(finite(&c["a"]["perplexity"]), finite(&c["b"]["perplexity"]));
    for side in ["a", "b"] {
        assert!(finite(&c[side]["decode_tok_s"]) > 0.0 && finite(&c[side]["prefill_tok_s"]) > 0.0);
        assert_eq!(c[side]["decode_tokens"], 4);
    }
    let ppl = finite(&c["a"]["perplexity"]);
    assert!(ppl > 1.0 && ppl < 100.0, "perplexity {ppl}");

    // The int8 conversion of the same GGUF: close, not equal.
    let int8 = smollm2_omex("int8");
    let c = compare(keep, int8.to_str().unwrap());
    let (max, mean) = (finite(&c["max_abs_diff"]), finite(&c["mean_abs_diff"]));
    assert!(max > 0.0 && mean > 0.0, "max {max} mean {mean}");
    assert!(mean < 1.0, "mean logit difference {mean}");
    assert!(finite(&c["top1_agreement"]) > 0.7, "{}", c["top1_agreement"]);
    let (pa, pb) = (finite(&c["a"]["perplexity"]), finite(&c["b"]["perplexity"]));
    assert!((pa / pb - 1.0).abs() < 0.25, "perplexities {pa} and {pb}");
    // Each position's numbers bound the totals.
    let positions = c["positions"].as_array().unwrap();
    let pmax = positions.iter().map(|p| finite(&p["max_abs"])).fold(0.0, f64::max);
    assert!((pmax - max).abs() < 1e-6);
    let agree = positions.iter().filter(|p| p["top1_a"] == p["top1_b"]).count() as f64 / positions.len() as f64;
    assert!((agree - finite(&c["top1_agreement"])).abs() < 1e-9);
}

#[test]
fn compare_refuses_a_missing_text_file() {
    let keep = smollm2_omex("keep");
    let keep = keep.to_str().unwrap();
    let out = omex(&["compare", keep, keep, "--backend", "cpu", "-f", "/nonexistent/text.txt"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/text.txt"));
}

#[test]
fn trace_writes_chrome_events_covering_every_block() {
    check_trace("cpu");
}

/// The GPU engine's timeline (lavapipe on CI): each op a submission of its own, the same names and checks.
#[test]
fn trace_on_the_gpu_engine_covers_every_block() {
    if gpu_common::gpu_arc().is_some() {
        check_trace("gpu");
    }
}

fn check_trace(backend: &str) {
    let model = smollm2_omex("keep");
    let dir = std::env::temp_dir().join(format!("omex-trace-{backend}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("trace.json");
    let _ = std::fs::remove_file(&path);
    let args = ["trace", model.to_str().unwrap(), "-p", "The capital of France is", "-o", path.to_str().unwrap()];
    let out = omex(&[&args[..], &["--backend", backend, "-n", "3"]].concat());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let events = v["traceEvents"].as_array().unwrap();
    let mut by_tid: BTreeMap<u64, Vec<(f64, f64, String)>> = BTreeMap::new();
    for e in events {
        assert_eq!(e["ph"], "X");
        let (ts, dur) = (finite(&e["ts"]), finite(&e["dur"]));
        assert!(ts >= 0.0 && dur >= 0.0, "{e}");
        assert_eq!(e["pid"], 1);
        assert!(e["args"].is_object());
        by_tid.entry(e["tid"].as_u64().unwrap()).or_default().push((ts, dur, e["name"].as_str().unwrap().to_string()));
    }
    // Thread 0: the prefill and 3 decode passes; thread 1: their ops. Neither overlaps itself.
    let passes: Vec<_> = by_tid[&0].iter().map(|p| p.2.as_str()).collect();
    assert_eq!(passes, ["prefill", "decode 1", "decode 2", "decode 3"]);
    for spans in by_tid.values() {
        for w in spans.windows(2) {
            assert!(w[0].0 + w[0].1 <= w[1].0 + 1e-3, "{:?} overlaps {:?}", w[0], w[1]);
        }
    }
    // Every op lies inside its pass; every block of the 30 appears in every pass with its attention.
    let ops = &by_tid[&1];
    for pass in &by_tid[&0] {
        let inside: Vec<_> =
            ops.iter().filter(|o| o.0 >= pass.0 - 1e-3 && o.0 + o.1 <= pass.0 + pass.1 + 1e-3).collect();
        for b in 0..30 {
            let prefix = format!("blk.{b} ");
            assert!(inside.iter().any(|o| o.2 == format!("blk.{b} attention")), "{}: block {b}", pass.2);
            assert!(inside.iter().any(|o| o.2.starts_with(&prefix) && o.2.contains("attn_q")), "{}: block {b}", pass.2);
        }
        assert!(inside.iter().any(|o| o.2 == "embed") && inside.iter().any(|o| o.2 == "head"), "{}", pass.2);
    }
    // An existing file is not replaced without --force.
    let out = omex(&[&args[..], &["--backend", backend]].concat());
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--force"));
    let _ = std::fs::remove_dir_all(&dir);
}
