//! Where the model runs. An [`Engine`] owns a model's weights (as the backend wants them: mmapped slices on
//! the CPU, buffers on the GPU), its KV cache and scratch space, and runs the forward pass over a chunk of
//! tokens. The session above it knows nothing of how.

pub mod cpu;
pub mod gpu;
mod weights;

pub use weights::WeightRef;

use crate::error::Result;
use crate::sampling::SamplerOptions;

/// Bytes of host memory the system can give without swapping (`MemAvailable` of `/proc/meminfo`); `None`
/// where that is unknown (other systems, the browser).
pub fn host_memory_available() -> Option<u64> {
    let text = crate::files::read_regular_string(std::path::Path::new("/proc/meminfo"), 1 << 20).ok()?;
    let kib: u64 =
        text.lines().find_map(|l| l.strip_prefix("MemAvailable:"))?.trim().strip_suffix("kB")?.trim().parse().ok()?;
    kib.checked_mul(1024)
}

/// Refuses to allocate `bytes` of host memory for `what` when the system does not have them, with the size it
/// would take and what to change (`hint`): a clear error instead of an abort in the allocator.
pub fn check_host_alloc(what: &str, bytes: u64, hint: &str) -> Result<()> {
    let fmt = crate::format::metadata::human_bytes;
    match host_memory_available() {
        Some(avail) if bytes > avail => Err(crate::Error::Usage(format!(
            "{what} needs {} and this machine has {} available: {hint}",
            fmt(bytes),
            fmt(avail)
        ))),
        _ => Ok(()),
    }
}

/// Which rows of logits a forward pass returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logits {
    /// None (prefill of a chunk that is not the prompt's last).
    None,
    /// The last token's row only (generation).
    Last,
    /// Every token's row (perplexity, teacher forcing).
    All,
}

/// Precision of the activations fed to the matrix products.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Activations {
    /// f32 activations: the reference-accurate path.
    F32,
    /// Activations quantized to int8 per group of 32 for integer dot products (llama.cpp's approach): faster,
    /// logits within ~0.5 of the f32 path.
    #[default]
    Int8,
}

impl std::str::FromStr for Activations {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "f32" => Ok(Activations::F32),
            "int8" | "q8" => Ok(Activations::Int8),
            _ => Err(format!("unknown activation precision {s:?} (f32 or int8)")),
        }
    }
}

/// The element type of the KV cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum KvType {
    F32,
    #[default]
    F16,
}

impl std::str::FromStr for KvType {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "f32" => Ok(KvType::F32),
            "f16" => Ok(KvType::F16),
            _ => Err(format!("unknown KV cache type {s:?} (f16 or f32)")),
        }
    }
}

pub trait Engine {
    /// A one-line description for logs and `--json` output, e.g. "cpu (avx2, 2 threads)".
    fn describe(&self) -> String;

    /// Tokens the KV cache holds.
    fn context_length(&self) -> usize;

    /// Runs `ids` at positions `pos..pos + ids.len()`, storing their keys and values in the cache, and returns
    /// the requested logits rows, `[rows, vocab]` row-major. Positions at or after `pos` are overwritten, so
    /// rewinding is passing a smaller `pos`.
    fn forward(&mut self, ids: &[u32], pos: usize, logits: Logits) -> Result<Vec<f32>>;

    /// Decoding kept on the device, for engines that can chain steps without reading logits back: feeds
    /// `first` at `pos`, then each chosen id at the next position, and returns the `steps` ids chosen as a
    /// [`Sampler`](crate::sampling::Sampler) with `opts` would choose them from the same logits: greedy (argmax,
    /// lowest id on ties) or at a temperature with draw numbers `draw, draw + 1, ...`. The cache then holds
    /// positions `pos..pos + steps`; the last id returned has not been fed. `None`: the engine has no such path
    /// for these options (callers use [`Engine::forward`] and sample on the host).
    fn sample_steps(
        &mut self,
        _first: u32,
        _pos: usize,
        _steps: usize,
        _opts: &SamplerOptions,
        _draw: u32,
    ) -> Option<Result<Vec<u32>>> {
        None
    }
}
