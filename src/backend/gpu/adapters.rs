//! LoRA adapters on the GPU engine. Each adapter matrix is uploaded once (f32, [`GpuLoraMat`]) and kept,
//! found again by the address of its shared [`LoraMat`]; an active set becomes a [`LoraSet`] (the matrices of
//! each adapted base tensor, their scales, and the scratch `t` of the down products) that the plan's linear
//! ops lower into LoRA dispatches ([`LoraSet::lower`]). The engine keeps the plans of the last few sets it ran,
//! so switching back to one is a swap of dispatch lists: no weights move, nothing is rebuilt.

use super::buffers::{GpuBuffer, Purpose};
use super::context::{Dispatch, GpuContext};
use super::ops::lora::{self, GpuLoraMat, Scratch};
use super::ops::Norm;
use crate::arch::{Mat, Op, Program};
use crate::backend::lora::{self as host, ActiveAdapter, LoraMat};
use crate::error::Result;
use std::collections::HashMap;
use std::sync::Arc;

/// The adapted matrices of one active set, by base tensor name, and the scratch their down products write.
pub(super) struct LoraSet {
    mats: HashMap<String, Vec<(Arc<GpuLoraMat>, f32)>>,
    /// `[max_batch, stride]`: per token row, every adapter of one op side by side.
    t: GpuBuffer,
    /// The most rank one linear op's adapters add up to.
    stride: u32,
}

impl LoraSet {
    /// Dispatches applying this set to the linear op over `mats` (its rows placed one after another in y):
    /// the down products, to run before the op's product (they read x̂ before y is written, whichever buffer y
    /// is), and the up products, to run after it. `None` when no matrix of the op is adapted.
    #[allow(clippy::too_many_arguments)]
    pub async fn lower(
        &self,
        ctx: &GpuContext,
        mats: &[Mat],
        norm: Option<Norm<'_>>,
        step: &GpuBuffer,
        x: &GpuBuffer,
        x_stride: u32,
        y: &GpuBuffer,
        y_stride: u32,
    ) -> Result<Option<(Vec<Dispatch>, Vec<Dispatch>)>> {
        let (mut downs, mut ups) = (Vec::new(), Vec::new());
        let (mut col, mut offset) = (0, 0);
        for m in mats {
            for (lm, scale) in self.mats.get(&m.weight).into_iter().flatten() {
                let t = Scratch { t: &self.t, stride: self.stride, offset };
                downs.push(lora::down(ctx, lm, norm, step, x, x_stride, t).await?);
                ups.push(lora::up(ctx, lm, *scale, step, t, y, y_stride, col).await?);
                offset += lm.rank;
            }
            col += m.rows;
        }
        Ok((!downs.is_empty()).then_some((downs, ups)))
    }
}

/// Every matrix of the program's linear ops, in program order (what [`host::resolve`] resolves against).
fn linear_mats(p: &Program) -> Vec<&Mat> {
    let ops = p.blocks.iter().flat_map(|b| &b.ops);
    ops.filter_map(|op| match op {
        Op::Linear { mats, .. } => Some(mats),
        _ => None,
    })
    .flatten()
    .collect()
}

/// The adapter matrices uploaded so far, by the address of their [`LoraMat`] (kept alive here, so the address
/// is never reused by another).
#[derive(Default)]
pub(super) struct Uploads {
    mats: HashMap<usize, (Arc<LoraMat>, Arc<GpuLoraMat>)>,
}

impl Uploads {
    /// The [`LoraSet`] of `active` for `p`, uploading the matrices not on the GPU yet; `None` for a set that
    /// adapts nothing. A target that is not a matrix of the program's linear ops is refused.
    pub fn set(
        &mut self,
        ctx: &GpuContext,
        p: &Program,
        active: &[ActiveAdapter],
        max_batch: u32,
    ) -> Result<Option<LoraSet>> {
        let all = linear_mats(p);
        let names: Vec<&str> = all.iter().map(|m| m.weight.as_str()).collect();
        let resolved = host::resolve(active, &names)?;
        let mut mats = HashMap::new();
        for (name, loras) in names.iter().zip(resolved).filter(|(_, l)| !l.is_empty()) {
            let mut on_gpu = Vec::new();
            for (m, scale) in loras {
                let key = Arc::as_ptr(&m) as usize;
                let g = match self.mats.get(&key) {
                    Some((_, g)) => g.clone(),
                    None => {
                        let g = Arc::new(GpuLoraMat::upload(ctx, name, &m)?);
                        self.mats.insert(key, (m, g.clone()));
                        g
                    }
                };
                on_gpu.push((g, scale));
            }
            mats.insert(name.to_string(), on_gpu);
        }
        if mats.is_empty() {
            return Ok(None);
        }
        // The scratch: per op, the ranks of its adapted matrices side by side.
        let mut stride = 0u32;
        for op in p.blocks.iter().flat_map(|b| &b.ops) {
            if let Op::Linear { mats: op_mats, .. } = op {
                let rank = |m: &Mat| mats.get(&m.weight).into_iter().flatten().map(|(g, _)| g.rank).sum::<u32>();
                stride = stride.max(op_mats.iter().map(rank).sum());
            }
        }
        let t = ctx.pool.storage("lora t", 4 * max_batch as u64 * stride as u64, Purpose::Adapters)?;
        Ok(Some(LoraSet { mats, t, stride }))
    }

    /// Bytes of the adapter matrices on the GPU.
    pub fn bytes(&self) -> u64 {
        self.mats.values().map(|(_, g)| g.bytes()).sum()
    }
}

/// Plans of active sets other than the current one the engine keeps, for switching back without a rebuild.
const KEPT_PLANS: usize = 4;

/// A plan with the active set it was built for and the [`LoraSet`] its dispatches bind.
pub(super) struct SetPlan {
    pub active: Vec<ActiveAdapter>,
    pub plan: super::plan::Plan,
    pub set: Option<LoraSet>,
}

/// The engine's adapter state besides its current plan: the current set, the uploads, the kept plans.
#[derive(Default)]
pub(super) struct Adapters {
    pub active: Vec<ActiveAdapter>,
    /// Bound by the engine's current plan: dropped only with it (in [`SetPlan`]) or after it.
    pub set: Option<LoraSet>,
    pub uploads: Uploads,
    /// Most recently used last.
    kept: Vec<SetPlan>,
}

impl Adapters {
    /// The kept plan of `active`, taken out of the cache.
    pub fn take_kept(&mut self, active: &[ActiveAdapter]) -> Option<SetPlan> {
        let i = self.kept.iter().position(|k| k.active == active)?;
        Some(self.kept.remove(i))
    }

    /// Keeps `plan` (the one just replaced), dropping the least recently used beyond [`KEPT_PLANS`].
    pub fn keep(&mut self, plan: SetPlan) {
        self.kept.push(plan);
        if self.kept.len() > KEPT_PLANS {
            self.kept.remove(0);
        }
    }
}
