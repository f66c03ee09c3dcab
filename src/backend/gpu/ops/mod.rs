//! Dispatch builders, one op family per file. Each returns a [`Dispatch`](super::context::Dispatch) (or two)
//! bound to the given buffers, ready to be recorded any number of times.

pub mod attention;
pub mod kv;
pub mod linear;
pub mod lora;
pub mod misc;
pub mod moe;

pub use kv::KvCache;
pub use linear::{
    Linear, Mat, MatmulKernel, MatvecKernel, Norm, Output, MATMUL_TOKENS, MATMUL_TOKENS_SHORT, MATVEC_TOKENS,
};
pub use misc::Heads;
