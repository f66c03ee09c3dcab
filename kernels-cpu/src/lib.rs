//! omex CPU kernels: the omex weight layouts and the op set on plain slices, with SIMD variants chosen at
//! run time. This crate knows nothing of the omex format or runtime; it is also the reference twin of every
//! WGSL kernel.

pub mod layout;

pub use layout::{Matrix, Weights, GROUP};
