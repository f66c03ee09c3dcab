//! The small ops: embedding gather, RoPE with the KV store, RMS norm, element-wise add and SwiGLU, and the
//! samplers (argmax, and sampling at a temperature with top-k, top-p and min-p).

use super::kv::{self, KvCache};
use crate::backend::gpu::buffers::GpuBuffer;
use crate::backend::gpu::context::{Dispatch, GpuContext, Grid, Region};
use crate::backend::gpu::pipelines::{
    Kernel, ADD_ASSIGN, ADD_POSITIONS, ADVANCE, ARGMAX, EMBED, GELU, GELU_MUL, LAYERNORM, RMSNORM, SAMPLE, SILU,
    SILU_MUL,
};
use crate::backend::gpu::weights::GpuMatrix;
use crate::error::{Error, Result};
use crate::graph::Activation;
use crate::sampling::SamplerOptions;
use bytemuck::{Pod, Zeroable};

pub(super) async fn dispatch<P: Pod>(
    ctx: &GpuContext,
    kernel: &Kernel,
    constants: &[(&'static str, f64)],
    params: &P,
    resources: &[wgpu::BindingResource<'_>],
    grid: Grid,
) -> Result<Dispatch> {
    let pipeline = ctx.pipelines.get(kernel, constants).await?;
    let params = ctx.pool.uniform(kernel.name, bytemuck::bytes_of(params))?;
    let mut all = vec![params.binding()];
    all.extend(resources.iter().cloned());
    let bind_group = ctx.bind(&pipeline, &all);
    Ok(Dispatch { pipeline, bind_group, grid, params: Some(params), indirect: None })
}

pub use crate::arch::Heads;

/// `out[i, :] = scale * E[ids[i], :]` for the chunk's `n` ids, dequantized from the embedding's layout.
pub async fn embed(
    ctx: &GpuContext,
    e: &GpuMatrix,
    scale: f32,
    step: &GpuBuffer,
    ids: &GpuBuffer,
    out: &GpuBuffer,
) -> Result<Dispatch> {
    let region = e.region();
    ctx.check_binding(&format!("embedding {}", e.name), &region)?;
    let [_, q, s, m] = e.words(&region);
    let p = [e.cols, q, s, m, scale.to_bits(), 0, 0, 0];
    let constants = [("LAYOUT", e.layout() as f64)];
    let res = [step.binding(), region.binding(), ids.binding(), out.binding()];
    dispatch(ctx, &EMBED, &constants, &p, &res, Grid::TokensY { x: e.cols.div_ceil(64) }).await
}

/// RoPE and the KV store: from `qkv` (`[n, q | k | v]`), the rotated q into `q` (`[n, q_dim]`), the rotated k
/// and the v rows into the caches at positions `pos..pos + n`, rounded to the cache's element type.
/// `cos_sin` is `[positions, dims / 2]` (cos, sin).
#[allow(clippy::too_many_arguments)]
pub async fn rope_store(
    ctx: &GpuContext,
    h: Heads,
    dims: u32,
    half_style: bool,
    step: &GpuBuffer,
    qkv: &GpuBuffer,
    cos_sin: &GpuBuffer,
    q: &GpuBuffer,
    cache: KvCache<'_>,
    seqmap: &GpuBuffer,
) -> Result<Dispatch> {
    // One thread per pair of values, a pair inside one head.
    if !h.head_dim.is_multiple_of(2) {
        return Err(Error::Unsupported(format!("RoPE and the KV store on the GPU: an odd head dim of {}", h.head_dim)));
    }
    let (qd, kvd) = (h.q_dim(), h.kv_dim());
    let p = [h.n_heads, h.n_kv, h.head_dim, dims, qd + 2 * kvd, qd, qd + kvd, 0];
    let constants = [("STYLE", half_style as u32 as f64)];
    let res = [
        step.binding(),
        qkv.binding(),
        cos_sin.binding(),
        q.binding(),
        cache.k.binding(),
        cache.v.binding(),
        seqmap.binding(),
    ];
    let grid = Grid::TokensY { x: (qd / 2 + kvd).div_ceil(64) };
    dispatch(ctx, kv::kernels(cache.ty).rope, &constants, &p, &res, grid).await
}

/// The cos/sin table of RoPE for positions `0..positions`: `theta = f32(pos) * inv_freq[i]` rounded to f32,
/// cos and sin evaluated in f64 and rounded, exactly as kernels-cpu's rope computes them.
pub fn cos_sin_table(inv_freq: &[f32], positions: usize) -> Vec<[f32; 2]> {
    let mut t = Vec::with_capacity(positions * inv_freq.len());
    for pos in 0..positions {
        for &f in inv_freq {
            let theta = (pos as f32 * f) as f64;
            t.push([theta.cos() as f32, theta.sin() as f32]);
        }
    }
    t
}

/// Where an in-place RMS norm applies: groups of `cols` values starting at `offset + g * cols` (g < `groups`)
/// in each token row of `stride` values.
#[derive(Clone, Copy, Debug)]
pub struct NormGroups {
    pub cols: u32,
    pub groups: u32,
    pub stride: u32,
    pub offset: u32,
}

/// RMS norm in place over `at`'s groups of each of the chunk's token rows of `x`, the weight (`cols` f32) at
/// byte `w_offset` of `weight`.
pub async fn rmsnorm(
    ctx: &GpuContext,
    at: NormGroups,
    eps: f32,
    step: &GpuBuffer,
    weight: Region<'_>,
    w_offset: u64,
    x: &GpuBuffer,
) -> Result<Dispatch> {
    let p = [at.cols, at.groups, at.stride, at.offset, weight.word(w_offset), eps.to_bits(), 0, 0];
    let res = [step.binding(), weight.binding(), x.binding()];
    dispatch(ctx, &RMSNORM, &[], &p, &res, Grid::TokensY { x: at.groups }).await
}

/// `out += b` over `rows` rows of `len` (`rows == 0`: the chunk's `n` rows).
pub async fn add_assign(
    ctx: &GpuContext,
    len: u32,
    rows: u32,
    step: &GpuBuffer,
    b: &GpuBuffer,
    out: &GpuBuffer,
) -> Result<Dispatch> {
    let res = [step.binding(), b.binding(), out.binding()];
    dispatch(ctx, &ADD_ASSIGN, &[], &[len, rows, 0, 0], &res, rows_grid(len, rows)).await
}

/// The gated activation `out[t, c] = act(gu[t, c]) * gu[t, up + c]` (SwiGLU, or GeGLU with GELU's tanh
/// approximation), `gu` rows of `stride` values, over `rows` rows of `len` (`rows == 0`: the chunk's `n` rows).
#[allow(clippy::too_many_arguments)]
pub async fn glu(
    ctx: &GpuContext,
    act: Activation,
    len: u32,
    rows: u32,
    stride: u32,
    up: u32,
    step: &GpuBuffer,
    gu: &GpuBuffer,
    out: &GpuBuffer,
) -> Result<Dispatch> {
    let kernel = match act {
        Activation::Silu => &SILU_MUL,
        Activation::Gelu => &GELU_MUL,
    };
    let res = [step.binding(), gu.binding(), gu.binding(), out.binding()];
    dispatch(ctx, kernel, &[], &[len, rows, stride, up], &res, rows_grid(len, rows)).await
}

/// `out = act(out)` in place over `rows` rows of `len` (`rows == 0`: the chunk's `n` rows).
pub async fn activation(
    ctx: &GpuContext,
    act: Activation,
    len: u32,
    rows: u32,
    step: &GpuBuffer,
    out: &GpuBuffer,
) -> Result<Dispatch> {
    let kernel = match act {
        Activation::Silu => &SILU,
        Activation::Gelu => &GELU,
    };
    dispatch(ctx, kernel, &[], &[len, rows, 0, 0], &[step.binding(), out.binding()], rows_grid(len, rows)).await
}

/// A LayerNorm's weight and optional bias (`cols` f32 each) at byte offsets of their regions.
pub struct LayerNormWeights<'a> {
    pub weight: (Region<'a>, u64),
    pub bias: Option<(Region<'a>, u64)>,
    pub eps: f32,
}

/// LayerNorm of each of the chunk's token rows of `x` (`cols` values, rows `x_stride` apart) into `y` (rows
/// `y_stride` apart).
#[allow(clippy::too_many_arguments)]
pub async fn layernorm(
    ctx: &GpuContext,
    cols: u32,
    x_stride: u32,
    y_stride: u32,
    w: &LayerNormWeights<'_>,
    step: &GpuBuffer,
    x: &GpuBuffer,
    y: &GpuBuffer,
) -> Result<Dispatch> {
    let (wr, w_at) = (&w.weight.0, w.weight.1);
    // Without a bias, the weight is bound in its place (the kernel does not read it).
    let (br, b_at) = w.bias.as_ref().map_or((wr, w_at), |(r, at)| (r, *at));
    let p = [cols, x_stride, y_stride, wr.word(w_at), br.word(b_at), w.eps.to_bits(), 0, 0];
    let constants = [("HAS_BIAS", w.bias.is_some() as u32 as f64)];
    let res = [step.binding(), wr.binding(), br.binding(), x.binding(), y.binding()];
    dispatch(ctx, &LAYERNORM, &constants, &p, &res, Grid::TokensY { x: 1 }).await
}

/// RMS norm of each of the chunk's token rows of `x` (`cols` values a row) into `y`, the weight (`cols` f32) at
/// byte `w_offset` of `weight`: for a norm whose output is read by several products after the rows of `x`
/// change (a mixture of experts' input), where a fused prologue would not do.
#[allow(clippy::too_many_arguments)]
pub async fn rmsnorm_into(
    ctx: &GpuContext,
    cols: u32,
    eps: f32,
    step: &GpuBuffer,
    weight: Region<'_>,
    w_offset: u64,
    x: &GpuBuffer,
    y: &GpuBuffer,
) -> Result<Dispatch> {
    let w = weight.word(w_offset);
    let p = [cols, cols, cols, w, w, eps.to_bits(), 0, 0];
    let constants = [("HAS_BIAS", 0.0), ("RMS", 1.0)];
    let res = [step.binding(), weight.binding(), weight.binding(), x.binding(), y.binding()];
    dispatch(ctx, &LAYERNORM, &constants, &p, &res, Grid::TokensY { x: 1 }).await
}

/// `x[t] += table[pos(t)]` for the chunk's token rows of `cols` values at their positions (one sequence's or,
/// paged, each row's own: shaders/pages.wgsl); `table` is `[positions, cols]` f32.
pub async fn add_positions(
    ctx: &GpuContext,
    cols: u32,
    step: &GpuBuffer,
    table: &GpuBuffer,
    x: &GpuBuffer,
    seqmap: &GpuBuffer,
) -> Result<Dispatch> {
    let res = [step.binding(), table.binding(), x.binding(), seqmap.binding()];
    dispatch(ctx, &ADD_POSITIONS, &[], &[cols, 0, 0, 0], &res, Grid::TokensY { x: cols.div_ceil(64) }).await
}

fn rows_grid(len: u32, rows: u32) -> Grid {
    if rows == 0 {
        Grid::TokensY { x: len.div_ceil(64) }
    } else {
        Grid::Fixed([len.div_ceil(64), rows, 1])
    }
}

/// The uniform block of both samplers (`Params` in shaders/sample.wgsl): which logits row, where the id goes,
/// and, for `sample`, the sampling settings and the number of the first draw.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub struct SampleParams {
    pub vocab: u32,
    pub row: u32,
    pub slot: u32,
    /// 0: off.
    pub top_k: u32,
    pub temperature: f32,
    /// 1: off.
    pub top_p: f32,
    /// 0: off.
    pub min_p: f32,
    /// The draw number of step `k = 0`; step `k` draws number `draw + k`.
    pub draw: u32,
    /// The seed's low and high halves.
    pub seed: [u32; 2],
    pub _pad: [u32; 2],
}

impl SampleParams {
    /// Greedy: the argmax of logits row `row` into `tokens[slot + k]`.
    pub fn greedy(vocab: u32, row: u32, slot: u32) -> SampleParams {
        SampleParams { vocab, row, slot, ..Default::default() }
    }

    /// The sampler's settings (temperature > 0; the repetition penalty is not the kernel's) for draws
    /// `draw, draw + 1, ...` from logits row `row`, into `tokens[slot + k]`.
    pub fn new(vocab: u32, row: u32, slot: u32, opts: &SamplerOptions, draw: u32) -> SampleParams {
        // top-k at or past the vocabulary keeps everything: off, which saves its passes.
        let top_k = if opts.top_k < vocab as usize { opts.top_k as u32 } else { 0 };
        SampleParams {
            vocab,
            row,
            slot,
            top_k,
            temperature: opts.temperature,
            top_p: opts.top_p,
            min_p: opts.min_p,
            draw,
            seed: [opts.seed as u32, (opts.seed >> 32) as u32],
            _pad: [0; 2],
        }
    }
}

/// Greedy sampling: the argmax of logits row `row` into `ids[0]` and `tokens[slot + k]` (`k` the step
/// buffer's step counter).
#[allow(clippy::too_many_arguments)]
pub async fn argmax(
    ctx: &GpuContext,
    vocab: u32,
    row: u32,
    slot: u32,
    step: &GpuBuffer,
    logits: &GpuBuffer,
    ids: &GpuBuffer,
    tokens: &GpuBuffer,
) -> Result<Dispatch> {
    let res = [logits.binding(), ids.binding(), tokens.binding(), step.binding()];
    dispatch(ctx, &ARGMAX, &[], &SampleParams::greedy(vocab, row, slot), &res, Grid::Fixed([1, 1, 1])).await
}

/// The `sample` kernel counts candidates in f32, exact below 2^24: vocabularies from this size on are refused.
pub const SAMPLE_MAX_VOCAB: u32 = 1 << 24;

/// Sampling at a temperature with top-k, top-p and min-p, as [`crate::sampling::Sampler`] picks on the host:
/// draw number `params.draw + k` from logits row `params.row` into `ids[0]` and `tokens[params.slot + k]` (`k`
/// the step buffer's step counter). [`set_sample_params`] changes the settings of the dispatch afterwards.
pub async fn sample(
    ctx: &GpuContext,
    params: &SampleParams,
    step: &GpuBuffer,
    logits: &GpuBuffer,
    ids: &GpuBuffer,
    tokens: &GpuBuffer,
) -> Result<Dispatch> {
    if params.vocab >= SAMPLE_MAX_VOCAB {
        return Err(Error::Unsupported(format!("sampling on the GPU over a vocabulary of {}", params.vocab)));
    }
    let res = [logits.binding(), ids.binding(), tokens.binding(), step.binding()];
    dispatch(ctx, &SAMPLE, &[], params, &res, Grid::Fixed([1, 1, 1])).await
}

/// Rewrites the settings of a [`sample`] dispatch (its uniform block) for the submissions that follow.
pub fn set_sample_params(ctx: &GpuContext, d: &Dispatch, params: &SampleParams) {
    debug_assert_eq!(d.pipeline.kernel.entry, SAMPLE.entry);
    let block = d.params.as_ref().expect("a sample dispatch owns its parameters");
    ctx.write(block, 0, bytemuck::bytes_of(params));
}

/// Moves the step buffer on by one decoded token (`pos + 1`, `k + 1`).
pub async fn advance(ctx: &GpuContext, step: &GpuBuffer) -> Result<Dispatch> {
    let pipeline = ctx.pipelines.get(&ADVANCE, &[]).await?;
    let bind_group = ctx.bind(&pipeline, &[step.binding()]);
    Ok(Dispatch { pipeline, bind_group, grid: Grid::Fixed([1, 1, 1]), params: None, indirect: None })
}
