//! LoRA adapters applied unmerged (shaders/lora.wgsl): an adapted matrix of a linear op adds `s * B (A x̂)` to
//! its rows of the op's output, x̂ the op's input after its norm. Two dispatches per (matrix, adapter): the
//! down product into a small scratch `t` (`[rows, width]`, each adapter of the op at its own columns) and the
//! up product added into y. Adapter matrices live on the GPU in f32 ([`GpuLoraMat`]), uploaded once.

use super::linear::Norm;
use crate::backend::gpu::buffers::{GpuBuffer, Purpose};
use crate::backend::gpu::context::{Dispatch, GpuContext, Grid};
use crate::backend::gpu::pipelines::{LORA_DOWN, LORA_UP};
use crate::backend::lora::LoraMat;
use crate::error::{Error, Result};
use bytemuck::{Pod, Zeroable};

/// One adapter matrix pair on the GPU: `a` `[rank, cols]` and `b` `[rows, rank]`, f32.
pub struct GpuLoraMat {
    pub rows: u32,
    pub cols: u32,
    pub rank: u32,
    pub a: GpuBuffer,
    pub b: GpuBuffer,
}

impl GpuLoraMat {
    /// Uploads `m`'s A and B as f32 (an f16 adapter is widened: adapters are small, and f32 keeps the kernels
    /// free of the f16 type). `name` labels the buffers and errors.
    pub fn upload(ctx: &GpuContext, name: &str, m: &LoraMat) -> Result<GpuLoraMat> {
        if m.rank == 0 || m.rows == 0 || m.cols == 0 {
            return Err(Error::Usage(format!(
                "adapter matrix {name}: empty shape {}x{} rank {}",
                m.rows, m.cols, m.rank
            )));
        }
        // COPY_SRC: a set's slots are filled from the uploads (`GpuLoraMat::slot_for`).
        let usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC;
        let (a, b) = (m.a.to_f32(), m.b.to_f32());
        let a = ctx.pool.init(&format!("lora A {name}"), bytemuck::cast_slice(&a), usage, Purpose::Adapters)?;
        let b = ctx.pool.init(&format!("lora B {name}"), bytemuck::cast_slice(&b), usage, Purpose::Adapters)?;
        Ok(GpuLoraMat { rows: m.rows as u32, cols: m.cols as u32, rank: m.rank as u32, a, b })
    }

    /// A matrix pair of `m`'s shape whose buffers are filled by copies (`copy_from`): a set's slot, which its
    /// dispatches bind, so that another adapter of the same shape takes the slot without rebuilding them.
    pub fn slot_for(ctx: &GpuContext, name: &str, m: &GpuLoraMat) -> Result<GpuLoraMat> {
        let usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST;
        let a = ctx.pool.create(&format!("lora slot A {name}"), m.a.size(), usage, Purpose::Adapters)?;
        let b = ctx.pool.create(&format!("lora slot B {name}"), m.b.size(), usage, Purpose::Adapters)?;
        Ok(GpuLoraMat { rows: m.rows, cols: m.cols, rank: m.rank, a, b })
    }

    /// Records copies of `src`'s A and B into this slot (same shape).
    pub fn copy_from(&self, encoder: &mut wgpu::CommandEncoder, src: &GpuLoraMat) {
        debug_assert!((self.rows, self.cols, self.rank) == (src.rows, src.cols, src.rank));
        encoder.copy_buffer_to_buffer(src.a.raw(), 0, self.a.raw(), 0, src.a.size());
        encoder.copy_buffer_to_buffer(src.b.raw(), 0, self.b.raw(), 0, src.b.size());
    }

    /// Bytes of its two buffers on the GPU.
    pub fn bytes(&self) -> u64 {
        self.a.size() + self.b.size()
    }
}

/// The scratch `t` of an op's adapters: `stride` values per token row, this adapter's columns from `offset`.
#[derive(Clone, Copy)]
pub struct Scratch<'a> {
    pub t: &'a GpuBuffer,
    pub stride: u32,
    pub offset: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    cols: u32,
    rank: u32,
    stride: u32,
    t_stride: u32,
    t_off: u32,
    norm: u32,
    w_off: u32,
    eps: f32,
    y_off: u32,
    scale_at: u32,
    _pad: [u32; 2],
}

async fn dispatch(
    ctx: &GpuContext,
    kernel: &crate::backend::gpu::pipelines::Kernel,
    params: &Params,
    resources: &[wgpu::BindingResource<'_>],
    grid: Grid,
) -> Result<Dispatch> {
    let pipeline = ctx.pipelines.get(kernel, &[]).await?;
    let params = ctx.pool.uniform(kernel.name, bytemuck::bytes_of(params))?;
    let mut all = vec![params.binding()];
    all.extend(resources.iter().cloned());
    let bind_group = ctx.bind(&pipeline, &all);
    Ok(Dispatch { pipeline, bind_group, grid, params: Some(params), indirect: None })
}

/// The down product of the chunk's rows: `t[row, offset + k] = A[k, :] · x̂[row, :]`, x̂ the row of `x`
/// (`x_stride` values a row) through `norm` when the op's RMS norm is fused into its product (so x̂ is in no
/// buffer), else `x` itself.
pub async fn down(
    ctx: &GpuContext,
    m: &GpuLoraMat,
    norm: Option<Norm<'_>>,
    step: &GpuBuffer,
    x: &GpuBuffer,
    x_stride: u32,
    t: Scratch<'_>,
) -> Result<Dispatch> {
    if t.offset + m.rank > t.stride || m.cols > x_stride {
        return Err(Error::Gpu(format!(
            "lora down: rank {} at column {} of a scratch of {}, or {} columns of rows of {}",
            m.rank, t.offset, t.stride, m.cols, x_stride
        )));
    }
    let (norm_on, w_off, eps) = match norm {
        Some(n) => (1, n.region.word(n.offset), n.eps),
        None => (0, 0, 0.0),
    };
    let p = Params {
        cols: m.cols,
        rank: m.rank,
        stride: x_stride,
        t_stride: t.stride,
        t_off: t.offset,
        norm: norm_on,
        w_off,
        eps,
        y_off: 0,
        scale_at: 0,
        _pad: [0; 2],
    };
    // Without a norm the weight binding is unused: x stands in for it.
    let nw = match norm {
        Some(n) => n.region.binding(),
        None => x.binding(),
    };
    let res = [step.binding(), nw, x.binding(), m.a.binding(), t.t.binding()];
    dispatch(ctx, &LORA_DOWN, &p, &res, Grid::TokensY { x: m.rank }).await
}

/// The up product added into the chunk's rows of `y` (`y_stride` values a row): `y[row, col + i] += s *
/// B[i, :] · t[row, offset..offset + rank]`, the scale s read from `scales[scale_at]` when it runs.
#[allow(clippy::too_many_arguments)]
pub async fn up(
    ctx: &GpuContext,
    m: &GpuLoraMat,
    scales: &GpuBuffer,
    scale_at: u32,
    step: &GpuBuffer,
    t: Scratch<'_>,
    y: &GpuBuffer,
    y_stride: u32,
    col: u32,
) -> Result<Dispatch> {
    if t.offset + m.rank > t.stride || col + m.rows > y_stride {
        return Err(Error::Gpu(format!(
            "lora up: rank {} at column {} of a scratch of {}, or rows {col}..{} of outputs {}",
            m.rank,
            t.offset,
            t.stride,
            col + m.rows,
            y_stride
        )));
    }
    let p = Params {
        cols: m.rows,
        rank: m.rank,
        stride: y_stride,
        t_stride: t.stride,
        t_off: t.offset,
        norm: 0,
        w_off: 0,
        eps: 0.0,
        y_off: col,
        scale_at,
        _pad: [0; 2],
    };
    let res = [step.binding(), m.b.binding(), t.t.binding(), y.binding(), scales.binding()];
    dispatch(ctx, &LORA_UP, &p, &res, Grid::TokensY { x: m.rows.div_ceil(64) }).await
}
