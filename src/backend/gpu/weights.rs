//! Weights on the GPU: each `weights/*.bin` file uploaded once, its bytes as they are on disk, and matrices as
//! (file, layout, shape, section offsets) that kernels bind directly.

use super::buffers::{GpuBuffer, Purpose};
use super::context::{GpuContext, Region};
use crate::error::{Error, Result};
use crate::format::{DType, SectionKind, TensorEntry};
use kernels_cpu::{Matrix, Weights};
use std::sync::Arc;

/// The layout code the WGSL kernels take as `LAYOUT` (see shaders/quant.wgsl).
pub fn layout_code(dtype: DType) -> Option<u32> {
    match dtype {
        DType::F32 => Some(0),
        DType::F16 => Some(1),
        DType::Int8 => Some(2),
        DType::Int4 => Some(3),
        DType::Ternary => Some(4),
        DType::Q4K => Some(5),
        DType::Q5K => Some(6),
        DType::Q6K => Some(7),
        DType::Q5_0 => Some(8),
        DType::Q5_1 => Some(9),
        DType::Bf16 => None,
    }
}

/// One weight file in GPU memory.
pub struct GpuFile {
    pub name: String,
    pub buffer: GpuBuffer,
}

impl GpuFile {
    pub fn upload(ctx: &GpuContext, name: &str, bytes: &[u8]) -> Result<GpuFile> {
        let usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC;
        let buffer = ctx.pool.init(&format!("weights/{name}"), bytes, usage, Purpose::Weights)?;
        Ok(GpuFile { name: name.to_string(), buffer })
    }
}

/// A `[rows, cols]` matrix (a 1-D tensor is one row) inside a [`GpuFile`].
#[derive(Clone)]
pub struct GpuMatrix {
    pub name: String,
    pub file: Arc<GpuFile>,
    pub dtype: DType,
    pub rows: u32,
    pub cols: u32,
    /// (byte offset in the file, bytes) of the data, scales and mins sections.
    pub data: (u64, u64),
    pub scales: Option<(u64, u64)>,
    pub mins: Option<(u64, u64)>,
}

impl GpuMatrix {
    /// The tensor of an index entry, whose file is `file`.
    pub fn from_entry(file: Arc<GpuFile>, e: &TensorEntry) -> Result<GpuMatrix> {
        if layout_code(e.dtype).is_none() {
            return Err(Error::Unsupported(format!(
                "tensor {}: {} weights are not executable; convert again",
                e.name, e.dtype
            )));
        }
        let (rows, cols) = match e.shape.as_slice() {
            [n] => (1, *n),
            [r, c] => (*r, *c),
            other => (other[..other.len() - 1].iter().product(), *other.last().expect("ndim >= 1")),
        };
        let sec = |k| e.section(k).map(|s| (s.offset, s.bytes));
        Ok(GpuMatrix {
            name: e.name.clone(),
            file,
            dtype: e.dtype,
            rows,
            cols,
            data: sec(SectionKind::Data).expect("every record has a data section"),
            scales: sec(SectionKind::Scales),
            mins: sec(SectionKind::Mins),
        })
    }

    /// Uploads a kernels-cpu matrix as a weight file would hold it: each section 256-aligned, the first at
    /// `lead` bytes (tests use a non-zero lead to check that kernels honour the offsets).
    pub fn upload(ctx: &GpuContext, name: &str, m: &Matrix, lead: u64) -> Result<GpuMatrix> {
        let mut bytes = vec![0u8; lead as usize];
        let mut put = |b: &[u8]| {
            bytes.resize(bytes.len().div_ceil(256) * 256, 0);
            let at = bytes.len() as u64;
            bytes.extend_from_slice(b);
            (at, b.len() as u64)
        };
        let (dtype, data, scales, mins) = match m.w {
            Weights::F32(v) => (DType::F32, put(bytemuck::cast_slice(v)), None, None),
            Weights::F16(v) => (DType::F16, put(bytemuck::cast_slice(v)), None, None),
            Weights::Int8 { q, scales } => {
                (DType::Int8, put(bytemuck::cast_slice(q)), Some(put(bytemuck::cast_slice(scales))), None)
            }
            Weights::Int4 { q, scales, mins } => {
                let q = put(q);
                (DType::Int4, q, Some(put(bytemuck::cast_slice(scales))), Some(put(bytemuck::cast_slice(mins))))
            }
            Weights::Ternary { q, scales } => (DType::Ternary, put(q), Some(put(bytemuck::cast_slice(scales))), None),
            Weights::Q4K(b) => (DType::Q4K, put(b), None, None),
            Weights::Q5K(b) => (DType::Q5K, put(b), None, None),
            Weights::Q6K(b) => (DType::Q6K, put(b), None, None),
            Weights::Q5_0(b) => (DType::Q5_0, put(b), None, None),
            Weights::Q5_1(b) => (DType::Q5_1, put(b), None, None),
            Weights::Q8_0(_) => {
                return Err(Error::Unsupported(format!(
                    "{name}: GGUF q8_0 blocks are stored as int8 (their scales apart); the GPU reads that layout"
                )))
            }
        };
        bytes.resize(bytes.len().div_ceil(256) * 256, 0);
        let file = Arc::new(GpuFile::upload(ctx, name, &bytes)?);
        Ok(GpuMatrix {
            name: name.to_string(),
            file,
            dtype,
            rows: m.rows as u32,
            cols: m.cols as u32,
            data,
            scales,
            mins,
        })
    }

    pub fn layout(&self) -> u32 {
        layout_code(self.dtype).expect("checked when made")
    }

    /// The byte spans a binding of this matrix must cover.
    pub fn spans(&self) -> Vec<(u64, u64)> {
        [Some(self.data), self.scales, self.mins].into_iter().flatten().collect()
    }

    /// The binding of this matrix alone.
    pub fn region(&self) -> Region<'_> {
        Region::covering(&self.file.buffer, &self.spans())
    }

    /// `[rows, data, scales, mins]` as word offsets inside `region` (absent sections point at the data).
    pub fn words(&self, region: &Region) -> [u32; 4] {
        let q = region.word(self.data.0);
        let s = self.scales.map_or(q, |s| region.word(s.0));
        let m = self.mins.map_or(q, |s| region.word(s.0));
        [self.rows, q, s, m]
    }
}
