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
    /// Name in the safetensors checkpoint.
    Safetensors(String),
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

    /// The bytes of a source tensor.
    pub fn data(&self, t: &SourceTensor) -> Result<&[u8]> {
        match (&self.store, &t.loc) {
            (Store::Gguf(f), Loc::Gguf(i)) => Ok(f.data(&f.header.tensors[*i])),
            (Store::Safetensors(c), Loc::Safetensors(n)) => c
                .get(n)
                .map(|(f, st)| f.data(st))
                .ok_or_else(|| Error::invalid(&self.path, format!("tensor {n:?} vanished"))),
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

/// Checks a dimension fits the record's u32, naming the tensor.
pub(crate) fn dims_u32(path: &Path, name: &str, dims: &[u64]) -> Result<Vec<u32>> {
    dims.iter()
        .map(|&d| {
            u32::try_from(d).map_err(|_| Error::parse(path, format!("tensor {name:?}: dimension {d} exceeds u32")))
        })
        .collect()
}
