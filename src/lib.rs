//! omex: a GPU-first model format and runtime. The bytes on disk are the bytes the kernels read.

pub mod error;
pub mod format;
pub mod graph;

pub use error::{Error, Result};
