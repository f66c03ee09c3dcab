//! Every GPU buffer omex makes comes from one [`BufferPool`], which accounts each byte by purpose and refuses an
//! allocation past the budget (the plan's cap on GPU memory). A [`GpuBuffer`] gives its bytes back when dropped.

use crate::error::{Error, Result};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// What a buffer holds, for the accounting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    Weights = 0,
    KvCache = 1,
    Activations = 2,
    /// Uniform parameter blocks.
    Params = 3,
    /// Buffers the CPU reads back from.
    Staging = 4,
    /// LoRA adapter matrices (resident, uploaded once per matrix).
    Adapters = 5,
}

const PURPOSES: usize = 6;

#[derive(Default)]
struct Counters {
    in_use: AtomicU64,
    peak: AtomicU64,
    by_purpose: [AtomicU64; PURPOSES],
    /// 0: no budget.
    budget: AtomicU64,
}

/// Bytes in use, per purpose and in total.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryReport {
    pub in_use: u64,
    pub peak: u64,
    pub weights: u64,
    pub kv_cache: u64,
    pub activations: u64,
    pub params: u64,
    pub staging: u64,
    pub adapters: u64,
}

/// A GPU buffer whose bytes are counted by the pool that made it.
pub struct GpuBuffer {
    buffer: wgpu::Buffer,
    size: u64,
    purpose: Purpose,
    counters: Arc<Counters>,
}

impl GpuBuffer {
    pub fn raw(&self) -> &wgpu::Buffer {
        &self.buffer
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// The whole buffer as a binding.
    pub fn binding(&self) -> wgpu::BindingResource<'_> {
        self.buffer.as_entire_binding()
    }

    /// `size` bytes from `offset` as a binding.
    pub fn range(&self, offset: u64, size: u64) -> wgpu::BindingResource<'_> {
        wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer: &self.buffer,
            offset,
            size: Some(wgpu::BufferSize::new(size).expect("a binding is never empty")),
        })
    }
}

impl Drop for GpuBuffer {
    fn drop(&mut self) {
        self.counters.in_use.fetch_sub(self.size, Ordering::Relaxed);
        self.counters.by_purpose[self.purpose as usize].fetch_sub(self.size, Ordering::Relaxed);
        self.buffer.destroy();
    }
}

/// The one place GPU memory is allocated.
pub struct BufferPool {
    device: wgpu::Device,
    max_buffer: u64,
    counters: Arc<Counters>,
}

/// Buffers are sized in whole vec4s (wgpu copies and binds 4-byte multiples; the kernels read vec4s).
fn words(bytes: u64) -> u64 {
    bytes.div_ceil(16).max(1) * 16
}

impl BufferPool {
    pub fn new(device: &wgpu::Device, limits: &wgpu::Limits) -> BufferPool {
        BufferPool { device: device.clone(), max_buffer: limits.max_buffer_size, counters: Arc::default() }
    }

    /// Caps the bytes in use (`None`: no cap). Buffers already made stay.
    pub fn set_budget(&self, bytes: Option<u64>) {
        self.counters.budget.store(bytes.unwrap_or(0), Ordering::Relaxed);
    }

    pub fn report(&self) -> MemoryReport {
        let c = &self.counters;
        let p = |i: Purpose| c.by_purpose[i as usize].load(Ordering::Relaxed);
        MemoryReport {
            in_use: c.in_use.load(Ordering::Relaxed),
            peak: c.peak.load(Ordering::Relaxed),
            weights: p(Purpose::Weights),
            kv_cache: p(Purpose::KvCache),
            activations: p(Purpose::Activations),
            params: p(Purpose::Params),
            staging: p(Purpose::Staging),
            adapters: p(Purpose::Adapters),
        }
    }

    fn reserve(&self, label: &str, size: u64, purpose: Purpose) -> Result<()> {
        if size > self.max_buffer {
            return Err(Error::Gpu(format!(
                "{label}: {size} bytes exceed the adapter's largest buffer ({} bytes)",
                self.max_buffer
            )));
        }
        let c = &self.counters;
        let budget = c.budget.load(Ordering::Relaxed);
        let now = c.in_use.fetch_add(size, Ordering::Relaxed) + size;
        if budget != 0 && now > budget {
            c.in_use.fetch_sub(size, Ordering::Relaxed);
            return Err(Error::Gpu(format!(
                "{label}: {size} more bytes would exceed the GPU memory budget ({budget} bytes, {} in use)",
                now - size
            )));
        }
        c.peak.fetch_max(now, Ordering::Relaxed);
        c.by_purpose[purpose as usize].fetch_add(size, Ordering::Relaxed);
        Ok(())
    }

    fn wrap(&self, buffer: wgpu::Buffer, size: u64, purpose: Purpose) -> GpuBuffer {
        GpuBuffer { buffer, size, purpose, counters: self.counters.clone() }
    }

    /// An uninitialised buffer of `size` bytes (rounded up to whole words).
    pub fn create(&self, label: &str, size: u64, usage: wgpu::BufferUsages, purpose: Purpose) -> Result<GpuBuffer> {
        let size = words(size);
        self.reserve(label, size, purpose)?;
        let buffer = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size,
            usage,
            mapped_at_creation: false,
        });
        Ok(self.wrap(buffer, size, purpose))
    }

    /// A storage buffer the kernels read and write, also a copy source and destination.
    pub fn storage(&self, label: &str, size: u64, purpose: Purpose) -> Result<GpuBuffer> {
        let usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST;
        self.create(label, size, usage, purpose)
    }

    /// A buffer holding `data` (zero-padded to whole words), written at creation.
    pub fn init(&self, label: &str, data: &[u8], usage: wgpu::BufferUsages, purpose: Purpose) -> Result<GpuBuffer> {
        let size = words(data.len() as u64);
        self.reserve(label, size, purpose)?;
        let buffer = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size,
            usage,
            mapped_at_creation: true,
        });
        {
            let mut view = buffer.get_mapped_range_mut(..).map_err(|e| Error::Gpu(format!("{label}: {e}")))?;
            view.slice(..data.len()).copy_from_slice(data);
            let pad = size as usize - data.len();
            view.slice(data.len()..).copy_from_slice(&[0u8; 16][..pad]);
        }
        buffer.unmap();
        Ok(self.wrap(buffer, size, purpose))
    }

    /// A uniform parameter block.
    pub fn uniform(&self, label: &str, data: &[u8]) -> Result<GpuBuffer> {
        let usage = wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST;
        self.init(label, data, usage, Purpose::Params)
    }

    /// A buffer the CPU maps to read results back.
    pub fn readback(&self, label: &str, size: u64) -> Result<GpuBuffer> {
        let usage = wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST;
        self.create(label, size, usage, Purpose::Staging)
    }
}
