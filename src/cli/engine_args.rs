//! Flags shared by every command that runs a model (`run`, `bench`, `perplexity`); `plan` takes only the
//! memory ones.

use clap::Args;
use omex::backend::{Activations, KvType};
use omex::runtime::{BackendChoice, EngineOptions, Model};

#[derive(Args, Debug, Clone)]
pub struct EngineArgs {
    /// Where to run: cpu, gpu, or auto (the GPU when a hardware adapter exists)
    #[arg(long, default_value = "auto")]
    pub backend: BackendChoice,
    /// CPU threads (default: one per core; more than the cores is capped with a warning)
    #[arg(long, short = 't', default_value_t = 0)]
    pub threads: usize,
    #[command(flatten)]
    pub memory: MemoryArgs,
    /// Upload streamed weights and compute one after the other instead of overlapping them
    #[arg(long)]
    pub no_overlap: bool,
    /// Check every file's sha256 against metadata.json before running (about 1 s per GB; off by default
    /// because loading only maps the files). Also on with OMEX_VERIFY=1
    #[arg(long)]
    pub verify: bool,
    /// Apply the model's LoRA adapter NAME (from `omex adapter add`), unmerged, its update times SCALE
    /// (default 1); repeatable: several adapters add up
    #[arg(long = "adapter", value_name = "NAME[:SCALE]")]
    pub adapters: Vec<String>,
}

/// What decides the memory a model takes: precisions, the KV cache type and the GPU budget.
#[derive(Args, Debug, Clone)]
pub struct MemoryArgs {
    /// Activation precision of the matrix products: int8 (fast, llama.cpp-like) or f32 (reference-exact).
    /// Default: int8 on the CPU; f32 on the GPU (where int8 covers the decode matvecs of quantized weights)
    #[arg(long)]
    pub activations: Option<Activations>,
    /// KV cache element type: f16, f32, or q8 (llama.cpp's q8_0: int8 in blocks of 32 with one scale, about
    /// half of f16's bytes; heads must be a multiple of 32 wide). Every backend honours it
    #[arg(long, default_value = "f16")]
    pub kv: KvType,
    /// Cap on GPU memory (48MB, 2GiB, bytes): weights that do not fit stream from the mapped files.
    /// Default: OMEX_GPU_MEM, else [device] gpu_memory_limit in $OMEX_HOME/config.toml (default ~/.omex), else no cap
    #[arg(long, value_name = "SIZE")]
    pub gpu_mem: Option<String>,
    /// Upload slots when weights stream (2: double buffering; 3: up to two pieces uploaded ahead)
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=16))]
    pub stream_slots: u32,
}

impl MemoryArgs {
    /// Engine options with these memory settings and a KV cache of `context_length` tokens (`None`: the
    /// model's default); the rest at their defaults.
    pub fn options(&self, context_length: Option<usize>) -> EngineOptions {
        let defaults = EngineOptions::default();
        EngineOptions {
            context_length,
            // Each engine keeps its own default unless the flag is given.
            activations: self.activations.unwrap_or(defaults.activations),
            gpu_activations: self.activations.unwrap_or(defaults.gpu_activations),
            kv: self.kv,
            gpu_mem: self.gpu_mem.clone(),
            stream_slots: self.stream_slots as usize,
            ..defaults
        }
    }
}

impl EngineArgs {
    /// Loads the model, verifying its checksums first when `--verify` or `OMEX_VERIFY=1` asks for it.
    /// Makes the `--adapter` set the engine's active adapters.
    pub fn apply_adapters(&self, model: &Model, engine: &mut dyn omex::backend::Engine) -> omex::Result<()> {
        engine.set_adapters(&model.active_adapters(&self.adapters)?)
    }

    pub fn load(&self, path: &std::path::Path) -> omex::Result<Model> {
        let model = Model::load(path)?;
        if self.verify || std::env::var("OMEX_VERIFY").is_ok_and(|v| v == "1") {
            let n = model.verify()?;
            log::info!("--verify: {n} files match metadata.json");
        }
        Ok(model)
    }

    /// The engine options, with a KV cache of `context_length` tokens (`None`: the model's default).
    pub fn options(&self, context_length: Option<usize>) -> EngineOptions {
        EngineOptions {
            backend: self.backend,
            threads: self.threads,
            overlap: !self.no_overlap,
            ..self.memory.options(context_length)
        }
    }
}
