//! Running a model: loading it, sessions (prompt, KV cache, generation loop, streaming) and perplexity. It sits
//! above the engines (`crate::backend`) and the services they use (`crate::memory`, `crate::sampling`).

pub mod compare;
mod model;
pub mod perplexity;
pub mod scheduler;
pub mod session;
pub mod trace;

pub use crate::sampling::{Sampler, SamplerOptions};
pub use model::{parse_adapter_spec, BackendChoice, EngineOptions, Model};
pub use session::{GenerateOptions, Generation, Session, StopReason, Timings};
