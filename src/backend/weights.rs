//! A tensor of the model as the CPU kernels read it: slices of the mapped weight file, cast in place.

use crate::error::{Error, Result};
use crate::format::{DType, ModelDir, SectionKind, TensorView};
use kernels_cpu::{Matrix, Weights};

/// A checked tensor; [`WeightRef::matrix`] borrows its sections as a kernels-cpu [`Matrix`] with no copy.
#[derive(Clone)]
pub struct WeightRef {
    view: TensorView,
}

impl WeightRef {
    /// Loads `name` from `dir`, checking its shape against `shape`.
    pub fn load(dir: &ModelDir, name: &str, shape: &[u32]) -> Result<WeightRef> {
        let view = dir.tensor(name)?;
        if view.entry.shape != shape {
            return Err(Error::invalid(
                dir.weights_path(&view.entry.file),
                format!("tensor {name} has shape {:?}, the graph needs {shape:?}", view.entry.shape),
            ));
        }
        let w = WeightRef { view };
        w.weights()?; // dtype and alignment are checked once, here
        Ok(w)
    }

    pub fn dtype(&self) -> DType {
        self.view.entry.dtype
    }

    pub fn name(&self) -> &str {
        &self.view.entry.name
    }

    pub fn view(&self) -> &TensorView {
        &self.view
    }

    fn weights(&self) -> Result<Weights<'_>> {
        let cast_err = |what: &str| {
            Error::invalid(
                &self.view.entry.file,
                format!("tensor {}: {what} section is not aligned for its type", self.name()),
            )
        };
        let u16s = |kind| -> Result<&[u16]> {
            let b = self.view.section(kind).expect("layout sections were checked by the record parser");
            bytemuck::try_cast_slice(b).map_err(|_| cast_err("a parameter"))
        };
        let data = self.view.data();
        Ok(match self.dtype() {
            DType::F32 => Weights::F32(bytemuck::try_cast_slice(data).map_err(|_| cast_err("the data"))?),
            DType::F16 => Weights::F16(bytemuck::try_cast_slice(data).map_err(|_| cast_err("the data"))?),
            DType::Int8 => Weights::Int8 { q: bytemuck::cast_slice(data), scales: u16s(SectionKind::Scales)? },
            DType::Int4 => {
                Weights::Int4 { q: data, scales: u16s(SectionKind::Scales)?, mins: u16s(SectionKind::Mins)? }
            }
            DType::Ternary => Weights::Ternary { q: data, scales: u16s(SectionKind::Scales)? },
            DType::Bf16 => {
                return Err(Error::Unsupported(format!(
                    "tensor {}: bf16 weights are not executable; convert again",
                    self.name()
                )))
            }
            DType::Q4K => Weights::Q4K(data),
            DType::Q5K => Weights::Q5K(data),
            DType::Q6K => Weights::Q6K(data),
            DType::Q5_0 => Weights::Q5_0(data),
            DType::Q5_1 => Weights::Q5_1(data),
        })
    }

    /// The tensor as a `[rows, cols]` matrix (a 1-D tensor is one row).
    pub fn matrix(&self) -> Matrix<'_> {
        let shape = &self.view.entry.shape;
        let (rows, cols) = match shape.as_slice() {
            [n] => (1, *n as usize),
            [r, c] => (*r as usize, *c as usize),
            other => (other[..other.len() - 1].iter().product::<u32>() as usize, *other.last().unwrap() as usize),
        };
        Matrix::new(rows, cols, self.weights().expect("checked at load"))
            .expect("record parser checked the section sizes")
    }

    /// An f32 vector (norm weights, biases), dequantized if stored otherwise.
    pub fn to_f32(&self) -> Vec<f32> {
        let m = self.matrix();
        let mut out = vec![0f32; m.rows * m.cols];
        for (r, row) in out.chunks_exact_mut(m.cols).enumerate() {
            m.dequant_row(r, row);
        }
        out
    }

    /// The f32 slice of an F32 tensor, borrowed from the file.
    pub fn f32_slice(&self) -> Option<&[f32]> {
        match self.weights().ok()? {
            Weights::F32(v) => Some(v),
            _ => None,
        }
    }
}
