//! This machine's numbers for the planner (`omex profile`, read back by `omex plan`): every adapter wgpu
//! enumerates, host memory, and on the preferred adapter the bandwidths that decide how fast a model streams
//! (device copy, upload as streaming does it, upload through a staging buffer, the int4 matvec) and the cost of
//! one dependent dispatch. Measured once and cached in `$OMEX_HOME/profile.json` (default `~/.omex`).
//!
//! Each GPU number is timed at two repetition counts and taken from the difference, so the fixed cost of a
//! submission and its wait cancels out; each count is the best of a few samples.

use crate::memory::planner::DeviceProfile;
use serde::{Deserialize, Serialize};

/// One adapter as wgpu reports it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdapterInfo {
    pub name: String,
    /// "Vulkan", "Metal", "Dx12", "Gl", "BrowserWebGpu".
    pub backend: String,
    /// "DiscreteGpu", "IntegratedGpu", "VirtualGpu", "Cpu" (a software adapter such as lavapipe), "Other".
    pub device_type: String,
    pub driver: String,
    pub driver_info: String,
    /// The largest buffer and storage binding the adapter allows, bytes.
    pub max_buffer_bytes: u64,
    pub max_storage_binding_bytes: u64,
}

/// What `omex profile` measured, as cached in `profile.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MachineProfile {
    /// When it was measured, seconds since the Unix epoch.
    pub measured_at: u64,
    pub omex_version: String,
    /// Every adapter wgpu enumerates (primary backends; GL only when there is none).
    pub adapters: Vec<AdapterInfo>,
    /// Host memory (`/proc/meminfo` MemTotal and MemAvailable on Linux; none elsewhere).
    #[serde(default)]
    pub host_memory_bytes: Option<u64>,
    #[serde(default)]
    pub host_available_bytes: Option<u64>,
    /// The preferred adapter's numbers; none when no adapter could be opened ([`MachineProfile::gpu_error`]).
    pub gpu: Option<DeviceProfile>,
    /// The preferred adapter's kernel tier ("portable", "subgroups 32..32, f16"...).
    #[serde(default)]
    pub gpu_kernels: Option<String>,
    /// Why there are no GPU numbers.
    #[serde(default)]
    pub gpu_error: Option<String>,
}

/// Bytes of the buffers the copy and upload measurements move.
pub const TRANSFER_BYTES: u64 = 64 << 20;
/// Bytes per `queue.write_buffer` call of the upload measurement (what streaming writes at a time).
pub const UPLOAD_CHUNK: usize = 4 << 20;
/// The matvec measured: `[MATVEC_DIM, MATVEC_DIM]` int4.
pub const MATVEC_DIM: usize = 4096;

#[cfg(not(target_arch = "wasm32"))]
pub use native::*;

#[cfg(not(target_arch = "wasm32"))]
mod native {
    use super::*;
    use crate::backend::gpu::buffers::{GpuBuffer, Purpose};
    use crate::backend::gpu::ops::{misc, Linear, Mat, Output};
    use crate::backend::gpu::weights::GpuMatrix;
    use crate::backend::gpu::{DeviceOptions, Dispatch, GpuContext};
    use crate::error::{Error, Result};
    use kernels_cpu::layout::pack_int4_group;
    use kernels_cpu::{Matrix, Weights, GROUP};
    use std::path::PathBuf;
    use std::time::{Duration, Instant};

    /// Samples per repetition count; the best is kept.
    const SAMPLES: usize = 3;

    /// `$OMEX_HOME/profile.json`, else `$HOME/.omex/profile.json`; none without either variable.
    pub fn cache_path() -> Option<PathBuf> {
        Some(crate::files::omex_home()?.join("profile.json"))
    }

    /// The cached profile, or none when there is no cache file. A file that does not parse is an error naming it.
    pub fn load_cached() -> Result<Option<MachineProfile>> {
        let Some(path) = cache_path() else { return Ok(None) };
        let text = match crate::files::read_regular_string(&path, 1 << 20) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(path, e)),
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| Error::parse(&path, format!("not a machine profile ({e}); `omex profile` measures it again")))
    }

    /// Writes `profile` to [`cache_path`], making the directory; returns the path.
    pub fn save(profile: &MachineProfile) -> Result<PathBuf> {
        let path = cache_path()
            .ok_or_else(|| Error::Usage("neither OMEX_HOME nor HOME is set: nowhere to cache the profile".into()))?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        let json = serde_json::to_string_pretty(profile).map_err(|e| Error::json(&path, e))?;
        // Write beside and rename, so a reader never sees half a file.
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, json + "\n").map_err(|e| Error::io(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))?;
        Ok(path)
    }

    /// Enumerates the adapters, reads host memory and measures the preferred adapter. No adapter is not an
    /// error: the profile then has `gpu: None` and says why in `gpu_error`.
    pub fn measure_blocking() -> Result<MachineProfile> {
        let measured_at =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default();
        let (host_memory_bytes, host_available_bytes) = host_memory();
        let mut profile = MachineProfile {
            measured_at,
            omex_version: env!("CARGO_PKG_VERSION").to_string(),
            adapters: pollster::block_on(adapters()),
            host_memory_bytes,
            host_available_bytes,
            gpu: None,
            gpu_kernels: None,
            gpu_error: None,
        };
        match GpuContext::open_blocking(&DeviceOptions::default()) {
            Ok(ctx) => {
                profile.gpu_kernels = Some(ctx.gpu.tier.describe());
                match measure_device(&ctx) {
                    Ok(p) => profile.gpu = Some(p),
                    Err(e) => profile.gpu_error = Some(e.to_string()),
                }
            }
            Err(e) => profile.gpu_error = Some(e.to_string()),
        }
        Ok(profile)
    }

    /// The adapters of the primary backends (or those `WGPU_BACKEND` names); GL's only when there is none.
    async fn adapters() -> Vec<AdapterInfo> {
        let list = |backends: wgpu::Backends| async move {
            let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
            desc.backends = backends;
            let instance = wgpu::Instance::new(desc);
            instance.enumerate_adapters(backends).await
        };
        let found = match wgpu::Backends::from_env() {
            Some(b) => list(b).await,
            None => {
                let primary = list(wgpu::Backends::PRIMARY).await;
                if primary.is_empty() {
                    list(wgpu::Backends::SECONDARY).await
                } else {
                    primary
                }
            }
        };
        found
            .iter()
            .map(|a| {
                let (info, limits) = (a.get_info(), a.limits());
                AdapterInfo {
                    name: info.name,
                    backend: format!("{:?}", info.backend),
                    device_type: format!("{:?}", info.device_type),
                    driver: info.driver,
                    driver_info: info.driver_info,
                    max_buffer_bytes: limits.max_buffer_size,
                    max_storage_binding_bytes: limits.max_storage_buffer_binding_size,
                }
            })
            .collect()
    }

    /// MemTotal and MemAvailable of `/proc/meminfo`, bytes.
    fn host_memory() -> (Option<u64>, Option<u64>) {
        let Ok(text) = std::fs::read_to_string("/proc/meminfo") else { return (None, None) };
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .map(|kb| kb * 1024)
        };
        (field("MemTotal"), field("MemAvailable"))
    }

    fn wait(ctx: &GpuContext) -> Result<()> {
        ctx.gpu.device.poll(wgpu::PollType::wait_indefinitely()).map_err(|e| Error::Gpu(format!("waiting: {e}")))?;
        ctx.gpu.check()
    }

    /// Seconds one repetition takes: `run(reps)` timed at `reps` and `2 * reps` (best of [`SAMPLES`] each),
    /// the difference divided by `reps`, so that a fixed cost per sample cancels out. Falls back to the plain
    /// average when noise makes the difference useless.
    fn per_rep(reps: u32, mut run: impl FnMut(u32) -> Result<Duration>) -> Result<f64> {
        run(1)?; // warm up: first submissions pay for lazy allocations
        let mut best = |n: u32| -> Result<f64> {
            let mut b = f64::INFINITY;
            for _ in 0..SAMPLES {
                b = b.min(run(n)?.as_secs_f64());
            }
            Ok(b)
        };
        let (one, two) = (best(reps)?, best(2 * reps)?);
        let diff = (two - one) / reps as f64;
        Ok(if diff > 0.1 * two / (2 * reps) as f64 { diff } else { two / (2 * reps) as f64 })
    }

    /// Records `reps` rounds of `record` into one command buffer, submits it and waits; the time from submit
    /// to completion.
    fn timed_submit(
        ctx: &GpuContext,
        reps: u32,
        mut record: impl FnMut(&mut wgpu::CommandEncoder),
    ) -> Result<Duration> {
        let mut enc = ctx.encoder();
        for _ in 0..reps {
            record(&mut enc);
        }
        let t = Instant::now();
        ctx.gpu.queue.submit([enc.finish()]);
        wait(ctx)?;
        Ok(t.elapsed())
    }

    fn gbs(bytes: u64, seconds: f64) -> f64 {
        bytes as f64 / seconds.max(1e-12) / 1e9
    }

    fn measure_device(ctx: &GpuContext) -> Result<DeviceProfile> {
        let host: Vec<u8> = (0..TRANSFER_BYTES as usize).map(|i| ((i * 131) >> 3) as u8).collect();
        let usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST;
        let src = ctx.pool.init("profile/src", &host, usage, Purpose::Activations)?;
        let dst = ctx.pool.storage("profile/dst", TRANSFER_BYTES, Purpose::Activations)?;
        let copy_gbs = copy_gbs(ctx, &src, &dst)?;
        let upload_gbs = upload_gbs(ctx, &host, &dst)?;
        let staging_upload_gbs = staging_upload_gbs(ctx, &host, &dst)?;
        drop((src, dst, host));
        Ok(DeviceProfile {
            adapter: ctx.gpu.info.name.clone(),
            upload_gbs,
            staging_upload_gbs,
            matvec_gbs: matvec_gbs(ctx)?,
            copy_gbs,
            dispatch_us: dispatch_us(ctx)?,
        })
    }

    /// Device-to-device `copy_buffer_to_buffer` of [`TRANSFER_BYTES`]. The bytes copied are counted once (the
    /// memory traffic is twice that: each byte read and written).
    fn copy_gbs(ctx: &GpuContext, src: &GpuBuffer, dst: &GpuBuffer) -> Result<f64> {
        let s = per_rep(4, |n| {
            timed_submit(ctx, n, |enc| enc.copy_buffer_to_buffer(src.raw(), 0, dst.raw(), 0, TRANSFER_BYTES))
        })?;
        Ok(gbs(TRANSFER_BYTES, s))
    }

    /// Upload the way streaming does it: `queue.write_buffer` of [`UPLOAD_CHUNK`]-byte pieces of a host slice,
    /// timed from the first write until the submission that flushes them has completed (the host copy into
    /// wgpu's staging memory included). Best of [`SAMPLES`].
    fn upload_gbs(ctx: &GpuContext, host: &[u8], dst: &GpuBuffer) -> Result<f64> {
        let mut best = f64::INFINITY;
        for sample in 0..=SAMPLES {
            let t = Instant::now();
            for (i, chunk) in host.chunks(UPLOAD_CHUNK).enumerate() {
                ctx.gpu.queue.write_buffer(dst.raw(), (i * UPLOAD_CHUNK) as u64, chunk);
            }
            ctx.gpu.queue.submit(std::iter::empty());
            wait(ctx)?;
            if sample > 0 {
                best = best.min(t.elapsed().as_secs_f64()); // sample 0 warms up
            }
        }
        Ok(gbs(host.len() as u64, best))
    }

    /// Upload through a `MAP_WRITE | COPY_SRC` staging buffer: mapped, filled from the host slice, unmapped,
    /// copied into the device buffer, waited for. Best of [`SAMPLES`].
    fn staging_upload_gbs(ctx: &GpuContext, host: &[u8], dst: &GpuBuffer) -> Result<f64> {
        let usage = wgpu::BufferUsages::MAP_WRITE | wgpu::BufferUsages::COPY_SRC;
        let staging = ctx.pool.create("profile/staging", host.len() as u64, usage, Purpose::Staging)?;
        let mut best = f64::INFINITY;
        for sample in 0..=SAMPLES {
            let t = Instant::now();
            let (tx, rx) = std::sync::mpsc::channel();
            staging.raw().map_async(wgpu::MapMode::Write, .., move |r| {
                let _ = tx.send(r);
            });
            wait(ctx)?;
            rx.recv()
                .map_err(|_| Error::Gpu("the staging map was dropped".into()))?
                .map_err(|e| Error::Gpu(format!("mapping the staging buffer: {e}")))?;
            {
                let mut view = staging
                    .raw()
                    .get_mapped_range_mut(..host.len() as u64)
                    .map_err(|e| Error::Gpu(format!("mapping the staging buffer: {e}")))?;
                view.copy_from_slice(host);
            }
            staging.raw().unmap();
            let mut enc = ctx.encoder();
            enc.copy_buffer_to_buffer(staging.raw(), 0, dst.raw(), 0, host.len() as u64);
            ctx.gpu.queue.submit([enc.finish()]);
            wait(ctx)?;
            if sample > 0 {
                best = best.min(t.elapsed().as_secs_f64());
            }
        }
        Ok(gbs(host.len() as u64, best))
    }

    /// A [`MATVEC_DIM`]² int4 matvec with the kernel the engine picks on this adapter, GB/s of weight bytes
    /// (quants, scales and mins) read.
    fn matvec_gbs(ctx: &GpuContext) -> Result<f64> {
        let (rows, cols) = (MATVEC_DIM, MATVEC_DIM);
        let groups = rows * cols / GROUP;
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 33) as u32
        };
        let mut q = Vec::with_capacity(rows * cols / 2);
        for _ in 0..groups {
            q.extend(pack_int4_group(&std::array::from_fn(|_| (next() % 16) as u8)));
        }
        let f16s = |v: f32| vec![half::f16::from_f32(v).to_bits(); groups];
        let (scales, mins) = (f16s(0.002), f16s(-0.01));
        let m = Matrix::new(rows, cols, Weights::Int4 { q: &q, scales: &scales, mins: &mins })
            .map_err(|e| Error::Gpu(format!("profile matrix: {e}")))?;
        let weight_bytes = m.weight_bytes() as u64;
        let gm = GpuMatrix::upload(ctx, "profile", &m, 0)?;
        drop(q);
        let usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST;
        let x: Vec<f32> = (0..cols).map(|i| (i % 7) as f32 * 0.1).collect();
        let x = ctx.pool.init("profile/x", bytemuck::cast_slice(&x), usage, Purpose::Activations)?;
        let y = ctx.pool.storage("profile/y", 4 * rows as u64, Purpose::Activations)?;
        let step =
            ctx.pool.init("profile/step", bytemuck::cast_slice(&[1u32, 0, 0, 0]), usage, Purpose::Activations)?;
        let linear = Linear {
            mats: vec![Mat { m: &gm, out: 0, bias: None }],
            norm: None,
            output: Output::Store,
            step: &step,
            x: &x,
            y: &y,
            x_last: false,
            y_stride: rows as u32,
        };
        let mv = pollster::block_on(linear.matvec(ctx))?;
        let list: &[Dispatch] = std::slice::from_ref(&mv);
        let s = per_rep(10, |n| timed_submit(ctx, n, |enc| ctx.record(enc, &[list], 1)))?;
        Ok(gbs(weight_bytes, s))
    }

    /// GPU time of one small dispatch that depends on the one before (each reads and writes the same buffer,
    /// so the GPU puts a barrier between them), microseconds: 100 and 200 of them in one compute pass.
    fn dispatch_us(ctx: &GpuContext) -> Result<f64> {
        let usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST;
        let step = ctx.pool.init("profile/advance", &[0u8; 16], usage, Purpose::Activations)?;
        let one = pollster::block_on(misc::advance(ctx, &step))?;
        let s = per_rep(100, |n| {
            let list: Vec<&[Dispatch]> = (0..n).map(|_| std::slice::from_ref(&one)).collect();
            timed_submit(ctx, 1, |enc| ctx.record(enc, &list, 1))
        })?;
        Ok(s * 1e6)
    }
}
