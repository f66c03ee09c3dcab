//! One file per subcommand: parse the flags, call the library, print. No model logic lives here.

pub mod bench;
pub mod engine_args;
pub mod perplexity;
pub mod run;
pub mod convert;
pub mod layer_inspect;
pub mod memory_trace;
pub mod plan;
pub mod profile;
pub mod tokenize;
pub mod validate;
