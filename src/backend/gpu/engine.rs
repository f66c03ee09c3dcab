//! The GPU engine: the model's weight files uploaded once, the forward pass compiled into dispatch lists
//! ([`super::plan`]), one command buffer per forward chunk, and only the requested logits rows read back.
//! [`GpuEngine::decode_greedy`] chains decode steps on the GPU (the sampled id feeds the next step's embedding
//! gather), reading back only the token ids.

use super::context::GpuContext;
use super::device::DeviceOptions;
use super::plan::{Buffers, Model, Plan, MAX_STEPS};
use crate::backend::{Engine, Logits};
use crate::error::{Error, Result};
use crate::format::ModelDir;
use crate::graph::{Activation, Transformer};
use std::sync::Arc;

/// Options of the GPU engine.
#[derive(Clone, Debug)]
pub struct GpuOptions {
    pub context_length: usize,
    /// Tokens per forward chunk during prefill (bounds the activation buffers).
    pub max_batch: usize,
    /// Splits of the decode attention over the cache (0: from the context length).
    pub attention_splits: u32,
    pub device: DeviceOptions,
}

impl GpuOptions {
    pub fn new(context_length: usize) -> GpuOptions {
        GpuOptions { context_length, max_batch: 512, attention_splits: 0, device: DeviceOptions::default() }
    }
}

pub struct GpuEngine {
    ctx: Arc<GpuContext>,
    cfg: Transformer,
    opts: GpuOptions,
    max_batch: u32,
    /// Logits rows the logits buffer holds (`Logits::All` reads a chunk in pieces of this many rows at most).
    logit_rows: u32,
    // Field order is drop order: dispatches before the buffers and weights they bind.
    plan: Plan,
    bufs: Buffers,
    _model: Model,
    staging: super::buffers::GpuBuffer,
}

impl GpuEngine {
    /// Uploads the model and compiles its forward pass on `ctx`.
    pub async fn load(ctx: Arc<GpuContext>, dir: &ModelDir, cfg: &Transformer, opts: GpuOptions) -> Result<GpuEngine> {
        if cfg.activation != Activation::Silu {
            return Err(Error::Unsupported(format!(
                "activation {:?}: the GPU engine runs SwiGLU models",
                cfg.activation
            )));
        }
        if opts.context_length == 0 || opts.context_length > cfg.context_length as usize {
            return Err(Error::Usage(format!(
                "context length {} is outside 1..={} (the model's)",
                opts.context_length, cfg.context_length
            )));
        }
        let vocab_bytes = 4 * cfg.vocab_size as u64;
        let max_binding = ctx.gpu.limits.max_storage_buffer_binding_size;
        // Every chunk buffer must fit one binding; the logits buffer holds at most 64 MiB of rows.
        let widest = 4
            * [cfg.hidden_size, 2 * cfg.intermediate_size, (cfg.n_heads + 2 * cfg.n_kv_heads) * cfg.head_dim]
                .into_iter()
                .max()
                .unwrap_or(1) as u64;
        let max_batch = (opts.max_batch.max(1) as u64).min(max_binding / widest).max(1) as u32;
        let logit_rows = (max_batch as u64).min((64 << 20).min(max_binding) / vocab_bytes).max(1) as u32;
        let splits = match opts.attention_splits {
            0 => (opts.context_length as u32).div_ceil(128).clamp(1, 64),
            s => s,
        };
        let model = Model::upload(&ctx, dir, cfg)?;
        let bufs = Buffers::new(&ctx, cfg, opts.context_length, max_batch, logit_rows, splits)?;
        let plan = Plan::build(&ctx, cfg, &model, &bufs, splits).await?;
        let staging = ctx.pool.readback("readback", (logit_rows as u64 * vocab_bytes).max(4 * MAX_STEPS as u64))?;
        ctx.gpu.check()?;
        let m = ctx.pool.report();
        log::info!(
            "GPU engine: {} dispatches per decode step; GPU memory {} MiB (weights {}, KV cache {}, activations {})",
            plan.embed.len() + plan.decode.len() + plan.head_last.len(),
            m.in_use >> 20,
            m.weights >> 20,
            m.kv_cache >> 20,
            m.activations >> 20
        );
        Ok(GpuEngine { ctx, cfg: cfg.clone(), opts, max_batch, logit_rows, plan, bufs, _model: model, staging })
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

    /// Reads `rows` logits rows (from row 0 of the logits buffer) once the submitted work is done.
    async fn read_logits(&self, mut encoder: wgpu::CommandEncoder, rows: u32, out: &mut Vec<f32>) -> Result<()> {
        let bytes = rows as u64 * 4 * self.cfg.vocab_size as u64;
        encoder.copy_buffer_to_buffer(self.bufs.logits.raw(), 0, self.staging.raw(), 0, bytes);
        self.ctx.gpu.queue.submit([encoder.finish()]);
        let data = self.ctx.map_read(&self.staging, bytes).await?;
        out.extend_from_slice(bytemuck::cast_slice(&data));
        Ok(())
    }

    /// The forward pass; see [`Engine::forward`].
    pub async fn forward_async(&mut self, ids: &[u32], pos: usize, logits: Logits) -> Result<Vec<f32>> {
        self.check_span(ids, pos)?;
        let mut out = Vec::new();
        let per = if logits == Logits::All { self.max_batch.min(self.logit_rows) } else { self.max_batch };
        let chunks: Vec<&[u32]> = ids.chunks(per as usize).collect();
        let mut at = pos as u32;
        for (c, chunk) in chunks.iter().enumerate() {
            let n = chunk.len() as u32;
            self.ctx.write(&self.bufs.ids, 0, bytemuck::cast_slice(chunk));
            self.set_step(n, at);
            let plan = &self.plan;
            let layers = match n {
                1 => &plan.decode,
                2..=8 => &plan.prefill_short,
                _ => &plan.prefill,
            };
            let mut encoder = self.ctx.encoder();
            match logits {
                Logits::Last if c + 1 == chunks.len() => {
                    self.ctx.record(&mut encoder, &[&plan.embed, layers, &plan.head_last], n);
                    self.read_logits(encoder, 1, &mut out).await?;
                }
                Logits::All => {
                    self.ctx.record(&mut encoder, &[&plan.embed, layers, &plan.head_all], n);
                    self.read_logits(encoder, n, &mut out).await?;
                }
                _ => {
                    self.ctx.record(&mut encoder, &[&plan.embed, layers], n);
                    self.ctx.gpu.queue.submit([encoder.finish()]);
                }
            }
            at += n;
        }
        self.ctx.gpu.check()?;
        Ok(out)
    }

    /// Greedy decoding on the GPU: feeds `first` at `pos`, then each sampled id at the next position, `steps`
    /// times, recording up to 64 steps into one command buffer and reading back only the sampled ids. The KV
    /// cache then holds positions `pos..pos + steps`; the last id returned has not been fed yet.
    pub async fn decode_greedy(&mut self, first: u32, pos: usize, steps: usize) -> Result<Vec<u32>> {
        self.check_span(&[first], pos + steps.saturating_sub(1))?;
        let mut out = Vec::with_capacity(steps);
        self.ctx.write(&self.bufs.ids, 0, bytemuck::cast_slice(&[first]));
        let mut at = pos as u32;
        while out.len() < steps {
            let k = (steps - out.len()).min(MAX_STEPS as usize) as u32;
            self.set_step(1, at);
            let mut encoder = self.ctx.encoder();
            let plan = &self.plan;
            for _ in 0..k {
                self.ctx.record(&mut encoder, &[&plan.embed, &plan.decode, &plan.head_last, &plan.sample], 1);
            }
            let bytes = 4 * k as u64;
            encoder.copy_buffer_to_buffer(self.bufs.tokens.raw(), 0, self.staging.raw(), 0, bytes);
            self.ctx.gpu.queue.submit([encoder.finish()]);
            let data = self.ctx.map_read(&self.staging, bytes).await?;
            out.extend_from_slice(bytemuck::cast_slice::<u8, u32>(&data));
            at += k;
        }
        Ok(out)
    }

    pub fn describe_device(&self) -> String {
        self.ctx.gpu.describe()
    }
}

#[cfg(not(target_arch = "wasm32"))]
impl Engine for GpuEngine {
    fn describe(&self) -> String {
        format!("gpu ({}, f32 activations, f32 KV cache)", self.ctx.gpu.describe())
    }

    fn context_length(&self) -> usize {
        self.opts.context_length
    }

    fn forward(&mut self, ids: &[u32], pos: usize, logits: Logits) -> Result<Vec<f32>> {
        pollster::block_on(self.forward_async(ids, pos, logits))
    }

    fn greedy_steps(&mut self, first: u32, pos: usize, steps: usize) -> Option<Result<Vec<u32>>> {
        Some(pollster::block_on(self.decode_greedy(first, pos, steps)))
    }
}

/// The GPU engine on the preferred adapter, whatever it is (`--backend gpu`).
#[cfg(not(target_arch = "wasm32"))]
pub fn open_engine(dir: &ModelDir, cfg: &Transformer, context_length: usize) -> Result<Box<dyn Engine>> {
    let ctx = Arc::new(GpuContext::open_blocking(&DeviceOptions::default())?);
    Ok(Box::new(GpuEngine::load_blocking(ctx, dir, cfg, GpuOptions::new(context_length))?))
}

/// `--backend auto`: the GPU engine on a hardware adapter; `None`, with one log line saying why, when there
/// is none (no adapter, a software one such as lavapipe, or a model the GPU engine does not run).
#[cfg(not(target_arch = "wasm32"))]
pub fn auto_engine(dir: &ModelDir, cfg: &Transformer, context_length: usize) -> Result<Option<Box<dyn Engine>>> {
    let ctx = match GpuContext::open_blocking(&DeviceOptions::default()) {
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
    match GpuEngine::load_blocking(Arc::new(ctx), dir, cfg, GpuOptions::new(context_length)) {
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

/// `--backend gpu` in the browser build: the blocking [`Engine`] is native only.
#[cfg(target_arch = "wasm32")]
pub fn open_engine(_dir: &ModelDir, _cfg: &Transformer, _context_length: usize) -> Result<Box<dyn Engine>> {
    Err(Error::Unsupported("in the browser, load a GpuEngine with GpuEngine::load and call forward_async".into()))
}

/// `--backend auto` in the browser build: no blocking engine, so the CPU one.
#[cfg(target_arch = "wasm32")]
pub fn auto_engine(_dir: &ModelDir, _cfg: &Transformer, _context_length: usize) -> Result<Option<Box<dyn Engine>>> {
    Ok(None)
}
