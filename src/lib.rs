//! omex: a GPU-first model format and runtime. The bytes on disk are the bytes the kernels read.

#[cfg(not(target_arch = "wasm32"))]
pub mod agent;
pub mod arch;
pub mod backend;
#[cfg(not(target_arch = "wasm32"))]
pub mod container;
pub mod error;
pub mod files;
pub mod format;
pub mod graph;
#[cfg(not(target_arch = "wasm32"))]
pub mod import;
pub mod memory;
pub mod quant;
pub mod runtime;
pub mod sampling;
#[cfg(not(target_arch = "wasm32"))]
pub mod server;
pub mod tokenizer;
#[cfg(not(target_arch = "wasm32"))]
pub mod validate;

pub use error::{Error, Result};
