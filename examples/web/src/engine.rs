//! The two engines a page can run, behind one async `forward`: the GPU engine over WebGPU (every read-back is
//! a promise the page's event loop resolves) and the CPU engine compiled to wasm (synchronous, on the page's
//! own thread: wasm32-unknown-unknown has no threads, so its rayon pool is the current thread).

use omex::backend::cpu::{CpuEngine, CpuOptions};
use omex::backend::gpu::{DeviceOptions, GpuContext, GpuEngine, GpuOptions};
use omex::backend::{Activations, Engine, KvType, Logits};
use omex::runtime::Model;
use omex::{Error, Result};
use std::sync::Arc;

/// Which engine runs the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EngineKind {
    Gpu,
    Cpu,
}

impl std::str::FromStr for EngineKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<EngineKind> {
        match s {
            "gpu" | "webgpu" => Ok(EngineKind::Gpu),
            "cpu" | "wasm" => Ok(EngineKind::Cpu),
            _ => Err(Error::Usage(format!("unknown engine {s:?} (gpu or cpu)"))),
        }
    }
}

impl EngineKind {
    pub fn name(self) -> &'static str {
        match self {
            EngineKind::Gpu => "gpu",
            EngineKind::Cpu => "cpu",
        }
    }
}

/// What the page asks of an engine.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    pub kind: EngineKind,
    /// KV cache length (capped at the model's context).
    pub context_length: usize,
    /// The CPU engine's matrix-product activations (the GPU engine always runs f32).
    pub activations: Activations,
}

/// The adapter the GPU engine runs on, as the page shows it.
#[derive(Clone, Debug, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AdapterSummary {
    /// Empty where the browser hides it (wgpu's WebGPU backend reports no name).
    pub name: String,
    pub backend: String,
    pub device_type: String,
    pub driver: String,
    /// The kernel tier omex chose: "portable", or "f16" where the adapter offers `shader-f16` (subgroups
    /// never: wgpu 30's WebGPU backend does not map the browser's `subgroups` feature).
    pub kernels: String,
    /// The features the device was opened with.
    pub features: Vec<String>,
    pub max_storage_binding_mib: u64,
    pub max_buffer_mib: u64,
}

enum Inner {
    Cpu(Box<CpuEngine>),
    Gpu(Box<GpuEngine>),
}

pub struct WebEngine {
    inner: Inner,
    kind: EngineKind,
    context_length: usize,
    describe: String,
    adapter: Option<AdapterSummary>,
}

impl WebEngine {
    /// Opens the engine `cfg` names for `model`: for the GPU, the browser's adapter and device first.
    pub async fn load(model: &Model, cfg: &EngineConfig) -> Result<WebEngine> {
        let max = model.config.context_length as usize;
        let context_length = cfg.context_length.clamp(1, max);
        match cfg.kind {
            EngineKind::Gpu => {
                // The adapter's own tier: `shader-f16` where the browser offers it (SwiftShader does not), the
                // portable kernels beside it. Subgroups cannot come: wgpu 30's WebGPU backend lists no
                // `subgroups` feature in its mapping, so the tier never has them here.
                // GpuEngine::load takes an Arc; in the browser wgpu's handles are neither Send nor Sync.
                #[allow(clippy::arc_with_non_send_sync)]
                let ctx = Arc::new(GpuContext::open(&DeviceOptions { portable: false }).await?);
                let adapter = summarize(&ctx);
                let opts = GpuOptions::new(context_length);
                let kv = opts.kv.name();
                let engine = GpuEngine::load(ctx, &model.dir, &model.config, opts).await?;
                let name = if adapter.name.is_empty() { "WebGPU adapter" } else { adapter.name.as_str() };
                let describe = format!("gpu ({name}, {} kernels, f32 activations, {kv} KV cache)", adapter.kernels);
                Ok(WebEngine {
                    inner: Inner::Gpu(Box::new(engine)),
                    kind: cfg.kind,
                    context_length,
                    describe,
                    adapter: Some(adapter),
                })
            }
            EngineKind::Cpu => {
                let opts = CpuOptions {
                    threads: 1,
                    context_length,
                    activations: cfg.activations,
                    kv: KvType::F16,
                    max_batch: 64,
                    kv_tokens: 0,
                };
                let engine = CpuEngine::load(&model.dir, &model.config, opts)?;
                let describe = format!("{} in wasm", engine.describe());
                Ok(WebEngine {
                    inner: Inner::Cpu(Box::new(engine)),
                    kind: cfg.kind,
                    context_length,
                    describe,
                    adapter: None,
                })
            }
        }
    }

    pub fn kind(&self) -> EngineKind {
        self.kind
    }

    pub fn context_length(&self) -> usize {
        self.context_length
    }

    /// "gpu (WebGPU adapter, portable kernels, f32 activations, f16 KV cache)".
    pub fn describe(&self) -> &str {
        &self.describe
    }

    pub fn adapter(&self) -> Option<&AdapterSummary> {
        self.adapter.as_ref()
    }

    /// See [`Engine::forward`].
    pub async fn forward(&mut self, ids: &[u32], pos: usize, logits: Logits) -> Result<Vec<f32>> {
        match &mut self.inner {
            Inner::Cpu(e) => e.forward(ids, pos, logits),
            Inner::Gpu(e) => e.forward_async(ids, pos, logits).await,
        }
    }
}

fn summarize(ctx: &GpuContext) -> AdapterSummary {
    let gpu = &ctx.gpu;
    AdapterSummary {
        name: gpu.info.name.clone(),
        backend: format!("{:?}", gpu.info.backend),
        device_type: format!("{:?}", gpu.info.device_type),
        driver: [gpu.info.driver.as_str(), gpu.info.driver_info.as_str()].join(" ").trim().to_string(),
        kernels: gpu.tier.describe(),
        features: gpu
            .device
            .features()
            .to_string()
            .split(" | ")
            .filter(|f| !f.is_empty())
            .map(str::to_string)
            .collect(),
        max_storage_binding_mib: gpu.limits.max_storage_buffer_binding_size >> 20,
        max_buffer_mib: gpu.limits.max_buffer_size >> 20,
    }
}
