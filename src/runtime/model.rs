//! `Model::load`: the directory, its graph and its tokenizer; engines and sessions are made from it.

use super::session::Session;
use crate::backend::cpu::{CpuEngine, CpuOptions};
use crate::backend::gpu::GpuOptions;
use crate::backend::lora::{ActiveAdapter, Adapter};
use crate::backend::{Activations, Engine, KvType};
use crate::error::{Error, Result};
use crate::format::adapter::AdapterData;
use crate::format::graph::GRAPH_FILE;
use crate::format::ModelDir;
use crate::graph::Transformer;
use crate::tokenizer::Tokenizer;
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// Which engine runs the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum BackendChoice {
    /// The GPU when a hardware adapter exists, else the CPU.
    #[default]
    Auto,
    Cpu,
    Gpu,
}

impl std::str::FromStr for BackendChoice {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(BackendChoice::Auto),
            "cpu" => Ok(BackendChoice::Cpu),
            "gpu" => Ok(BackendChoice::Gpu),
            _ => Err(format!("unknown backend {s:?} (cpu, gpu or auto)")),
        }
    }
}

#[derive(Clone, Debug)]
pub struct EngineOptions {
    pub backend: BackendChoice,
    /// CPU worker threads (0: one per core).
    pub threads: usize,
    /// KV cache length; `None`: the model's context, capped at 4096.
    pub context_length: Option<usize>,
    /// Activation precision of the CPU engine's matrix products (int8 by default).
    pub activations: Activations,
    /// Activation precision of the GPU engine's decode matvecs: f32 by default (int8 is not its default until
    /// it is measured on hardware); int8 applies to matrices with int8, int4 or ternary weights.
    pub gpu_activations: Activations,
    pub kv: KvType,
    /// The GPU memory budget as the user wrote it (`--gpu-mem`); `None`: `OMEX_GPU_MEM`, else the config file.
    pub gpu_mem: Option<String>,
    /// Upload slots when weights stream (2: double buffering; 3, the default, uploads two pieces ahead).
    pub stream_slots: usize,
    /// Overlap uploads with compute when weights stream.
    pub overlap: bool,
    /// Write the GPU memory trace (uploads, compute, memory over time) here.
    pub memory_trace: Option<std::path::PathBuf>,
    /// KV cache positions over all sequences of a batching engine (`omex serve`); 0: one context's worth.
    pub kv_tokens: usize,
    /// Sequences a batching engine decodes in one pass at most (`omex serve --parallel`).
    pub max_sequences: usize,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            backend: BackendChoice::Auto,
            threads: 0,
            context_length: None,
            activations: Activations::default(),
            gpu_activations: Activations::F32,
            kv: KvType::default(),
            gpu_mem: None,
            stream_slots: 3,
            overlap: true,
            memory_trace: None,
            kv_tokens: 0,
            max_sequences: 1,
        }
    }
}

/// Default KV cache length when the user gives none: long enough for chat, small enough for a laptop.
const DEFAULT_CONTEXT: usize = 4096;

pub struct Model {
    pub dir: ModelDir,
    pub config: Transformer,
    pub tokenizer: Arc<Tokenizer>,
    /// Adapters read so far, kept resident: asking again for one is a map lookup.
    adapters: Mutex<HashMap<String, Arc<Adapter>>>,
}

impl Model {
    pub fn load(path: impl AsRef<Path>) -> Result<Model> {
        let path = path.as_ref();
        let dir = ModelDir::open(path)?;
        let config = Transformer::from_graph(&dir.graph, &path.join(GRAPH_FILE))?;
        let tokenizer = Tokenizer::load(&path.join("tokenizer")).map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(Model { dir, config, tokenizer: Arc::new(tokenizer), adapters: Mutex::default() })
    }

    /// Checks every file `metadata.json` lists against its size and sha256, so a corrupted download or a
    /// damaged disk is an error naming the file instead of silent garbage. Not done by `load`: hashing reads
    /// every byte (about a second per GB), while loading maps the files and reads only what runs.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn verify(&self) -> Result<usize> {
        crate::validate::verify_files(&self.dir.root, &self.dir.metadata)
            .map_err(|problems| Error::invalid(&self.dir.root, format!("--verify: {}", problems.join("; "))))
    }

    /// A model from a directory already opened, e.g. with [`ModelDir::from_memory`] over files fetched in a
    /// browser, and its tokenizer.
    pub fn from_dir(dir: ModelDir, tokenizer: Tokenizer) -> Result<Model> {
        let config = Transformer::from_graph(&dir.graph, &dir.root.join(GRAPH_FILE))?;
        Ok(Model { dir, config, tokenizer: Arc::new(tokenizer), adapters: Mutex::default() })
    }

    pub fn context_length(&self, opts: &EngineOptions) -> Result<usize> {
        let max = self.config.context_length as usize;
        match opts.context_length {
            Some(0) => Err(Error::Usage("--ctx must be at least 1".into())),
            Some(n) if n > max => Err(Error::Usage(format!("--ctx {n} exceeds the model's context length {max}"))),
            Some(n) => Ok(n),
            None => Ok(max.min(DEFAULT_CONTEXT)),
        }
    }

    /// The GPU engine's options: the budget resolved (flag, environment, config file), streaming settings.
    pub fn gpu_options(&self, opts: &EngineOptions) -> Result<GpuOptions> {
        let mut gpu = GpuOptions::new(self.context_length(opts)?);
        gpu.budget = crate::memory::budget::resolve_default(opts.gpu_mem.as_deref())?;
        gpu.slots = opts.stream_slots.max(1);
        gpu.overlap = opts.overlap;
        gpu.activations = opts.gpu_activations;
        gpu.kv_tokens = opts.kv_tokens;
        gpu.max_seqs = opts.max_sequences.clamp(1, 256) as u32;
        gpu.kv = opts.kv;
        #[cfg(not(target_arch = "wasm32"))]
        {
            gpu.memory_trace = opts.memory_trace.clone();
        }
        Ok(gpu)
    }

    pub fn engine(&self, opts: &EngineOptions) -> Result<Box<dyn Engine>> {
        let context_length = self.context_length(opts)?;
        match opts.backend {
            BackendChoice::Cpu | BackendChoice::Auto => {
                if opts.backend == BackendChoice::Auto {
                    // The GPU engine on a hardware adapter; else it logs why the CPU engine runs instead.
                    if let Some(gpu) =
                        crate::backend::gpu::auto_engine(&self.dir, &self.config, self.gpu_options(opts)?)?
                    {
                        return Ok(gpu);
                    }
                }
                if opts.memory_trace.is_some() {
                    return Err(Error::Usage("--memory-trace records the GPU engine: add --backend gpu".into()));
                }
                let cpu = CpuOptions {
                    threads: opts.threads,
                    context_length,
                    activations: opts.activations,
                    kv: opts.kv,
                    max_batch: 512,
                    kv_tokens: opts.kv_tokens,
                };
                Ok(Box::new(CpuEngine::load(&self.dir, &self.config, cpu)?))
            }
            BackendChoice::Gpu => crate::backend::gpu::open_engine(&self.dir, &self.config, self.gpu_options(opts)?),
        }
    }

    /// The adapter `adapters/NAME/` of this model, read and checked against the base (architecture, hidden
    /// size, every target tensor's shape) the first time, then shared.
    pub fn adapter(&self, name: &str) -> Result<Arc<Adapter>> {
        if let Some(a) = self.adapters.lock().expect("adapter cache poisoned").get(name) {
            return Ok(a.clone());
        }
        let base = (self.config.architecture.as_str(), self.config.hidden_size, &self.dir.index);
        let data = AdapterData::open_for(&self.dir.root, name, Some(base))?;
        let a = Arc::new(Adapter::from_data(data));
        self.adapters.lock().expect("adapter cache poisoned").insert(name.to_string(), a.clone());
        Ok(a)
    }

    /// Active adapters from `NAME[:SCALE]` specs (`omex run --adapter`, the server's `BASE:ADAPTER`).
    pub fn active_adapters(&self, specs: &[String]) -> Result<Vec<ActiveAdapter>> {
        specs
            .iter()
            .map(|spec| {
                let (name, scale) = parse_adapter_spec(spec)?;
                Ok(ActiveAdapter { adapter: self.adapter(name)?, scale })
            })
            .collect()
    }

    pub fn session(&self, opts: &EngineOptions) -> Result<Session> {
        Ok(Session::new(self.engine(opts)?, self.tokenizer.clone()))
    }
}

/// `NAME` or `NAME:SCALE` (a finite scale; 1 when absent).
pub fn parse_adapter_spec(spec: &str) -> Result<(&str, f32)> {
    let (name, scale) = match spec.rsplit_once(':') {
        Some((n, s)) => {
            let v: f32 =
                s.parse().map_err(|_| Error::Usage(format!("--adapter {spec:?}: scale {s:?} is not a number")))?;
            (n, v)
        }
        None => (spec, 1.0),
    };
    if !scale.is_finite() {
        return Err(Error::Usage(format!("--adapter {spec:?}: the scale must be finite")));
    }
    crate::format::adapter::check_name(name).map_err(|e| Error::Usage(format!("--adapter {spec:?}: {e}")))?;
    Ok((name, scale))
}
