//! One file per subcommand: parse the flags, call the library, print. No model logic lives here.

pub mod bench;
pub mod convert;
pub mod engine_args;
pub mod layer_inspect;
pub mod memory_trace;
pub mod perplexity;
pub mod plan;
pub mod profile;
pub mod run;
pub mod tokenize;
pub mod validate;
