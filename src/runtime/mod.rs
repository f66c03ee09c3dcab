//! Running a model: loading it, sessions (prompt, KV cache, generation loop, streaming) and sampling.

pub mod budget;
pub mod memory_trace;
mod model;
pub mod perplexity;
pub mod planner;
pub mod sampler;
pub mod session;

pub use model::{BackendChoice, EngineOptions, Model};
pub use sampler::{Sampler, SamplerOptions};
pub use session::{GenerateOptions, Generation, Session, StopReason, Timings};
