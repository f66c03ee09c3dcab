//! The CPU engine: the transformer forward pass over `kernels-cpu`, reading weights straight from the mapped
//! layer files. It is also the reference the GPU engine is tested against.

use super::lora::{self, ActiveAdapter, MatLoras};
use super::{Activations, Engine, KvBlocks, KvType, Logits, OpSpan, SeqChunk, WeightRef, KV_BLOCK_TOKENS};
use crate::arch::{self, Buf, Op, Program, QkPart};
use crate::error::{Error, Result};
use crate::format::ModelDir;
use crate::graph::{Activation, Norm, RopeStyle, Transformer};
use half::f16;
use kernels_cpu::{ops, KvElem, KvQ8, Matrix, Pages, Q8Activations};

mod moe;

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
    /// Positions the KV cache holds over all sequences ([`Engine::forward_batch`]); 0 or less than
    /// `context_length`: one context's worth.
    pub kv_tokens: usize,
}

/// A norm with its weights read into f32.
struct LoadedNorm {
    layer: bool,
    weight: Vec<f32>,
    bias: Option<Vec<f32>>,
    eps: f32,
}

impl LoadedNorm {
    fn load(dir: &ModelDir, n: &arch::NormOp, width: u32) -> Result<LoadedNorm> {
        let bias = n.bias.as_ref().map(|b| WeightRef::load(dir, b, &[width])).transpose()?;
        Ok(LoadedNorm {
            layer: matches!(n.kind, Norm::LayerNorm { .. }),
            weight: WeightRef::load(dir, &n.weight, &[width])?.to_f32(),
            bias: bias.map(|b| b.to_f32()),
            eps: n.eps(),
        })
    }

    /// Normalises each row of `width` values of `x` into `out`.
    fn rows(&self, x: &[f32], out: &mut [f32]) {
        let w = self.weight.len();
        for (xr, or) in x.chunks_exact(w).zip(out.chunks_exact_mut(w)) {
            match self.layer {
                false => ops::rmsnorm(xr, &self.weight, self.eps, or),
                true => ops::layernorm(xr, &self.weight, self.bias.as_deref(), self.eps, or),
            }
        }
    }
}

/// An op of the program with its weights mapped.
enum Step {
    Linear {
        input: Buf,
        norm: Option<LoadedNorm>,
        mats: Vec<(WeightRef, Option<Vec<f32>>)>,
        output: Buf,
        add: bool,
        /// The active adapters' matrices of each of `mats` (see [`CpuEngine::set_adapters`]).
        loras: Vec<MatLoras>,
    },
    HeadNorm {
        offset: usize,
        heads: usize,
        norm: LoadedNorm,
    },
    RopeStore {
        rope: usize,
    },
    Attention {
        window: Option<usize>,
    },
    Glu {
        act: Activation,
    },
    Activation {
        buf: Buf,
        act: Activation,
    },
    Norm {
        buf: Buf,
        norm: LoadedNorm,
    },
    Add {
        from: Buf,
        to: Buf,
    },
    MoeRoute {
        norm: LoadedNorm,
        router: WeightRef,
        top_k: usize,
    },
    /// Each expert's gate, up and down.
    Experts {
        act: Activation,
        experts: Vec<[WeightRef; 3]>,
    },
}

impl Step {
    fn lower(dir: &ModelDir, p: &Program, op: &Op) -> Result<Step> {
        let h = p.heads;
        Ok(match op {
            Op::Linear { input, norm, mats, output, add } => Step::Linear {
                input: *input,
                norm: norm.as_ref().map(|n| LoadedNorm::load(dir, n, p.width(*input))).transpose()?,
                mats: mats
                    .iter()
                    .map(|m| {
                        let bias = m.bias.as_ref().map(|b| WeightRef::load(dir, b, &[m.rows])).transpose()?;
                        Ok((WeightRef::load(dir, &m.weight, &[m.rows, m.cols])?, bias.map(|b| b.to_f32())))
                    })
                    .collect::<Result<_>>()?,
                output: *output,
                add: *add,
                loras: vec![Vec::new(); mats.len()],
            },
            Op::HeadNorm { part, norm } => {
                let (offset, heads) = match part {
                    QkPart::Q => (0, h.n_heads),
                    QkPart::K => (h.q_dim(), h.n_kv),
                };
                Step::HeadNorm {
                    offset: offset as usize,
                    heads: heads as usize,
                    norm: LoadedNorm::load(dir, norm, h.head_dim)?,
                }
            }
            Op::RopeStore { rope } => Step::RopeStore { rope: *rope },
            Op::Attention { window } => Step::Attention { window: window.map(|w| w as usize) },
            Op::Glu { act } => Step::Glu { act: *act },
            Op::Activation { buf, act } => Step::Activation { buf: *buf, act: *act },
            Op::Norm { buf, norm } => Step::Norm { buf: *buf, norm: LoadedNorm::load(dir, norm, p.width(*buf))? },
            Op::Add { from, to } => Step::Add { from: *from, to: *to },
            Op::MoeRoute { norm, router, top_k } => Step::MoeRoute {
                norm: LoadedNorm::load(dir, norm, p.hidden)?,
                router: WeightRef::load(dir, &router.weight, &[router.rows, router.cols])?,
                top_k: *top_k as usize,
            },
            Op::Experts { act, experts } => Step::Experts {
                act: *act,
                experts: experts
                    .iter()
                    .map(|e| {
                        let load = |m: &arch::Mat| WeightRef::load(dir, &m.weight, &[m.rows, m.cols]);
                        Ok([load(&e.gate)?, load(&e.up)?, load(&e.down)?])
                    })
                    .collect::<Result<_>>()?,
            },
        })
    }
}

/// Per-layer K and V caches, `[blocks * KV_BLOCK_TOKENS, kv_dim]` each: a sequence's positions live in the
/// blocks its table names.
enum KvCache {
    F32(Vec<(Vec<f32>, Vec<f32>)>),
    F16(Vec<(Vec<f16>, Vec<f16>)>),
    /// Rows of `kv_dim / 32` q8_0 blocks.
    Q8(Vec<(Vec<KvQ8>, Vec<KvQ8>)>),
}

impl KvCache {
    /// `layers` pairs of zeroed caches of `values` values each.
    fn new(ty: KvType, layers: usize, values: usize) -> KvCache {
        fn zeroed<E: KvElem>(layers: usize, values: usize) -> Vec<(Vec<E>, Vec<E>)> {
            let n = values / E::VALUES;
            (0..layers).map(|_| (vec![E::ZERO; n], vec![E::ZERO; n])).collect()
        }
        match ty {
            KvType::F32 => KvCache::F32(zeroed(layers, values)),
            KvType::F16 => KvCache::F16(zeroed(layers, values)),
            KvType::Q8 => KvCache::Q8(zeroed(layers, values)),
        }
    }
}

/// Reusable activation buffers, sized for `max_batch` tokens: the program's buffers, the normed input of a
/// linear op, one matrix's output, and the quantized activations.
#[derive(Default)]
struct Scratch {
    bufs: [Vec<f32>; Buf::ALL.len()],
    normed: Vec<f32>,
    part: Vec<f32>,
    xq: Q8Activations,
    /// An expert's tokens (row, route weight) and its gathered input, gate, up and output rows.
    moe_rows: Vec<(usize, f32)>,
    moe: [Vec<f32>; 4],
    /// An adapter's `A x` and `B (A x)`.
    lora_t: Vec<f32>,
    lora_y: Vec<f32>,
}

pub struct CpuEngine {
    program: Program,
    context_limit: u32,
    opts: CpuOptions,
    pool: std::sync::Arc<rayon::ThreadPool>,
    embed: WeightRef,
    /// Learned position embeddings `[context, hidden]` (gpt2).
    positions: Option<WeightRef>,
    final_norm: LoadedNorm,
    head: WeightRef,
    blocks: Vec<Vec<Step>>,
    kv: KvCache,
    kv_blocks: usize,
    s: Scratch,
    /// Each block's op labels, for the per-op timeline.
    labels: Vec<Vec<String>>,
    trace: Option<OpTrace>,
}

/// The per-op timeline being recorded.
struct OpTrace {
    t0: std::time::Instant,
    spans: Vec<OpSpan>,
}

impl OpTrace {
    /// The time now when a timeline is being recorded (no clock is read otherwise: `Instant` is not
    /// available everywhere this engine runs).
    fn mark(trace: &Option<OpTrace>) -> Option<std::time::Instant> {
        trace.as_ref().map(|_| std::time::Instant::now())
    }

    /// Records `name` from `start` (a [`OpTrace::mark`]) to now.
    fn record(
        trace: &mut Option<OpTrace>,
        name: impl FnOnce() -> String,
        block: Option<usize>,
        start: Option<std::time::Instant>,
        tokens: usize,
    ) {
        if let (Some(t), Some(start)) = (trace, start) {
            let end = std::time::Instant::now();
            let start_us = start.duration_since(t.t0).as_secs_f64() * 1e6;
            let dur_us = end.duration_since(start).as_secs_f64() * 1e6;
            t.spans.push(OpSpan { name: name(), block, start_us, dur_us, tokens });
        }
    }
}

/// One sequence's rows of a forward chunk: rows `start..start + len` at positions `pos..`, in cache `blocks`.
struct Seg<'a> {
    start: usize,
    len: usize,
    pos: usize,
    blocks: &'a [u32],
}

impl Seg<'_> {
    fn pages(&self) -> Pages<'_> {
        Pages { table: self.blocks, block_tokens: KV_BLOCK_TOKENS }
    }
}

impl CpuEngine {
    pub fn load(dir: &ModelDir, cfg: &Transformer, opts: CpuOptions) -> Result<CpuEngine> {
        let pool = thread_pool(opts.threads)?;
        let program = arch::program(cfg)?;
        let p = &program;
        let blocks = p
            .blocks
            .iter()
            .map(|b| b.ops.iter().map(|op| Step::lower(dir, p, op)).collect::<Result<Vec<_>>>())
            .collect::<Result<Vec<_>>>()?;
        let ctx = opts.context_length;
        let kv_blocks = opts.kv_tokens.max(ctx).div_ceil(KV_BLOCK_TOKENS);
        let labels = p.blocks.iter().map(|b| b.ops.iter().map(Op::label).collect()).collect();
        let kv_rows = kv_blocks * KV_BLOCK_TOKENS;
        let kvd = p.heads.kv_dim() as usize;
        opts.kv.check_head_dim(p.heads.head_dim)?;
        let kv_bytes = 2 * blocks.len() as u64 * opts.kv.bytes(kv_rows as u64 * kvd as u64);
        super::check_host_alloc(&format!("a KV cache of {kv_rows} tokens"), kv_bytes, "lower --ctx")?;
        let kv = KvCache::new(opts.kv, blocks.len(), kv_rows * kvd);
        Ok(CpuEngine {
            embed: WeightRef::load(dir, &p.embedding, &[p.vocab, p.hidden])?,
            positions: p
                .position_embedding
                .as_ref()
                .map(|name| WeightRef::load(dir, name, &[cfg.context_length, p.hidden]))
                .transpose()?,
            final_norm: LoadedNorm::load(dir, &p.final_norm, p.hidden)?,
            head: WeightRef::load(dir, &p.head, &[p.vocab, p.hidden])?,
            context_limit: cfg.context_length,
            program,
            opts,
            pool,
            blocks,
            kv,
            kv_blocks,
            s: Scratch::default(),
            labels,
            trace: None,
        })
    }

    /// Runs one chunk of at most `max_batch` tokens, the rows of the sequences `segs`, leaving its final normed
    /// hidden states `[n, d]` in `s.normed`.
    fn forward_chunk(&mut self, ids: &[u32], segs: &[Seg]) -> Result<()> {
        let n = ids.len();
        let started = OpTrace::mark(&self.trace);
        let p = &self.program;
        let d = p.hidden as usize;
        let s = &mut self.s;
        for buf in p.buffers() {
            s.bufs[buf as usize].resize(n * p.width(buf) as usize, 0.0);
        }
        let x = &mut s.bufs[Buf::Hidden as usize];
        let embed = self.embed.matrix();
        for (row, &id) in x.chunks_exact_mut(d).zip(ids) {
            if id >= p.vocab {
                return Err(Error::Usage(format!("token id {id} is outside the vocabulary ({})", p.vocab)));
            }
            embed.dequant_row(id as usize, row);
            if let Some(scale) = p.embed_scale {
                row.iter_mut().for_each(|v| *v *= scale);
            }
        }
        if let Some(table) = &self.positions {
            let (table, mut pos_row) = (table.matrix(), vec![0f32; d]);
            let mut rows = x.chunks_exact_mut(d);
            for seg in segs {
                for (pos, row) in (seg.pos..).zip(rows.by_ref().take(seg.len)) {
                    if pos >= self.context_limit as usize {
                        return Err(Error::Usage(format!(
                            "position {pos} is past the model's {} learned positions",
                            self.context_limit
                        )));
                    }
                    table.dequant_row(pos, &mut pos_row);
                    ops::add_assign(row, &pos_row);
                }
            }
        }
        OpTrace::record(&mut self.trace, || "embed".into(), None, started, n);
        let act = self.opts.activations;
        for (l, steps) in self.blocks.iter().enumerate() {
            for (i, step) in steps.iter().enumerate() {
                let start = OpTrace::mark(&self.trace);
                run_step(p, step, act, s, &mut self.kv, l, segs, n);
                OpTrace::record(&mut self.trace, || format!("blk.{l} {}", self.labels[l][i]), Some(l), start, n);
            }
        }
        let start = OpTrace::mark(&self.trace);
        let x = &s.bufs[Buf::Hidden as usize];
        s.normed.resize(x.len(), 0.0);
        self.final_norm.rows(x, &mut s.normed);
        OpTrace::record(&mut self.trace, || "final_norm".into(), None, start, n);
        Ok(())
    }

    /// Logits of the normed hidden rows `first..n` of the last chunk.
    fn head_logits(&mut self, first: usize, n: usize, out: &mut Vec<f32>) {
        let start = OpTrace::mark(&self.trace);
        let d = self.program.hidden as usize;
        let h = &self.s.normed[first * d..n * d];
        head_rows(&self.head, self.program.vocab as usize, self.opts.activations, h, n - first, &mut self.s.xq, out);
        OpTrace::record(&mut self.trace, || "head".into(), None, start, n - first);
    }

    /// The cache blocks `0, 1, ..` that [`Engine::forward`]'s one sequence uses.
    fn own_blocks(&self) -> Vec<u32> {
        (0..self.opts.context_length.div_ceil(KV_BLOCK_TOKENS) as u32).collect()
    }
}

/// Appends the logits of the `rows` hidden rows `h` to `out`.
fn head_rows(
    head: &WeightRef,
    vocab: usize,
    act: Activations,
    h: &[f32],
    rows: usize,
    xq: &mut Q8Activations,
    out: &mut Vec<f32>,
) {
    let start = out.len();
    out.resize(start + rows * vocab, 0.0);
    let lin = Linear::prepare(act, h, rows, xq);
    lin.apply(&head.matrix(), xq, &mut out[start..]);
}

/// Runs one op of block `l` over the chunk's `n` tokens, the rows of the sequences `segs`.
#[allow(clippy::too_many_arguments)]
fn run_step(
    p: &Program,
    step: &Step,
    act: Activations,
    s: &mut Scratch,
    kv: &mut KvCache,
    l: usize,
    segs: &[Seg],
    n: usize,
) {
    let h = p.heads;
    let (nh, nkv, hd) = (h.n_heads as usize, h.n_kv as usize, h.head_dim as usize);
    let (qd, kvd) = (nh * hd, nkv * hd);
    match step {
        Step::Linear { input, norm, mats, output, add, loras } => {
            // The output is taken out of the scratch while the input (another buffer) is read.
            let mut out = std::mem::take(&mut s.bufs[*output as usize]);
            let x = &s.bufs[*input as usize];
            let x = match norm {
                Some(nm) => {
                    s.normed.resize(x.len(), 0.0);
                    nm.rows(x, &mut s.normed);
                    &s.normed
                }
                None => x,
            };
            let lin = Linear::prepare(act, x, n, &mut s.xq);
            linear(&lin, mats, *add, n, &s.xq, &mut s.part, &mut out);
            let rows = |m: &WeightRef| m.view().entry.shape[0] as usize;
            if n == 1 && loras.iter().filter(|l| !l.is_empty()).count() > 1 {
                // Decode: each matrix's update lands in its own columns and is too small to split, so the
                // adapted matrices of the op (q, k, v; gate, up) run side by side rather than one after
                // another on one core.
                use rayon::prelude::*;
                let (mut pieces, mut rest) = (Vec::new(), &mut out[..]);
                for ((m, _), mat_loras) in mats.iter().zip(loras) {
                    let (piece, tail) = std::mem::take(&mut rest).split_at_mut(rows(m));
                    rest = tail;
                    if !mat_loras.is_empty() {
                        pieces.push((piece, mat_loras));
                    }
                }
                pieces.into_par_iter().for_each(|(piece, mat_loras)| {
                    let (mut t, mut y) = (Vec::new(), Vec::new());
                    for (lora, scale) in mat_loras {
                        lora::apply_cpu(lora, *scale, x, 1, 0, piece.len(), &mut t, &mut y, piece);
                    }
                });
            } else {
                let (width, mut col) = (out.len() / n.max(1), 0);
                for ((m, _), mat_loras) in mats.iter().zip(loras) {
                    for (lora, scale) in mat_loras {
                        lora::apply_cpu(lora, *scale, x, n, col, width, &mut s.lora_t, &mut s.lora_y, &mut out);
                    }
                    col += rows(m);
                }
            }
            s.bufs[*output as usize] = out;
        }
        Step::HeadNorm { offset, heads, norm } => {
            let qkv = &mut s.bufs[Buf::Qkv as usize];
            let mut tmp = vec![0f32; hd];
            for row in qkv.chunks_exact_mut(qd + 2 * kvd) {
                for head in row[*offset..offset + heads * hd].chunks_exact_mut(hd) {
                    norm.rows(head, &mut tmp);
                    head.copy_from_slice(&tmp);
                }
            }
        }
        Step::RopeStore { rope } => {
            let r = &p.ropes[*rope];
            let style = match r.style {
                RopeStyle::Interleaved => ops::RopeStyle::Interleaved,
                RopeStyle::Half => ops::RopeStyle::Half,
            };
            let (qkv, q) = two_mut(&mut s.bufs, Buf::Qkv as usize, Buf::Q as usize);
            let mut rows = qkv.chunks_exact_mut(qd + 2 * kvd).zip(q.chunks_exact_mut(qd));
            for seg in segs {
                for (i, (row, qrow)) in rows.by_ref().take(seg.len).enumerate() {
                    let pos = seg.pos + i;
                    qrow.copy_from_slice(&row[..qd]);
                    rope_heads(qrow, nh, hd, r.dims as usize, pos, &r.inv_freq, style);
                    rope_heads(&mut row[qd..qd + kvd], nkv, hd, r.dims as usize, pos, &r.inv_freq, style);
                    let (k, v) = (&row[qd..qd + kvd], &row[qd + kvd..]);
                    let at = Pages::row(Some(seg.pages()), pos);
                    match kv {
                        KvCache::F32(layers) => store(&mut layers[l], at, k, v),
                        KvCache::F16(layers) => store(&mut layers[l], at, k, v),
                        KvCache::Q8(layers) => store(&mut layers[l], at, k, v),
                    }
                }
            }
        }
        Step::Attention { window } => {
            let (q, att) = two_mut(&mut s.bufs, Buf::Q as usize, Buf::Attn as usize);
            match kv {
                KvCache::F32(layers) => attend(p, segs, q, &layers[l], *window, att),
                KvCache::F16(layers) => attend(p, segs, q, &layers[l], *window, att),
                KvCache::Q8(layers) => attend(p, segs, q, &layers[l], *window, att),
            }
        }
        Step::Glu { act } => {
            let f = p.ffn as usize;
            let (gu, out) = two_mut(&mut s.bufs, Buf::GateUp as usize, Buf::Act as usize);
            for (g, o) in gu.chunks_exact(2 * f).zip(out.chunks_exact_mut(f)) {
                let (gate, up) = g.split_at(f);
                match act {
                    Activation::Silu => ops::silu_mul(gate, up, o),
                    Activation::Gelu => {
                        o.copy_from_slice(gate);
                        ops::gelu(o);
                        o.iter_mut().zip(up).for_each(|(a, &u)| *a *= u);
                    }
                }
            }
        }
        Step::Activation { buf, act } => {
            let x = &mut s.bufs[*buf as usize];
            match act {
                Activation::Silu => ops::silu(x),
                Activation::Gelu => ops::gelu(x),
            }
        }
        Step::Norm { buf, norm } => {
            let x = &mut s.bufs[*buf as usize];
            s.normed.resize(x.len(), 0.0);
            norm.rows(x, &mut s.normed);
            x.copy_from_slice(&s.normed);
        }
        Step::Add { from, to } => {
            let (a, b) = two_mut(&mut s.bufs, *to as usize, *from as usize);
            ops::add_assign(a, b);
        }
        Step::MoeRoute { norm, router, top_k } => {
            let (x, normed) = two_mut(&mut s.bufs, Buf::Hidden as usize, Buf::MoeIn as usize);
            norm.rows(x, normed);
            let experts = router.view().entry.shape[0] as usize;
            let (normed, route) = two_mut(&mut s.bufs, Buf::MoeIn as usize, Buf::Route as usize);
            Linear::prepare(act, normed, n, &mut s.xq).apply(&router.matrix(), &s.xq, route);
            route.chunks_exact_mut(experts).take(n).for_each(|row| ops::route(row, *top_k));
        }
        Step::Experts { act: glu, experts } => {
            let mut x = std::mem::take(&mut s.bufs[Buf::Hidden as usize]);
            moe::run_experts(p, experts, *glu, act, s, n, &mut x);
            s.bufs[Buf::Hidden as usize] = x;
        }
    }
}

/// `out = x @ [m0 | m1 | ..]^T + biases` (or `out +=` with `add`), each output row the matrices' rows side by
/// side. A lone matrix stored writes straight into `out`; otherwise each goes through `part`.
fn linear(
    lin: &Linear,
    mats: &[(WeightRef, Option<Vec<f32>>)],
    add: bool,
    n: usize,
    xq: &Q8Activations,
    part: &mut Vec<f32>,
    out: &mut [f32],
) {
    if let ([(m, bias)], false) = (mats, add) {
        lin.apply(&m.matrix(), xq, out);
        if let Some(b) = bias {
            add_bias(out, b);
        }
        return;
    }
    let width = out.len() / n.max(1);
    let mut col = 0;
    for (m, bias) in mats {
        let rows = m.view().entry.shape[0] as usize;
        part.resize(n * rows, 0.0);
        lin.apply(&m.matrix(), xq, part);
        if let Some(b) = bias {
            add_bias(part, b);
        }
        for (src, dst) in part.chunks_exact(rows).zip(out.chunks_exact_mut(width)) {
            let dst = &mut dst[col..col + rows];
            match add {
                true => ops::add_assign(dst, src),
                false => dst.copy_from_slice(src),
            }
        }
        col += rows;
    }
}

/// Two distinct buffers of the scratch, both writable.
fn two_mut(bufs: &mut [Vec<f32>], a: usize, b: usize) -> (&mut Vec<f32>, &mut Vec<f32>) {
    assert_ne!(a, b, "two_mut: one buffer twice");
    if a < b {
        let (lo, hi) = bufs.split_at_mut(b);
        (&mut lo[a], &mut hi[0])
    } else {
        let (lo, hi) = bufs.split_at_mut(a);
        (&mut hi[0], &mut lo[b])
    }
}

fn store<E: KvElem>(cache: &mut (Vec<E>, Vec<E>), row: usize, k: &[f32], v: &[f32]) {
    kernels_cpu::kv_store(&mut cache.0, row, k);
    kernels_cpu::kv_store(&mut cache.1, row, v);
}

/// Attention of each sequence's query rows over its own cache blocks; several sequences (a decode batch) run
/// side by side.
fn attend<E: KvElem>(
    p: &Program,
    segs: &[Seg],
    q: &[f32],
    cache: &(Vec<E>, Vec<E>),
    window: Option<usize>,
    att: &mut [f32],
) {
    use rayon::prelude::*;
    let h = p.heads;
    let (nh, nkv, hd) = (h.n_heads as usize, h.n_kv as usize, h.head_dim as usize);
    let qd = nh * hd;
    let isa = kernels_cpu::isa::detect();
    let mut outs = Vec::with_capacity(segs.len());
    let mut rest = att;
    for seg in segs {
        let (o, r) = rest.split_at_mut(seg.len * qd);
        outs.push(o);
        rest = r;
    }
    let run = |(seg, o): (&Seg, &mut &mut [f32])| {
        let q = &q[seg.start * qd..(seg.start + seg.len) * qd];
        let (kc, vc) = cache;
        let pages = Some(seg.pages());
        let scale = p.attention_scale;
        kernels_cpu::attention::attention_paged_with(
            isa, q, kc, vc, pages, seg.pos, seg.len, nh, nkv, hd, scale, window, o,
        )
    };
    match segs.len() {
        1 => run((&segs[0], &mut outs[0])),
        _ => segs.par_iter().zip(outs.par_iter_mut()).for_each(run),
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
        let int8 = act == Activations::Int8 && width.is_multiple_of(kernels_cpu::GROUP);
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
    if dims == 0 {
        return;
    }
    if dims == hd {
        ops::rope(x, heads, hd, pos, inv_freq, style);
    } else {
        for head in x.chunks_exact_mut(hd) {
            ops::rope(&mut head[..dims], 1, dims, pos, inv_freq, style);
        }
    }
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
            "cpu ({}, {} threads, {:?} activations, {} KV cache)",
            kernels_cpu::isa::detect().name(),
            self.pool.current_num_threads(),
            self.opts.activations,
            self.opts.kv.name()
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
                self.opts.context_length, self.context_limit
            )));
        }
        let pool = self.pool.clone();
        let blocks = self.own_blocks();
        pool.install(|| {
            let mut out = Vec::new();
            let chunks: Vec<&[u32]> = ids.chunks(self.opts.max_batch.max(1)).collect();
            let mut at = pos;
            for (c, chunk) in chunks.iter().enumerate() {
                self.forward_chunk(chunk, &[Seg { start: 0, len: chunk.len(), pos: at, blocks: &blocks }])?;
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

    fn trace_ops(&mut self, on: bool) -> bool {
        self.trace = on.then(|| OpTrace { t0: std::time::Instant::now(), spans: Vec::new() });
        true
    }

    fn take_op_spans(&mut self) -> Vec<OpSpan> {
        self.trace.as_mut().map(|t| std::mem::take(&mut t.spans)).unwrap_or_default()
    }

    fn set_adapters(&mut self, active: &[ActiveAdapter]) -> Result<()> {
        let linear_mats = |steps: &Vec<Step>| -> Vec<String> {
            let mut names = Vec::new();
            for step in steps {
                if let Step::Linear { mats, .. } = step {
                    names.extend(mats.iter().map(|(m, _)| m.name().to_string()));
                }
            }
            names
        };
        let names: Vec<String> = self.blocks.iter().flat_map(linear_mats).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut resolved = lora::resolve(active, &refs)?.into_iter();
        for step in self.blocks.iter_mut().flatten() {
            if let Step::Linear { loras, .. } = step {
                for slot in loras.iter_mut() {
                    *slot = resolved.next().expect("one entry per matrix");
                }
            }
        }
        Ok(())
    }

    fn kv_blocks(&self) -> Option<KvBlocks> {
        Some(KvBlocks { blocks: self.kv_blocks, max_batch: self.opts.max_batch.max(1) })
    }

    fn forward_batch(&mut self, seqs: &[SeqChunk]) -> Result<Vec<f32>> {
        let kv = self.kv_blocks().expect("the CPU engine has a paged cache");
        super::check_batch(seqs, kv, self.program.vocab, self.opts.context_length)?;
        let ids: Vec<u32> = seqs.iter().flat_map(|s| s.ids.iter().copied()).collect();
        let mut segs = Vec::with_capacity(seqs.len());
        let mut start = 0;
        for s in seqs {
            segs.push(Seg { start, len: s.ids.len(), pos: s.pos, blocks: s.blocks });
            start += s.ids.len();
        }
        let pool = self.pool.clone();
        pool.install(|| {
            if ids.is_empty() {
                return Ok(Vec::new());
            }
            self.forward_chunk(&ids, &segs)?;
            // The last row of each chunk that asks for logits, gathered.
            let d = self.program.hidden as usize;
            let mut h = Vec::new();
            for (seg, _) in segs.iter().zip(seqs).filter(|(_, s)| s.logits) {
                let last = seg.start + seg.len - 1;
                h.extend_from_slice(&self.s.normed[last * d..(last + 1) * d]);
            }
            let mut out = Vec::new();
            let rows = h.len() / d;
            if rows > 0 {
                head_rows(
                    &self.head,
                    self.program.vocab as usize,
                    self.opts.activations,
                    &h,
                    rows,
                    &mut self.s.xq,
                    &mut out,
                );
            }
            Ok(out)
        })
    }
}
