//! `weights/quantization.json`: the index of every tensor record — which file, where, what layout.
//! The runtime finds tensors here; `validate` checks that the records agree with it.

use super::dtype::{DType, SectionKind};
use super::record::Record;
use serde::{Deserialize, Serialize};

pub const INDEX_FILE: &str = "weights/quantization.json";

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct WeightIndex {
    /// Always "omex-weights".
    pub format: String,
    pub record_version: u32,
    /// Alignment of records and sections in bytes.
    pub alignment: u64,
    /// The conversion's target (`keep`, `f16`, `int8`, `int4`, `ternary`).
    pub target: String,
    pub tensors: Vec<TensorEntry>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TensorEntry {
    pub name: String,
    /// Path relative to `weights/`.
    pub file: String,
    pub layer_id: u32,
    /// Byte offset of the record in its file.
    pub offset: u64,
    pub record_bytes: u64,
    pub dtype: DType,
    pub shape: Vec<u32>,
    pub quantization: Option<QuantLayout>,
    /// Sections with offsets relative to the start of the file (not the record), ready to bind.
    pub sections: Vec<SectionEntry>,
    /// What the tensor was before conversion, e.g. `{"format": "gguf", "type": "Q4_1"}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<serde_json::Value>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct QuantLayout {
    /// `int8`, `int4`, `ternary`, or a GGUF block kept as it is (`q4_k`, `q5_k`, `q6_k`, `q5_0`, `q5_1`).
    pub scheme: DType,
    pub group_size: u32,
    pub scale_dtype: DType,
    pub symmetric: bool,
    /// `none` (symmetric) or `min` (value = scale * q + min).
    pub zero_point: String,
    pub bits_per_weight: f64,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq)]
pub struct SectionEntry {
    pub kind: SectionKind,
    pub dtype: DType,
    pub offset: u64,
    pub bytes: u64,
}

impl TensorEntry {
    /// The index entry of `rec`, written at byte `offset` of `file`.
    pub fn from_record(rec: &Record, file: &str, offset: u64) -> TensorEntry {
        // GGUF blocks: the scales (and mins) live inside each block; `group_size` is the block's values.
        let with_min = matches!(rec.dtype, DType::Int4 | DType::Q4K | DType::Q5K | DType::Q5_1);
        let quantization = (rec.dtype.is_quantized() || rec.dtype.ggml_block().is_some()).then(|| QuantLayout {
            scheme: rec.dtype,
            group_size: rec.group_size,
            scale_dtype: DType::F16,
            symmetric: !with_min,
            zero_point: if with_min { "min" } else { "none" }.to_string(),
            bits_per_weight: rec.dtype.bits_per_weight(),
        });
        TensorEntry {
            name: rec.name.clone(),
            file: file.to_string(),
            layer_id: rec.layer_id,
            offset,
            record_bytes: rec.record_bytes,
            dtype: rec.dtype,
            shape: rec.shape.clone(),
            quantization,
            sections: rec
                .sections
                .iter()
                .map(|s| SectionEntry { kind: s.kind, dtype: s.dtype, offset: offset + s.offset, bytes: s.bytes })
                .collect(),
            source: None,
        }
    }

    pub fn section(&self, kind: SectionKind) -> Option<&SectionEntry> {
        self.sections.iter().find(|s| s.kind == kind)
    }

    pub fn numel(&self) -> u64 {
        self.shape.iter().map(|&d| d as u64).product()
    }

    /// Bytes of all sections (what a GPU buffer holding this tensor needs).
    pub fn payload_bytes(&self) -> u64 {
        self.sections.iter().map(|s| s.bytes).sum()
    }

    /// Lists where this entry disagrees with the record parsed from its file.
    pub fn mismatches(&self, rec: &Record) -> Vec<String> {
        let mut out = Vec::new();
        let want = TensorEntry::from_record(rec, &self.file, self.offset);
        let mut diff = |field: &str, a: String, b: String| {
            if a != b {
                out.push(format!("tensor {}: index says {field} {a}, record says {b}", self.name));
            }
        };
        diff("name", self.name.clone(), want.name.clone());
        diff("layer id", self.layer_id.to_string(), want.layer_id.to_string());
        diff("dtype", self.dtype.to_string(), want.dtype.to_string());
        diff("shape", format!("{:?}", self.shape), format!("{:?}", want.shape));
        diff("record length", self.record_bytes.to_string(), want.record_bytes.to_string());
        diff("sections", format!("{:?}", self.sections), format!("{:?}", want.sections));
        out
    }
}

impl WeightIndex {
    pub fn new(target: &str) -> WeightIndex {
        WeightIndex {
            format: "omex-weights".into(),
            record_version: super::record::RECORD_VERSION,
            alignment: super::record::ALIGN,
            target: target.into(),
            tensors: Vec::new(),
        }
    }

    pub fn get(&self, name: &str) -> Option<&TensorEntry> {
        self.tensors.iter().find(|t| t.name == name)
    }
}
