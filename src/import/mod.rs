//! Importing models into omex: readers for GGUF ([`gguf`]) and safetensors ([`safetensors`]), the mapping of
//! a GGUF llama/qwen2 file ([`gguf_model`]) or a Hugging Face directory ([`hf`]) to a typed
//! [`Transformer`] and a list of source tensors, and the conversion that writes a `model.omex/` directory
//! ([`convert`]).

pub mod convert;
pub mod encode;
pub mod gguf;
pub mod gguf_model;
mod gguf_value;
pub mod hf;
pub mod lora;
pub mod lora_gguf;
pub mod merge;
mod output;
pub mod safetensors;

use crate::error::{Error, Result};
use crate::graph::Transformer;
use crate::quant::GgmlType;
use crate::tokenizer::GgufVocab;
use std::path::{Path, PathBuf};

pub use convert::{convert, Event, Options, Summary};
pub use encode::encode;

/// Where a source tensor's bytes are.
#[derive(Clone, Debug, PartialEq)]
pub enum Loc {
    /// Index into the GGUF header's tensor list.
    Gguf(usize),
    /// Expert `expert` of a GGUF tensor that stacks `experts` experts' matrices (`blk.N.ffn_*_exps`, ggml dims
    /// `[cols, rows, experts]`): its own contiguous slab, a `1 / experts` share of the tensor's bytes.
    GgufExpert { tensor: usize, expert: u32, experts: u32 },
    /// Name in the safetensors checkpoint.
    Safetensors(String),
    /// Outputs `outputs` of a `Conv1D` weight `[in, out]` (or bias `[out]`) in the safetensors checkpoint, as
    /// a linear layer's `[len, in]` (or `[len]`): GPT-2 stores its projections transposed, and q, k and v in
    /// one tensor.
    Conv1d { name: String, outputs: std::ops::Range<u32> },
}

/// One tensor to convert: its omex name and shape, its source type (safetensors F32/F16/BF16 share ggml's
/// byte layout, so every source is described by a ggml type) and where its bytes are.
#[derive(Clone, Debug, PartialEq)]
pub struct SourceTensor {
    pub name: String,
    /// Outermost first: a matrix is `[rows, cols]`.
    pub shape: Vec<u32>,
    pub ty: GgmlType,
    pub loc: Loc,
    /// The source's own name for the tensor.
    pub source_name: String,
}

/// The files a model is read from.
pub enum Store {
    Gguf(gguf::GgufFile),
    Safetensors(safetensors::Checkpoint),
}

/// Where the tokenizer comes from.
pub enum TokenizerSource {
    Gguf(Box<GgufVocab>),
    /// A Hugging Face directory holding `tokenizer.json` (and its config files).
    HfDir(PathBuf),
}

/// A model ready to convert.
pub struct SourceModel {
    pub path: PathBuf,
    pub store: Store,
    pub transformer: Transformer,
    pub tensors: Vec<SourceTensor>,
    pub tokenizer: TokenizerSource,
    pub name: String,
    pub license: Option<String>,
    pub version: Option<String>,
    /// "GGUF v3", "safetensors".
    pub format: String,
    pub warnings: Vec<String>,
}

impl SourceModel {
    /// Opens a GGUF file, a Hugging Face model directory, or a `.safetensors` file inside one.
    pub fn open(path: &Path) -> Result<SourceModel> {
        if path.is_dir() {
            return hf::open(path);
        }
        let mut magic = [0u8; 4];
        let n = {
            use std::io::Read;
            let mut f = crate::files::open_regular(path).map_err(|e| Error::io(path, e))?;
            f.read(&mut magic).map_err(|e| Error::io(path, e))?
        };
        if n == 4 && magic == gguf::MAGIC {
            return gguf_model::open(path);
        }
        if path.extension().is_some_and(|e| e == "safetensors")
            || path.file_name().is_some_and(|f| f == safetensors::INDEX_FILE)
        {
            let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
            return hf::open(dir);
        }
        if path.extension().is_some_and(|e| e == "gguf") {
            // Let the GGUF reader name what is wrong with the magic or the length.
            return gguf_model::open(path);
        }
        Err(Error::Usage(format!(
            "{}: not a GGUF file, a .safetensors file or a Hugging Face model directory",
            path.display()
        )))
    }

    /// The bytes of a source tensor (a copy when they are taken apart from a `Conv1D` tensor).
    pub fn data(&self, t: &SourceTensor) -> Result<std::borrow::Cow<'_, [u8]>> {
        let vanished = |n: &str| Error::invalid(&self.path, format!("tensor {n:?} vanished"));
        match (&self.store, &t.loc) {
            (Store::Gguf(f), Loc::Gguf(i)) => Ok(f.data(&f.header.tensors[*i]).into()),
            (Store::Gguf(f), Loc::GgufExpert { tensor, expert, experts }) => {
                let all = f.data(&f.header.tensors[*tensor]);
                let per = all.len() / *experts as usize;
                let at = *expert as usize * per;
                all.get(at..at + per).map(Into::into).ok_or_else(|| vanished(&t.name))
            }
            (Store::Safetensors(c), Loc::Safetensors(n)) => {
                c.get(n).map(|(f, st)| f.data(st).into()).ok_or_else(|| vanished(n))
            }
            (Store::Safetensors(c), Loc::Conv1d { name, outputs }) => {
                let (f, st) = c.get(name).ok_or_else(|| vanished(name))?;
                let elem = t.ty.block_bytes();
                conv1d_outputs(f.data(st), &st.shape, elem, outputs.clone()).map(Into::into).ok_or_else(|| {
                    Error::invalid(&f.path, format!("tensor {name:?}: outputs {outputs:?} of {:?}", st.shape))
                })
            }
            _ => Err(Error::invalid(&self.path, format!("tensor {}: location does not match the store", t.name))),
        }
    }

    pub fn tensor(&self, name: &str) -> Option<&SourceTensor> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The tensor's source description for the index: `{"format": "gguf", "type": "Q4_1", "name": ...}`.
    pub fn source_json(&self, t: &SourceTensor) -> serde_json::Value {
        let format = match self.store {
            Store::Gguf(_) => "gguf",
            Store::Safetensors(_) => "safetensors",
        };
        serde_json::json!({"format": format, "type": t.ty.name(), "name": t.source_name})
    }
}

/// Outputs `outputs` of a `Conv1D` weight `[in, out]` (elements of `elem` bytes), transposed to `[len, in]`; of
/// a bias `[out]`, the slice. `None` when the shape or the range does not fit the bytes.
fn conv1d_outputs(bytes: &[u8], shape: &[u64], elem: usize, outputs: std::ops::Range<u32>) -> Option<Vec<u8>> {
    let (inputs, out) = match *shape {
        [out] => (1, usize::try_from(out).ok()?),
        [inputs, out] => (usize::try_from(inputs).ok()?, usize::try_from(out).ok()?),
        _ => return None,
    };
    let (start, end) = (outputs.start as usize, outputs.end as usize);
    if start >= end || end > out || bytes.len() != inputs.checked_mul(out)?.checked_mul(elem)? {
        return None;
    }
    let mut v = Vec::with_capacity((end - start) * inputs * elem);
    for o in start..end {
        for i in 0..inputs {
            let at = (i * out + o) * elem;
            v.extend_from_slice(&bytes[at..at + elem]);
        }
    }
    Some(v)
}

/// Checks a dimension fits the record's u32, naming the tensor.
pub(crate) fn dims_u32(path: &Path, name: &str, dims: &[u64]) -> Result<Vec<u32>> {
    dims.iter()
        .map(|&d| {
            u32::try_from(d).map_err(|_| Error::parse(path, format!("tensor {name:?}: dimension {d} exceeds u32")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::conv1d_outputs;

    #[test]
    fn conv1d_outputs_are_transposed_and_sliced() {
        // [in 2, out 3] of one-byte elements: x[i][o] = 10 i + o.
        let w = [0u8, 1, 2, 10, 11, 12];
        assert_eq!(conv1d_outputs(&w, &[2, 3], 1, 0..3), Some(vec![0, 10, 1, 11, 2, 12]));
        assert_eq!(conv1d_outputs(&w, &[2, 3], 1, 1..2), Some(vec![1, 11]));
        assert_eq!(conv1d_outputs(&w, &[3], 2, 1..3), Some(vec![2, 10, 11, 12]));
        // Out of range, empty, or a shape the bytes do not fill.
        assert_eq!(conv1d_outputs(&w, &[2, 3], 1, 2..4), None);
        assert_eq!(conv1d_outputs(&w, &[2, 3], 1, 1..1), None);
        assert_eq!(conv1d_outputs(&w, &[2, 4], 1, 0..1), None);
        assert_eq!(conv1d_outputs(&w, &[1, 2, 3], 1, 0..1), None);
        assert_eq!(conv1d_outputs(&w, &[u64::MAX, 3], 1, 0..1), None);
    }
}
