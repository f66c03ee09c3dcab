//! Per-dispatch GPU times, for kernel work: with `OMEX_GPU_KERNEL_TIMES=1` (and an adapter offering timestamp
//! queries inside passes), every recorded dispatch is bracketed by timestamps; the times are gathered once the
//! GPU is done with them and summed per kernel and grid, and the table goes to stderr when the context closes.
//! A timestamp between dependent dispatches also measures the barrier and the launch gap, which is the point:
//! the total is what a decode step costs on the GPU.

use std::collections::BTreeMap;
use std::sync::Mutex;

/// At most this many timestamps per query set (wgpu's limit is 4096).
const QUERIES: u32 = 4096;

/// One recorded pass whose timestamps are not read yet. (Only native builds read them back: `collect` waits on
/// the device, which a browser cannot.)
#[cfg_attr(target_arch = "wasm32", allow(dead_code))]
struct Pending {
    readback: wgpu::Buffer,
    labels: Vec<String>,
}

#[derive(Default)]
struct Totals {
    /// (kernel and grid) -> (dispatches, nanoseconds)
    by_kernel: BTreeMap<String, (u64, f64)>,
    passes: u64,
}

pub struct KernelTimer {
    /// Nanoseconds per timestamp tick.
    #[cfg_attr(target_arch = "wasm32", allow(dead_code))]
    period: f64,
    pending: Mutex<Vec<Pending>>,
    totals: Mutex<Totals>,
}

/// A query set being written by one pass, and the labels of its dispatches so far.
pub struct PassTimes {
    set: wgpu::QuerySet,
    labels: Vec<String>,
}

impl KernelTimer {
    /// A timer when `OMEX_GPU_KERNEL_TIMES=1` and the device has timestamp queries inside passes.
    pub fn from_env(device: &wgpu::Device, queue: &wgpu::Queue) -> Option<KernelTimer> {
        if !std::env::var("OMEX_GPU_KERNEL_TIMES").is_ok_and(|v| v == "1") {
            return None;
        }
        let needed = wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES;
        if !device.features().contains(needed) {
            log::warn!("OMEX_GPU_KERNEL_TIMES: this adapter has no timestamp queries inside passes");
            return None;
        }
        Some(KernelTimer {
            period: queue.get_timestamp_period() as f64,
            pending: Mutex::new(Vec::new()),
            totals: Mutex::new(Totals::default()),
        })
    }

    /// The features to ask the device for when the environment asks for kernel times.
    pub fn wanted_features() -> wgpu::Features {
        if std::env::var("OMEX_GPU_KERNEL_TIMES").is_ok_and(|v| v == "1") {
            wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES
        } else {
            wgpu::Features::empty()
        }
    }

    /// Query sets for a pass of `dispatches` dispatches (one timestamp before each and one after the last).
    pub fn begin(&self, device: &wgpu::Device, dispatches: usize) -> Vec<PassTimes> {
        let sets = (dispatches + 1).div_ceil(QUERIES as usize - 1).max(1);
        (0..sets)
            .map(|_| PassTimes {
                set: device.create_query_set(&wgpu::QuerySetDescriptor {
                    label: Some("kernel times"),
                    ty: wgpu::QueryType::Timestamp,
                    count: QUERIES,
                }),
                labels: Vec::new(),
            })
            .collect()
    }

    /// Writes the timestamp before dispatch number `i` of the pass (or after the last one, `label` None).
    pub fn stamp(pass: &mut wgpu::ComputePass, times: &mut [PassTimes], i: usize, label: Option<String>) {
        // Each set holds QUERIES - 1 dispatches; its last timestamp closes them, and the next set starts over.
        let per = QUERIES as usize - 1;
        let (set, at) = (i / per, i % per);
        if at == 0 && set > 0 {
            let prev = &mut times[set - 1];
            pass.write_timestamp(&prev.set, per as u32);
        }
        let t = &mut times[set];
        pass.write_timestamp(&t.set, at as u32);
        if let Some(l) = label {
            t.labels.push(l);
        }
    }

    /// Resolves the pass's timestamps into buffers read once the GPU is done.
    pub fn finish(&self, device: &wgpu::Device, encoder: &mut wgpu::CommandEncoder, times: Vec<PassTimes>) {
        let mut pending = self.pending.lock().expect("timer poisoned");
        for t in times.into_iter().filter(|t| !t.labels.is_empty()) {
            let count = t.labels.len() as u32 + 1;
            let bytes = 8 * count as u64;
            let resolve = device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("kernel times resolve"),
                size: bytes.div_ceil(256) * 256,
                usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            });
            let readback = device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("kernel times readback"),
                size: bytes,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            encoder.resolve_query_set(&t.set, 0..count, &resolve, 0);
            encoder.copy_buffer_to_buffer(&resolve, 0, &readback, 0, bytes);
            pending.push(Pending { readback, labels: t.labels });
        }
    }

    /// Reads the timestamps of every pass submitted so far (waits for the GPU).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn collect(&self, device: &wgpu::Device) {
        let pending: Vec<Pending> = std::mem::take(&mut *self.pending.lock().expect("timer poisoned"));
        if pending.is_empty() {
            return;
        }
        for p in &pending {
            p.readback.slice(..).map_async(wgpu::MapMode::Read, |_| {});
        }
        if device.poll(wgpu::PollType::wait_indefinitely()).is_err() {
            return;
        }
        let mut totals = self.totals.lock().expect("timer poisoned");
        for p in pending {
            let Ok(view) = p.readback.slice(..).get_mapped_range() else { continue };
            let ticks: Vec<u64> = bytemuck::pod_collect_to_vec(&view);
            drop(view);
            totals.passes += 1;
            for (i, label) in p.labels.into_iter().enumerate() {
                let ns = ticks[i + 1].saturating_sub(ticks[i]) as f64 * self.period;
                let e = totals.by_kernel.entry(label).or_default();
                e.0 += 1;
                e.1 += ns;
            }
        }
    }

    /// The table: per kernel and grid, dispatches, total and mean microseconds, share of the total.
    pub fn report(&self) -> String {
        let totals = self.totals.lock().expect("timer poisoned");
        let all: f64 = totals.by_kernel.values().map(|v| v.1).sum();
        let mut rows: Vec<_> = totals.by_kernel.iter().collect();
        rows.sort_by(|a, b| b.1 .1.total_cmp(&a.1 .1));
        let mut out = format!(
            "GPU kernel times ({} passes, {:.3} ms in all):\n{:<48} {:>9} {:>11} {:>9} {:>6}\n",
            totals.passes,
            all / 1e6,
            "kernel [grid]",
            "launches",
            "total ms",
            "mean us",
            "share"
        );
        for (label, &(n, ns)) in rows {
            out.push_str(&format!(
                "{label:<48} {n:>9} {:>11.3} {:>9.2} {:>5.1}%\n",
                ns / 1e6,
                ns / 1e3 / n as f64,
                100.0 * ns / all.max(1.0)
            ));
        }
        out
    }
}
