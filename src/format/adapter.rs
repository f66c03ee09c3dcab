//! `adapters/NAME/`: a LoRA adapter stored beside the base model it was made for.
//!
//! ```text
//! model.omex/adapters/NAME/
//!   adapter.json   AdapterFile: the base it fits, every target matrix with its rank and scale, the index of
//!                  lora.bin's records, lora.bin's size and sha256
//!   lora.bin       omex records (the 24-byte header of record.rs), f16 or f32: per target `W.lora_a`
//!                  [rank, cols] and `W.lora_b` [rows, rank], where `W` [rows, cols] is the base tensor
//! ```
//! A target adds `scale * B (A x)` to `W x`. The adapter is self-checking (its own sha256), so adding one
//! never rewrites the base model's metadata.json.

use super::dtype::DType;
use super::index::{TensorEntry, WeightIndex};
use super::record::Record;
use super::writer::LayerFileWriter;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const ADAPTERS_DIR: &str = "adapters";
pub const ADAPTER_FILE: &str = "adapter.json";
pub const ADAPTER_WEIGHTS: &str = "lora.bin";
pub const ADAPTER_FORMAT: &str = "omex-lora";
pub const ADAPTER_VERSION: u32 = 1;
/// The largest rank accepted: far above any published adapter, small enough that `rank * (rows + cols)`
/// never overflows.
pub const MAX_RANK: u32 = 8192;
/// lora.bin larger than this is refused before it is read.
pub const MAX_WEIGHTS_BYTES: u64 = 8 << 30;
/// Layer id of adapter records (they belong to no layer file of the base).
pub const ADAPTER_LAYER: u32 = u32::MAX - 2;

/// What an adapter was made for: checked against the base before anything of it is used.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct BaseIdentity {
    pub architecture: String,
    pub hidden_size: u32,
    /// The base's `model_name` in metadata.json (informative: a re-converted base keeps working).
    pub model_name: String,
    /// The shape of every base tensor the adapter targets.
    pub shapes: BTreeMap<String, Vec<u32>>,
}

/// One base matrix the adapter changes.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Target {
    /// The base tensor `W` [rows, cols].
    pub weight: String,
    pub rank: u32,
    pub alpha: f32,
    /// `alpha / rank`, or `alpha / sqrt(rank)` with rsLoRA.
    pub scale: f32,
    /// Record names in lora.bin.
    pub a: String,
    pub b: String,
    /// Where the adapter's tensor came from, e.g. PEFT's module name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct WeightsFile {
    pub file: String,
    pub bytes: u64,
    pub sha256: String,
}

/// adapter.json.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct AdapterFile {
    /// Always [`ADAPTER_FORMAT`].
    pub format: String,
    pub version: u32,
    pub name: String,
    /// `peft`, or `merge` ...: where it was imported from.
    pub source: String,
    pub use_rslora: bool,
    pub base: BaseIdentity,
    pub targets: Vec<Target>,
    pub weights: WeightsFile,
    pub tensors: Vec<TensorEntry>,
}

/// A tensor of the adapter as stored: f32 values, or f16 bit patterns.
#[derive(Clone, Debug, PartialEq)]
pub enum Values {
    F32(Vec<f32>),
    F16(Vec<u16>),
}

impl Values {
    pub fn len(&self) -> usize {
        match self {
            Values::F32(v) => v.len(),
            Values::F16(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn to_f32(&self) -> Vec<f32> {
        match self {
            Values::F32(v) => v.clone(),
            Values::F16(v) => v.iter().map(|&b| half::f16::from_bits(b).to_f32()).collect(),
        }
    }

    pub fn dtype(&self) -> DType {
        match self {
            Values::F32(_) => DType::F32,
            Values::F16(_) => DType::F16,
        }
    }

    pub fn bytes(&self) -> &[u8] {
        match self {
            Values::F32(v) => bytemuck::cast_slice(v),
            Values::F16(v) => bytemuck::cast_slice(v),
        }
    }
}

/// One target with its matrices read: `a` [rank, cols], `b` [rows, rank].
#[derive(Clone, Debug, PartialEq)]
pub struct TargetData {
    pub weight: String,
    pub rows: u32,
    pub cols: u32,
    pub rank: u32,
    pub scale: f32,
    pub a: Values,
    pub b: Values,
}

/// An adapter read and checked: every record decoded, shapes consistent, values finite.
#[derive(Clone, Debug)]
pub struct AdapterData {
    pub file: AdapterFile,
    pub targets: Vec<TargetData>,
}

/// Names go into paths and into `BASE:ADAPTER` and `NAME:SCALE`: letters, digits, `-`, `_`, `.`; not starting
/// with `.`; at most 64 bytes.
pub fn check_name(name: &str) -> std::result::Result<(), String> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if name.is_empty() || name.len() > 64 || name.starts_with('.') || !name.chars().all(ok_char) {
        return Err(format!(
            "adapter name {name:?}: use 1 to 64 letters, digits, '-', '_' or '.' (not starting with '.')"
        ));
    }
    Ok(())
}

pub fn adapter_dir(model: &Path, name: &str) -> PathBuf {
    model.join(ADAPTERS_DIR).join(name)
}

/// The adapters of a model directory (sub-folders of `adapters/` holding an adapter.json), sorted.
pub fn list(model: &Path) -> Result<Vec<String>> {
    let dir = model.join(ADAPTERS_DIR);
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let mut names = Vec::new();
    for e in std::fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))? {
        let e = e.map_err(|e| Error::io(&dir, e))?;
        let name = e.file_name().to_string_lossy().to_string();
        if check_name(&name).is_ok() && e.path().join(ADAPTER_FILE).is_file() {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// The rank-scaling of LoRA: `alpha / rank`, or rsLoRA's `alpha / sqrt(rank)`.
pub fn lora_scale(alpha: f32, rank: u32, rslora: bool) -> f32 {
    if rslora {
        alpha / (rank as f32).sqrt()
    } else {
        alpha / rank as f32
    }
}

impl AdapterData {
    /// Reads and checks `adapters/NAME/` of `model`. Every error names the adapter's file and the tensor or
    /// field at fault.
    pub fn open(model: &Path, name: &str) -> Result<AdapterData> {
        Self::open_for(model, name, None)
    }

    /// [`AdapterData::open`], checking first (before any record is read) that the adapter was made for the
    /// base `(architecture, hidden size, index)`.
    pub fn open_for(model: &Path, name: &str, base: Option<(&str, u32, &WeightIndex)>) -> Result<AdapterData> {
        check_name(name).map_err(Error::Usage)?;
        let dir = adapter_dir(model, name);
        let json_path = dir.join(ADAPTER_FILE);
        if !json_path.is_file() {
            let known = list(model).unwrap_or_default();
            return Err(Error::Usage(format!(
                "{}: no adapter {name:?} (this model has {})",
                model.display(),
                if known.is_empty() { "none".to_string() } else { known.join(", ") }
            )));
        }
        let file: AdapterFile = super::reader::read_json(&json_path)?;
        file.check().map_err(|e| Error::invalid(&json_path, e))?;
        if let Some((arch, hidden, index)) = base {
            file.check_base(arch, hidden, index).map_err(|e| Error::invalid(&json_path, e))?;
        }
        if file.name != name {
            return Err(Error::invalid(&json_path, format!("names adapter {:?}, its folder is {name:?}", file.name)));
        }
        if file.weights.file != ADAPTER_WEIGHTS {
            return Err(Error::invalid(
                &json_path,
                format!("weights file {:?} (expected {ADAPTER_WEIGHTS})", file.weights.file),
            ));
        }
        let bin_path = dir.join(ADAPTER_WEIGHTS);
        if file.weights.bytes > MAX_WEIGHTS_BYTES {
            return Err(Error::invalid(
                &json_path,
                format!("weights of {} bytes (at most {MAX_WEIGHTS_BYTES})", file.weights.bytes),
            ));
        }
        let bytes = crate::files::read_regular(&bin_path, MAX_WEIGHTS_BYTES).map_err(|e| Error::io(&bin_path, e))?;
        if bytes.len() as u64 != file.weights.bytes {
            return Err(Error::invalid(
                &bin_path,
                format!("{} bytes, {ADAPTER_FILE} says {}", bytes.len(), file.weights.bytes),
            ));
        }
        let sha = super::checksum::sha256_bytes(&bytes);
        if sha != file.weights.sha256 {
            return Err(Error::invalid(
                &bin_path,
                format!("sha256 {sha}, {ADAPTER_FILE} says {}", file.weights.sha256),
            ));
        }
        let entries: BTreeMap<&str, &TensorEntry> = file.tensors.iter().map(|e| (e.name.as_str(), e)).collect();
        let mut targets = Vec::with_capacity(file.targets.len());
        for t in &file.targets {
            let shape = &file.base.shapes[&t.weight]; // present: checked by AdapterFile::check
            let (rows, cols) = (shape[0], shape[1]);
            let read = |tensor: &str, want: [u32; 2]| -> Result<Values> {
                let e = entries.get(tensor).ok_or_else(|| {
                    Error::invalid(&json_path, format!("target {}: no tensor {tensor} in the index", t.weight))
                })?;
                read_values(&bin_path, &bytes, e, &want)
            };
            let a = read(&t.a, [t.rank, cols])?;
            let b = read(&t.b, [rows, t.rank])?;
            targets.push(TargetData { weight: t.weight.clone(), rows, cols, rank: t.rank, scale: t.scale, a, b });
        }
        Ok(AdapterData { file, targets })
    }

    /// Checks the adapter against a base model: its architecture, hidden size, and every target tensor's
    /// presence and shape. The error names the tensor.
    pub fn check_base(
        &self,
        architecture: &str,
        hidden_size: u32,
        index: &WeightIndex,
    ) -> std::result::Result<(), String> {
        self.file.check_base(architecture, hidden_size, index)
    }
}

impl AdapterFile {
    /// The checks that need no other file: format, version, targets against the recorded base shapes, ranks
    /// and scales.
    pub fn check(&self) -> std::result::Result<(), String> {
        if self.format != ADAPTER_FORMAT || self.version != ADAPTER_VERSION {
            return Err(format!(
                "format {:?} version {} (this omex reads {ADAPTER_FORMAT:?} version {ADAPTER_VERSION})",
                self.format, self.version
            ));
        }
        check_name(&self.name)?;
        if self.targets.is_empty() {
            return Err("no targets".into());
        }
        let mut seen = std::collections::BTreeSet::new();
        for t in &self.targets {
            let at = |what: String| format!("target {}: {what}", t.weight);
            if !seen.insert(&t.weight) {
                return Err(at("listed twice".into()));
            }
            let shape = self.base.shapes.get(&t.weight).ok_or_else(|| at("no shape in base.shapes".into()))?;
            if shape.len() != 2 || shape.contains(&0) {
                return Err(at(format!("base shape {shape:?} is not a matrix")));
            }
            if t.rank == 0 || t.rank > MAX_RANK {
                return Err(at(format!("rank {} (1..={MAX_RANK})", t.rank)));
            }
            if !t.alpha.is_finite() || !t.scale.is_finite() {
                return Err(at(format!("alpha {} and scale {} must be finite", t.alpha, t.scale)));
            }
        }
        Ok(())
    }

    pub fn check_base(
        &self,
        architecture: &str,
        hidden_size: u32,
        index: &WeightIndex,
    ) -> std::result::Result<(), String> {
        if self.base.architecture != architecture {
            return Err(format!(
                "adapter {:?} was made for a {} model, this base is {architecture}",
                self.name, self.base.architecture
            ));
        }
        if self.base.hidden_size != hidden_size {
            return Err(format!(
                "adapter {:?} was made for hidden size {}, this base has {hidden_size}",
                self.name, self.base.hidden_size
            ));
        }
        for t in &self.targets {
            let want = &self.base.shapes[&t.weight];
            match index.get(&t.weight) {
                None => {
                    return Err(format!("adapter {:?} targets tensor {}, which this base lacks", self.name, t.weight))
                }
                Some(e) if &e.shape != want => {
                    return Err(format!(
                        "adapter {:?}: tensor {} is {:?} in this base, the adapter was made for {want:?}",
                        self.name, t.weight, e.shape
                    ))
                }
                Some(_) => {}
            }
        }
        Ok(())
    }
}

/// The values of the record `e` of lora.bin (`bytes`), checked against its index entry, `want` and for
/// finiteness.
fn read_values(path: &Path, bytes: &[u8], e: &TensorEntry, want: &[u32; 2]) -> Result<Values> {
    let bad = |what: String| Error::invalid(path, format!("tensor {}: {what}", e.name));
    if e.shape != want {
        return Err(bad(format!("shape {:?}, the target needs {want:?}", e.shape)));
    }
    let rest = bytes.get(e.offset as usize..).ok_or_else(|| bad(format!("offset {} is past the file", e.offset)))?;
    let rec = Record::decode(rest).map_err(|m| bad(format!("record at offset {}: {m}", e.offset)))?;
    if let Some(p) = e.mismatches(&rec).first() {
        return Err(bad(p.clone()));
    }
    let s = e.sections.first().ok_or_else(|| bad("no data section".into()))?;
    let data = bytes
        .get(s.offset as usize..(s.offset + s.bytes) as usize)
        .ok_or_else(|| bad("data runs past the end of the file".into()))?;
    let values = match e.dtype {
        DType::F32 => Values::F32(data.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()),
        DType::F16 => Values::F16(data.chunks_exact(2).map(|c| u16::from_le_bytes(c.try_into().unwrap())).collect()),
        other => return Err(bad(format!("dtype {other} (adapters hold f16 or f32)"))),
    };
    if values.len() as u64 != want[0] as u64 * want[1] as u64 {
        return Err(bad(format!("{} values for shape {want:?}", values.len())));
    }
    if let Some(i) = values.to_f32().iter().position(|v| !v.is_finite()) {
        return Err(bad(format!("value {i} is not finite")));
    }
    Ok(values)
}

/// A tensor to write into lora.bin.
pub struct NewTensor {
    pub name: String,
    pub shape: [u32; 2],
    pub values: Values,
}

/// Writes `adapters/NAME/` of `model` (`file.tensors` and `file.weights` are filled in here). An existing
/// adapter of that name is an error unless `replace`; the new one is written aside and moved into place, so
/// a failed write leaves the old one as it was.
pub fn write(model: &Path, mut file: AdapterFile, tensors: &[NewTensor], replace: bool) -> Result<PathBuf> {
    check_name(&file.name).map_err(Error::Usage)?;
    let dest = adapter_dir(model, &file.name);
    if dest.exists() && !replace {
        return Err(Error::Usage(format!(
            "{}: adapter {:?} exists; remove it first (omex adapter remove) or pass --replace",
            model.display(),
            file.name
        )));
    }
    let parent = model.join(ADAPTERS_DIR);
    std::fs::create_dir_all(&parent).map_err(|e| Error::io(&parent, e))?;
    let tmp = parent.join(format!(".{}.tmp-{}", file.name, std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    std::fs::create_dir(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let written = (|| -> Result<()> {
        let mut w = LayerFileWriter::create(&tmp, ADAPTER_WEIGHTS, ADAPTER_LAYER)?;
        file.tensors.clear();
        for t in tensors {
            let section = (super::dtype::SectionKind::Data, t.values.bytes());
            file.tensors.push(w.write_tensor(&t.name, t.values.dtype(), &t.shape, &[section])?);
        }
        w.finish()?;
        let (sha256, bytes) = super::checksum::sha256_file(&tmp.join(ADAPTER_WEIGHTS))?;
        file.weights = WeightsFile { file: ADAPTER_WEIGHTS.into(), bytes, sha256 };
        file.check().map_err(|e| Error::invalid(tmp.join(ADAPTER_FILE), e))?;
        let json = serde_json::to_vec_pretty(&file).map_err(|e| Error::json(tmp.join(ADAPTER_FILE), e))?;
        std::fs::write(tmp.join(ADAPTER_FILE), json).map_err(|e| Error::io(tmp.join(ADAPTER_FILE), e))
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    if dest.exists() {
        std::fs::remove_dir_all(&dest).map_err(|e| Error::io(&dest, e))?;
    }
    std::fs::rename(&tmp, &dest).map_err(|e| Error::io(&dest, e))?;
    Ok(dest)
}

/// Removes `adapters/NAME/` of `model`.
pub fn remove(model: &Path, name: &str) -> Result<()> {
    check_name(name).map_err(Error::Usage)?;
    let dir = adapter_dir(model, name);
    if !dir.join(ADAPTER_FILE).is_file() {
        return Err(Error::Usage(format!("{}: no adapter {name:?} to remove", model.display())));
    }
    std::fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))
}
