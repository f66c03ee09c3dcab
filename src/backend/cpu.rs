//! The CPU engine: the transformer forward pass over `kernels-cpu`, reading weights straight from the mapped
//! layer files. It is also the reference the GPU engine is tested against.

use super::{Activations, Engine, KvType, Logits, WeightRef};
use crate::error::{Error, Result};
use crate::format::ModelDir;
use crate::graph::{Activation, Norm, RopeStyle, Transformer};
use half::f16;
use kernels_cpu::{ops, KvElem, Matrix, Q8Activations};

/// Options of the CPU engine.
#[derive(Clone, Debug)]
pub struct CpuOptions {
    /// Worker threads (0: one per core).
    pub threads: usize,
    pub context_length: usize,
    pub activations: Activations,
    pub kv: KvType,
    /// Tokens per forward chunk during prefill (bounds the scratch memory).
    pub max_batch: usize,
}

struct Block {
    attn_norm: WeightRef,
    q: WeightRef,
    k: WeightRef,
    v: WeightRef,
    o: WeightRef,
    qkv_bias: Option<[Vec<f32>; 3]>,
    ffn_norm: WeightRef,
    gate: WeightRef,
    up: WeightRef,
    down: WeightRef,
}

/// Per-layer K and V caches, `[ctx, kv_dim]` each.
enum KvCache {
    F32(Vec<(Vec<f32>, Vec<f32>)>),
    F16(Vec<(Vec<f16>, Vec<f16>)>),
}

/// Reusable activation buffers, sized for `max_batch` tokens.
#[derive(Default)]
struct Scratch {
    x: Vec<f32>,
    h: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    att: Vec<f32>,
    o: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    /// silu(gate) * up
    act: Vec<f32>,
    xq: Q8Activations,
}

pub struct CpuEngine {
    cfg: Transformer,
    opts: CpuOptions,
    pool: std::sync::Arc<rayon::ThreadPool>,
    embed: WeightRef,
    output_norm: Vec<f32>,
    head: WeightRef,
    blocks: Vec<Block>,
    inv_freq: Vec<f32>,
    kv: KvCache,
    s: Scratch,
}

impl CpuEngine {
    pub fn load(dir: &ModelDir, cfg: &Transformer, opts: CpuOptions) -> Result<CpuEngine> {
        let pool = thread_pool(opts.threads)?;
        let (d, f, hd) = (cfg.hidden_size, cfg.intermediate_size, cfg.head_dim);
        let (qd, kvd) = (cfg.n_heads * hd, cfg.n_kv_heads * hd);
        let w = |name: &str, shape: &[u32]| WeightRef::load(dir, name, shape);
        let mut blocks = Vec::with_capacity(cfg.blocks.len());
        for b in &cfg.blocks {
            let qkv_bias = match &b.attn_qkv_bias {
                Some([bq, bk, bv]) => Some([w(bq, &[qd])?.to_f32(), w(bk, &[kvd])?.to_f32(), w(bv, &[kvd])?.to_f32()]),
                None => None,
            };
            blocks.push(Block {
                attn_norm: w(&b.attn_norm, &[d])?,
                q: w(&b.attn_q, &[qd, d])?,
                k: w(&b.attn_k, &[kvd, d])?,
                v: w(&b.attn_v, &[kvd, d])?,
                o: w(&b.attn_output, &[d, qd])?,
                qkv_bias,
                ffn_norm: w(&b.ffn_norm, &[d])?,
                gate: w(&b.ffn_gate, &[f, d])?,
                up: w(&b.ffn_up, &[f, d])?,
                down: w(&b.ffn_down, &[d, f])?,
            });
            for norm in [&blocks.last().unwrap().attn_norm, &blocks.last().unwrap().ffn_norm] {
                if norm.f32_slice().is_none() {
                    return Err(Error::Unsupported(format!("norm weight {} must be f32", norm.name())));
                }
            }
        }
        if cfg.activation != Activation::Silu {
            return Err(Error::Unsupported(format!(
                "activation {:?}: the CPU engine runs SwiGLU models",
                cfg.activation
            )));
        }
        let ctx = opts.context_length;
        let elem = if opts.kv == KvType::F32 { 4 } else { 2 };
        let kv_bytes = 2 * blocks.len() as u64 * ctx as u64 * kvd as u64 * elem;
        super::check_host_alloc(&format!("a KV cache of {ctx} tokens"), kv_bytes, "lower --ctx")?;
        let per_layer = ctx * kvd as usize;
        let kv = match opts.kv {
            KvType::F32 => {
                KvCache::F32((0..blocks.len()).map(|_| (vec![0.0; per_layer], vec![0.0; per_layer])).collect())
            }
            KvType::F16 => KvCache::F16(
                (0..blocks.len()).map(|_| (vec![f16::ZERO; per_layer], vec![f16::ZERO; per_layer])).collect(),
            ),
        };
        Ok(CpuEngine {
            embed: w(&cfg.token_embedding, &[cfg.vocab_size, d])?,
            output_norm: w(&cfg.output_norm, &[d])?.to_f32(),
            head: w(&cfg.output, &[cfg.vocab_size, d])?,
            inv_freq: cfg.rope.inv_freq(),
            cfg: cfg.clone(),
            opts,
            pool,
            blocks,
            kv,
            s: Scratch::default(),
        })
    }

    /// Runs one chunk of at most `max_batch` tokens, leaving its final normed hidden states `[n, d]` in `s.h`.
    fn forward_chunk(&mut self, ids: &[u32], pos: usize) -> Result<()> {
        let n = ids.len();
        let cfg = &self.cfg;
        let (d, f) = (cfg.hidden_size as usize, cfg.intermediate_size as usize);
        let (nh, nkv, hd) = (cfg.n_heads as usize, cfg.n_kv_heads as usize, cfg.head_dim as usize);
        let (qd, kvd) = (nh * hd, nkv * hd);
        let eps = match cfg.norm {
            Norm::RmsNorm { eps } => eps,
            Norm::LayerNorm { .. } => return Err(Error::Unsupported("LayerNorm graphs on the CPU engine".into())),
        };
        let style = match cfg.rope.style {
            RopeStyle::Interleaved => ops::RopeStyle::Interleaved,
            RopeStyle::Half => ops::RopeStyle::Half,
        };
        let rope_dims = cfg.rope.dims as usize;
        let s = &mut self.s;
        for buf in [&mut s.x, &mut s.h, &mut s.o] {
            buf.resize(n * d, 0.0);
        }
        s.q.resize(n * qd, 0.0);
        s.att.resize(n * qd, 0.0);
        s.k.resize(n * kvd, 0.0);
        s.v.resize(n * kvd, 0.0);
        s.gate.resize(n * f, 0.0);
        s.up.resize(n * f, 0.0);
        s.act.resize(n * f, 0.0);

        let embed = self.embed.matrix();
        for (row, &id) in s.x.chunks_exact_mut(d).zip(ids) {
            if id >= cfg.vocab_size {
                return Err(Error::Usage(format!("token id {id} is outside the vocabulary ({})", cfg.vocab_size)));
            }
            embed.dequant_row(id as usize, row);
        }
        let act = self.opts.activations;
        let scale = 1.0 / (hd as f32).sqrt();
        for (l, b) in self.blocks.iter().enumerate() {
            rmsnorm_rows(&s.x, b.attn_norm.f32_slice().expect("checked at load"), eps, &mut s.h, d);
            let lin = Linear::prepare(act, &s.h, n, &mut s.xq);
            lin.apply(&b.q.matrix(), &s.xq, &mut s.q);
            lin.apply(&b.k.matrix(), &s.xq, &mut s.k);
            lin.apply(&b.v.matrix(), &s.xq, &mut s.v);
            if let Some([bq, bk, bv]) = &b.qkv_bias {
                add_bias(&mut s.q, bq);
                add_bias(&mut s.k, bk);
                add_bias(&mut s.v, bv);
            }
            for i in 0..n {
                rope_heads(&mut s.q[i * qd..(i + 1) * qd], nh, hd, rope_dims, pos + i, &self.inv_freq, style);
                rope_heads(&mut s.k[i * kvd..(i + 1) * kvd], nkv, hd, rope_dims, pos + i, &self.inv_freq, style);
            }
            match &mut self.kv {
                KvCache::F32(layers) => attend(&mut layers[l], s, pos, n, nh, nkv, hd, scale),
                KvCache::F16(layers) => attend(&mut layers[l], s, pos, n, nh, nkv, hd, scale),
            }
            let lin = Linear::prepare(act, &s.att, n, &mut s.xq);
            lin.apply(&b.o.matrix(), &s.xq, &mut s.o);
            ops::add_assign(&mut s.x, &s.o);

            rmsnorm_rows(&s.x, b.ffn_norm.f32_slice().expect("checked at load"), eps, &mut s.h, d);
            let lin = Linear::prepare(act, &s.h, n, &mut s.xq);
            lin.apply(&b.gate.matrix(), &s.xq, &mut s.gate);
            lin.apply(&b.up.matrix(), &s.xq, &mut s.up);
            ops::silu_mul(&s.gate, &s.up, &mut s.act);
            let lin = Linear::prepare(act, &s.act, n, &mut s.xq);
            lin.apply(&b.down.matrix(), &s.xq, &mut s.o);
            ops::add_assign(&mut s.x, &s.o);
        }
        rmsnorm_rows(&s.x, &self.output_norm, eps, &mut s.h, d);
        Ok(())
    }

    /// Logits of the normed hidden rows `first..n` of the last chunk.
    fn head_logits(&mut self, first: usize, n: usize, out: &mut Vec<f32>) {
        let d = self.cfg.hidden_size as usize;
        let vocab = self.cfg.vocab_size as usize;
        let rows = n - first;
        let start = out.len();
        out.resize(start + rows * vocab, 0.0);
        let h = &self.s.h[first * d..n * d];
        let lin = Linear::prepare(self.opts.activations, h, rows, &mut self.s.xq);
        lin.apply(&self.head.matrix(), &self.s.xq, &mut out[start..]);
    }
}

/// A matrix product over `n` activation rows, in the engine's activation precision. For int8 the rows are
/// quantized once by `prepare` and reused by every matrix that reads them (q, k and v; gate and up). Rows whose
/// width is not a whole number of q8 groups (a model whose matrices are stored f16 for that reason) take the
/// float path.
struct Linear<'a> {
    x: &'a [f32],
    n: usize,
    int8: bool,
}

impl<'a> Linear<'a> {
    fn prepare(act: Activations, x: &'a [f32], n: usize, xq: &mut Q8Activations) -> Linear<'a> {
        let width = x.len() / n.max(1);
        let int8 = act == Activations::Int8 && width % kernels_cpu::GROUP == 0;
        if int8 {
            xq.quantize_into(x, n);
        }
        Linear { x, n, int8 }
    }

    fn apply(&self, m: &Matrix, xq: &Q8Activations, y: &mut [f32]) {
        match (self.int8, self.n) {
            (true, 1) => kernels_cpu::matvec_q8(m, xq, y),
            (true, n) => kernels_cpu::matmul_q8(m, xq, n, y),
            (false, 1) => kernels_cpu::matvec(m, self.x, y),
            (false, n) => kernels_cpu::matmul(m, self.x, n, y),
        }
    }
}

fn rmsnorm_rows(x: &[f32], w: &[f32], eps: f32, out: &mut [f32], d: usize) {
    for (xr, or) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
        ops::rmsnorm(xr, w, eps, or);
    }
}

fn add_bias(x: &mut [f32], bias: &[f32]) {
    for row in x.chunks_exact_mut(bias.len()) {
        ops::add_assign(row, bias);
    }
}

/// RoPE on the first `dims` values of every head (partial rotary embedding when `dims < head_dim`).
fn rope_heads(
    x: &mut [f32],
    heads: usize,
    hd: usize,
    dims: usize,
    pos: usize,
    inv_freq: &[f32],
    style: ops::RopeStyle,
) {
    if dims == hd {
        ops::rope(x, heads, hd, pos, inv_freq, style);
    } else {
        for head in x.chunks_exact_mut(hd) {
            ops::rope(&mut head[..dims], 1, dims, pos, inv_freq, style);
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn attend<E: KvElem>(
    cache: &mut (Vec<E>, Vec<E>),
    s: &mut Scratch,
    pos: usize,
    n: usize,
    nh: usize,
    nkv: usize,
    hd: usize,
    scale: f32,
) {
    let kvd = nkv * hd;
    for i in 0..n {
        kernels_cpu::kv_store(&mut cache.0, pos + i, &s.k[i * kvd..(i + 1) * kvd]);
        kernels_cpu::kv_store(&mut cache.1, pos + i, &s.v[i * kvd..(i + 1) * kvd]);
    }
    kernels_cpu::attention(&s.q, &cache.0, &cache.1, pos, n, nh, nkv, hd, scale, &mut s.att);
}

fn thread_pool(threads: usize) -> Result<std::sync::Arc<rayon::ThreadPool>> {
    #[cfg(target_arch = "wasm32")]
    {
        // wasm32-unknown-unknown cannot start threads, so the pool's one worker is the current thread. Rayon
        // makes a thread a worker only once, so every engine shares that pool.
        let _ = threads;
        thread_local! {
            static POOL: std::cell::OnceCell<std::sync::Arc<rayon::ThreadPool>> = const { std::cell::OnceCell::new() };
        }
        POOL.with(|cell| {
            if let Some(pool) = cell.get() {
                return Ok(pool.clone());
            }
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(1)
                .use_current_thread()
                .build()
                .map_err(|e| Error::Unsupported(format!("cannot run the CPU engine on this thread: {e}")))?;
            Ok(cell.get_or_init(|| std::sync::Arc::new(pool)).clone())
        })
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        // More threads than cores only adds contention (and thousands would exhaust the system): cap them.
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let threads = if threads > cores {
            log::warn!("--threads {threads} is more than this machine's {cores} cores: using {cores}");
            cores
        } else {
            threads
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .map_err(|e| Error::Usage(format!("cannot start {threads} threads: {e}")))?;
        Ok(std::sync::Arc::new(pool))
    }
}

impl Engine for CpuEngine {
    fn describe(&self) -> String {
        format!(
            "cpu ({}, {} threads, {:?} activations)",
            kernels_cpu::isa::detect().name(),
            self.pool.current_num_threads(),
            self.opts.activations
        )
    }

    fn context_length(&self) -> usize {
        self.opts.context_length
    }

    fn forward(&mut self, ids: &[u32], pos: usize, logits: Logits) -> Result<Vec<f32>> {
        let end = pos + ids.len();
        if end > self.opts.context_length {
            return Err(Error::Usage(format!(
                "{end} tokens do not fit the context of {} (raise --ctx, up to the model's {})",
                self.opts.context_length, self.cfg.context_length
            )));
        }
        let pool = self.pool.clone();
        pool.install(|| {
            let mut out = Vec::new();
            let chunks: Vec<&[u32]> = ids.chunks(self.opts.max_batch.max(1)).collect();
            let mut at = pos;
            for (c, chunk) in chunks.iter().enumerate() {
                self.forward_chunk(chunk, at)?;
                let last = c + 1 == chunks.len();
                match logits {
                    Logits::All => self.head_logits(0, chunk.len(), &mut out),
                    Logits::Last if last => self.head_logits(chunk.len() - 1, chunk.len(), &mut out),
                    _ => {}
                }
                at += chunk.len();
            }
            Ok(out)
        })
    }
}
