//! omex in a web page. The page fetches (or is given) the files of a `model.omex/` directory, hands them to
//! [`files::open_model`], and runs the same format with the same kernels: the GPU engine over WebGPU, or the
//! CPU engine compiled to wasm when the browser has no WebGPU. Generation is a future that yields to the
//! page between tokens and reports each one through a callback.
//!
//! - [`files`]: a model from files in memory (fetched over HTTP, picked or dropped by a person).
//! - [`engine`]: the two engines behind one async `forward`.
//! - [`generate`]: the generation loop (prompt, cached prefix, sampling, streamed text, timings).
//! - `api` (browser only): the wasm-bindgen surface the page's JavaScript calls.

// Natively only the engine glue is built (and unit-tested); what only the browser API uses looks unused there.
#![cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]

pub mod engine;
pub mod files;
pub mod generate;

#[cfg(target_arch = "wasm32")]
mod api;
#[cfg(target_arch = "wasm32")]
mod js;
