//! Causal GQA attention over the KV cache (f32 or f16, read as stored: [`KvCache`]): the split decode kernel
//! with its combine step (shaders/attention_decode.wgsl) and the tiled prefill kernel
//! (shaders/attention_prefill.wgsl).

use super::kv::{self, KvCache};
use super::misc::Heads;
use crate::backend::gpu::buffers::{GpuBuffer, Purpose};
use crate::backend::gpu::context::{Dispatch, GpuContext, Grid};
use crate::backend::gpu::pipelines::ATTN_COMBINE;
use crate::error::{Error, Result};

/// Largest head dim the attention kernels hold in shared memory and registers.
pub const MAX_HEAD_DIM: u32 = 256;

fn check(h: Heads) -> Result<()> {
    let rep = h.n_heads / h.n_kv.max(1);
    if h.n_kv == 0 || !h.n_heads.is_multiple_of(h.n_kv) {
        return Err(Error::Unsupported(format!("{} query heads over {} KV heads", h.n_heads, h.n_kv)));
    }
    if !h.head_dim.is_multiple_of(4) || h.head_dim > MAX_HEAD_DIM || rep * h.head_dim > 1024 || rep > 16 {
        return Err(Error::Unsupported(format!(
            "GPU attention: head dim {} with {rep} query heads per KV head (a head dim that is a multiple of 4, at \
             most {MAX_HEAD_DIM}; at most 16 heads and 1024 values per KV head)",
            h.head_dim
        )));
    }
    Ok(())
}

/// `window`: attend to the last `window` positions only (`None`: every position; 0 in the kernels).
fn params(h: Heads, splits: u32, scale: f32, window: Option<u32>) -> Result<[u32; 8]> {
    if window == Some(0) {
        return Err(Error::Unsupported("attention over a window of 0 positions".into()));
    }
    Ok([h.n_heads, h.n_kv, h.head_dim, splits, scale.to_bits(), window.unwrap_or(0), 0, 0])
}

/// Bytes of the partials buffer [`decode`] needs.
pub fn partials_bytes(h: Heads, splits: u32, rows: u32) -> u64 {
    4 * rows.max(1) as u64 * (splits.max(1) * h.n_heads * (h.head_dim + 2)) as u64
}

/// The partials buffer of [`decode`] for up to `rows` queries at once (one buffer serves every layer: their
/// attentions run one after another).
pub fn partials(ctx: &GpuContext, h: Heads, splits: u32, rows: u32) -> Result<GpuBuffer> {
    ctx.pool.storage("attention partials", partials_bytes(h, splits, rows), Purpose::Activations)
}

/// Decode attention of each of the chunk's token rows, one query per sequence (at the positions and over the
/// cache rows the step buffer and `seqmap` give: shaders/pages.wgsl): `splits` workgroups per KV head and row
/// each attend a slice of the cache and write their partials into `part` (see [`partials`]), then one
/// workgroup per query head and row combines them into `out`. With a `window`, only the last `window`
/// positions.
#[allow(clippy::too_many_arguments)]
pub async fn decode(
    ctx: &GpuContext,
    h: Heads,
    splits: u32,
    scale: f32,
    window: Option<u32>,
    step: &GpuBuffer,
    q: &GpuBuffer,
    cache: KvCache<'_>,
    part: &GpuBuffer,
    out: &GpuBuffer,
    seqmap: &GpuBuffer,
) -> Result<(Dispatch, Dispatch)> {
    check(h)?;
    let splits = splits.max(1);
    if part.size() < partials_bytes(h, splits, 1) {
        return Err(Error::Gpu(format!(
            "attention partials: {} bytes, {} needed",
            part.size(),
            partials_bytes(h, splits, 1)
        )));
    }
    let p = params(h, splits, scale, window)?;
    // The head size as a constant, so the per-key loops unroll.
    let pipeline = ctx.pipelines.get(kv::kernels(cache.ty).decode, &[("HD4", (h.head_dim / 4) as f64)]).await?;
    let pbuf = ctx.pool.uniform("attention", bytemuck::bytes_of(&p))?;
    let bg = ctx.bind(
        &pipeline,
        &[
            pbuf.binding(),
            step.binding(),
            q.binding(),
            cache.k.binding(),
            cache.v.binding(),
            part.binding(),
            seqmap.binding(),
        ],
    );
    let grid = Grid::TokensZ { x: h.n_kv, y: splits };
    let partial = Dispatch { pipeline, bind_group: bg, grid, params: Some(pbuf), indirect: None };
    let pipeline = ctx.pipelines.get(&ATTN_COMBINE, &[]).await?;
    let pbuf = ctx.pool.uniform("attention combine", bytemuck::bytes_of(&p))?;
    let bg = ctx.bind(&pipeline, &[pbuf.binding(), step.binding(), out.binding(), part.binding(), seqmap.binding()]);
    let combine =
        Dispatch { pipeline, bind_group: bg, grid: Grid::TokensY { x: h.n_heads }, params: Some(pbuf), indirect: None };
    Ok((partial, combine))
}

/// Queries per workgroup of the prefill kernel.
const PREFILL_QUERIES: u32 = 16;

/// Prefill attention of the chunk's `n` queries (positions `pos..pos + n`), `q` `[n, q_dim]`, into `out`; with
/// a `window`, each over its last `window` positions only.
#[allow(clippy::too_many_arguments)]
pub async fn prefill(
    ctx: &GpuContext,
    h: Heads,
    scale: f32,
    window: Option<u32>,
    step: &GpuBuffer,
    q: &GpuBuffer,
    cache: KvCache<'_>,
    out: &GpuBuffer,
    seqmap: &GpuBuffer,
) -> Result<Dispatch> {
    check(h)?;
    let p = params(h, 0, scale, window)?;
    let pipeline = ctx.pipelines.get(kv::kernels(cache.ty).prefill, &[("HD4", (h.head_dim / 4) as f64)]).await?;
    let pbuf = ctx.pool.uniform("attention prefill", bytemuck::bytes_of(&p))?;
    let bg = ctx.bind(
        &pipeline,
        &[
            pbuf.binding(),
            step.binding(),
            q.binding(),
            cache.k.binding(),
            cache.v.binding(),
            out.binding(),
            seqmap.binding(),
        ],
    );
    Ok(Dispatch {
        pipeline,
        bind_group: bg,
        grid: Grid::TokensX { per: PREFILL_QUERIES, y: h.n_heads },
        params: Some(pbuf),
        indirect: None,
    })
}
