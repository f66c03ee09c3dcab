//! The GPU engine: the model's weight files uploaded once, the forward pass compiled into dispatch lists
//! ([`super::plan`]), one command buffer per forward chunk, and only the requested logits rows read back.
//! [`GpuEngine::decode_steps`] chains decode steps on the GPU (the id sampled there, greedily or at a
//! temperature, feeds the next step's embedding gather), reading back only the token ids.
//!
//! Under a GPU memory budget too small for the model, the planner keeps some weight units resident and the
//! rest stream through upload slots ([`super::streaming`]): a forward pass is then one submission per
//! streamed piece, each piece written from the mapped file while the GPU runs the piece before it.

use super::adapters::{layout_of, Adapters, LoraSet, SetPlan};
use super::context::GpuContext;
use super::device::DeviceOptions;
use super::ops::misc::{self, SampleParams};
use super::plan::{Buffers, Model, Plan, Residency, Sizes, Stage, MAX_STEPS};
use super::streaming::{self, Copy, Piece, Slots};
use crate::arch::Program;
use crate::backend::lora::ActiveAdapter;
use crate::backend::{Activations, Engine, KvBlocks, KvType, Logits, SeqChunk, WeightRef, KV_BLOCK_TOKENS};
use crate::error::{Error, Result};
use crate::format::ModelDir;
use crate::graph::Transformer;
use crate::memory::budget::Budget;
use crate::memory::planner::{self, PlanInput};
use crate::sampling::{Sampler, SamplerOptions};
use std::sync::Arc;
#[cfg(not(target_arch = "wasm32"))]
use {
    crate::memory::trace::{SpanKind, TraceRecorder, TraceUnit},
    std::path::PathBuf,
    std::sync::Mutex,
};

/// Options of the GPU engine.
#[derive(Clone, Debug)]
pub struct GpuOptions {
    pub context_length: usize,
    /// Tokens per forward chunk during prefill (bounds the activation buffers).
    pub max_batch: usize,
    /// Splits of the decode attention over the cache (0: from the context length).
    pub attention_splits: u32,
    pub device: DeviceOptions,
    /// Activations of the decode matvecs: f32 (the default), or int8 quantized as the CPU engine's int8 path
    /// does, for matrices with int8, int4 or ternary weights (others stay f32). Prefill matmuls take f32.
    pub activations: Activations,
    /// Cap on the GPU memory omex allocates (`--gpu-mem`); weights stream when the model does not fit.
    pub budget: Option<Budget>,
    /// Upload slots when streaming: 2 is double buffering; 3 (the default) uploads up to two pieces ahead,
    /// which measured 7% faster than 2 on an H200 (SmolLM2 at a quarter of its weights).
    pub slots: usize,
    /// Upload the next piece while the GPU runs the current one (off: upload, then compute, in turn).
    pub overlap: bool,
    /// Record the upload/compute timeline and memory use, written to this file when the engine is dropped.
    #[cfg(not(target_arch = "wasm32"))]
    pub memory_trace: Option<PathBuf>,
    /// KV cache positions over all sequences of [`Engine::forward_batch`]; below `context_length`: one
    /// context's worth.
    pub kv_tokens: usize,
    /// Sequences one batched decode pass takes at most (sizes the attention partials and block tables).
    pub max_seqs: u32,
    /// The KV cache's element type (`--kv`): f16 by default, as on the CPU engine.
    pub kv: KvType,
}

impl GpuOptions {
    pub fn new(context_length: usize) -> GpuOptions {
        GpuOptions {
            context_length,
            max_batch: 512,
            attention_splits: 0,
            device: DeviceOptions::default(),
            // Not `Activations::default()` (the CPU engine's int8): f32 until int8 is measured on hardware.
            activations: Activations::F32,
            budget: None,
            slots: 3,
            overlap: true,
            #[cfg(not(target_arch = "wasm32"))]
            memory_trace: None,
            kv_tokens: 0,
            max_seqs: 1,
            kv: KvType::default(),
        }
    }

    /// Blocks of the paged KV cache.
    pub fn kv_blocks(&self) -> usize {
        self.kv_tokens.max(self.context_length).div_ceil(KV_BLOCK_TOKENS)
    }

    fn sizes(&self, max_batch: u32, logit_rows: u32) -> Sizes {
        Sizes {
            ctx_len: self.context_length,
            kv_rows: self.kv_blocks() * KV_BLOCK_TOKENS,
            max_batch,
            logit_rows,
            splits: attention_splits(self),
            max_seqs: self.max_seqs.max(1),
            kv: self.kv,
        }
    }
}

/// What the engine decided about memory at load: the planner's answer and what it was given.
#[derive(Clone, Debug, serde::Serialize)]
pub struct MemoryPlan {
    pub units: Vec<planner::LayerCost>,
    pub plan: planner::Plan,
    pub max_batch: u32,
    pub logit_rows: u32,
    /// Decode step dispatches (for the bandwidth model's launch cost).
    pub dispatches_per_token: usize,
}

/// Bytes of uniform parameter blocks a plan may allocate: 256 per dispatch, generously counted.
fn params_reserve(cfg: &Transformer) -> u64 {
    256 * (36 * cfg.blocks.len() as u64 + 512)
}

/// The batch and logits rows a budget allows: activations within an eighth of it.
fn sizes_for_budget(program: &Program, opts: &GpuOptions, max_batch: u32, logit_rows: u32) -> (u32, u32) {
    let Some(budget) = opts.budget.as_ref().map(|b| b.bytes) else { return (max_batch, logit_rows) };
    let share = budget / 8;
    let mut batch = max_batch;
    let sizes =
        |batch| Sizes { ctx_len: 1, kv_rows: 1, max_batch: batch, logit_rows: 1, splits: 1, max_seqs: 1, kv: opts.kv };
    while batch > 1 && Buffers::bytes(program, &sizes(batch)).1 > share {
        batch /= 2;
    }
    let row = 4 * program.vocab as u64;
    (batch, ((share / 2 / row) as u32).clamp(1, batch.min(logit_rows)))
}

/// The planner's answer for this model and options, and its units. Under a budget the chunk buffers are
/// sized to an eighth of it; if that does not fit, one token per chunk is tried before giving up, so the
/// minimum a refusal names is a budget that works.
pub fn plan_memory(
    dir: &ModelDir,
    cfg: &Transformer,
    opts: &GpuOptions,
    max_binding: u64,
) -> Result<(Vec<streaming::Unit>, MemoryPlan)> {
    // Without a budget nothing streams, so a model whose weights could not stream still runs (its units are
    // then only listed when they can be worked out).
    let (units, other, min_slot) = match streaming::units(dir, cfg) {
        Ok(units) => {
            let other = streaming::other_bytes(dir, cfg, &units)?;
            (units, other, streaming::min_slot(dir, cfg)?)
        }
        Err(_) if opts.budget.is_none() => (Vec::new(), 0, 0),
        Err(e) => return Err(e),
    };
    let program = crate::arch::program(cfg)?;
    let (max_batch, logit_rows) = chunk_sizes(cfg, opts, max_binding);
    let mut sizes = vec![sizes_for_budget(&program, opts, max_batch, logit_rows)];
    if opts.budget.is_some() && sizes[0] != (1, 1) {
        sizes.push((1, 1));
    }
    let mut refusal = None;
    for (max_batch, logit_rows) in sizes {
        let (kv, activations) = Buffers::bytes(&program, &opts.sizes(max_batch, logit_rows));
        let readback = (logit_rows as u64 * 4 * cfg.vocab_size as u64).max(4 * MAX_STEPS as u64).div_ceil(16) * 16;
        let input = PlanInput {
            layers: units.iter().map(|u| u.cost.clone()).collect(),
            kv_bytes: kv,
            activation_bytes: activations + readback + other + params_reserve(cfg),
            slots: opts.slots.max(1),
            min_slot,
        };
        match planner::plan(&input, opts.budget.as_ref().map(|b| b.bytes)) {
            Ok(plan) => {
                let dispatches_per_token = program.blocks.iter().map(|b| b.ops.len()).sum::<usize>() + 2;
                let memory = MemoryPlan { units: input.layers, plan, max_batch, logit_rows, dispatches_per_token };
                return Ok((units, memory));
            }
            Err(e) => refusal = Some((e, kv)),
        }
    }
    let (e, kv) = refusal.expect("a plan or a refusal");
    let budget = opts.budget.as_ref().expect("only a budget is too small");
    Err(Error::Usage(format!(
        "the GPU memory budget of {} ({}) is too small for this model at a context of {} tokens: streaming \
         needs at least {} ({} of them the {} KV cache; a smaller --ctx shrinks it{})",
        mb(e.budget),
        budget.source,
        opts.context_length,
        mb_up(e.minimum),
        mb(kv),
        kv_name(opts.kv),
        match opts.kv {
            KvType::F32 => ", to half with --kv f16",
            KvType::F16 => ", to 56% with --kv q8",
            KvType::Q8 => "",
        }
    )))
}

/// The KV cache type as `--kv` spells it.
fn kv_name(kv: KvType) -> &'static str {
    kv.name()
}

fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

/// Rounded up, for a minimum a user can pass back.
fn mb_up(bytes: u64) -> String {
    format!("{:.1} MB", (bytes as f64 / 1e5).ceil() / 10.0)
}

fn attention_splits(opts: &GpuOptions) -> u32 {
    match opts.attention_splits {
        // A split per 64 keys (a tile of the kernel), so short contexts still spread over the GPU.
        0 => (opts.context_length as u32).div_ceil(64).clamp(1, 64),
        s => s,
    }
}

/// Tokens per forward chunk and logits rows: every chunk buffer must fit one binding, and the logits buffer
/// holds at most 64 MiB of rows.
fn chunk_sizes(cfg: &Transformer, opts: &GpuOptions, max_binding: u64) -> (u32, u32) {
    let vocab_bytes = 4 * cfg.vocab_size as u64;
    let widest = 4 * [cfg.hidden_size, 2 * cfg.intermediate_size, (cfg.n_heads + 2 * cfg.n_kv_heads) * cfg.head_dim]
        .into_iter()
        .max()
        .unwrap_or(1) as u64;
    let max_batch = (opts.max_batch.max(1) as u64).min(max_binding / widest).max(1) as u32;
    let logit_rows = (max_batch as u64).min((64 << 20).min(max_binding) / vocab_bytes).max(1) as u32;
    (max_batch, logit_rows)
}

pub struct GpuEngine {
    ctx: Arc<GpuContext>,
    cfg: Transformer,
    /// The program's embedding scale (applied where the rows are gathered on the host).
    embed_scale: Option<f32>,
    opts: GpuOptions,
    max_batch: u32,
    /// Logits rows the logits buffer holds (`Logits::All` reads a chunk in pieces of this many rows at most).
    logit_rows: u32,
    // Field order is drop order: dispatches before the buffers and weights they bind.
    plan: Plan,
    /// The LoRA adapters `plan` applies, their uploads, and the plans of sets run before.
    adapters: Adapters,
    /// The op program (LoRA sets are resolved against its linear ops and plans rebuilt from it).
    program: Program,
    bufs: Buffers,
    model: Model,
    staging: super::buffers::GpuBuffer,
    memory: MemoryPlan,
    /// The token embedding, when it stays on the host: rows are gathered here.
    host_embed: Option<WeightRef>,
    /// Forward passes run, for traces.
    forwards: std::sync::atomic::AtomicU64,
    /// Weight bytes uploaded into slots so far.
    uploaded: std::sync::atomic::AtomicU64,
    #[cfg(not(target_arch = "wasm32"))]
    trace: Option<(PathBuf, Arc<Mutex<TraceRecorder>>)>,
    /// Decode kernels from the model's `optimization/` profile for this adapter (empty: the automatic choice).
    tuned: super::plan::Tuned,
    /// The per-op timeline while [`Engine::trace_ops`] is on (native, resident weights).
    #[cfg(not(target_arch = "wasm32"))]
    op_trace: Option<Mutex<OpTimeline>>,
}

/// Op spans recorded since tracing started at `t0`.
#[cfg(not(target_arch = "wasm32"))]
struct OpTimeline {
    t0: std::time::Instant,
    spans: Vec<crate::backend::OpSpan>,
}

impl GpuEngine {
    /// Uploads the model and compiles its forward pass on `ctx`.
    pub async fn load(ctx: Arc<GpuContext>, dir: &ModelDir, cfg: &Transformer, opts: GpuOptions) -> Result<GpuEngine> {
        opts.kv.check_head_dim(cfg.head_dim)?;
        if opts.context_length == 0 || opts.context_length > cfg.context_length as usize {
            return Err(Error::Usage(format!(
                "context length {} is outside 1..={} (the model's)",
                opts.context_length, cfg.context_length
            )));
        }
        let max_binding = ctx.gpu.limits.max_storage_buffer_binding_size;
        let (units, memory) = plan_memory(dir, cfg, &opts, max_binding)?;
        let (max_batch, logit_rows, splits) = (memory.max_batch, memory.logit_rows, attention_splits(&opts));
        let p = &memory.plan;
        ctx.pool.set_budget(opts.budget.as_ref().map(|b| b.bytes));
        if let Some(b) = &opts.budget {
            log::info!(
                "GPU memory budget {} ({}): {} of {} weight bytes resident, {} streamed per forward pass through {} slots of {}",
                mb(b.bytes),
                b.source,
                mb(p.resident_bytes),
                mb(p.weight_bytes),
                mb(p.streamed_bytes_per_token),
                p.slots,
                mb(p.slot_bytes)
            );
        }
        let residency = p.streams().then(|| Residency {
            units: &units,
            resident: &p.resident,
            slots: p.slots,
            slot_bytes: p.slot_bytes,
        });
        let program = crate::arch::program(cfg)?;
        let model = Model::upload(&ctx, dir, &program, residency)?;
        let host_embed = match model.embed {
            Some(_) => None,
            None => Some(WeightRef::load(dir, &cfg.token_embedding, &[cfg.vocab_size, cfg.hidden_size])?),
        };
        let bufs = Buffers::new(&ctx, &program, &opts.sizes(max_batch, logit_rows))?;
        let tuned = super::tuning::load_tuned(dir, &ctx.gpu, opts.activations);
        let plan = Plan::build(&ctx, &program, &model, &bufs, splits, opts.activations, &tuned, None).await?;
        let vocab_bytes = 4 * cfg.vocab_size as u64;
        let staging = ctx.pool.readback("readback", (logit_rows as u64 * vocab_bytes).max(4 * MAX_STEPS as u64))?;
        ctx.gpu.check()?;
        let m = ctx.pool.report();
        log::info!(
            "GPU engine: {} dispatches per decode step; GPU memory {} MiB (weights {}, KV cache {}, activations {})",
            plan.decode_dispatches(),
            m.in_use >> 20,
            m.weights >> 20,
            m.kv_cache >> 20,
            m.activations >> 20
        );
        let memory = MemoryPlan { dispatches_per_token: plan.decode_dispatches(), ..memory };
        if let Some(s) = &model.slots {
            debug_assert_eq!(s.bytes_per_pass(), memory.plan.streamed_bytes_per_token);
        }
        #[cfg(not(target_arch = "wasm32"))]
        let trace = match &opts.memory_trace {
            Some(path) => {
                // Fail now, not after the run, if the trace cannot be written.
                std::fs::write(path, b"{}").map_err(|e| Error::io(path, e))?;
                let units = memory
                    .units
                    .iter()
                    .zip(&memory.plan.resident)
                    .map(|(u, &resident)| TraceUnit { name: u.file.clone(), bytes: u.bytes, resident })
                    .collect();
                let rec = TraceRecorder::new(
                    dir.root.display().to_string(),
                    ctx.gpu.describe(),
                    opts.budget.as_ref().map(|b| b.bytes),
                    opts.overlap,
                    memory.plan.slots,
                    units,
                );
                Some((path.clone(), Arc::new(Mutex::new(rec))))
            }
            None => None,
        };
        Ok(GpuEngine {
            ctx,
            cfg: cfg.clone(),
            embed_scale: program.embed_scale,
            opts,
            max_batch,
            logit_rows,
            plan,
            tuned,
            adapters: Adapters::default(),
            program,
            bufs,
            model,
            staging,
            memory,
            host_embed,
            forwards: Default::default(),
            uploaded: Default::default(),
            #[cfg(not(target_arch = "wasm32"))]
            trace,
            #[cfg(not(target_arch = "wasm32"))]
            op_trace: None,
        })
    }

    /// The memory plan the engine runs under.
    pub fn memory_plan(&self) -> &MemoryPlan {
        &self.memory
    }

    /// Bytes allocated on the GPU now and at the peak, by the one allocator.
    pub fn memory_report(&self) -> super::buffers::MemoryReport {
        self.ctx.pool.report()
    }

    /// Weight bytes uploaded by forward passes so far (0 when everything is resident).
    pub fn streamed_bytes(&self) -> u64 {
        self.uploaded.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// [`GpuEngine::load`], waiting for it (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn load_blocking(
        ctx: Arc<GpuContext>,
        dir: &ModelDir,
        cfg: &Transformer,
        opts: GpuOptions,
    ) -> Result<GpuEngine> {
        pollster::block_on(GpuEngine::load(ctx, dir, cfg, opts))
    }

    pub fn context(&self) -> &Arc<GpuContext> {
        &self.ctx
    }

    fn check_span(&self, ids: &[u32], pos: usize) -> Result<()> {
        let end = pos + ids.len();
        if end > self.opts.context_length {
            return Err(Error::Usage(format!(
                "{end} tokens do not fit the context of {} (raise --ctx, up to the model's {})",
                self.opts.context_length, self.cfg.context_length
            )));
        }
        if let Some(&id) = ids.iter().find(|&&id| id >= self.cfg.vocab_size) {
            return Err(Error::Usage(format!("token id {id} is outside the vocabulary ({})", self.cfg.vocab_size)));
        }
        Ok(())
    }

    fn set_step(&self, n: u32, pos: u32) {
        self.ctx.write(&self.bufs.step, 0, bytemuck::cast_slice(&[n, pos, 0, 0]));
    }

    /// Reads `bytes` of the readback buffer, into which the last submission copied them.
    async fn read_back(&self, bytes: u64) -> Result<Vec<u8>> {
        self.ctx.map_read(&self.staging, bytes).await
    }

    /// Writes the embedding rows of `ids` into `x`, when the embedding stays on the host.
    fn gather_on_host(&self, ids: &[u32]) {
        let Some(w) = &self.host_embed else { return };
        let d = self.cfg.hidden_size as usize;
        let m = w.matrix();
        let mut x = vec![0f32; ids.len() * d];
        for (row, &id) in x.chunks_exact_mut(d).zip(ids) {
            m.dequant_row(id as usize, row);
            if let Some(scale) = self.embed_scale {
                row.iter_mut().for_each(|v| *v *= scale);
            }
        }
        self.ctx.write(&self.bufs.x, 0, bytemuck::cast_slice(&x));
    }

    /// Runs one forward pass of `n` tokens: the embedding, `blocks`, then `head`, and finally copies `readback`
    /// (`bytes` of `from`, to offset `at` of the readback buffer). Everything in one command buffer
    /// when the weights are resident; otherwise streamed (see [`GpuEngine::stream`]).
    fn submit_forward(
        &self,
        n: u32,
        blocks: &[Stage],
        head: &[Stage],
        readback: Option<(&super::buffers::GpuBuffer, u64, u64)>,
    ) {
        self.forwards.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let stages: Vec<&Stage> = blocks.iter().chain(head).collect();
        #[cfg(not(target_arch = "wasm32"))]
        if let Some(timeline) = &self.op_trace {
            return self.submit_traced(timeline, n, blocks, head, readback);
        }
        match &self.model.slots {
            None => {
                let mut encoder = self.ctx.encoder();
                let mut lists: Vec<&[super::context::Dispatch]> = vec![&self.plan.embed];
                lists.extend(stages.iter().map(|s| s.dispatches.as_slice()));
                self.ctx.record(&mut encoder, &lists, n);
                if let Some((from, bytes, at)) = readback {
                    encoder.copy_buffer_to_buffer(from.raw(), 0, self.staging.raw(), at, bytes);
                }
                self.ctx.gpu.queue.submit([encoder.finish()]);
            }
            Some(slots) => self.stream(slots, n, &stages, readback),
        }
    }

    /// A forward pass op by op, for the per-op timeline: each op of the program (the embedding, each block's
    /// ops, the head) is a submission of its own, waited for, so its span is the host's wall-clock time from
    /// its submission to its end: its kernels and one submission's overhead.
    #[cfg(not(target_arch = "wasm32"))]
    fn submit_traced(
        &self,
        timeline: &Mutex<OpTimeline>,
        n: u32,
        blocks: &[Stage],
        head: &[Stage],
        readback: Option<(&super::buffers::GpuBuffer, u64, u64)>,
    ) {
        let run = |name: String, block: Option<usize>, dispatches: &[super::context::Dispatch]| {
            let start = std::time::Instant::now();
            self.submit_and_wait(&[dispatches], n);
            let mut t = timeline.lock().expect("op trace lock");
            let start_us = start.duration_since(t.t0).as_secs_f64() * 1e6;
            let dur_us = start.elapsed().as_secs_f64() * 1e6;
            t.spans.push(crate::backend::OpSpan { name, block, start_us, dur_us, tokens: n as usize });
        };
        run("embed".into(), None, &self.plan.embed);
        let stages = blocks.iter().enumerate().map(|(l, s)| (Some(l), s)).chain(head.iter().map(|s| (None, s)));
        for (block, stage) in stages {
            for (k, (label, first)) in stage.ops.iter().enumerate() {
                let end = stage.ops.get(k + 1).map_or(stage.dispatches.len(), |o| o.1);
                run(label.clone(), block, &stage.dispatches[*first..end]);
            }
        }
        if let Some((from, bytes, at)) = readback {
            let mut encoder = self.ctx.encoder();
            encoder.copy_buffer_to_buffer(from.raw(), 0, self.staging.raw(), at, bytes);
            self.ctx.gpu.queue.submit([encoder.finish()]);
        }
    }

    /// Records `lists` for `n` tokens into one submission and waits until the GPU is done with it: how the
    /// per-op trace and `omex optimize` time their work.
    #[cfg(not(target_arch = "wasm32"))]
    fn submit_and_wait(&self, lists: &[&[super::context::Dispatch]], n: u32) {
        let mut encoder = self.ctx.encoder();
        self.ctx.record(&mut encoder, lists, n);
        self.ctx.gpu.queue.submit([encoder.finish()]);
        self.wait(None);
    }

    /// A forward pass with streamed weights: one submission per streamed piece. Before the stage that reads a
    /// piece, the piece is written into its slot from the mapped file (`write_buffer`: the queue orders the
    /// copy after the work that last read the slot). With overlap, the host writes piece k while the GPU runs
    /// the submission before it, and waits only for the work that last used piece k's slot, so at most
    /// `slots` pieces are in flight; without, it waits for the GPU before every upload.
    fn stream(
        &self,
        slots: &Slots,
        n: u32,
        stages: &[&Stage],
        readback: Option<(&super::buffers::GpuBuffer, u64, u64)>,
    ) {
        let ring = slots.files.len();
        let mut lists: Vec<&[super::context::Dispatch]> = vec![&self.plan.embed];
        // The submission that ran each piece of this pass, in order.
        let mut ran: Vec<wgpu::SubmissionIndex> = Vec::new();
        // The piece recorded since the last submission (every piece starts a submission of its own).
        let mut waiting: Option<usize> = None;
        let flush = |lists: &mut Vec<&[super::context::Dispatch]>,
                     waiting: &mut Option<usize>,
                     ran: &mut Vec<wgpu::SubmissionIndex>,
                     last: bool| {
            let mut encoder = self.ctx.encoder();
            self.ctx.record(&mut encoder, lists, n);
            if let (true, Some((from, bytes, at))) = (last, readback) {
                encoder.copy_buffer_to_buffer(from.raw(), 0, self.staging.raw(), at, bytes);
            }
            #[cfg(not(target_arch = "wasm32"))]
            let start = self.trace.as_ref().map(|(_, t)| t.lock().expect("trace lock").now_us());
            let index = self.ctx.gpu.queue.submit([encoder.finish()]);
            #[cfg(not(target_arch = "wasm32"))]
            if let (Some((_, trace)), Some(start)) = (&self.trace, start) {
                let unit = match *waiting {
                    Some(k) => slots.pieces[k].name.clone(),
                    None => "resident weights".to_string(),
                };
                let (shared, forward) = (trace.clone(), self.forwards());
                let slot = waiting.map(|k| slots.pieces[k].slot);
                self.ctx.gpu.queue.on_submitted_work_done(move || {
                    let mut t = shared.lock().expect("trace lock");
                    let end = t.now_us();
                    t.span(SpanKind::Compute, &unit, slot, forward, start, end, 0);
                });
                let m = self.ctx.pool.report();
                trace.lock().expect("trace lock").sample(m.in_use, m.peak);
            }
            if waiting.take().is_some() {
                ran.push(index);
            }
            lists.clear();
        };
        // Writes `copies` into `piece`'s slot, counted, and spanned in the trace as `name`.
        let upload = |piece: &Piece, name: &str, copies: &[Copy]| {
            #[cfg(target_arch = "wasm32")]
            let _ = name;
            #[cfg(not(target_arch = "wasm32"))]
            let start = self.trace.as_ref().map(|(_, t)| t.lock().expect("trace lock").now_us());
            let slot = &slots.files[piece.slot].buffer;
            for c in copies {
                self.ctx.write(slot, c.dst, &c.blob.bytes()[c.src.clone()]);
            }
            let bytes: u64 = copies.iter().map(|c| c.src.len() as u64).sum();
            self.uploaded.fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
            #[cfg(not(target_arch = "wasm32"))]
            if let (Some((_, trace)), Some(start)) = (&self.trace, start) {
                let mut t = trace.lock().expect("trace lock");
                let end = t.now_us();
                t.span(SpanKind::Upload, name, Some(piece.slot), self.forwards(), start, end, bytes);
            }
        };
        for stage in stages {
            if let Some(k) = stage.piece {
                if !lists.is_empty() {
                    flush(&mut lists, &mut waiting, &mut ran, false);
                }
                let piece = &slots.pieces[k];
                let j = ran.len();
                if !self.opts.overlap {
                    self.wait(None);
                } else if j >= ring {
                    self.wait(Some(ran[j - ring].clone()));
                }
                upload(piece, &piece.name, &piece.copies);
                waiting = Some(k);
            }
            let experts = stage.piece.map(|k| (k, &slots.pieces[k])).filter(|(_, p)| !p.experts.is_empty());
            match (stage.experts_at, experts) {
                (Some(at), Some((k, piece))) => {
                    // The block up to its route, then only the experts a row was routed to are uploaded (the
                    // others' dispatches are gated off on the GPU and read nothing).
                    lists.push(&stage.dispatches[..at]);
                    flush(&mut lists, &mut waiting, &mut ran, false);
                    let routed = self.routed_experts(n, piece.experts.len());
                    let chosen: Vec<usize> = (0..piece.experts.len()).filter(|&e| routed[e]).collect();
                    let copies: Vec<Copy> = chosen.iter().flat_map(|&e| piece.experts[e].iter().cloned()).collect();
                    let ids = chosen.iter().map(|e| e.to_string()).collect::<Vec<_>>().join(",");
                    upload(piece, &format!("{} experts {ids}", piece.name), &copies);
                    // The experts' submission is the piece's last use of its slot: the ring waits for it.
                    ran.pop();
                    waiting = Some(k);
                    lists.push(&stage.dispatches[at..]);
                }
                _ => lists.push(&stage.dispatches),
            }
        }
        flush(&mut lists, &mut waiting, &mut ran, true);
    }

    /// Which of a block's `experts` some row of the chunk's `n` was routed to, read back from the route buffer
    /// once the work before it is done (the browser cannot wait for it: there every expert counts as routed).
    fn routed_experts(&self, n: u32, experts: usize) -> Vec<bool> {
        #[cfg(not(target_arch = "wasm32"))]
        {
            let route = self.bufs.get(crate::arch::Buf::Route);
            match pollster::block_on(self.ctx.read_f32(route, 0, n as usize * experts)) {
                Ok(w) => (0..experts).map(|e| w.iter().skip(e).step_by(experts).any(|&v| v != 0.0)).collect(),
                // A failed read (a lost device) surfaces at the readback that ends the pass.
                Err(_) => vec![true; experts],
            }
        }
        #[cfg(target_arch = "wasm32")]
        {
            let _ = n;
            vec![true; experts]
        }
    }

    /// Forward passes so far, for the trace (native only).
    #[cfg(not(target_arch = "wasm32"))]
    fn forwards(&self) -> u64 {
        self.forwards.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Blocks until a submission (`None`: all of them) is done (native; the browser cannot block).
    fn wait(&self, index: Option<wgpu::SubmissionIndex>) {
        #[cfg(not(target_arch = "wasm32"))]
        {
            // An error here (a lost device) surfaces at the readback that ends the pass.
            let _ = self.ctx.gpu.device.poll(wgpu::PollType::Wait { submission_index: index, timeout: None });
        }
        #[cfg(target_arch = "wasm32")]
        let _ = index;
    }

    /// The forward pass; see [`Engine::forward`].
    pub async fn forward_async(&mut self, ids: &[u32], pos: usize, logits: Logits) -> Result<Vec<f32>> {
        self.check_span(ids, pos)?;
        let mut out = Vec::new();
        let per = if logits == Logits::All { self.max_batch.min(self.logit_rows) } else { self.max_batch };
        let chunks: Vec<&[u32]> = ids.chunks(per as usize).collect();
        let mut at = pos as u32;
        let row_bytes = 4 * self.cfg.vocab_size as u64;
        for (c, chunk) in chunks.iter().enumerate() {
            let n = chunk.len() as u32;
            self.ctx.write(&self.bufs.ids, 0, bytemuck::cast_slice(chunk));
            self.gather_on_host(chunk);
            self.set_step(n, at);
            let plan = &self.plan;
            let blocks = match n {
                1 => &plan.decode,
                2..=8 => &plan.prefill_short,
                _ => &plan.prefill,
            };
            let rows = match logits {
                Logits::Last if c + 1 == chunks.len() => Some((&plan.head_last, 1)),
                Logits::All => Some((&plan.head_all, n)),
                _ => None,
            };
            match rows {
                Some((head, rows)) => {
                    self.submit_forward(n, blocks, head, Some((&self.bufs.logits, rows as u64 * row_bytes, 0)));
                }
                None => self.submit_forward(n, blocks, &[], None),
            }
            if let Some((_, rows)) = rows {
                let data = self.read_back(rows as u64 * row_bytes).await?;
                out.extend_from_slice(bytemuck::cast_slice(&data));
            }
            at += n;
        }
        self.ctx.gpu.check()?;
        Ok(out)
    }

    /// [`Engine::forward_batch`]: the sequences' single next tokens run together, up to `max_seqs` rows per
    /// pass (one row each, attention per row over its own blocks); each longer chunk (a prompt) runs as a pass
    /// of its own over its blocks. The passes are submitted back to back and their logits read together.
    pub async fn forward_batch_async(&mut self, seqs: &[SeqChunk<'_>]) -> Result<Vec<f32>> {
        let kv = self.kv_layout();
        crate::backend::check_batch(seqs, kv, self.cfg.vocab_size, self.opts.context_length)?;
        let (vocab, row_bytes) = (self.cfg.vocab_size as usize, 4 * self.cfg.vocab_size as u64);
        // Each chunk that asks for logits has its row of `out`, in order; rows are read back straight into it.
        let mut slot = vec![None; seqs.len()];
        let mut wanted = 0;
        for i in (0..seqs.len()).filter(|&i| seqs[i].logits) {
            slot[i] = Some(wanted);
            wanted += 1;
        }
        let mut out = vec![0f32; wanted * vocab];
        // Passes run back to back, each copying its logits rows after the previous pass's in the readback
        // buffer; they are read (one wait for the GPU) when it is full and at the end. `pending`: the sequence
        // each row read so far belongs to.
        let capacity = self.logit_rows as u64 * row_bytes;
        let mut pending: Vec<usize> = Vec::new();
        let singles: Vec<usize> = (0..seqs.len()).filter(|&i| seqs[i].ids.len() == 1).collect();
        let per = self.opts.max_seqs.max(1).min(self.logit_rows).min(self.max_batch) as usize;
        for group in singles.chunks(per) {
            let n = group.len() as u32;
            if (pending.len() + group.len()) as u64 * row_bytes > capacity {
                self.drain(&mut pending, &slot, &mut out).await?;
            }
            let ids: Vec<u32> = group.iter().map(|&i| seqs[i].ids[0]).collect();
            let mut map = vec![0u32; 2 * group.len()];
            for (r, &i) in group.iter().enumerate() {
                let s = &seqs[i];
                map[2 * r] = s.pos as u32;
                map[2 * r + 1] = map.len() as u32;
                map.extend_from_slice(&s.blocks[..(s.pos + 1).div_ceil(KV_BLOCK_TOKENS)]);
            }
            self.write_chunk(&ids, &map, n, 0);
            let plan = &self.plan;
            let (blocks, head) = match n {
                1 => (&plan.decode, &plan.head_last),
                2..=8 => (&plan.batch_short, &plan.head_all),
                _ => (&plan.batch, &plan.head_all),
            };
            let at = pending.len() as u64 * row_bytes;
            self.submit_forward(n, blocks, head, Some((&self.bufs.logits, n as u64 * row_bytes, at)));
            pending.extend_from_slice(group);
        }
        for (i, s) in seqs.iter().enumerate().filter(|(_, s)| s.ids.len() > 1) {
            let n = s.ids.len() as u32;
            let mut map: Vec<u32> = (0..n).flat_map(|t| [s.pos as u32 + t, 2 * n]).collect();
            map.extend_from_slice(&s.blocks[..(s.pos + s.ids.len()).div_ceil(KV_BLOCK_TOKENS)]);
            let blocks = if n <= 8 { &self.plan.prefill_short } else { &self.plan.prefill };
            match s.logits {
                true => {
                    if (pending.len() + 1) as u64 * row_bytes > capacity {
                        self.drain(&mut pending, &slot, &mut out).await?;
                    }
                    self.write_chunk(s.ids, &map, n, s.pos as u32);
                    let at = pending.len() as u64 * row_bytes;
                    self.submit_forward(n, blocks, &self.plan.head_last, Some((&self.bufs.logits, row_bytes, at)));
                    pending.push(i);
                }
                false => {
                    self.write_chunk(s.ids, &map, n, s.pos as u32);
                    self.submit_forward(n, blocks, &[], None);
                }
            }
        }
        if !pending.is_empty() {
            self.drain(&mut pending, &slot, &mut out).await?;
        }
        self.ctx.gpu.check()?;
        Ok(out)
    }

    /// Reads back the logits rows the passes since the last read copied (row k belongs to sequence
    /// `pending[k]`) and puts each sequence's where `slot` says in `out`.
    async fn drain(&self, pending: &mut Vec<usize>, slot: &[Option<usize>], out: &mut [f32]) -> Result<()> {
        let vocab = self.cfg.vocab_size as usize;
        let data = self.read_back(pending.len() as u64 * 4 * vocab as u64).await?;
        let logits: &[f32] = bytemuck::cast_slice(&data);
        for (&i, row) in pending.iter().zip(logits.chunks_exact(vocab)) {
            if let Some(k) = slot[i] {
                out[k * vocab..(k + 1) * vocab].copy_from_slice(row);
            }
        }
        pending.clear();
        Ok(())
    }

    /// Writes a paged chunk's token ids (or their embedding rows), its seqmap and its step.
    fn write_chunk(&self, ids: &[u32], map: &[u32], n: u32, pos: u32) {
        self.ctx.write(&self.bufs.ids, 0, bytemuck::cast_slice(ids));
        self.gather_on_host(ids);
        self.ctx.write(&self.bufs.seqmap, 0, bytemuck::cast_slice(map));
        self.ctx.write(&self.bufs.step, 0, bytemuck::cast_slice(&[n, pos, 0, 1]));
    }

    fn kv_layout(&self) -> KvBlocks {
        KvBlocks { blocks: self.opts.kv_blocks(), max_batch: self.max_batch as usize }
    }

    /// Whether decode steps sampled with `opts` chain on the device. Not with streamed weights (each token is a
    /// forward pass anyway), nor with the embedding gathered on the host (the next token's row is written from
    /// there), nor at a temperature without the sample kernel (vocabularies of 2^24 and more): those sample on
    /// the host.
    fn chains(&self, opts: &SamplerOptions) -> bool {
        self.model.slots.is_none() && self.host_embed.is_none() && (opts.is_greedy() || !self.plan.sample.is_empty())
    }

    /// Greedy decoding on the GPU: [`GpuEngine::decode_steps`] with the argmax.
    pub async fn decode_greedy(&mut self, first: u32, pos: usize, steps: usize) -> Result<Vec<u32>> {
        self.decode_steps(first, pos, steps, &SamplerOptions::default(), 0).await
    }

    /// Decoding on the GPU: feeds `first` at `pos`, then each sampled id at the next position, `steps` times,
    /// recording up to 64 steps into one command buffer and reading back only the sampled ids. Each step
    /// samples as [`Sampler`] does on the host: greedy (the argmax) or, at a temperature, with draw numbers
    /// `draw, draw + 1, ...`, so the same seed and draws give the same tokens on either side. The KV cache then
    /// holds positions `pos..pos + steps`; the last id returned has not been fed yet. The repetition penalty
    /// needs the history, which stays on the host: refused. With streamed weights each step is its own forward
    /// pass, sampled on the host (as are vocabularies of 2^24 tokens and more at a temperature).
    pub async fn decode_steps(
        &mut self,
        first: u32,
        pos: usize,
        steps: usize,
        opts: &SamplerOptions,
        draw: u32,
    ) -> Result<Vec<u32>> {
        opts.check().map_err(Error::Usage)?;
        if opts.repetition_penalty != 1.0 {
            return Err(Error::Usage("the repetition penalty is applied on the host: decode step by step".into()));
        }
        self.check_span(&[first], pos + steps.saturating_sub(1))?;
        let mut out = Vec::with_capacity(steps);
        if !self.chains(opts) {
            let mut sampler = Sampler::new(opts.clone());
            sampler.skip_draws(draw);
            let mut id = first;
            for i in 0..steps {
                let mut logits = self.forward_async(&[id], pos + i, Logits::Last).await?;
                id = sampler.sample(&mut logits, &[]);
                out.push(id);
            }
            return Ok(out);
        }
        let sample = if opts.is_greedy() { &self.plan.argmax } else { &self.plan.sample };
        self.ctx.write(&self.bufs.ids, 0, bytemuck::cast_slice(&[first]));
        let mut at = pos as u32;
        while out.len() < steps {
            let k = (steps - out.len()).min(MAX_STEPS as usize) as u32;
            self.set_step(1, at);
            if !opts.is_greedy() {
                // Step k of this submission draws number draw + out.len() + k.
                let params = SampleParams::new(self.cfg.vocab_size, 0, 0, opts, draw.wrapping_add(out.len() as u32));
                misc::set_sample_params(&self.ctx, &sample[0], &params);
            }
            let mut encoder = self.ctx.encoder();
            let plan = &self.plan;
            let mut lists: Vec<&[super::context::Dispatch]> = vec![&plan.embed];
            lists.extend(plan.decode.iter().chain(&plan.head_last).map(|s| s.dispatches.as_slice()));
            lists.push(sample);
            for _ in 0..k {
                self.ctx.record(&mut encoder, &lists, 1);
            }
            let bytes = 4 * k as u64;
            encoder.copy_buffer_to_buffer(self.bufs.tokens.raw(), 0, self.staging.raw(), 0, bytes);
            self.ctx.gpu.queue.submit([encoder.finish()]);
            let data = self.read_back(bytes).await?;
            out.extend_from_slice(bytemuck::cast_slice::<u8, u32>(&data));
            at += k;
        }
        Ok(out)
    }

    /// [`Engine::set_adapters`]: the next forward passes apply `active`. A set run lately (the plans of the
    /// last few are kept) comes back by swapping dispatch lists; a set of the same layout as the current one or
    /// a kept one (the same tensors at the same ranks) takes that plan over by GPU copies of its matrices into
    /// the plan's slots and one write of its scales; any other set uploads the adapter matrices not on the GPU
    /// yet (each once) and rebuilds the plan's dispatch lists over the same weights and buffers.
    pub async fn set_adapters_async(&mut self, active: &[ActiveAdapter]) -> Result<()> {
        if self.adapters.active == active {
            return Ok(());
        }
        if let Some(kept) = self.adapters.take_kept(active) {
            self.swap_plan(kept);
            return Ok(());
        }
        let resolved = self.adapters.uploads.resolve(&self.ctx, &self.program, active)?;
        let layout = layout_of(&resolved);
        if let Some(set) = self.adapters.set.as_mut().filter(|s| *s.layout() == layout) {
            set.fill(&self.ctx, &resolved);
            self.adapters.active = active.to_vec();
            return Ok(());
        }
        let next = match self.adapters.take_layout(&layout) {
            Some(mut kept) => {
                if let Some(set) = kept.set.as_mut() {
                    set.fill(&self.ctx, &resolved);
                }
                kept.active = active.to_vec();
                kept
            }
            None => {
                let set = LoraSet::new(&self.ctx, &self.program, &resolved, self.max_batch)?;
                let splits = attention_splits(&self.opts);
                let (p, m, b, act) = (&self.program, &self.model, &self.bufs, self.opts.activations);
                let plan = Plan::build(&self.ctx, p, m, b, splits, act, &self.tuned, set.as_ref()).await?;
                self.ctx.gpu.check()?;
                log::info!(
                    "LoRA: {} adapter bytes on the GPU; {} dispatches per decode step",
                    self.adapters.uploads.bytes(),
                    plan.decode_dispatches()
                );
                SetPlan { active: active.to_vec(), plan, set }
            }
        };
        self.swap_plan(next);
        Ok(())
    }

    /// Makes `next` the current plan and keeps the one it replaces.
    fn swap_plan(&mut self, next: SetPlan) {
        let previous = SetPlan {
            active: std::mem::replace(&mut self.adapters.active, next.active),
            plan: std::mem::replace(&mut self.plan, next.plan),
            set: std::mem::replace(&mut self.adapters.set, next.set),
        };
        self.adapters.keep(previous);
    }

    /// `omex optimize`: times each decode matvec kernel this adapter can run on every distinct linear op of the
    /// model (its first block's instance, `reps` launches in one submission after a warm-up), and returns the
    /// profile choosing the fastest per op. Needs resident weights (a streamed block's slot holds another's).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn autotune(&mut self, dir: &ModelDir, reps: u32) -> Result<super::tuning::Profile> {
        use super::ops::MatvecKernel;
        if self.model.slots.is_some() {
            return Err(Error::Usage("optimize measures resident weights: run it without --gpu-mem".into()));
        }
        let tier = self.ctx.gpu.tier;
        let int8 = self.opts.activations == Activations::Int8;
        let candidates: Vec<MatvecKernel> = MatvecKernel::CONCRETE
            .iter()
            .map(|(k, _)| *k)
            .filter(|k| match k {
                MatvecKernel::GroupsSubgroup => tier.subgroups,
                MatvecKernel::Int8 => int8,
                MatvecKernel::Int8Subgroup => int8 && tier.subgroups,
                _ => true,
            })
            .collect();
        let default = MatvecKernel::for_activations(self.opts.activations);
        let mut profile = super::tuning::new_profile(dir, &self.ctx.gpu, self.opts.activations)?;
        self.set_step(1, 0);
        let splits = attention_splits(&self.opts);
        for l in 0..self.program.blocks.len() {
            let (p, m, b) = (&self.program, &self.model, &self.bufs);
            let cases = pollster::block_on(super::plan::tune_cases(&self.ctx, p, m, b, splits, l, &candidates))?;
            for case in cases {
                if let Some(t) = profile.ops.get_mut(&case.key) {
                    t.blocks += 1;
                    continue;
                }
                let mut us = std::collections::BTreeMap::new();
                for (kernel, list) in &case.candidates {
                    let lists: Vec<&[super::context::Dispatch]> = vec![list.as_slice(); reps.max(1) as usize];
                    let run = |lists: &[&[super::context::Dispatch]]| {
                        let start = std::time::Instant::now();
                        self.submit_and_wait(lists, 1);
                        start.elapsed().as_secs_f64() * 1e6
                    };
                    run(&lists[..1]);
                    let name = kernel.name().expect("a concrete kernel");
                    us.insert(name.to_string(), run(&lists) / lists.len() as f64);
                }
                self.ctx.gpu.check()?;
                let Some((best, _)) = us.iter().min_by(|a, b| a.1.total_cmp(b.1)) else { continue };
                let chosen = default.resolve(case.dtype, case.cols, tier).ok().and_then(MatvecKernel::name);
                let timing = super::tuning::OpTiming {
                    kernel: best.clone(),
                    default: chosen.unwrap_or("generic").to_string(),
                    us,
                    blocks: 1,
                };
                profile.ops.insert(case.key, timing);
            }
        }
        Ok(profile)
    }

    pub fn describe_device(&self) -> String {
        self.ctx.gpu.describe()
    }

    /// Matvecs of a decode step that take int8 activations, and all its matvecs.
    /// The kernel of each dispatch of a decode step's blocks, in order (what a profile changes).
    pub fn decode_kernels(&self) -> Vec<&'static str> {
        self.plan.decode.iter().flat_map(|s| &s.dispatches).map(|d| d.pipeline.kernel.name).collect()
    }

    pub fn int8_matvecs(&self) -> (usize, usize) {
        let stages = self.plan.decode.iter().chain(&self.plan.head_last);
        let names: Vec<&str> = stages.flat_map(|s| &s.dispatches).map(|d| d.pipeline.kernel.name).collect();
        let matvecs = names.iter().filter(|n| n.starts_with("matvec")).count();
        (names.iter().filter(|n| n.starts_with("matvec_q8")).count(), matvecs)
    }
}

#[cfg(not(target_arch = "wasm32"))]
impl Drop for GpuEngine {
    fn drop(&mut self) {
        let Some((path, trace)) = self.trace.take() else { return };
        self.wait(None);
        // Completion callbacks run inside poll: one more makes sure every span is in.
        let _ = self.ctx.gpu.device.poll(wgpu::PollType::Poll);
        let trace = match Arc::try_unwrap(trace) {
            Ok(t) => t.into_inner().expect("trace lock").finish(),
            // A completion callback still holds it: take the contents.
            Err(shared) => {
                let empty = TraceRecorder::new("", "", None, false, 0, Vec::new());
                std::mem::replace(&mut *shared.lock().expect("trace lock"), empty).finish()
            }
        };
        match trace.save(&path) {
            Ok(()) => log::info!("memory trace written to {}", path.display()),
            Err(e) => eprintln!("error: {e}"),
        }
    }
}

#[cfg(not(target_arch = "wasm32"))]
impl Engine for GpuEngine {
    /// Per-op timelines on native builds with resident weights (a streamed pass's ops wait on their uploads,
    /// which `--memory-trace` records instead).
    #[cfg(not(target_arch = "wasm32"))]
    fn trace_ops(&mut self, on: bool) -> bool {
        if on && self.model.slots.is_some() {
            return false;
        }
        self.op_trace = on.then(|| Mutex::new(OpTimeline { t0: std::time::Instant::now(), spans: Vec::new() }));
        true
    }

    #[cfg(not(target_arch = "wasm32"))]
    fn take_op_spans(&mut self) -> Vec<crate::backend::OpSpan> {
        self.op_trace
            .as_mut()
            .map(|t| std::mem::take(&mut t.get_mut().expect("op trace lock").spans))
            .unwrap_or_default()
    }

    fn describe(&self) -> String {
        let activations = match self.opts.activations {
            Activations::F32 => "f32 activations".to_string(),
            Activations::Int8 => {
                let (int8, all) = self.int8_matvecs();
                format!("int8 activations in {int8} of {all} decode matvecs, f32 elsewhere")
            }
        };
        format!("gpu ({}, {activations}, {} KV cache)", self.ctx.gpu.describe(), kv_name(self.opts.kv))
    }

    fn context_length(&self) -> usize {
        self.opts.context_length
    }

    fn forward(&mut self, ids: &[u32], pos: usize, logits: Logits) -> Result<Vec<f32>> {
        pollster::block_on(self.forward_async(ids, pos, logits))
    }

    fn sample_steps(
        &mut self,
        first: u32,
        pos: usize,
        steps: usize,
        opts: &SamplerOptions,
        draw: u32,
    ) -> Option<Result<Vec<u32>>> {
        // The repetition penalty needs the history, on the host.
        if !self.chains(opts) || opts.repetition_penalty != 1.0 {
            return None;
        }
        Some(pollster::block_on(self.decode_steps(first, pos, steps, opts, draw)))
    }

    /// With streamed weights each pass reloads the blocks: no batching there yet.
    fn kv_blocks(&self) -> Option<KvBlocks> {
        self.model.slots.is_none().then(|| self.kv_layout())
    }

    fn forward_batch(&mut self, seqs: &[SeqChunk]) -> Result<Vec<f32>> {
        pollster::block_on(self.forward_batch_async(seqs))
    }

    fn set_adapters(&mut self, active: &[ActiveAdapter]) -> Result<()> {
        pollster::block_on(self.set_adapters_async(active))
    }
}

/// The GPU engine on the preferred adapter, whatever it is (`--backend gpu`).
#[cfg(not(target_arch = "wasm32"))]
pub fn open_engine(dir: &ModelDir, cfg: &Transformer, opts: GpuOptions) -> Result<Box<dyn Engine>> {
    let ctx = Arc::new(GpuContext::open_blocking(&opts.device)?);
    Ok(Box::new(GpuEngine::load_blocking(ctx, dir, cfg, opts)?))
}

/// `--backend auto`: the GPU engine on a hardware adapter; `None`, with one log line saying why, when there
/// is none (no adapter, a software one such as lavapipe, or a model the GPU engine does not run).
#[cfg(not(target_arch = "wasm32"))]
pub fn auto_engine(dir: &ModelDir, cfg: &Transformer, opts: GpuOptions) -> Result<Option<Box<dyn Engine>>> {
    if !may_have_hardware_gpu() {
        log::info!("backend auto: the CPU engine (no GPU device node: no /dev/dri/renderD*, /dev/nvidiaN or /dev/dxg)");
        return Ok(None);
    }
    let ctx = match GpuContext::open_blocking(&opts.device) {
        Ok(c) => c,
        Err(e) => {
            log::info!("backend auto: the CPU engine ({e})");
            return Ok(None);
        }
    };
    if !ctx.gpu.is_hardware() {
        log::info!(
            "backend auto: the CPU engine ({} is a software adapter; --backend gpu uses it anyway)",
            ctx.gpu.info.name
        );
        return Ok(None);
    }
    match GpuEngine::load_blocking(Arc::new(ctx), dir, cfg, opts) {
        Ok(e) => {
            log::info!("backend auto: the GPU engine on {}", e.describe_device());
            Ok(Some(Box::new(e)))
        }
        Err(Error::Unsupported(why)) => {
            log::info!("backend auto: the CPU engine (the GPU engine does not run this model: {why})");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Whether a hardware adapter can exist, from the device nodes alone. Opening a wgpu instance costs about
/// 250 ms (and software drivers print to stderr), so on Linux `--backend auto` skips it when there is no GPU
/// device node at all; elsewhere it always asks wgpu.
#[cfg(not(target_arch = "wasm32"))]
fn may_have_hardware_gpu() -> bool {
    if !cfg!(target_os = "linux") {
        return true;
    }
    let any = |dir: &str, node: &dyn Fn(&str) -> bool| {
        std::fs::read_dir(dir).map(|rd| rd.flatten().any(|e| node(&e.file_name().to_string_lossy()))).unwrap_or(false)
    };
    let nvidia = |n: &str| n.strip_prefix("nvidia").is_some_and(|i| i.parse::<u32>().is_ok());
    any("/dev/dri", &|n| n.starts_with("renderD")) || any("/dev", &|n| nvidia(n) || n == "dxg")
}

/// `--backend gpu` in the browser build: the blocking [`Engine`] is native only.
#[cfg(target_arch = "wasm32")]
pub fn open_engine(_dir: &ModelDir, _cfg: &Transformer, _opts: GpuOptions) -> Result<Box<dyn Engine>> {
    Err(Error::Unsupported("in the browser, load a GpuEngine with GpuEngine::load and call forward_async".into()))
}

/// `--backend auto` in the browser build: no blocking engine, so the CPU one.
#[cfg(target_arch = "wasm32")]
pub fn auto_engine(_dir: &ModelDir, _cfg: &Transformer, _opts: GpuOptions) -> Result<Option<Box<dyn Engine>>> {
    Ok(None)
}
