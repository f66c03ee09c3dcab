//! Execution containers (`omex exec`): the seeds' task graph of model-inference and tool nodes, checked
//! whole before anything runs (`spec`), then run in dependency order with bounded concurrency, retries,
//! timeouts, a memory-pressure strategy and a resumable manifest (`run`).

pub mod run;
pub mod spec;

pub use run::{run, Manifest, NodeRecord, RunOptions};
pub use spec::{load, Plan};
