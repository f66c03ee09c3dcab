//! Where the model runs. An [`Engine`] owns a model's weights (as the backend wants them: mmapped slices on
//! the CPU, buffers on the GPU), its KV cache and scratch space, and runs the forward pass over a chunk of
//! tokens. The session above it knows nothing of how.

pub mod cpu;
pub mod gpu;
pub mod lora;
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
    /// llama.cpp's q8_0: blocks of 32 consecutive values of one head's row as int8 with one f16 scale (34
    /// bytes per 32 values, 53% of f16), for long contexts in little memory.
    Q8,
}

/// Values per scale of a [`KvType::Q8`] cache; a head's `head_dim` must be a multiple of it.
pub const KV_Q8_BLOCK: u32 = 32;

impl KvType {
    /// The name `--kv` takes and `--json`/`bench` report.
    pub fn name(self) -> &'static str {
        match self {
            KvType::F32 => "f32",
            KvType::F16 => "f16",
            KvType::Q8 => "q8",
        }
    }

    /// Bytes that `values` cached values take (a whole number of q8 blocks for [`KvType::Q8`]).
    pub fn bytes(self, values: u64) -> u64 {
        match self {
            KvType::F32 => 4 * values,
            KvType::F16 => 2 * values,
            KvType::Q8 => values.div_ceil(KV_Q8_BLOCK as u64) * (2 + KV_Q8_BLOCK as u64),
        }
    }

    /// Refuses a cache type the model's heads cannot be stored in: q8 blocks must not straddle two heads.
    pub fn check_head_dim(self, head_dim: u32) -> Result<()> {
        if self == KvType::Q8 && !head_dim.is_multiple_of(KV_Q8_BLOCK) {
            return Err(crate::Error::Unsupported(format!(
                "a q8 KV cache stores blocks of {KV_Q8_BLOCK} values of one head, and this model's heads have \
                 {head_dim}: use --kv f16"
            )));
        }
        Ok(())
    }
}

impl std::str::FromStr for KvType {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "f32" => Ok(KvType::F32),
            "f16" => Ok(KvType::F16),
            "q8" | "q8_0" => Ok(KvType::Q8),
            _ => Err(format!("unknown KV cache type {s:?} (f16, f32 or q8)")),
        }
    }
}

/// Positions per block of a paged KV cache: the unit in which sequences are given cache space.
pub const KV_BLOCK_TOKENS: usize = 16;

/// How an engine's KV cache is shared by several sequences: `blocks` blocks of [`KV_BLOCK_TOKENS`] positions,
/// any of which can hold any sequence's positions (see [`SeqChunk::blocks`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvBlocks {
    pub blocks: usize,
    /// Tokens one [`Engine::forward_batch`] takes at most, over all its sequences.
    pub max_batch: usize,
}

/// One sequence's part of a batched forward pass.
#[derive(Clone, Copy, Debug)]
pub struct SeqChunk<'a> {
    /// Tokens at positions `pos..pos + ids.len()` of the sequence.
    pub ids: &'a [u32],
    pub pos: usize,
    /// The cache blocks of the sequence: block `i` holds its positions `i * KV_BLOCK_TOKENS..`; they must
    /// cover `pos + ids.len()` positions. Blocks written here must not be another sequence's.
    pub blocks: &'a [u32],
    /// Return the logits of the last token.
    pub logits: bool,
}

/// One op's run in a per-op timeline ([`Engine::trace_ops`]).
#[derive(Clone, Debug, PartialEq)]
pub struct OpSpan {
    /// "embed", "blk.3 linear attn_q|attn_k|attn_v", "final_norm", "head".
    pub name: String,
    /// The block the op belongs to.
    pub block: Option<usize>,
    /// Microseconds since tracing started.
    pub start_us: f64,
    pub dur_us: f64,
    /// Tokens the op ran over.
    pub tokens: usize,
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

    /// Starts recording each op's time (on), or stops; `false`: the engine has no per-op timeline.
    fn trace_ops(&mut self, _on: bool) -> bool {
        false
    }

    /// The ops recorded since tracing started or since the last call.
    fn take_op_spans(&mut self) -> Vec<OpSpan> {
        Vec::new()
    }

    /// Makes `active` the LoRA adapters applied from the next forward pass on (empty: the base alone). Positions
    /// already in the cache were computed under the previous set: callers start over ([`Session`] does).
    /// An adapter targeting a matrix the model's linear ops do not have is refused.
    ///
    /// [`Session`]: crate::runtime::Session
    fn set_adapters(&mut self, active: &[lora::ActiveAdapter]) -> Result<()> {
        if active.is_empty() {
            return Ok(());
        }
        Err(crate::Error::Unsupported(format!(
            "{} does not apply LoRA adapters yet: run them on the CPU engine (--backend cpu)",
            self.describe()
        )))
    }

    /// The paged cache [`Engine::forward_batch`] runs over; `None`: the engine runs one sequence only.
    fn kv_blocks(&self) -> Option<KvBlocks> {
        None
    }

    /// Runs several sequences' tokens in one pass (their rows share every matrix product), each attending its
    /// own cache blocks, and returns the logits rows of the chunks that ask for them, in order, `[rows,
    /// vocab]`. [`Engine::forward`] uses blocks `0, 1, ..` as one sequence: an engine serves one caller or the
    /// other.
    fn forward_batch(&mut self, _seqs: &[SeqChunk]) -> Result<Vec<f32>> {
        Err(crate::Error::Unsupported(format!("{} runs one sequence at a time", self.describe())))
    }
}

/// Checks a batch against the engine's cache and vocabulary before anything runs: the blocks cover each
/// chunk, name blocks of the cache, and no block is written by two chunks.
pub fn check_batch(seqs: &[SeqChunk], kv: KvBlocks, vocab: u32, context: usize) -> Result<()> {
    let total: usize = seqs.iter().map(|s| s.ids.len()).sum();
    if total > kv.max_batch {
        return Err(crate::Error::Usage(format!("a batch of {total} tokens is over the engine's {}", kv.max_batch)));
    }
    let mut written = std::collections::HashSet::new();
    for s in seqs {
        let end = s.pos + s.ids.len();
        if s.ids.is_empty() || end > context {
            return Err(crate::Error::Usage(format!(
                "a chunk of {} tokens at position {} is empty or past the context of {context}",
                s.ids.len(),
                s.pos
            )));
        }
        let need = end.div_ceil(KV_BLOCK_TOKENS);
        if s.blocks.len() < need || s.blocks[..need].iter().any(|&b| b as usize >= kv.blocks) {
            return Err(crate::Error::Usage(format!(
                "a chunk ending at position {end} needs {need} cache blocks below {}; it has {:?}",
                kv.blocks,
                &s.blocks[..s.blocks.len().min(need)]
            )));
        }
        for b in s.pos / KV_BLOCK_TOKENS..need {
            if !written.insert(s.blocks[b]) {
                return Err(crate::Error::Usage(format!("cache block {} is written by two chunks", s.blocks[b])));
            }
        }
        if let Some(&id) = s.ids.iter().find(|&&id| id >= vocab) {
            return Err(crate::Error::Usage(format!("token id {id} is outside the vocabulary ({vocab})")));
        }
    }
    Ok(())
}
