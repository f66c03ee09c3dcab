//! omex CPU kernels: the omex weight layouts and the op set on plain slices, with SIMD variants chosen at
//! run time. This crate knows nothing of the omex format or runtime; it is also the reference twin of every
//! WGSL kernel.
//!
//! - [`layout`]: the weight layouts (the contract with the converter and the GPU).
//! - [`ggml`]: raw GGUF blocks (Q4_K, Q5_K, Q6_K, Q5_0, Q5_1, Q8_0): geometry and bit-exact dequantization.
//! - [`isa`]: run-time ISA detection and the `OMEX_CPU_ISA` override.
//! - [`matvec`], [`matmul`]: float-activation products for every layout (decode, prefill).
//! - [`q8`]: int8-quantized activations and the integer-dot products (the fast path for Int8/Int4/Ternary).
//! - [`ops`]: norms, rope, activations, add, softmax, argmax.
//! - [`attention`]: causal GQA attention over an f32, f16 or q8_0 KV cache.
//!
//! Every kernel has a form taking an explicit [`isa::Isa`] (`*_with`) and one using [`isa::detect`]. Work is
//! spread over the *current* rayon pool (wrap calls in `pool.install`); results do not depend on the number
//! of threads.

// SIMD bodies index fixed-size register arrays by lane/row/token; iterators would hide that structure.
#![allow(clippy::needless_range_loop)]

pub mod attention;
pub mod ggml;
pub mod isa;
pub mod layout;
pub mod matmul;
pub mod matvec;
pub mod ops;
mod par;
pub mod q8;
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
mod wasm;
#[cfg(target_arch = "x86_64")]
mod x86;

pub use attention::{attention, attention_window, kv_load, kv_store, KvElem, KvQ8, Pages};
pub use ggml::GgmlBlock;
pub use isa::Isa;
pub use layout::{Matrix, Weights, GROUP};
pub use matmul::matmul;
pub use matvec::matvec;
pub use q8::{matmul_q8, matvec_q8, quantize, Q8Activations};
