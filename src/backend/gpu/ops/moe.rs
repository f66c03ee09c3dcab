//! A mixture of experts on the GPU (shaders/moe.wgsl): each token's routing, and one expert's output added to
//! the hidden state with the token's weight for it. The experts' products are the ordinary linear ops, gated
//! ([`gate`]) so that an expert no row of the chunk was routed to does not run.

use super::misc::dispatch;
use crate::backend::gpu::buffers::{GpuBuffer, Purpose};
use crate::backend::gpu::context::{Dispatch, GpuContext, Grid, Indirect};
use crate::backend::gpu::pipelines::{MOE_ADD, MOE_GATE, MOE_ROUTE};
use crate::error::{Error, Result};
use std::sync::Arc;

/// The most experts a route kernel's workgroup holds (shaders/moe.wgsl's `MAX_EXPERTS`).
pub const MAX_EXPERTS: u32 = 256;

/// Routes each of the chunk's token rows of `logits` (`experts` router logits a row) in place into each
/// expert's weight, as `kernels_cpu::ops::route`: softmax, the `top_k` largest renormalised, 0 for the rest.
pub async fn route(
    ctx: &GpuContext,
    experts: u32,
    top_k: u32,
    step: &GpuBuffer,
    logits: &GpuBuffer,
) -> Result<Dispatch> {
    if experts == 0 || experts > MAX_EXPERTS || top_k == 0 || top_k > experts {
        return Err(Error::Unsupported(format!(
            "routing top {top_k} of {experts} experts on the GPU (it takes 1 to {MAX_EXPERTS} experts)"
        )));
    }
    let p = [experts, top_k, 0, 0];
    dispatch(ctx, &MOE_ROUTE, &[], &p, &[step.binding(), logits.binding()], Grid::TokensY { x: 1 }).await
}

/// `x[t] += route[t, expert] * out[t]` over the chunk's token rows of `cols` values, for the rows whose weight
/// is not 0; `route` rows of `experts` weights.
#[allow(clippy::too_many_arguments)]
pub async fn add_weighted(
    ctx: &GpuContext,
    cols: u32,
    experts: u32,
    expert: u32,
    step: &GpuBuffer,
    route: &GpuBuffer,
    out: &GpuBuffer,
    x: &GpuBuffer,
) -> Result<Dispatch> {
    let p = [experts, 0, cols, expert];
    let res = [step.binding(), route.binding(), out.binding(), x.binding()];
    dispatch(ctx, &MOE_ADD, &[], &p, &res, Grid::TokensY { x: cols.div_ceil(64) }).await
}

/// Gates `dispatches` (each with the expert it belongs to) on the routing: each is made indirect, and the
/// returned dispatch, recorded after the route and before them, writes each one's workgroup counts: its grid
/// for the chunk when some row's weight for its expert (in `route`, rows of `experts`) is not 0, else none.
pub async fn gate(
    ctx: &GpuContext,
    experts: u32,
    step: &GpuBuffer,
    route: &GpuBuffer,
    dispatches: &mut [(u32, &mut Dispatch)],
) -> Result<Dispatch> {
    let slots = dispatches.len() as u32;
    // One buffer: the counts (3 words a slot, read by the indirect launches), then each slot's grid (8 words).
    let mut words = vec![0u32; 3 * slots as usize];
    for (expert, d) in dispatches.iter() {
        if *expert >= experts || d.indirect.is_some() {
            return Err(Error::Unsupported(format!("gating a dispatch on expert {expert} of {experts}")));
        }
        let [kind, a, b, c] = d.grid.words();
        words.extend([*expert, kind, a, b, c, 0, 0, 0]);
    }
    let usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::INDIRECT;
    let args = Arc::new(ctx.pool.init("moe gate", bytemuck::cast_slice(&words), usage, Purpose::Params)?);
    for (slot, (_, d)) in dispatches.iter_mut().enumerate() {
        d.indirect = Some(Indirect { args: args.clone(), offset: 12 * slot as u64 });
    }
    let p = [experts, 0, slots, 0];
    let res = [step.binding(), route.binding(), args.binding()];
    dispatch(ctx, &MOE_GATE, &[], &p, &res, Grid::Fixed([slots.div_ceil(64), 1, 1])).await
}
