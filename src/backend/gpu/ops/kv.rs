//! One layer's KV cache on the GPU: its K and V buffers and the element type they hold. The kernels that write
//! the cache (shaders/rope.wgsl) or read it (shaders/attention_*.wgsl) are one source each, specialised by the
//! element type's prelude (shaders/kv_f32.wgsl, kv_f16.wgsl or kv_q8.wgsl, read a quad of values at a time by
//! index; the writer adds kv_store_*.wgsl): f16 values travel as pairs packed in a u32
//! (`pack2x16float`/`unpack2x16float`), so no kernel needs the WGSL `f16` type (shader-f16), which lavapipe,
//! SwiftShader and some browsers lack; q8_0 blocks of 32 values are 9 u32 (8 of packed int8, the f16 scale),
//! so every load is an aligned word.

use crate::backend::gpu::buffers::GpuBuffer;
use crate::backend::gpu::pipelines::{
    Kernel, ATTN_DECODE, ATTN_DECODE_F16, ATTN_DECODE_Q8, ATTN_PREFILL, ATTN_PREFILL_F16, ATTN_PREFILL_Q8, ROPE,
    ROPE_F16, ROPE_Q8,
};
use crate::backend::{KvType, KV_Q8_BLOCK};

/// Bytes of a q8_0 block of 32 values on the GPU: 8 words of int8 and a word for the f16 scale.
pub const Q8_BLOCK_BYTES: u64 = 36;

/// A layer's K and V caches, `[rows, kv_dim]` each in `ty` elements (see [`row_bytes`]).
#[derive(Clone, Copy)]
pub struct KvCache<'a> {
    pub k: &'a GpuBuffer,
    pub v: &'a GpuBuffer,
    pub ty: KvType,
}

/// Bytes of one cache row of `kv_dim` values (one position of one of K or V); for q8, `kv_dim` is a whole
/// number of blocks ([`KvType::check_head_dim`]), 36 bytes each.
pub fn row_bytes(ty: KvType, kv_dim: u32) -> u64 {
    match ty {
        KvType::F32 => 4 * kv_dim as u64,
        KvType::F16 => 2 * kv_dim as u64,
        KvType::Q8 => kv_dim.div_ceil(KV_Q8_BLOCK) as u64 * Q8_BLOCK_BYTES,
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
        KvType::F16 => Kernels { rope: &ROPE_F16, decode: &ATTN_DECODE_F16, prefill: &ATTN_PREFILL_F16 },
        KvType::Q8 => Kernels { rope: &ROPE_Q8, decode: &ATTN_DECODE_Q8, prefill: &ATTN_PREFILL_Q8 },
    }
}
