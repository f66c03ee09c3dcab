//! [`GpuContext`]: the device, the buffer pool and the pipeline cache together, with the few verbs every op and
//! the engine use: bind, record a list of dispatches into one compute pass, submit, read back.

use super::buffers::{BufferPool, GpuBuffer};
use super::device::{DeviceOptions, GpuDevice};
use super::pipelines::{Pipeline, PipelineCache};
use super::timer::KernelTimer;
use crate::error::{Error, Result};
use std::sync::Arc;

/// How many workgroups a dispatch runs, given the token count `n` of the forward chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Grid {
    Fixed([u32; 3]),
    /// `x = ceil(n / per)`, `y` fixed.
    TokensX {
        per: u32,
        y: u32,
    },
    /// `x` fixed, `y = n`.
    TokensY {
        x: u32,
    },
    /// `x` and `y` fixed, `z = n`.
    TokensZ {
        x: u32,
        y: u32,
    },
}

impl Grid {
    /// The grid as four words, `[kind, a, b, c]`, for a kernel that computes [`Grid::groups`] on the GPU
    /// (shaders/moe.wgsl's `gate`): kind 0 `Fixed([a, b, c])`, 1 `TokensX { per: a, y: b }`, 2 `TokensY { x: a }`,
    /// 3 `TokensZ { x: a, y: b }`.
    pub fn words(&self) -> [u32; 4] {
        match *self {
            Grid::Fixed([x, y, z]) => [0, x, y, z],
            Grid::TokensX { per, y } => [1, per, y, 0],
            Grid::TokensY { x } => [2, x, 0, 0],
            Grid::TokensZ { x, y } => [3, x, y, 0],
        }
    }

    pub fn groups(&self, n: u32) -> [u32; 3] {
        match *self {
            Grid::Fixed(g) => g,
            Grid::TokensX { per, y } => [n.div_ceil(per), y, 1],
            Grid::TokensY { x } => [x, n, 1],
            Grid::TokensZ { x, y } => [x, y, n],
        }
    }
}

/// One kernel launch: a pipeline, its bindings and its grid, and the parameter block it owns.
pub struct Dispatch {
    pub pipeline: Arc<Pipeline>,
    pub bind_group: wgpu::BindGroup,
    pub grid: Grid,
    pub params: Option<GpuBuffer>,
    /// Launched with the workgroup counts an earlier dispatch of the same pass wrote (`grid`'s counts, or none:
    /// a mixture of experts' expert that no token was routed to); `None`: `grid`'s counts.
    pub indirect: Option<Indirect>,
}

/// Where a [`Dispatch`]'s workgroup counts are: three u32 at byte `offset` of `args` (an INDIRECT buffer).
#[derive(Clone)]
pub struct Indirect {
    pub args: Arc<GpuBuffer>,
    pub offset: u64,
}

/// A storage binding over bytes `[start, end)` of a buffer, and the word offsets of things inside it.
#[derive(Clone, Copy)]
pub struct Region<'a> {
    pub buffer: &'a GpuBuffer,
    pub start: u64,
    pub end: u64,
}

impl<'a> Region<'a> {
    /// The whole buffer.
    pub fn whole(buffer: &'a GpuBuffer) -> Region<'a> {
        Region { buffer, start: 0, end: buffer.size() }
    }

    /// The smallest binding of `buffer` holding every `(offset, bytes)` span: its start aligned down to 256
    /// bytes (the storage offset alignment of every adapter), its end rounded up to a vec4.
    pub fn covering(buffer: &'a GpuBuffer, spans: &[(u64, u64)]) -> Region<'a> {
        let start = spans.iter().map(|s| s.0).min().unwrap_or(0) / 256 * 256;
        let end = spans.iter().map(|s| s.0 + s.1).max().unwrap_or(16).div_ceil(16) * 16;
        Region { buffer, start, end: end.min(buffer.size()) }
    }

    /// Word offset of byte `offset` of the buffer inside this binding.
    pub fn word(&self, offset: u64) -> u32 {
        debug_assert!(offset >= self.start && offset.is_multiple_of(4) && offset <= self.end);
        ((offset - self.start) / 4) as u32
    }

    pub fn size(&self) -> u64 {
        self.end - self.start
    }

    pub fn binding(&self) -> wgpu::BindingResource<'a> {
        self.buffer.range(self.start, self.size())
    }
}

pub struct GpuContext {
    pub gpu: GpuDevice,
    pub pool: BufferPool,
    pub pipelines: PipelineCache,
    /// Per-dispatch GPU times when `OMEX_GPU_KERNEL_TIMES=1`.
    timer: Option<KernelTimer>,
}

impl GpuContext {
    pub async fn open(opts: &DeviceOptions) -> Result<GpuContext> {
        let gpu = GpuDevice::open(opts).await?;
        let pool = BufferPool::new(&gpu.device, &gpu.limits);
        let pipelines = PipelineCache::new(&gpu.device);
        let timer = KernelTimer::from_env(&gpu.device, &gpu.queue);
        Ok(GpuContext { gpu, pool, pipelines, timer })
    }

    /// [`GpuContext::open`], waiting for it (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn open_blocking(opts: &DeviceOptions) -> Result<GpuContext> {
        pollster::block_on(GpuContext::open(opts))
    }

    pub fn device(&self) -> &wgpu::Device {
        &self.gpu.device
    }

    /// Fails unless `region` fits one storage binding on this adapter.
    pub fn check_binding(&self, what: &str, region: &Region) -> Result<()> {
        let max = self.gpu.limits.max_storage_buffer_binding_size;
        if region.size() > max {
            return Err(Error::Unsupported(format!(
                "{what}: {} bytes exceed this adapter's largest storage binding ({max} bytes)",
                region.size()
            )));
        }
        Ok(())
    }

    /// A bind group for `pipeline`, one resource per binding of its kernel, in the kernel's order.
    pub fn bind(&self, pipeline: &Pipeline, resources: &[wgpu::BindingResource]) -> wgpu::BindGroup {
        let bindings = pipeline.kernel.bindings;
        assert_eq!(
            resources.len(),
            bindings.len(),
            "kernel {} takes {} bindings",
            pipeline.kernel.name,
            bindings.len()
        );
        let entries: Vec<_> = bindings
            .iter()
            .zip(resources)
            .map(|(&(binding, _), r)| wgpu::BindGroupEntry { binding, resource: r.clone() })
            .collect();
        self.gpu.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(pipeline.kernel.name),
            layout: &pipeline.layout,
            entries: &entries,
        })
    }

    /// Splits `count` workgroups into an x-y grid within the adapter's per-dimension limit.
    pub fn grid_1d(&self, count: u32) -> [u32; 3] {
        let max = self.gpu.limits.max_compute_workgroups_per_dimension.max(1);
        let x = count.clamp(1, max);
        [x, count.div_ceil(x).max(1), 1]
    }

    /// Records the dispatch lists, in order, for a chunk of `n` tokens into one compute pass of `encoder`.
    pub fn record(&self, encoder: &mut wgpu::CommandEncoder, lists: &[&[Dispatch]], n: u32) {
        let count = lists.iter().map(|l| l.len()).sum();
        let mut times = self.timer.as_ref().map(|t| t.begin(&self.gpu.device, count));
        let mut pass =
            encoder.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("omex"), timestamp_writes: None });
        let mut recorded = 0;
        for d in lists.iter().flat_map(|l| l.iter()) {
            let [x, y, z] = d.grid.groups(n);
            if x == 0 || y == 0 || z == 0 {
                continue;
            }
            if let Some(t) = times.as_mut() {
                KernelTimer::stamp(&mut pass, t, recorded, Some(format!("{} [{x}x{y}x{z}]", d.pipeline.kernel.name)));
            }
            pass.set_pipeline(&d.pipeline.pipeline);
            pass.set_bind_group(0, &d.bind_group, &[]);
            match &d.indirect {
                Some(i) => pass.dispatch_workgroups_indirect(i.args.raw(), i.offset),
                None => pass.dispatch_workgroups(x, y, z),
            }
            recorded += 1;
        }
        if let (Some(timer), Some(mut t)) = (self.timer.as_ref(), times) {
            KernelTimer::stamp(&mut pass, &mut t, recorded, None);
            drop(pass);
            timer.finish(&self.gpu.device, encoder, t);
        }
    }

    pub fn encoder(&self) -> wgpu::CommandEncoder {
        self.gpu.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("omex") })
    }

    /// Runs `dispatches` for `n` tokens in one command buffer.
    pub fn run(&self, dispatches: &[Dispatch], n: u32) {
        let mut encoder = self.encoder();
        self.record(&mut encoder, &[dispatches], n);
        self.gpu.queue.submit([encoder.finish()]);
    }

    /// Maps the first `size` bytes of a readback buffer once the GPU is done with it, and copies them out.
    pub async fn map_read(&self, staging: &GpuBuffer, size: u64) -> Result<Vec<u8>> {
        let slice = staging.raw().slice(..size);
        let (tx, rx) = futures::channel::oneshot::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        #[cfg(not(target_arch = "wasm32"))]
        self.gpu
            .device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Gpu(format!("waiting for the GPU: {e}")))?;
        let mapped = rx.await.map_err(|_| Error::Gpu("the readback was dropped".into()))?;
        mapped.map_err(|e| Error::Gpu(format!("reading results back: {e}")))?;
        let data = slice.get_mapped_range().map_err(|e| Error::Gpu(format!("reading results back: {e}")))?.to_vec();
        staging.raw().unmap();
        #[cfg(not(target_arch = "wasm32"))]
        if let Some(t) = &self.timer {
            t.collect(&self.gpu.device);
        }
        self.gpu.check()?;
        Ok(data)
    }

    /// Copies `size` bytes of `buffer` from `offset` into a fresh readback buffer and reads them (tests, tools).
    pub async fn read(&self, buffer: &GpuBuffer, offset: u64, size: u64) -> Result<Vec<u8>> {
        let staging = self.pool.readback("readback", size)?;
        let mut encoder = self.encoder();
        encoder.copy_buffer_to_buffer(buffer.raw(), offset, staging.raw(), 0, size.div_ceil(4) * 4);
        self.gpu.queue.submit([encoder.finish()]);
        let mut data = self.map_read(&staging, size.div_ceil(4) * 4).await?;
        data.truncate(size as usize);
        Ok(data)
    }

    /// [`GpuContext::read`] as f32s.
    pub async fn read_f32(&self, buffer: &GpuBuffer, offset: u64, count: usize) -> Result<Vec<f32>> {
        let bytes = self.read(buffer, offset, 4 * count as u64).await?;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }

    /// [`GpuContext::read`] as u32s.
    pub async fn read_u32(&self, buffer: &GpuBuffer, offset: u64, count: usize) -> Result<Vec<u32>> {
        let bytes = self.read(buffer, offset, 4 * count as u64).await?;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }

    /// Writes `data` into `buffer` at `offset` before the next submission runs.
    pub fn write(&self, buffer: &GpuBuffer, offset: u64, data: &[u8]) {
        self.gpu.queue.write_buffer(buffer.raw(), offset, data);
    }
}

impl Drop for GpuContext {
    fn drop(&mut self) {
        if let Some(t) = &self.timer {
            #[cfg(not(target_arch = "wasm32"))]
            t.collect(&self.gpu.device);
            eprint!("{}", t.report());
        }
    }
}
