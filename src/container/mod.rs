//! Execution containers (`omex exec`): the seeds' task graph of model-inference and tool nodes, checked
//! whole before anything runs (`spec`), then run in dependency order with bounded concurrency, retries,
//! timeouts, a memory-pressure strategy and a resumable manifest (`run`).

mod hook;
pub mod manifest;
mod node;
pub mod run;
pub mod spec;

pub use manifest::{Manifest, NodeRecord, MANIFEST};
pub use run::{run, RunOptions};
pub use spec::{load, Plan};
