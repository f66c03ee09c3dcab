//! `omex run`, `bench` and `perplexity` as a user calls them: output formats, sampling options, and errors
//! that name the problem and exit non-zero.

mod common;

use common::{omex_bin, smollm2_omex};
use std::process::{Command, Output};

fn omex(args: &[&str]) -> Output {
    Command::new(omex_bin()).args(args).output().unwrap()
}

fn run_json(extra: &[&str]) -> serde_json::Value {
    let dir = smollm2_omex("keep");
    let mut args = vec!["run", dir.to_str().unwrap(), "--backend", "cpu", "--json"];
    args.extend_from_slice(extra);
    let out = omex(&args);
    assert!(out.status.success(), "omex run failed: {}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout.trim().lines().count(), 1, "--json prints exactly one line: {stdout}");
    serde_json::from_str(&stdout).unwrap()
}

#[test]
fn json_output_has_ids_text_and_timings() {
    let v = run_json(&["-p", "The capital of France is", "-n", "8", "--activations", "f32"]);
    let prompt: Vec<u64> = v["prompt_ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).collect();
    // SmolLM2 adds no BOS: the prompt ids are the text's ids exactly (as in the golden file).
    assert_eq!(prompt, [504, 3575, 282, 4649, 314]);
    assert!(v["text"].as_str().unwrap().starts_with(" Paris."), "{}", v["text"]);
    assert!(v["output_ids"].as_array().unwrap().len() <= 8);
    for key in ["load_ms", "prompt_tok_s", "decode_tok_s"] {
        assert!(v["timings"][key].as_f64().unwrap() > 0.0, "timings.{key}");
    }
}

#[test]
fn sampling_is_reproducible_with_a_seed_and_varies_without() {
    fn args(seed: &str) -> Vec<&str> {
        vec![
            "-p",
            "Once upon a time",
            "-n",
            "12",
            "--temp",
            "1.0",
            "--top-k",
            "40",
            "--top-p",
            "0.95",
            "--seed",
            seed,
            "--ignore-eos",
        ]
    }
    let a = run_json(&args("7"));
    let b = run_json(&args("7"));
    assert_eq!(a["output_ids"], b["output_ids"]);
    let others: Vec<_> = ["8", "9", "10"].iter().map(|s| run_json(&args(s))["output_ids"].clone()).collect();
    assert!(others.iter().any(|o| *o != a["output_ids"]), "different seeds all gave the same tokens");
}

#[test]
fn chat_mode_answers_and_stops_at_end_of_turn() {
    // f32 activations: the reference's first answer token wins by only 0.08 logits here ("The" over "L"),
    // within int8 activation noise.
    let v = run_json(&["--chat", "-p", "What is the capital of France?", "-n", "40", "--activations", "f32"]);
    assert!(v["text"].as_str().unwrap().contains("Paris"), "{}", v["text"]);
    assert!(!v["text"].as_str().unwrap().contains("<|im_end|>"));
}

#[test]
fn stop_strings_end_the_output_before_them() {
    let v = run_json(&["-p", "1, 2, 3, 4, 5,", "-n", "30", "--stop", "9", "--ignore-eos", "--activations", "f32"]);
    let text = v["text"].as_str().unwrap();
    assert!(!text.contains('9') && text.contains('8'), "{text:?}");
    assert_eq!(v["stop"], "StopString");
}

#[test]
fn a_prompt_longer_than_the_context_is_a_clear_error() {
    let dir = smollm2_omex("keep");
    let long = "word ".repeat(100);
    let out = omex(&["run", dir.to_str().unwrap(), "--backend", "cpu", "--ctx", "32", "-p", &long]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("context") && err.contains("--truncate"), "{err}");
    let out = omex(&[
        "run",
        dir.to_str().unwrap(),
        "--backend",
        "cpu",
        "--ctx",
        "32",
        "-p",
        &long,
        "--truncate",
        "-n",
        "4",
        "--json",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_missing_model_names_the_convert_command() {
    let out = omex(&["run", "/nonexistent/model.omex", "-p", "hi"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("omex convert"), "{err}");
}

#[test]
fn bad_sampling_options_are_refused() {
    let dir = smollm2_omex("keep");
    let out = omex(&["run", dir.to_str().unwrap(), "--backend", "cpu", "-p", "hi", "--top-p", "0"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("top-p"));
}

#[test]
fn bench_json_reports_both_rates() {
    let dir = smollm2_omex("keep");
    let out = omex(&["bench", dir.to_str().unwrap(), "--backend", "cpu", "-p", "16", "-n", "4", "-r", "2", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["pp_tok_s"].as_f64().unwrap() > 0.0 && v["tg_tok_s"].as_f64().unwrap() > 0.0, "{v}");
    assert_eq!(v["pp_samples"].as_array().unwrap().len(), 2);
}

#[test]
fn perplexity_prints_its_last_line() {
    let dir = smollm2_omex("keep");
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/perplexity.txt");
    let out = omex(&["perplexity", dir.to_str().unwrap(), "--backend", "cpu", "-f", file, "--ctx", "64"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let last = stdout.trim().lines().last().unwrap();
    let ppl: f64 = last.strip_prefix("perplexity: ").expect(last).parse().unwrap();
    assert!(ppl > 5.0 && ppl < 80.0, "{ppl}");
}
