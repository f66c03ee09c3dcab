//! GPU memory as the engines see it, below them and independent of the model API: the budget a user gives
//! ([`budget`]), the planner that fits weight units into it ([`planner`]), and the memory trace a streamed run
//! records ([`trace`]; the CLI's `omex memory-trace` draws it).

pub mod budget;
pub mod kv_blocks;
pub mod planner;
pub mod trace;
