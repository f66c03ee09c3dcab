//! Matrix products over the weight layouts: the decode matvec (shaders/matvec.wgsl) and the prefill matmul
//! (shaders/matmul.wgsl), for up to three matrices of one weight file at once, with the RMS norm fused into
//! the activation load and the residual add or SwiGLU fused into the output.

use crate::backend::gpu::buffers::GpuBuffer;
use crate::backend::gpu::context::{Dispatch, GpuContext, Grid, Region};
use crate::backend::gpu::pipelines::{MATMUL, MATVEC};
use crate::backend::gpu::weights::GpuMatrix;
use crate::error::{Error, Result};
use bytemuck::{Pod, Zeroable};

/// What the product does with its result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// `y[out + r] = sum`
    Store,
    /// `y[out + r] += sum` (the residual add)
    Add,
    /// `y[out + r] = silu(gate) * up` for two matrices with the same rows (decode only).
    SwiGlu,
}

/// One matrix of a product: where its rows go in y, and its f32 bias (a byte span in the same file).
#[derive(Clone, Copy)]
pub struct Mat<'a> {
    pub m: &'a GpuMatrix,
    pub out: u32,
    pub bias: Option<(u64, u64)>,
}

/// An RMS norm applied to x on load: its f32 weight (byte offset in `region`'s buffer) and epsilon.
#[derive(Clone, Copy)]
pub struct Norm<'a> {
    pub region: Region<'a>,
    pub offset: u64,
    pub eps: f32,
}

/// A product of activations `x` with one to three matrices of one file (same layout and columns).
pub struct Linear<'a> {
    pub mats: Vec<Mat<'a>>,
    pub norm: Option<Norm<'a>>,
    pub output: Output,
    pub step: &'a GpuBuffer,
    pub x: &'a GpuBuffer,
    pub y: &'a GpuBuffer,
    /// Decode: read activation row `n - 1` of x (the last token of the chunk) rather than row 0.
    pub x_last: bool,
    /// Prefill: values per token row of y.
    pub y_stride: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    cols: u32,
    n_mats: u32,
    norm: u32,
    eps: f32,
    blocks1: u32,
    blocks2: u32,
    /// matvec: x_last; matmul: y_stride.
    extra: u32,
    _pad: u32,
    mats: [[u32; 4]; 3],
    outs: [[u32; 4]; 3],
}

/// Rows per workgroup of the matvec.
pub const MATVEC_ROWS: u32 = 4;
/// Rows (and tokens) per workgroup tile of the matmul.
pub const MATMUL_TILE: u32 = 32;

impl<'a> Linear<'a> {
    /// Checks the matrices and returns the binding of the weights and the row blocks before each matrix.
    fn prepare(&self, ctx: &GpuContext, rows_per_block: u32) -> Result<(Region<'a>, Params, u32)> {
        let first = self.mats.first().ok_or_else(|| Error::Gpu("a product needs a matrix".into()))?;
        if self.mats.len() > 3 {
            return Err(Error::Gpu("a product takes three matrices at most".into()));
        }
        let names = || self.mats.iter().map(|m| m.m.name.as_str()).collect::<Vec<_>>().join(", ");
        for m in &self.mats {
            if m.m.dtype != first.m.dtype || m.m.cols != first.m.cols || !std::ptr::eq(&*m.m.file, &*first.m.file) {
                return Err(Error::Gpu(format!("fused product of {}: matrices differ in layout, columns or file", names())));
            }
        }
        if self.output == Output::SwiGlu && (self.mats.len() != 2 || self.mats[0].m.rows != self.mats[1].m.rows) {
            return Err(Error::Gpu(format!("SwiGLU product of {}: needs gate and up of equal rows", names())));
        }
        let mut spans: Vec<(u64, u64)> = self.mats.iter().flat_map(|m| m.m.spans()).collect();
        spans.extend(self.mats.iter().filter_map(|m| m.bias));
        let region = Region::covering(&first.m.file.buffer, &spans);
        ctx.check_binding(&format!("weights {}", names()), &region)?;
        let mut p = Params::zeroed();
        p.cols = first.m.cols;
        p.n_mats = self.mats.len() as u32;
        let mut blocks = [0u32; 4];
        for (i, m) in self.mats.iter().enumerate() {
            p.mats[i] = m.m.words(&region);
            let bias = m.bias.map_or(0, |b| region.word(b.0));
            p.outs[i] = [m.out, bias, m.bias.is_some() as u32, 0];
            blocks[i + 1] = blocks[i] + m.m.rows.div_ceil(rows_per_block);
        }
        let total = if self.output == Output::SwiGlu { blocks[1] } else { blocks[self.mats.len()] };
        p.blocks1 = if self.mats.len() > 1 { blocks[1] } else { total };
        p.blocks2 = if self.mats.len() > 2 { blocks[2] } else { total };
        if let Some(n) = &self.norm {
            p.norm = n.region.word(n.offset);
            p.eps = n.eps;
        }
        Ok((region, p, total))
    }

    fn constants(&self, mode: bool) -> Vec<(&'static str, f64)> {
        let mut c = vec![("LAYOUT", self.mats[0].m.layout() as f64), ("NORM", self.norm.is_some() as u32 as f64)];
        if mode {
            let m = match self.output {
                Output::Store => 0.0,
                Output::Add => 1.0,
                Output::SwiGlu => 2.0,
            };
            c.push(("MODE", m));
        }
        c
    }

    async fn build(&self, ctx: &GpuContext, matvec: bool) -> Result<Dispatch> {
        let (rows_per_block, kernel) = if matvec { (MATVEC_ROWS, &MATVEC) } else { (MATMUL_TILE, &MATMUL) };
        let (region, mut p, total) = self.prepare(ctx, rows_per_block)?;
        let mut constants = self.constants(true);
        if matvec {
            constants.push(("ROWS", MATVEC_ROWS as f64));
            p.extra = self.x_last as u32;
        } else {
            if self.output == Output::SwiGlu {
                return Err(Error::Gpu("the prefill matmul has no SwiGLU output; use silu_mul".into()));
            }
            p.extra = self.y_stride;
        }
        let pipeline = ctx.pipelines.get(kernel, &constants).await?;
        let params = ctx.pool.uniform(kernel.name, bytemuck::bytes_of(&p))?;
        let norm = self.norm.map_or(region, |n| n.region);
        let bind_group = ctx.bind(
            &pipeline,
            &[params.binding(), self.step.binding(), region.binding(), norm.binding(), self.x.binding(), self.y.binding()],
        );
        let grid = if matvec { Grid::Fixed(ctx.grid_1d(total)) } else { Grid::TokensX { per: MATMUL_TILE, y: total } };
        Ok(Dispatch { pipeline, bind_group, grid, params: Some(params) })
    }

    /// The decode dispatch (one activation row).
    pub async fn matvec(&self, ctx: &GpuContext) -> Result<Dispatch> {
        self.build(ctx, true).await
    }

    /// The prefill dispatch (the chunk's `n` activation rows, `n` read from the step buffer).
    pub async fn matmul(&self, ctx: &GpuContext) -> Result<Dispatch> {
        self.build(ctx, false).await
    }
}
