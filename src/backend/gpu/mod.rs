//! The GPU backend over wgpu (Vulkan, Metal, DX12, GL, WebGPU).
//!
//! - [`device`]: adapter selection, the adapter's real limits, feature tiers.
//! - [`buffers`]: the buffer pool; every GPU byte is allocated and accounted there.
//! - [`pipelines`]: the WGSL kernels (`shaders/`) and the pipeline cache keyed by kernel and `override` constants.
//! - [`context`]: device + pool + cache, and binding, recording, submitting, reading back.
//! - [`weights`]: weight files uploaded as they are on disk; matrices as section offsets inside them.
//! - [`ops`]: dispatch builders for the op set.
//! - [`profile`]: this machine's bandwidths for the planner (`omex profile`), cached in `~/.omex/profile.json`.
//! - [`timer`]: per-dispatch GPU times (`OMEX_GPU_KERNEL_TIMES=1`), for kernel work.
//! - [`streaming`]: weight units streamed through upload slots when the memory budget cannot hold them.
//! - [`engine`]: the transformer forward pass as one precomputed list of dispatches per chunk.
//!
//! Every kernel has a portable variant (no subgroups, no f16, no cooperative matrices) that runs on WebGPU and
//! lavapipe, and is tested against its kernels-cpu twin.

mod adapters;
pub mod buffers;
pub mod context;
pub mod device;
mod engine;
pub mod ops;
pub mod pipelines;
mod plan;
pub mod profile;
pub mod streaming;
mod timer;
pub mod tuning;
pub mod weights;

pub use context::{Dispatch, GpuContext, Grid, Region};
pub use device::{DeviceOptions, GpuDevice, Tier};
pub use engine::{auto_engine, open_engine, plan_memory, GpuEngine, GpuOptions, MemoryPlan};
