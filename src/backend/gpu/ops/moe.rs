//! A mixture of experts on the GPU (shaders/moe.wgsl): each token's routing, and one expert's output added to
//! the hidden state with the token's weight for it. The experts' products are the ordinary linear ops.

use super::misc::dispatch;
use crate::backend::gpu::buffers::GpuBuffer;
use crate::backend::gpu::context::{Dispatch, GpuContext, Grid};
use crate::backend::gpu::pipelines::{MOE_ADD, MOE_ROUTE};
use crate::error::{Error, Result};

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
