//! Weights streamed under a GPU memory budget: the same logits and greedy tokens as the fully resident engine,
//! the allocator's peak within the budget, the bytes uploaded equal to the plan's, and a clear refusal (naming
//! the smallest budget that works) when even streaming cannot fit. On lavapipe in CI; each engine gets its
//! own GPU context so that budgets and peaks are its own.

mod common;
mod gpu_common;
#[path = "common/tiny_model.rs"]
mod tiny_model;

use omex::backend::gpu::streaming::Unit;
use omex::backend::gpu::{plan_memory, DeviceOptions, GpuContext, GpuEngine, GpuOptions, MemoryPlan};
use omex::backend::{Engine, KvType, Logits};
use omex::format::graph::GRAPH_FILE;
use omex::format::ModelDir;
use omex::graph::Transformer;
use omex::memory::budget::{Budget, BudgetSource};
use std::path::Path;
use std::sync::Arc;
use tiny_model::{write_tiny_model, TinySpec};

/// A fresh context (its own allocator), or `None` off CI when there is no adapter.
fn fresh_gpu() -> Option<Arc<GpuContext>> {
    gpu_common::gpu_arc()?;
    Some(Arc::new(GpuContext::open_blocking(&DeviceOptions::default()).expect("the adapter opened once already")))
}

/// An f32 KV cache: a streamed run may take the prompt in other chunk sizes than the resident one (other kernels,
/// sums in another order), and an f16 cache turns those last-bit differences into whole f16 steps now and then
/// (2.7e-4 in the logits of the tiny untied model), which would hide what these tests check: that streaming
/// computes what the resident engine does. The cache types are tested in gpu_ops.rs and gpu_engine.rs.
fn options(ctx_len: usize, budget: Option<u64>, overlap: bool) -> GpuOptions {
    let mut o = GpuOptions::new(ctx_len);
    o.kv = KvType::F32;
    o.budget = budget.map(|bytes| Budget { bytes, source: BudgetSource::Flag });
    o.overlap = overlap;
    o
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()))
}

/// Streams `dir` at `budget` and checks it against `want` (the resident run): same tokens, logits equal (the
/// same kernels on the same bytes, only in slots), peak under the budget, uploads as planned.
#[allow(clippy::too_many_arguments)]
fn check_streamed(
    dir: &ModelDir,
    cfg: &Transformer,
    ctx_len: usize,
    budget: u64,
    overlap: bool,
    prompt: &[u32],
    steps: usize,
    want: &(Vec<f32>, Vec<u32>),
    what: &str,
) {
    let Some(gpu) = fresh_gpu() else { return };
    let mut e = GpuEngine::load_blocking(gpu, dir, cfg, options(ctx_len, Some(budget), overlap)).unwrap();
    let plan = e.memory_plan().plan.clone();
    assert!(plan.streams(), "{what}: a budget of {budget} should make weights stream: {plan:?}");
    assert!(plan.total_bytes <= budget, "{what}: the plan takes {} of {budget}", plan.total_bytes);
    let got = gpu_common::prompt_then_greedy(&mut e, prompt, steps);
    assert_eq!(got.1, want.1, "{what}: greedy tokens");
    let d = max_diff(&got.0, &want.0);
    assert!(d <= 1e-4, "{what}: logits differ from the resident run by {d}");
    let m = e.memory_report();
    assert!(m.peak <= budget, "{what}: the allocator peaked at {} bytes, over the budget of {budget}", m.peak);
    // The prompt's logits come in chunks of at most `logit_rows` tokens, one forward pass each; then one pass
    // per decode step.
    let rows = e.memory_plan().logit_rows.min(e.memory_plan().max_batch) as usize;
    let passes = (prompt.len().div_ceil(rows) + steps) as u64;
    assert_eq!(e.streamed_bytes(), passes * plan.streamed_bytes_per_token, "{what}: bytes uploaded vs planned");
    eprintln!(
        "{what}: {} of {} weight bytes resident, {} streamed per pass, peak {} of budget {budget}; logits within {d:.1e}",
        plan.resident_bytes, plan.weight_bytes, plan.streamed_bytes_per_token, m.peak
    );
}

/// The real model at 40% and 25% of its weight bytes: the 40% run keeps the tied embedding/head resident
/// or not as the planner decides; the 25% run must stream the output head in pieces and gather embedding
/// rows on the host. Both with the default upload slots and overlap; the 25% one also serially.
#[test]
fn smollm2_streamed_matches_the_resident_engine() {
    let Some(gpu) = fresh_gpu() else { return };
    let path = common::smollm2_omex("keep");
    let model = omex::runtime::Model::load(&path).unwrap();
    let (dir, cfg) = (&model.dir, &model.config);
    let ctx_len = 64;
    let prompt = model.tokenizer.encode_with_specials("The capital of France is");
    let steps = 2;
    let mut resident = GpuEngine::load_blocking(gpu, dir, cfg, options(ctx_len, None, true)).unwrap();
    let want = gpu_common::prompt_then_greedy(&mut resident, &prompt, steps);
    let weights = resident.memory_plan().plan.weight_bytes;
    drop(resident);
    for (share, overlap) in [(0.40, true), (0.25, true), (0.25, false)] {
        let budget = (weights as f64 * share) as u64;
        let what = format!("SmolLM2 at {:.0}% of its weights, overlap {overlap}", share * 100.0);
        check_streamed(dir, cfg, ctx_len, budget, overlap, &prompt, steps, &want, &what);
    }
}

/// Qwen2.5-Coder-1.5B Q4_K_M (1.1 GB of Q4_K and Q6_K blocks as the GGUF holds them) under a 256 MB budget: the
/// same logits and greedy tokens as resident, and those tokens the CPU engine's. On lavapipe this takes about
/// a minute (a 5-token prompt, 2 steps, twice).
#[test]
fn qwen15_streams_under_256_mb_like_resident() {
    let Some(gguf) = common::qwen_gguf("1.5b") else { return };
    let Some(gpu) = fresh_gpu() else { return };
    let path = common::converted(&gguf, "qwen15", "keep");
    let model = omex::runtime::Model::load(&path).unwrap();
    let (dir, cfg) = (&model.dir, &model.config);
    let ctx_len = 64;
    let prompt = model.tokenizer.encode("The capital of France is");
    let steps = 2;
    let mut resident = GpuEngine::load_blocking(gpu, dir, cfg, options(ctx_len, None, true)).unwrap();
    let want = gpu_common::prompt_then_greedy(&mut resident, &prompt, steps);
    drop(resident);
    let cpu_opts = omex::runtime::EngineOptions {
        backend: omex::runtime::BackendChoice::Cpu,
        context_length: Some(ctx_len),
        activations: omex::backend::Activations::F32,
        kv: omex::backend::KvType::F32,
        ..Default::default()
    };
    let mut cpu = model.engine(&cpu_opts).unwrap();
    let mut cpu_tokens = Vec::new();
    let mut row = cpu.forward(&prompt, 0, Logits::Last).unwrap();
    for s in 0..=steps {
        cpu_tokens.push(kernels_cpu::ops::argmax(&row) as u32);
        if s < steps {
            row = cpu.forward(&cpu_tokens[s..s + 1], prompt.len() + s, Logits::Last).unwrap();
        }
    }
    assert_eq!(want.1, cpu_tokens, "resident GPU greedy tokens against the CPU engine's");
    drop(cpu);
    check_streamed(dir, cfg, ctx_len, 256_000_000, true, &prompt, steps, &want, "Qwen2.5-Coder-1.5B at 256 MB");
}

fn tiny(name: &str, spec: &TinySpec) -> (std::path::PathBuf, ModelDir, Transformer) {
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("gpu-streaming-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&path);
    write_tiny_model(&path, spec, 7);
    let dir = ModelDir::open(&path).unwrap();
    let cfg = Transformer::from_graph(&dir.graph, &path.join(GRAPH_FILE)).unwrap();
    (path, dir, cfg)
}

/// An untied model: its output head is a file of its own (streamed in pieces) and its embedding, when not
/// resident, never goes to the GPU at all.
#[test]
fn untied_tiny_model_streams_its_head_and_gathers_embeddings_on_the_host() {
    let Some(gpu) = fresh_gpu() else { return };
    let spec = TinySpec { tied: false, vocab: 300, layers: 4, ..TinySpec::small() };
    let (path, dir, cfg) = tiny("untied", &spec);
    let ctx_len = 32;
    let prompt: Vec<u32> = vec![5, 17, 250, 3, 99, 42];
    let mut resident = GpuEngine::load_blocking(gpu, &dir, &cfg, options(ctx_len, None, true)).unwrap();
    let want = gpu_common::prompt_then_greedy(&mut resident, &prompt, 3);
    drop(resident);
    // The smallest budget that streams: everything the plan needs besides the weights, plus the two
    // slots of the planner's minimum.
    let floor = match plan_memory(&dir, &cfg, &options(ctx_len, Some(1), true), 1 << 30) {
        Ok(_) => panic!("a budget of one byte was accepted"),
        Err(e) => minimum_from(&e.to_string()),
    };
    check_streamed(&dir, &cfg, ctx_len, floor, true, &prompt, 3, &want, "tiny untied model at its minimum budget");
    let _ = std::fs::remove_dir_all(&path);
}

/// "... needs at least 12.3 MB ..." -> bytes.
fn minimum_from(message: &str) -> u64 {
    let at = message.find("at least ").unwrap_or_else(|| panic!("no minimum in {message:?}")) + "at least ".len();
    let mb: f64 = message[at..].split(' ').next().unwrap().parse().unwrap();
    (mb * 1e6).round() as u64
}

/// A budget below the streaming minimum is refused with that minimum, which then works.
#[test]
fn a_budget_too_small_names_the_smallest_that_works() {
    let Some(gpu) = fresh_gpu() else { return };
    let path = common::smollm2_omex("keep");
    let model = omex::runtime::Model::load(&path).unwrap();
    let (dir, cfg) = (&model.dir, &model.config);
    let err = match GpuEngine::load_blocking(gpu, dir, cfg, options(128, Some(8_000_000), true)) {
        Ok(_) => panic!("an 8 MB budget cannot hold the KV cache and two slots"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("too small") && err.contains("--gpu-mem") && err.contains("--ctx"), "{err}");
    let minimum = minimum_from(&err);
    assert!(minimum > 8_000_000, "{err}");
    let Some(gpu) = fresh_gpu() else { return };
    let mut e = GpuEngine::load_blocking(gpu, dir, cfg, options(128, Some(minimum), true))
        .unwrap_or_else(|e| panic!("the minimum the error named ({minimum}) does not work: {e}"));
    let logits = e.forward(&[1, 2, 3], 0, Logits::Last).unwrap();
    assert_eq!(logits.len(), cfg.vocab_size as usize);
    assert!(e.memory_report().peak <= minimum);
}

/// SmolLM2's memory plan at a context of `ctx_len` under each KV cache type, for the planner tests.
struct KvPlanner<'a> {
    dir: &'a ModelDir,
    cfg: &'a Transformer,
    ctx_len: usize,
}

impl KvPlanner<'_> {
    /// Values in the whole cache: K and V of every block, position and KV head.
    fn values(&self) -> u64 {
        let c = self.cfg;
        2 * c.blocks.len() as u64 * self.ctx_len as u64 * (c.n_kv_heads * c.head_dim) as u64
    }

    fn plan(&self, kv: KvType, budget: Option<u64>) -> omex::error::Result<(Vec<Unit>, MemoryPlan)> {
        let mut o = options(self.ctx_len, budget, true);
        o.kv = kv;
        plan_memory(self.dir, self.cfg, &o, 1 << 30)
    }

    /// The smallest budget the refusal of a one-byte budget names, and that refusal.
    fn minimum(&self, kv: KvType) -> (u64, String) {
        match self.plan(kv, Some(1)) {
            Ok(_) => panic!("a budget of one byte was accepted"),
            Err(e) => (minimum_from(&e.to_string()), e.to_string()),
        }
    }
}

/// The planner counts the KV cache at its element size: SmolLM2-135M at a 4096-token context has 30 blocks of
/// 3 KV heads of 64, so its cache is 2 x 30 x 4096 x 192 values, 189 MB in f32 and half that in f16. A budget
/// that fits the f16 cache's streaming minimum plans with f16 and is refused with f32, the refusal naming the
/// f32 cache and --kv f16. Host-side only (the planner), so it runs without a GPU.
#[test]
fn the_planner_counts_the_kv_cache_at_its_element_size() {
    let model = omex::runtime::Model::load(common::smollm2_omex("keep")).unwrap();
    let planner = KvPlanner { dir: &model.dir, cfg: &model.config, ctx_len: 4096 };
    let values = planner.values();
    let (f32_plan, f16_plan) =
        (planner.plan(KvType::F32, None).unwrap().1.plan, planner.plan(KvType::F16, None).unwrap().1.plan);
    assert_eq!(f32_plan.kv_bytes, 4 * values, "an f32 cache");
    assert_eq!(f16_plan.kv_bytes, 2 * values, "an f16 cache");
    assert_eq!(f32_plan.total_bytes - f16_plan.total_bytes, 2 * values, "only the cache differs");
    let ((min16, _), (min32, err32)) = (planner.minimum(KvType::F16), planner.minimum(KvType::F32));
    assert!(err32.contains("f32 KV cache") && err32.contains("--kv f16"), "{err32}");
    // The minima differ by the f32 cache's extra bytes (each is rounded up to 0.1 MB).
    assert!((min32 - min16).abs_diff(2 * values) <= 100_000, "minima {min16} (f16) and {min32} (f32)");
    let plan =
        planner.plan(KvType::F16, Some(min16)).unwrap_or_else(|e| panic!("f16 at its minimum {min16}: {e}")).1.plan;
    assert!(plan.streams() && plan.total_bytes <= min16, "{plan:?}");
    match planner.plan(KvType::F32, Some(min16)) {
        Ok((_, m)) => panic!("an f32 cache planned in the f16 minimum of {min16}: {:?}", m.plan),
        Err(e) => assert!(e.to_string().contains("too small"), "{e}"),
    }
}

/// A q8 cache counts at its GPU size, 36 bytes per block of 32 values (8 words of int8, one for the scale): a
/// budget at the q8 cache's streaming minimum plans with q8 and is refused with f16, the refusal suggesting
/// --kv q8. Host-side only.
#[test]
fn the_planner_counts_a_q8_kv_cache_at_its_real_size() {
    let model = omex::runtime::Model::load(common::smollm2_omex("keep")).unwrap();
    let planner = KvPlanner { dir: &model.dir, cfg: &model.config, ctx_len: 4096 };
    let values = planner.values();
    let (f16_plan, q8_plan) =
        (planner.plan(KvType::F16, None).unwrap().1.plan, planner.plan(KvType::Q8, None).unwrap().1.plan);
    assert_eq!(q8_plan.kv_bytes, values / 32 * 36, "a q8 cache");
    assert_eq!(f16_plan.total_bytes - q8_plan.total_bytes, 2 * values - values / 32 * 36, "only the cache differs");
    let ((min8, err8), (min16, err16)) = (planner.minimum(KvType::Q8), planner.minimum(KvType::F16));
    assert!(err16.contains("f16 KV cache") && err16.contains("--kv q8"), "{err16}");
    assert!(err8.contains("q8 KV cache"), "{err8}");
    assert!(min8 < min16, "minima {min8} (q8) and {min16} (f16)");
    let plan = planner.plan(KvType::Q8, Some(min8)).unwrap_or_else(|e| panic!("q8 at its minimum {min8}: {e}")).1.plan;
    assert!(plan.streams() && plan.total_bytes <= min8, "{plan:?}");
    match planner.plan(KvType::F16, Some(min8)) {
        Ok((_, m)) => panic!("an f16 cache planned in the q8 minimum of {min8}: {:?}", m.plan),
        Err(e) => assert!(e.to_string().contains("too small"), "{e}"),
    }
}
