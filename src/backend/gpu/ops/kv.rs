//! One layer's KV cache on the GPU: its K and V buffers and the element type they hold. The kernels that write
//! the cache (shaders/rope.wgsl) or read it (shaders/attention_*.wgsl) are one source each, specialised by the
//! element type's prelude (shaders/kv_f32.wgsl or shaders/kv_f16.wgsl): f16 values travel as pairs packed in a
//! u32 (`pack2x16float`/`unpack2x16float`), so no kernel needs the WGSL `f16` type (shader-f16), which
//! lavapipe, SwiftShader and some browsers lack.

use crate::backend::gpu::buffers::GpuBuffer;
use crate::backend::gpu::pipelines::{
    Kernel, ATTN_DECODE, ATTN_DECODE_F16, ATTN_PREFILL, ATTN_PREFILL_F16, ROPE, ROPE_F16,
};
use crate::backend::KvType;

/// A layer's K and V caches, `[rows, kv_dim]` each in `ty` elements (see [`row_bytes`]).
#[derive(Clone, Copy)]
pub struct KvCache<'a> {
    pub k: &'a GpuBuffer,
    pub v: &'a GpuBuffer,
    pub ty: KvType,
}

/// Bytes of one cache row of `kv_dim` values (one position of one of K or V).
pub fn row_bytes(ty: KvType, kv_dim: u32) -> u64 {
    match ty {
        KvType::F32 => 4 * kv_dim as u64,
        KvType::F16 | KvType::Q8 => 2 * kv_dim as u64,
    }
}

/// The kernels of one element type.
pub(super) struct Kernels {
    pub rope: &'static Kernel,
    pub decode: &'static Kernel,
    pub prefill: &'static Kernel,
}

pub(super) fn kernels(ty: KvType) -> Kernels {
    match ty {
        KvType::F32 => Kernels { rope: &ROPE, decode: &ATTN_DECODE, prefill: &ATTN_PREFILL },
        KvType::F16 | KvType::Q8 => Kernels { rope: &ROPE_F16, decode: &ATTN_DECODE_F16, prefill: &ATTN_PREFILL_F16 },
    }
}
