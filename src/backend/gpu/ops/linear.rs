//! Matrix products over the weight layouts: the decode matvec (shaders/matvec.wgsl) and the prefill matmul
//! (shaders/matmul.wgsl), for up to three matrices of one weight file at once, with the RMS norm fused into
//! the activation load and the residual add or SwiGLU fused into the output. Decode matvecs over quantized
//! weights can also run on int8 activations (shaders/matvec_q8.wgsl, [`MatvecKernel::Int8Auto`]), as the
//! CPU engine's `Activations::Int8` does; prefill matmuls always take f32 activations.

use crate::backend::gpu::buffers::GpuBuffer;
use crate::backend::gpu::context::{Dispatch, GpuContext, Grid, Region};
use crate::backend::gpu::pipelines::{
    self, Kernel, MATMUL, MATMUL_COOP, MATVEC, MATVEC_GROUPS, MATVEC_GROUPS_SG, MATVEC_Q8, MATVEC_Q8_SG,
};
use crate::backend::gpu::weights::GpuMatrix;
use crate::backend::gpu::Tier;
use crate::backend::Activations;
use crate::error::{Error, Result};
use crate::format::DType;
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

/// A norm applied to x on load: its f32 weight (byte offset in `region`'s buffer) and epsilon. An RMS norm;
/// with `bias` (the byte offset of an f32 bias in the same region), a LayerNorm, which only the f32 decode
/// matvecs fuse ([`MatvecKernel::fuses_layer_norm`]).
#[derive(Clone, Copy)]
pub struct Norm<'a> {
    pub region: Region<'a>,
    pub offset: u64,
    pub eps: f32,
    pub bias: Option<u64>,
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
    /// matvec: x_last; matmul and the batched matvec: y_stride.
    extra: u32,
    /// A LayerNorm's bias: its word offset in the norm's region.
    norm_bias: u32,
    mats: [[u32; 4]; 3],
    outs: [[u32; 4]; 3],
}

/// Rows per workgroup of the generic matvec, and per team of the group matvec.
pub const MATVEC_ROWS: u32 = 4;

/// Which matvec kernel runs a decode product.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatvecKernel {
    /// The fastest the adapter and shape allow.
    Auto,
    /// matvec.wgsl: any shape, scalar loads (the reference GPU variant).
    Generic,
    /// matvec_groups.wgsl with shared-memory reductions: `cols % 32 == 0`, portable.
    Groups,
    /// matvec_groups.wgsl with subgroup reductions: `cols % 32 == 0`, needs subgroups.
    GroupsSubgroup,
    /// Int8 activations where the weights allow them (int8, int4 or ternary, `cols % 32 == 0`), with subgroup
    /// reductions where the adapter has them; else as `Auto` (f32 activations).
    Int8Auto,
    /// matvec_q8.wgsl: x quantized to int8 per group of 32 as kernels-cpu's q8 path does, `dot4I8Packed`
    /// products, shared-memory reductions; int8, int4 or ternary weights, `cols % 32 == 0`, portable.
    Int8,
    /// matvec_q8.wgsl with subgroup reductions: as `Int8`, needs subgroups.
    Int8Subgroup,
}

impl MatvecKernel {
    /// The concrete kernels, as `omex optimize` names them in a profile.
    pub const CONCRETE: [(MatvecKernel, &'static str); 5] = [
        (MatvecKernel::Generic, "generic"),
        (MatvecKernel::Groups, "groups"),
        (MatvecKernel::GroupsSubgroup, "groups_subgroup"),
        (MatvecKernel::Int8, "int8"),
        (MatvecKernel::Int8Subgroup, "int8_subgroup"),
    ];

    /// The name of a concrete kernel (`None` for the automatic choices).
    pub fn name(self) -> Option<&'static str> {
        Self::CONCRETE.iter().find(|(k, _)| *k == self).map(|(_, n)| *n)
    }

    pub fn from_name(name: &str) -> Option<MatvecKernel> {
        Self::CONCRETE.iter().find(|(_, n)| *n == name).map(|(k, _)| *k)
    }

    /// The automatic choice for an engine's activation precision.
    pub fn for_activations(activations: Activations) -> MatvecKernel {
        match activations {
            Activations::F32 => MatvecKernel::Auto,
            Activations::Int8 => MatvecKernel::Int8Auto,
        }
    }

    /// Whether this choice (as the engine asks for it) runs a LayerNorm in its prologue: the f32-activation
    /// kernels (generic and group) do; the int8 one quantizes x as it loads it and takes RMS norms only.
    pub fn fuses_layer_norm(self) -> bool {
        matches!(self, MatvecKernel::Auto | MatvecKernel::Generic | MatvecKernel::Groups | MatvecKernel::GroupsSubgroup)
    }

    /// The concrete kernel for a product of `dtype` weights with `cols` columns on an adapter of `tier`, or why
    /// the one asked for cannot run it.
    pub fn resolve(self, dtype: DType, cols: u32, tier: Tier) -> Result<MatvecKernel> {
        let grouped = cols.is_multiple_of(32);
        let int8 = grouped && matches!(dtype, DType::Int8 | DType::Int4 | DType::Ternary);
        // GGUF blocks run on the f32-activation kernels (the int8 one has no block decoders): the group matvec
        // reads them a 32-value group at a time (shaders/matvec_ggml.wgsl).
        let v = match self {
            MatvecKernel::Generic => MatvecKernel::Generic,
            MatvecKernel::Int8Auto if int8 && tier.subgroups => MatvecKernel::Int8Subgroup,
            MatvecKernel::Int8Auto if int8 => MatvecKernel::Int8,
            MatvecKernel::Auto | MatvecKernel::Int8Auto if !grouped => MatvecKernel::Generic,
            MatvecKernel::Auto | MatvecKernel::Int8Auto if tier.subgroups => MatvecKernel::GroupsSubgroup,
            MatvecKernel::Auto | MatvecKernel::Int8Auto => MatvecKernel::Groups,
            MatvecKernel::Int8 | MatvecKernel::Int8Subgroup if !int8 => {
                return Err(Error::Gpu(format!(
                    "the int8-activation matvec needs int8, int4 or ternary weights and cols % 32 == 0, not \
                     {dtype} with {cols} cols"
                )))
            }
            v => v,
        };
        if matches!(v, MatvecKernel::GroupsSubgroup | MatvecKernel::Int8Subgroup) && !tier.subgroups {
            return Err(Error::Gpu("the subgroup matvec needs an adapter with subgroups".into()));
        }
        if v != MatvecKernel::Generic && !grouped {
            return Err(Error::Gpu(format!("the group matvec needs cols % 32 == 0, not {cols}")));
        }
        Ok(v)
    }
}

/// Lanes per team of the group matvec: about the groups of a row, a power of two in 4..=64.
fn team_size(cols: u32) -> u32 {
    let gpr = (cols / 32).max(1);
    (1u32 << (31 - gpr.leading_zeros())).clamp(4, 64)
}
/// Which matmul kernel runs a prefill product.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatmulKernel {
    /// The cooperative-matrix kernel where the adapter, shape and tile allow it, else the tiled one.
    Auto,
    /// matmul.wgsl: f32 arithmetic, any shape, portable.
    Tiled,
    /// matmul_coop.wgsl: f16 products on tensor cores, f32 sums; `cols % 32 == 0`, an adapter with cooperative
    /// matrices (`Tier::cooperative_matrix`). Serves the long chunks ([`MATMUL_TOKENS`]-token tiles of the
    /// tiled kernel) in tiles of its own, [`MATMUL_COOP_TOKENS`] tokens.
    Cooperative,
}

/// Rows per workgroup tile of the matmul.
pub const MATMUL_TILE: u32 = 32;
/// Rows and tokens per workgroup tile of the cooperative matmul.
pub const MATMUL_COOP_TILE: u32 = 64;
pub const MATMUL_COOP_TOKENS: u32 = 64;
/// Tokens per workgroup tile of the matmul: long chunks, short chunks (less padding).
pub const MATMUL_TOKENS: u32 = 32;
pub const MATMUL_TOKENS_SHORT: u32 = 8;
/// Token rows per workgroup of the batched decode matvec (the short chunks' [`MATMUL_TOKENS_SHORT`]).
pub const MATVEC_TOKENS: u32 = 8;
/// Rows per workgroup of the batched decode matvec (ROWS x TOK partial sums a thread: 16 at most).
pub const MATVEC_TOKENS_ROWS: u32 = 2;

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
                return Err(Error::Gpu(format!(
                    "fused product of {}: matrices differ in layout, columns or file",
                    names()
                )));
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
            p.norm_bias = n.bias.map_or(0, |b| n.region.word(b));
        }
        Ok((region, p, total))
    }

    /// Whether the product's norm is a LayerNorm (which only the f32 decode matvecs take).
    fn layer_norm(&self) -> bool {
        self.norm.is_some_and(|n| n.bias.is_some())
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

    /// `tokens`: tokens per matmul tile ([`MATMUL_TOKENS`] or [`MATMUL_TOKENS_SHORT`]); 0 for the matvec.
    async fn build(&self, ctx: &GpuContext, tokens: u32, variant: MatvecKernel, mm: MatmulKernel) -> Result<Dispatch> {
        let matvec = tokens == 0;
        let cols = self.mats.first().map_or(0, |m| m.m.cols);
        let tier = ctx.gpu.tier;
        let dtype = self.mats.first().map_or(DType::F32, |m| m.m.dtype);
        let coop_fits = tier.cooperative_matrix && cols.is_multiple_of(32) && tokens == MATMUL_TOKENS;
        let coop = match mm {
            MatmulKernel::Auto => !matvec && coop_fits,
            MatmulKernel::Tiled => false,
            MatmulKernel::Cooperative if !coop_fits => {
                return Err(Error::Gpu(format!(
                    "the cooperative matmul needs an adapter with 16x16 f16 cooperative matrices, cols % 32 == 0, \
                     {MATMUL_TOKENS}-token tiles (cols {cols}, tiles of {tokens})"
                )))
            }
            MatmulKernel::Cooperative => true,
        };
        // The prefill matmul ignores the matvec variant: it always takes f32 activations.
        let variant = if matvec { variant.resolve(dtype, cols, tier)? } else { MatvecKernel::Auto };
        let ts = team_size(cols);
        let (rows_per_block, kernel): (u32, &Kernel) = match (matvec, variant) {
            (false, _) if coop => (MATMUL_COOP_TILE, &MATMUL_COOP),
            (false, _) => (MATMUL_TILE, &MATMUL),
            (true, MatvecKernel::Generic) => (MATVEC_ROWS, &MATVEC),
            (true, MatvecKernel::GroupsSubgroup) => (MATVEC_ROWS * 64 / ts, &MATVEC_GROUPS_SG),
            (true, MatvecKernel::Int8) => (MATVEC_ROWS * 64 / ts, &MATVEC_Q8),
            (true, MatvecKernel::Int8Subgroup) => (MATVEC_ROWS * 64 / ts, &MATVEC_Q8_SG),
            (true, _) => (MATVEC_ROWS * 64 / ts, &MATVEC_GROUPS),
        };
        if self.layer_norm()
            && !(matvec && matches!(kernel.name, "matvec" | "matvec_groups" | "matvec_groups_subgroup"))
        {
            return Err(Error::Gpu(format!("a LayerNorm fuses into the f32 decode matvecs only, not {}", kernel.name)));
        }
        let (region, mut p, total) = self.prepare(ctx, rows_per_block)?;
        let mut constants = self.constants(true);
        if self.layer_norm() {
            constants.push(("LAYER", 1.0));
        }
        if matvec {
            if variant == MatvecKernel::Generic {
                constants.push(("ROWS", MATVEC_ROWS as f64));
            } else {
                constants.push(("TS", ts as f64));
            }
            if matches!(variant, MatvecKernel::GroupsSubgroup | MatvecKernel::Int8Subgroup) {
                constants.push(("SG", tier.subgroup_min.max(1) as f64));
            }
            p.extra = self.x_last as u32;
        } else {
            if self.output == Output::SwiGlu {
                return Err(Error::Gpu("the prefill matmul has no SwiGLU output; use silu_mul".into()));
            }
            p.extra = self.y_stride;
            if tokens != MATMUL_TOKENS && tokens != MATMUL_TOKENS_SHORT {
                return Err(Error::Gpu(format!(
                    "matmul tiles hold {MATMUL_TOKENS} or {MATMUL_TOKENS_SHORT} tokens, not {tokens}"
                )));
            }
            if !coop {
                constants.push(("TN", (tokens / 8) as f64));
                constants.push(("GROUPED", cols.is_multiple_of(32) as u32 as f64));
            }
        }
        let per = if coop { MATMUL_COOP_TOKENS } else { tokens };
        let grid = if matvec { Grid::Fixed(ctx.grid_1d(total)) } else { Grid::TokensX { per, y: total } };
        self.dispatch(ctx, kernel, &constants, region, &p, grid).await
    }

    async fn dispatch(
        &self,
        ctx: &GpuContext,
        kernel: &Kernel,
        constants: &[(&'static str, f64)],
        region: Region<'_>,
        p: &Params,
        grid: Grid,
    ) -> Result<Dispatch> {
        let pipeline = ctx.pipelines.get(kernel, constants).await?;
        let params = ctx.pool.uniform(kernel.name, bytemuck::bytes_of(p))?;
        let norm = self.norm.map_or(region, |n| n.region);
        let bind_group = ctx.bind(
            &pipeline,
            &[
                params.binding(),
                self.step.binding(),
                region.binding(),
                norm.binding(),
                self.x.binding(),
                self.y.binding(),
            ],
        );
        Ok(Dispatch { pipeline, bind_group, grid, params: Some(params), indirect: None })
    }

    /// Whether [`Linear::matvec_tokens`] can run this product: its row blocks fit one grid dimension.
    pub fn fits_matvec_tokens(&self, ctx: &GpuContext) -> bool {
        let blocks: u64 = self.mats.iter().map(|m| m.m.rows.div_ceil(MATVEC_TOKENS_ROWS) as u64).sum();
        blocks <= ctx.gpu.limits.max_compute_workgroups_per_dimension as u64
    }

    /// The batched decode dispatch (shaders/matvec_tokens.wgsl): the chunk's `n` activation rows, each one
    /// sequence's next token, [`MATVEC_TOKENS`] of them per workgroup, y rows `y_stride` apart. Store or add (no
    /// SwiGLU); any layout and shape the generic matvec takes.
    pub async fn matvec_tokens(&self, ctx: &GpuContext) -> Result<Dispatch> {
        if self.layer_norm() {
            return Err(Error::Gpu("the batched matvec takes no LayerNorm; run it as a dispatch of its own".into()));
        }
        if self.output == Output::SwiGlu {
            return Err(Error::Gpu("the batched matvec has no SwiGLU output; use silu_mul".into()));
        }
        let (region, mut p, total) = self.prepare(ctx, MATVEC_TOKENS_ROWS)?;
        let max = ctx.gpu.limits.max_compute_workgroups_per_dimension;
        if total > max {
            return Err(Error::Gpu(format!(
                "the batched matvec needs {total} row blocks, over the adapter's {max} workgroups a dimension"
            )));
        }
        p.extra = self.y_stride;
        let mut constants = self.constants(true);
        constants.extend([("ROWS", MATVEC_TOKENS_ROWS as f64), ("TOK", MATVEC_TOKENS as f64)]);
        let grid = Grid::TokensX { per: MATVEC_TOKENS, y: total };
        self.dispatch(ctx, &pipelines::MATVEC_TOKENS, &constants, region, &p, grid).await
    }

    /// The decode dispatch (one activation row).
    pub async fn matvec(&self, ctx: &GpuContext) -> Result<Dispatch> {
        self.build(ctx, 0, MatvecKernel::Auto, MatmulKernel::Auto).await
    }

    /// The decode dispatch with a chosen matvec kernel (tests and benches compare them).
    pub async fn matvec_with(&self, ctx: &GpuContext, kernel: MatvecKernel) -> Result<Dispatch> {
        self.build(ctx, 0, kernel, MatmulKernel::Auto).await
    }

    /// The prefill dispatch (the chunk's `n` activation rows, `n` read from the step buffer), in tiles of
    /// `tokens` tokens ([`MATMUL_TOKENS`], or [`MATMUL_TOKENS_SHORT`] for chunks of a few tokens).
    pub async fn matmul(&self, ctx: &GpuContext, tokens: u32) -> Result<Dispatch> {
        self.build(ctx, tokens, MatvecKernel::Auto, MatmulKernel::Auto).await
    }

    /// The prefill dispatch with a chosen matmul kernel (tests and benches compare them).
    pub async fn matmul_with(&self, ctx: &GpuContext, tokens: u32, kernel: MatmulKernel) -> Result<Dispatch> {
        self.build(ctx, tokens, MatvecKernel::Auto, kernel).await
    }
}
