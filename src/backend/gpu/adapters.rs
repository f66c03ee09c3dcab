//! LoRA adapters on the GPU engine. Each adapter matrix is uploaded once (f32, [`GpuLoraMat`]) and kept,
//! found again by the address of its shared [`LoraMat`]. An active set becomes a [`LoraSet`]: per adapted base
//! tensor, slots (matrices of the set's own, filled by GPU copies from the uploads) with their scales in one
//! small buffer, and the scratch `t` of the down products; the plan's linear ops lower it into LoRA dispatches
//! that bind the slots ([`LoraSet::lower`]). So a set of the same [`Layout`] (the same tensors adapted at
//! the same ranks, as every adapter of one training recipe) takes over a plan by copies and one scale write,
//! nothing rebuilt; the engine also keeps the plans of the last few layouts, so switching back is a swap.

use super::buffers::{GpuBuffer, Purpose};
use super::context::{Dispatch, GpuContext};
use super::ops::lora::{self, GpuLoraMat, Scratch};
use super::ops::Norm;
use crate::arch::{Mat, Op, Program};
use crate::backend::lora::{self as host, ActiveAdapter, LoraMat};
use crate::error::Result;
use std::collections::HashMap;
use std::sync::Arc;

/// Per adapted base tensor (program order), the rank of each of its adapters: what a [`LoraSet`]'s dispatch
/// lists depend on.
pub(super) type Layout = Vec<(String, Vec<u32>)>;

/// An active set resolved against the program, its matrices uploaded: per adapted base tensor (program
/// order), each adapter's matrix (with the key of its upload) and scale.
pub(super) type Resolved = Vec<(String, Vec<(usize, Arc<GpuLoraMat>, f32)>)>;

pub(super) fn layout_of(r: &Resolved) -> Layout {
    r.iter().map(|(name, mats)| (name.clone(), mats.iter().map(|(_, m, _)| m.rank).collect())).collect()
}

/// One adapter's place in a set: its matrices (copies), the upload they were copied from, where its scale is.
struct Slot {
    mat: GpuLoraMat,
    source: usize,
    scale_at: u32,
}

/// The slots of one active set, by base tensor name, their scales, and the scratch their down products write.
pub(super) struct LoraSet {
    slots: HashMap<String, Vec<Slot>>,
    scales: GpuBuffer,
    /// `[max_batch, stride]`: per token row, every adapter of one op side by side.
    t: GpuBuffer,
    /// The most rank one linear op's adapters add up to.
    stride: u32,
    layout: Layout,
}

impl LoraSet {
    /// A set for `r`'s layout, filled with `r`'s adapters; `None` for a set that adapts nothing.
    pub fn new(ctx: &GpuContext, p: &Program, r: &Resolved, max_batch: u32) -> Result<Option<LoraSet>> {
        if r.is_empty() {
            return Ok(None);
        }
        let mut slots = HashMap::new();
        let mut count = 0u32;
        for (name, mats) in r {
            let mut on = Vec::new();
            for (_, m, _) in mats {
                on.push(Slot { mat: GpuLoraMat::slot_for(ctx, name, m)?, source: usize::MAX, scale_at: count });
                count += 1;
            }
            slots.insert(name.clone(), on);
        }
        // The scratch: per op, the ranks of its adapted matrices side by side.
        let mut stride = 0u32;
        for op in p.blocks.iter().flat_map(|b| &b.ops) {
            if let Op::Linear { mats: op_mats, .. } = op {
                let rank = |m: &Mat| slots.get(&m.weight).into_iter().flatten().map(|s: &Slot| s.mat.rank).sum::<u32>();
                stride = stride.max(op_mats.iter().map(rank).sum());
            }
        }
        let t = ctx.pool.storage("lora t", 4 * max_batch as u64 * stride as u64, Purpose::Adapters)?;
        let scales = ctx.pool.storage("lora scales", 4 * count as u64, Purpose::Adapters)?;
        let mut set = LoraSet { slots, scales, t, stride, layout: layout_of(r) };
        set.fill(ctx, r);
        Ok(Some(set))
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Puts `r` (of this set's layout) in the slots: copies of the matrices not there already, and every
    /// scale, ahead of the next submission.
    pub fn fill(&mut self, ctx: &GpuContext, r: &Resolved) {
        debug_assert_eq!(layout_of(r), self.layout);
        let mut encoder = ctx.encoder();
        let mut scales = vec![0f32; self.slots.values().map(Vec::len).sum()];
        for (name, mats) in r {
            for (slot, (key, m, scale)) in self.slots.get_mut(name).into_iter().flatten().zip(mats) {
                if slot.source != *key {
                    slot.mat.copy_from(&mut encoder, m);
                    slot.source = *key;
                }
                scales[slot.scale_at as usize] = *scale;
            }
        }
        ctx.gpu.queue.submit([encoder.finish()]);
        ctx.write(&self.scales, 0, bytemuck::cast_slice(&scales));
    }

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
            for slot in self.slots.get(&m.weight).into_iter().flatten() {
                let lm = &slot.mat;
                let t = Scratch { t: &self.t, stride: self.stride, offset };
                downs.push(lora::down(ctx, lm, norm, step, x, x_stride, t).await?);
                ups.push(lora::up(ctx, lm, &self.scales, slot.scale_at, step, t, y, y_stride, col).await?);
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
    /// `active` resolved against `p`'s linear ops, uploading the matrices not on the GPU yet. A target that is
    /// not a matrix of the program's linear ops is refused.
    pub fn resolve(&mut self, ctx: &GpuContext, p: &Program, active: &[ActiveAdapter]) -> Result<Resolved> {
        let all = linear_mats(p);
        let names: Vec<&str> = all.iter().map(|m| m.weight.as_str()).collect();
        let resolved = host::resolve(active, &names)?;
        let mut out = Vec::new();
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
                on_gpu.push((key, g, scale));
            }
            out.push((name.to_string(), on_gpu));
        }
        Ok(out)
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

    /// A kept plan whose set has `layout` (another set of the same shape), taken out of the cache.
    pub fn take_layout(&mut self, layout: &Layout) -> Option<SetPlan> {
        let i = self.kept.iter().position(|k| k.set.as_ref().is_some_and(|s| s.layout() == layout))?;
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
