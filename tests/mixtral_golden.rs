//! Mixtral (a sparse mixture of experts) against `transformers` itself: a tiny randomly initialised
//! `MixtralForCausalLM` (2 blocks, 64 wide, 4 heads over 2 KV heads, 4 experts of width 128, top-2 routing, a
//! byte-level BPE of 384 tokens), saved with `save_pretrained`, with every prompt position's logits and
//! `generate`'s greedy tokens for top-2 (the saved config) and top-1 (the same weights with
//! `num_experts_per_tok = 1`), all made by scripts/reference/make_mixtral_fixture.py into
//! tests/data/mixtral-tiny/ (committed: CI needs no torch).
//!
//! Bounds, measured on x86-64 (AVX-512) and set with a margin:
//! - f32 activations: every logit of every position within 1e-4 of transformers' (measured: see the README's
//!   architectures table), for both routing widths; zeroing a router or one expert's down projection moves
//!   them far beyond it (`a_broken_router_or_expert_fails_the_bound`).
//! - greedy decoding equals `generate(do_sample=False)` token for token, 12 steps on each of the 4 prompts, for
//!   both routing widths.
//! - configs and graphs omex cannot run (top_k above the experts, no experts, a missing expert tensor) are
//!   refused naming the file and field or tensor.

mod common;
mod gpu_common;

use omex::backend::gpu::{plan_memory, DeviceOptions, GpuContext, GpuEngine, GpuOptions};
use omex::backend::{Activations, Engine, KvType, Logits, SeqChunk};
use omex::memory::budget::{Budget, BudgetSource};
use omex::runtime::{BackendChoice, EngineOptions, Model};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};

/// Largest |omex - transformers| over every logit with f32 activations.
const F32_TOL: f64 = 1e-4;
/// The same with int8 activations and an f16 KV cache.
const INT8_TOL: f64 = 0.05;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/mixtral-tiny")
}

fn reference() -> &'static Value {
    static REF: OnceLock<Value> = OnceLock::new();
    REF.get_or_init(|| serde_json::from_slice(&std::fs::read(fixture().join("reference.json")).unwrap()).unwrap())
}

/// The reference cases of routing width `k`.
fn cases(k: u32) -> &'static [Value] {
    reference()["top_k"][k.to_string()]["cases"].as_array().unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

/// A copy of the fixture directory with `config.json` changed by `edit`, in `tmp`.
fn edited_fixture(tmp: &Path, edit: impl FnOnce(&mut Value)) {
    let _ = std::fs::remove_dir_all(tmp);
    std::fs::create_dir_all(tmp).unwrap();
    for f in ["model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json"] {
        std::fs::copy(fixture().join(f), tmp.join(f)).unwrap();
    }
    let mut config: Value = serde_json::from_slice(&std::fs::read(fixture().join("config.json")).unwrap()).unwrap();
    edit(&mut config);
    std::fs::write(tmp.join("config.json"), config.to_string()).unwrap();
}

/// The fixture converted once per build of the converter, with routing width `k` (2 is the saved config).
fn mixtral_omex(k: u32) -> &'static Path {
    static TOP2: OnceLock<PathBuf> = OnceLock::new();
    static TOP1: OnceLock<PathBuf> = OnceLock::new();
    match k {
        2 => TOP2.get_or_init(|| common::converted(&fixture(), "mixtral-tiny", "keep")),
        1 => TOP1.get_or_init(|| {
            let src = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("mixtral-top1-src-{}", std::process::id()));
            edited_fixture(&src, |c| c["num_experts_per_tok"] = 1.into());
            common::converted(&src, "mixtral-tiny-top1", "keep")
        }),
        _ => unreachable!("the fixture has top-1 and top-2 references"),
    }
}

fn engine_of(dir: &Path, activations: Activations, kv: KvType) -> Box<dyn Engine> {
    let model = Model::load(dir).unwrap();
    let opts = EngineOptions { backend: BackendChoice::Cpu, threads: 1, activations, kv, ..Default::default() };
    model.engine(&opts).unwrap()
}

/// `omex run DIR ARGS --ignore-eos --json -n 12 -p PROMPT` on case `c`'s prompt: its JSON.
fn run_greedy(dir: &Path, args: &[&str], c: &Value) -> Value {
    let out = Command::new(common::omex_bin())
        .arg("run")
        .arg(dir)
        .args(args)
        .args(["--ignore-eos", "--json", "-n", "12", "-p"])
        .arg(c["prompt"].as_str().unwrap())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Every expert matrix of the fixture (2 blocks, 4 experts, hidden 64, expert width 128): name and shape.
fn expert_matrices() -> Vec<(String, [u32; 2])> {
    let parts = [("ffn_gate", [128, 64]), ("ffn_up", [128, 64]), ("ffn_down", [64, 128])];
    let mut out = Vec::new();
    for l in 0..2 {
        for e in 0..4 {
            out.extend(parts.map(|(part, shape)| (format!("blk.{l}.{part}.{e}"), shape)));
        }
    }
    out
}

/// Largest |omex - reference| over every position's logits of case `c`.
fn max_logit_diff(engine: &mut dyn Engine, c: &Value) -> f64 {
    let ids = ids(&c["ids"]);
    let got = engine.forward(&ids, 0, Logits::All).unwrap();
    let want: Vec<f64> = c["logits"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r.as_array().unwrap())
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(got.len(), want.len(), "logits of {:?}", c["prompt"]);
    got.iter().zip(&want).map(|(&g, &w)| (g as f64 - w).abs()).fold(0.0, f64::max)
}

#[test]
fn the_tokenizer_gives_the_ids_transformers_gave() {
    let model = Model::load(mixtral_omex(2)).unwrap();
    for c in cases(2) {
        let got = model.tokenizer.encode(c["prompt"].as_str().unwrap());
        assert_eq!(got, ids(&c["ids"]), "{:?}", c["prompt"]);
    }
}

#[test]
fn f32_logits_of_every_position_match_transformers() {
    for k in [2, 1] {
        let mut e = engine_of(mixtral_omex(k), Activations::F32, KvType::F32);
        for c in cases(k) {
            let d = max_logit_diff(e.as_mut(), c);
            eprintln!("top-{k} {:?}: max |omex - transformers| {d:.2e}", c["prompt"]);
            assert!(d <= F32_TOL, "top-{k} {:?}: {d}", c["prompt"]);
        }
    }
}

#[test]
fn int8_activations_stay_close_to_transformers() {
    let mut e = engine_of(mixtral_omex(2), Activations::Int8, KvType::F16);
    for c in cases(2) {
        let d = max_logit_diff(e.as_mut(), c);
        eprintln!("{:?}: max |omex int8 - transformers| {d:.3}", c["prompt"]);
        assert!(d <= INT8_TOL, "{:?}: {d}", c["prompt"]);
    }
}

#[test]
fn greedy_tokens_equal_generate() {
    for k in [2, 1] {
        for c in cases(k) {
            let v = run_greedy(mixtral_omex(k), &["--backend", "cpu", "--activations", "f32"], c);
            assert_eq!(ids(&v["prompt_ids"]), ids(&c["ids"]));
            assert_eq!(ids(&v["output_ids"]), ids(&c["greedy"]), "top-{k} {:?}", c["prompt"]);
        }
    }
}

/// The routing is load-bearing: a model whose router is zeroed (every expert equally likely, so the lowest ids
/// win) or whose one expert is zeroed is over 100x the f32 bound away from transformers, so that bound catches
/// an engine that routes wrongly or skips an expert.
#[test]
fn a_broken_router_or_expert_fails_the_bound() {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("mixtral-parts-{}", std::process::id()));
    for part in ["blk.1.ffn_gate_inp", "blk.0.ffn_gate_inp", "blk.0.ffn_down.3", "blk.1.ffn_up.1"] {
        let _ = std::fs::remove_dir_all(&tmp);
        let out = Command::new(common::omex_bin()).arg("convert").arg(fixture()).arg("-o").arg(&tmp).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        zero_tensor(&tmp, part);
        let mut e = engine_of(&tmp, Activations::F32, KvType::F32);
        let d = max_logit_diff(e.as_mut(), &cases(2)[3]);
        eprintln!("{part} zeroed: max |omex - transformers| {d:.3}");
        assert!(d > 100.0 * F32_TOL, "zeroing {part} moved the logits by only {d}");
    }
    let _ = std::fs::remove_dir_all(&tmp);
}

/// Zeroes a tensor's values in its layer file (loading maps the files without checking their hashes).
fn zero_tensor(dir: &Path, name: &str) {
    let index = dir.join("weights/quantization.json");
    let index: Value = serde_json::from_slice(&std::fs::read(index).unwrap()).unwrap();
    let t = index["tensors"].as_array().unwrap().iter().find(|t| t["name"] == name).unwrap_or_else(|| panic!("{name}"));
    let file = dir.join("weights").join(t["file"].as_str().unwrap());
    let mut bytes = std::fs::read(&file).unwrap();
    for s in t["sections"].as_array().unwrap() {
        let (at, n) = (s["offset"].as_u64().unwrap() as usize, s["bytes"].as_u64().unwrap() as usize);
        bytes[at..at + n].fill(0);
    }
    std::fs::write(&file, bytes).unwrap();
}

/// Every expert is a tensor record of its own in its block's layer file, and the graph names the router and
/// each expert.
#[test]
fn experts_are_records_of_their_own() {
    let model = Model::load(mixtral_omex(2)).unwrap();
    for l in 0..2 {
        for e in 0..4 {
            for part in ["ffn_gate", "ffn_up", "ffn_down"] {
                let name = format!("blk.{l}.{part}.{e}");
                let t = model.dir.index.get(&name).unwrap_or_else(|| panic!("{name} is not in the index"));
                assert_eq!(t.file, format!("layer_{l}.bin"), "{name}");
            }
        }
    }
    let graph = std::fs::read_to_string(mixtral_omex(2).join("graph.json")).unwrap();
    let graph: Value = serde_json::from_str(&graph).unwrap();
    let block = graph["nodes"].as_array().unwrap().iter().find(|n| n["id"] == "transformer_block_1").unwrap();
    assert_eq!(block["config"]["moe"], serde_json::json!({"experts": 4, "top_k": 2}));
    assert_eq!(block["config"]["weights"]["moe"]["router"], "blk.1.ffn_gate_inp");
    assert_eq!(block["config"]["weights"]["moe"]["experts"][3][2], "blk.1.ffn_down.3");
}

/// Quantized conversions quantize the experts like any matrix and stay within what the rounding explains. A
/// quantized router can flip a near tie between two experts (the fixture's smallest top-k gap is 5.3e-5), and
/// a flipped token's logits then move by a whole expert's output: so the bound is on the median position's
/// largest error and on the greedy token of every position, not on the worst logit. Measured on the long
/// prompt (59 positions): f16 max 0.023, median 0.005, every argmax equal; int8 (weights and activations)
/// max 1.07, median 0.18, argmax equal at 90% of positions; int4 max 5.2, median 1.85, argmax equal at 34%
/// (4 bits of random Gaussian weights in a model this small: a loose check that int4 experts run sanely).
#[test]
fn quantized_conversions_stay_close_to_transformers() {
    for (quant, median_bound, argmax_agree) in [("f16", 0.01, 1.0), ("int8", 0.3, 0.8), ("int4", 2.5, 0.25)] {
        let dir = common::converted(&fixture(), "mixtral-tiny", quant);
        let model = Model::load(&dir).unwrap();
        let expert = model.dir.index.get("blk.0.ffn_down.2").unwrap();
        assert_eq!(expert.dtype.name(), quant, "the experts are stored {quant}");
        let opts = EngineOptions { backend: BackendChoice::Cpu, threads: 1, ..Default::default() };
        let mut e = model.engine(&opts).unwrap();
        let c = &cases(2)[3];
        let got = e.forward(&ids(&c["ids"]), 0, Logits::All).unwrap();
        let want = c["logits"].as_array().unwrap();
        let vocab = got.len() / want.len();
        let (mut errs, mut agree) = (Vec::new(), 0);
        for (g, w) in got.chunks_exact(vocab).zip(want) {
            let w: Vec<f32> = w.as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
            errs.push(g.iter().zip(&w).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max));
            agree += usize::from(common::logits::argmax(g) == common::logits::argmax(&w));
        }
        let worst = errs.iter().copied().fold(0f32, f32::max);
        errs.sort_by(f32::total_cmp);
        let (median, agree) = (errs[errs.len() / 2], agree as f64 / errs.len() as f64);
        eprintln!("--quant {quant}: max |omex - transformers| {worst:.4}, median position {median:.4}, argmax agrees at {agree:.3}");
        assert!(median <= median_bound && agree >= argmax_agree, "--quant {quant}: median {median}, agree {agree}");
    }
}

/// A Mixtral directory omex cannot run exactly is refused at conversion, naming the file and the field or
/// tensor, leaving nothing behind.
#[test]
fn unsupported_mixtral_configs_are_refused_clearly() {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("mixtral-bad-{}", std::process::id()));
    let cases: [(&str, Value, &str); 4] = [
        ("num_experts_per_tok", 5.into(), "num_experts_per_tok\" is 5"),
        ("num_experts_per_tok", 0.into(), "num_experts_per_tok\" is 0"),
        ("num_local_experts", 0.into(), "num_local_experts\" is 0"),
        ("sliding_window", 16.into(), "sliding_window"),
    ];
    for (key, value, says) in cases {
        edited_fixture(&tmp, |c| c[key] = value);
        let err = convert_error(&tmp);
        assert!(err.contains(says) && err.contains("config.json"), "{key}: {err}");
    }
    // Three experts in the config, four in the checkpoint: the fourth's tensors are refused by name.
    edited_fixture(&tmp, |c| c["num_local_experts"] = 3.into());
    let err = convert_error(&tmp);
    assert!(err.contains("blk.0.ffn_gate.3") && err.contains("not read"), "{err}");
    // An expert's down projection renamed to a fifth expert: the missing one is named.
    edited_fixture(&tmp, |_| {});
    let st = tmp.join("model.safetensors");
    let mut bytes = std::fs::read(&st).unwrap();
    let (from, to) = (b"layers.1.block_sparse_moe.experts.2.w2", b"layers.1.block_sparse_moe.experts.9.w2");
    let at = bytes.windows(from.len()).position(|w| w == from).unwrap();
    bytes[at..at + to.len()].copy_from_slice(to);
    std::fs::write(&st, bytes).unwrap();
    let err = convert_error(&tmp);
    assert!(err.contains("blk.1.ffn_down.2 is missing"), "{err}");
    let _ = std::fs::remove_dir_all(&tmp);
}

fn convert_error(src: &Path) -> String {
    let out =
        Command::new(common::omex_bin()).arg("convert").arg(src).arg("-o").arg(src.join("out.omex")).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(!src.join("out.omex").exists(), "a half-written model was left");
    err
}

/// A graph.json whose experts do not add up (top_k above the experts, no experts, an expert tensor the index
/// lacks) is refused at load with the graph file and field or tensor named, never run.
#[test]
fn inconsistent_moe_graphs_are_refused_at_load() {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("mixtral-graph-{}", std::process::id()));
    type Edit = fn(&mut Value);
    let cases: [(Edit, &str); 4] = [
        (|b| b["config"]["moe"]["top_k"] = 5.into(), "moe.top_k 5"),
        (|b| b["config"]["moe"]["experts"] = 0.into(), "moe.experts 0"),
        (
            |b| {
                b["config"]["moe"]["experts"] = 3.into();
            },
            "4 experts named, moe.experts is 3",
        ),
        (|b| b["config"]["weights"]["moe"]["experts"][1][1] = "blk.0.ffn_up.7".into(), "blk.0.ffn_up.7"),
    ];
    for (i, (edit, says)) in cases.into_iter().enumerate() {
        let _ = std::fs::remove_dir_all(&tmp);
        let out = Command::new(common::omex_bin()).arg("convert").arg(fixture()).arg("-o").arg(&tmp).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let path = tmp.join("graph.json");
        let mut graph: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        for node in graph["nodes"].as_array_mut().unwrap() {
            if node["id"] == "transformer_block_0" || (i < 3 && node["type"] == "transformer_block") {
                edit(node);
            }
        }
        std::fs::write(&path, graph.to_string()).unwrap();
        let err = match Model::load(&tmp).and_then(|m| {
            let opts = EngineOptions { backend: BackendChoice::Cpu, threads: 1, ..Default::default() };
            m.engine(&opts).map(|_| ())
        }) {
            Ok(()) => panic!("case {i}: a broken graph loaded"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains(says), "case {i}: {err}");
        assert!(err.contains("graph.json") || i == 3, "case {i}: {err}");
    }
    let _ = std::fs::remove_dir_all(&tmp);
}

/// The GPU engine (whatever adapter there is: lavapipe on CI), f32 KV cache, against transformers with the same
/// bound as the CPU engine: every position's logits of a prompt run whole and in chunks of 5 (the short matmul
/// tiles), then fed one token at a time (the decode matvecs with the expert SwiGLU fused), for both routing
/// widths.
#[test]
fn the_gpu_engine_matches_transformers() {
    let Some(ctx) = gpu_common::gpu_arc() else { return };
    for k in [2, 1] {
        let model = Model::load(mixtral_omex(k)).unwrap();
        for max_batch in [128, 5] {
            let opts = GpuOptions { max_batch, ..gpu_f32(128) };
            let mut e = GpuEngine::load_blocking(ctx.clone(), &model.dir, &model.config, opts).unwrap();
            for c in cases(k) {
                let d = max_logit_diff(&mut e, c);
                eprintln!("gpu top-{k} max_batch {max_batch} {:?}: max |omex - transformers| {d:.2e}", c["prompt"]);
                assert!(d <= F32_TOL, "gpu top-{k} max_batch {max_batch} {:?}: {d}", c["prompt"]);
            }
        }
        let mut e = GpuEngine::load_blocking(ctx.clone(), &model.dir, &model.config, gpu_f32(128)).unwrap();
        for c in cases(k) {
            let want = c["logits"].as_array().unwrap();
            for (pos, &id) in ids(&c["ids"]).iter().enumerate() {
                let got = e.forward(&[id], pos, Logits::Last).unwrap();
                let d =
                    got.iter().zip(want[pos].as_array().unwrap()).map(|(&g, w)| (g as f64 - w.as_f64().unwrap()).abs());
                let d = d.fold(0.0, f64::max);
                assert!(d <= F32_TOL, "gpu decode top-{k} {:?} position {pos}: {d}", c["prompt"]);
            }
        }
    }
}

/// Several sequences in one batched step on the GPU (paged cache, each row at its own position): each
/// sequence's prompt but its last token as one batch, then the last tokens as one step of single rows (the
/// batched matvec); every row's logits against transformers' at that position.
#[test]
fn gpu_batched_steps_route_each_row_alone() {
    const BT: usize = omex::backend::KV_BLOCK_TOKENS;
    let Some(ctx) = gpu_common::gpu_arc() else { return };
    let model = Model::load(mixtral_omex(2)).unwrap();
    let (len, seqs) = (128, cases(2).len());
    let mut opts = gpu_f32(len);
    (opts.kv_tokens, opts.max_seqs) = (seqs * len, 8);
    let mut e = GpuEngine::load_blocking(ctx, &model.dir, &model.config, opts).unwrap();
    let per = len / BT;
    let tables: Vec<Vec<u32>> =
        (0..seqs).map(|s| (0..per).map(|i| ((seqs - 1 - s) * per + i) as u32).collect()).collect();
    let prompts: Vec<Vec<u32>> = cases(2).iter().map(|c| ids(&c["ids"])).collect();
    let heads: Vec<SeqChunk> = (0..seqs)
        .map(|s| SeqChunk { ids: &prompts[s][..prompts[s].len() - 1], pos: 0, blocks: &tables[s], logits: false })
        .collect();
    e.forward_batch(&heads).unwrap();
    let lasts: Vec<SeqChunk> = (0..seqs)
        .map(|s| {
            let n = prompts[s].len();
            SeqChunk { ids: &prompts[s][n - 1..], pos: n - 1, blocks: &tables[s], logits: true }
        })
        .collect();
    let got = e.forward_batch(&lasts).unwrap();
    let vocab = got.len() / seqs;
    for (s, (row, c)) in got.chunks_exact(vocab).zip(cases(2)).enumerate() {
        let want = c["logits"].as_array().unwrap().last().unwrap().as_array().unwrap();
        let d = row.iter().zip(want).map(|(&g, w)| (g as f64 - w.as_f64().unwrap()).abs()).fold(0.0, f64::max);
        eprintln!("gpu batched row {s}: max |omex - transformers| {d:.2e}");
        assert!(d <= F32_TOL, "gpu batched row {s} ({:?}): {d}", c["prompt"]);
    }
}

/// `omex run --backend gpu` decodes greedily (the argmax chained on the GPU) to transformers' tokens.
#[test]
fn gpu_greedy_tokens_equal_generate() {
    if gpu_common::gpu_arc().is_none() {
        return;
    }
    for c in cases(2) {
        let v = run_greedy(mixtral_omex(2), &["--backend", "gpu", "--kv", "f32"], c);
        assert_eq!(ids(&v["output_ids"]), ids(&c["greedy"]), "gpu {:?}", c["prompt"]);
    }
}

/// Under a GPU memory budget both blocks stream through one slot, and of a block's experts only those a row was
/// routed to are uploaded: a decode step (one row: top k of the 4 experts, all the same size) uploads each
/// block's other weights and k experts, exactly the plan's average bytes a token, where uploading every expert
/// would take more; the prompt's chunk uploads at most the whole blocks. Logits and greedy tokens equal the
/// resident engine's, for both routing widths.
#[test]
fn gpu_streamed_blocks_upload_only_the_routed_experts() {
    if gpu_common::gpu_arc().is_none() {
        return;
    }
    let fresh = || Arc::new(GpuContext::open_blocking(&DeviceOptions::default()).expect("the adapter opened once"));
    for k in [2, 1] {
        let model = Model::load(mixtral_omex(k)).unwrap();
        let (dir, cfg) = (&model.dir, &model.config);
        let prompt = ids(&cases(k)[0]["ids"]);
        let mut resident = GpuEngine::load_blocking(fresh(), dir, cfg, gpu_f32(128)).unwrap();
        let want = gpu_common::prompt_then_greedy(&mut resident, &prompt, 6);
        let (total, units) = (resident.memory_plan().plan.total_bytes, resident.memory_plan().units.clone());
        drop(resident);
        let blocks: Vec<_> = units.iter().filter(|u| u.file.starts_with("layer_")).collect();
        let largest = blocks.iter().map(|u| u.bytes).max().unwrap();
        // The largest budget (in steps of a twentieth of a block) under which both blocks stream.
        let mut opts = gpu_f32(128);
        opts.slots = 1;
        let ctx = fresh();
        let max_binding = ctx.gpu.limits.max_storage_buffer_binding_size;
        let streamed_blocks = |plan: &omex::memory::planner::Plan| -> Vec<omex::memory::planner::LayerCost> {
            let streamed = units.iter().zip(&plan.resident).filter(|(u, r)| !**r && u.file.starts_with("layer_"));
            streamed.map(|(u, _)| u.clone()).collect()
        };
        let streams_blocks = |plan: &omex::memory::planner::Plan| streamed_blocks(plan).len() == 2;
        let budget = (1..20 * total / largest)
            .map(|i| total - i * largest / 20)
            .find(|&bytes| {
                opts.budget = Some(Budget { bytes, source: BudgetSource::Flag });
                plan_memory(dir, cfg, &opts, max_binding).is_ok_and(|(_, m)| streams_blocks(&m.plan))
            })
            .expect("a budget that streams both blocks");
        opts.budget = Some(Budget { bytes: budget, source: BudgetSource::Flag });
        let mut e = GpuEngine::load_blocking(ctx, dir, cfg, opts).unwrap();
        let plan = e.memory_plan().plan.clone();
        assert!(streams_blocks(&plan), "{plan:?}");
        let streamed = streamed_blocks(&plan);
        let whole: u64 = streamed.iter().map(|u| u.bytes).sum();
        let per_token = plan.streamed_bytes_per_token;
        assert!(per_token < whole, "top-{k}: the plan moves {per_token} bytes a token, whole blocks {whole}");

        let before = e.streamed_bytes();
        let mut logits = e.forward(&prompt, 0, Logits::All).unwrap();
        let prompt_bytes = e.streamed_bytes() - before;
        assert!(prompt_bytes <= whole, "top-{k}: the prompt uploaded {prompt_bytes} of {whole} bytes");
        let vocab = logits.len() / prompt.len();
        let mut tokens = vec![kernels_cpu::ops::argmax(&logits[logits.len() - vocab..]) as u32];
        for s in 0..6 {
            let before = e.streamed_bytes();
            let row = e.forward(&tokens[s..s + 1], prompt.len() + s, Logits::Last).unwrap();
            let step = e.streamed_bytes() - before;
            assert_eq!(step, per_token, "top-{k}: decode step {s} uploaded {step} bytes, the plan {per_token}");
            tokens.push(kernels_cpu::ops::argmax(&row) as u32);
            logits.extend(row);
        }
        assert_eq!(tokens, want.1, "top-{k}: greedy tokens streamed vs resident");
        let d = logits.iter().zip(&want.0).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(d <= 1e-5, "top-{k}: streamed logits differ from the resident ones by {d}");
        eprintln!("top-{k}: {whole} bytes of streamed blocks, {per_token} uploaded a decode step, {prompt_bytes} for the prompt; logits within {d:.1e}");
    }
}

fn gpu_f32(context: usize) -> GpuOptions {
    let mut opts = GpuOptions::new(context);
    opts.kv = KvType::F32;
    opts
}

/// llama.cpp's own GGUF of the fixture (`convert_hf_to_gguf.py`, by scripts/reference/make_mixtral_gguf_fixture.py):
/// a llama GGUF with `llama.expert_count`, each block's experts stacked in `ffn_{gate,up,down}_exps`. `--quant
/// keep` takes each expert's slab apart into a record of its own, byte for byte: in f32 every expert matrix
/// equals the one converted from the transformers checkpoint. The model gives transformers' logits (the same
/// bound as the checkpoint's) and greedy tokens, on the CPU engine and on the GPU engine.
#[test]
fn llama_cpp_mixtral_gguf_matches_transformers() {
    use omex::backend::WeightRef;
    let dir = common::converted(&fixture().join("mixtral-tiny.f32.gguf"), "mixtral-tiny-gguf", "keep");
    let (from_gguf, from_hf) = (Model::load(&dir).unwrap(), Model::load(mixtral_omex(2)).unwrap());
    assert_eq!(from_gguf.config.architecture, "mixtral");
    assert_eq!(from_gguf.config.moe, from_hf.config.moe);
    for (name, shape) in expert_matrices() {
        let values = |m: &Model| WeightRef::load(&m.dir, &name, &shape).unwrap().to_f32();
        assert_eq!(values(&from_gguf), values(&from_hf), "{name}: the GGUF's slab against the checkpoint's");
    }
    let mut e = engine_of(&dir, Activations::F32, KvType::F32);
    for c in cases(2) {
        let d = max_logit_diff(e.as_mut(), c);
        eprintln!("GGUF {:?}: max |omex - transformers| {d:.2e}", c["prompt"]);
        assert!(d <= F32_TOL, "GGUF {:?}: {d}", c["prompt"]);
        let v = run_greedy(&dir, &["--backend", "cpu", "--activations", "f32"], c);
        assert_eq!(ids(&v["prompt_ids"]), ids(&c["ids"]), "GGUF tokenizer on {:?}", c["prompt"]);
        assert_eq!(ids(&v["output_ids"]), ids(&c["greedy"]), "GGUF greedy on {:?}", c["prompt"]);
    }
    if let Some(ctx) = gpu_common::gpu_arc() {
        let mut g = GpuEngine::load_blocking(ctx, &from_gguf.dir, &from_gguf.config, gpu_f32(128)).unwrap();
        for c in cases(2) {
            let d = max_logit_diff(&mut g, c);
            eprintln!("GGUF on the GPU {:?}: max |omex - transformers| {d:.2e}", c["prompt"]);
            assert!(d <= F32_TOL, "GGUF on the GPU {:?}: {d}", c["prompt"]);
        }
    }
}

/// The q8_0 GGUF's experts are taken apart too (each expert's slab whole blocks; `keep` stores q8_0 as omex's
/// int8 groups, the same values and scales): every expert weight is within q8_0's rounding of the checkpoint's
/// (half a step of its block, d = max |w| / 127, plus the f16 rounding of d), which a slab taken from the
/// wrong place is not; and the logits stay within what 8-bit weights (and a route flipped by them) explain:
/// measured max 0.11 to 0.74 per prompt.
#[test]
fn llama_cpp_mixtral_q8_0_gguf_stays_close() {
    use omex::backend::WeightRef;
    let dir = common::converted(&fixture().join("mixtral-tiny.q8_0.gguf"), "mixtral-tiny-gguf-q8_0", "keep");
    let (model, from_hf) = (Model::load(&dir).unwrap(), Model::load(mixtral_omex(2)).unwrap());
    assert_eq!(model.dir.index.get("blk.1.ffn_down.3").unwrap().dtype.name(), "int8");
    for (name, shape) in expert_matrices() {
        let q = WeightRef::load(&model.dir, &name, &shape).unwrap().to_f32();
        let w = WeightRef::load(&from_hf.dir, &name, &shape).unwrap().to_f32();
        for (qb, wb) in q.chunks_exact(32).zip(w.chunks_exact(32)) {
            let d = wb.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
            let worst = qb.iter().zip(wb).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(worst <= 0.6 * d + 1e-12, "{name}: a block off by {worst}, its step {d}");
        }
    }
    let mut e = engine_of(&dir, Activations::F32, KvType::F32);
    for c in cases(2) {
        let d = max_logit_diff(e.as_mut(), c);
        eprintln!("q8_0 GGUF {:?}: max |omex - transformers| {d:.3}", c["prompt"]);
        assert!(d <= 1.5, "q8_0 GGUF {:?}: {d}", c["prompt"]);
    }
}

/// A Mixtral GGUF omex cannot run exactly is refused at conversion, naming the file and the key or tensor,
/// leaving nothing behind: a stack that does not hold `llama.expert_count` experts, and a routing width past
/// the experts.
#[test]
fn inconsistent_mixtral_ggufs_are_refused() {
    let good = std::fs::read(fixture().join("mixtral-tiny.f32.gguf")).unwrap();
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("mixtral-bad-gguf-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    // A u32 key's value: the key string, its type (u32: 4), then the value.
    let set_u32 = |key: &str, value: u32| -> Vec<u8> {
        let mut b = good.clone();
        let at = b.windows(key.len()).position(|w| w == key.as_bytes()).unwrap() + key.len();
        assert_eq!(&b[at..at + 4], &4u32.to_le_bytes(), "{key} is a u32");
        b[at + 4..at + 8].copy_from_slice(&value.to_le_bytes());
        b
    };
    let cases = [
        ("count", set_u32("llama.expert_count", 3), "does not stack 3 experts"),
        ("used", set_u32("llama.expert_used_count", 5), "llama.expert_used_count 5"),
        ("many", set_u32("llama.expert_count", 100_000), "llama.expert_count 100000"),
    ];
    for (label, bytes, says) in cases {
        let path = tmp.join(format!("{label}.gguf"));
        std::fs::write(&path, bytes).unwrap();
        let out = tmp.join(format!("{label}.omex"));
        let o = Command::new(common::omex_bin()).arg("convert").arg(&path).arg("-o").arg(&out).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert_eq!(o.status.code(), Some(1), "{label}: {err}");
        assert!(err.contains(says) && err.contains(&format!("{label}.gguf")), "{label}: {err}");
        assert!(!out.exists(), "{label}: a half-written model was left");
    }
    let _ = std::fs::remove_dir_all(&tmp);
}

/// `omex plan` counts what a decode token reads: every block file but the experts a token is not routed to
/// (top 2 of 4: half of each block's expert bytes), the head's rows, no embedding row (untied: one is gathered).
#[test]
fn the_plan_counts_the_routed_share_of_the_experts() {
    let dir = mixtral_omex(2);
    let model = Model::load(dir).unwrap();
    let out = Command::new(common::omex_bin()).arg("plan").arg(dir).arg("--json").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let plan: Value = serde_json::from_slice(&out.stdout).unwrap();
    let bytes = |name: &str| -> u64 { model.dir.index.get(name).unwrap().sections.iter().map(|s| s.bytes).sum() };
    let mut want = bytes("output");
    for l in 0..2 {
        let file = std::fs::metadata(dir.join(format!("weights/layer_{l}.bin"))).unwrap().len();
        let experts: u64 = (0..4)
            .flat_map(|e| ["ffn_gate", "ffn_up", "ffn_down"].map(|p| format!("blk.{l}.{p}.{e}")))
            .map(|n| bytes(&n))
            .sum();
        want += file - (experts - experts * 2 / 4);
    }
    assert_eq!(plan["read_bytes_per_token"].as_u64(), Some(want), "{plan}");
    assert!(plan["weight_bytes"].as_u64().unwrap() > want, "{plan}");
}

/// The Mixtral GGUF with bytes of its header changed at random (seeded): opening it and reading every tensor
/// (the experts' slabs among them) either works or fails with an error, never a panic.
#[test]
fn mutated_mixtral_ggufs_never_panic() {
    use omex::import::SourceModel;
    let good = std::fs::read(fixture().join("mixtral-tiny.q8_0.gguf")).unwrap();
    // The header: everything before the first tensor's data (keys, the vocabulary, the tensor table).
    let header = good.len().min(24 * 1024);
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("mixtral-mutated-{}.gguf", std::process::id()));
    let mut state = 0x5eed_0042u64;
    let mut next = move || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        state >> 33
    };
    let (mut opened, mut refused) = (0, 0);
    for _ in 0..300 {
        let mut bytes = good.clone();
        for _ in 0..1 + next() % 4 {
            let at = (next() as usize) % header;
            bytes[at] = match next() % 3 {
                0 => next() as u8,
                1 => bytes[at] ^ (1 << (next() % 8)),
                _ => [0, 0xff, 1, 4][(next() % 4) as usize],
            };
        }
        std::fs::write(&tmp, &bytes).unwrap();
        match SourceModel::open(&tmp) {
            Ok(m) => {
                opened += 1;
                for t in &m.tensors {
                    let _ = m.data(t);
                }
            }
            Err(_) => refused += 1,
        }
    }
    let _ = std::fs::remove_file(&tmp);
    eprintln!("mutated Mixtral GGUFs: {opened} opened, {refused} refused");
    assert!(refused > 0, "no mutation was refused: the mutations do not reach the header");
}
