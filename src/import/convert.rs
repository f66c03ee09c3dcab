//! `omex convert`: a [`SourceModel`] to a `model.omex/` directory. Every tensor is encoded once into the
//! layout the kernels read (see [`encode`]), written record by record into its layer file, and indexed;
//! then `graph.json`, the tokenizer and, last, `metadata.json` with the size and sha256 of every file.
//! Everything is written into a temporary directory beside the output and renamed at the end, so a failed
//! conversion leaves no half model.

use super::{SourceModel, TokenizerSource};
use crate::error::{Error, Result};
use crate::format::checksum::sha256_file;
use crate::format::graph::GRAPH_FILE;
use crate::format::index::INDEX_FILE;
use crate::format::metadata::{
    human_bytes, human_params, FileEntry, Metadata, QuantSummary, Requirements, METADATA_FILE,
    OMEX_VERSION,
};
use crate::format::record::{EMBEDDING_LAYER, HEAD_LAYER};
use crate::format::{DType, LayerFileWriter, WeightIndex};
use crate::graph::Transformer;
use crate::quant::{dequant, pack, repack, GgmlType, Packed, Target};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Clone, Debug)]
pub struct Options {
    pub target: Target,
    /// Replace an existing output directory.
    pub force: bool,
    /// The model name for metadata.json (default: the source's own).
    pub name: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            target: Target::Keep,
            force: false,
            name: None,
        }
    }
}

/// Progress reports, for a progress bar.
#[derive(Clone, Debug)]
pub enum Event<'a> {
    Begin { tensors: usize },
    Tensor { name: &'a str },
    Finishing,
}

/// What a conversion produced.
#[derive(Clone, Debug)]
pub struct Summary {
    pub out: PathBuf,
    pub source_format: String,
    pub target: Target,
    pub tensors: usize,
    pub parameters: u64,
    /// Per layout: (tensors, bytes of their sections).
    pub by_dtype: BTreeMap<String, (usize, u64)>,
    /// Bytes of the `weights/*.bin` files.
    pub weight_bytes: u64,
    /// Bytes of every file of the model directory.
    pub total_bytes: u64,
    pub seconds: f64,
    pub warnings: Vec<String>,
}

/// Encodes one source tensor (`bytes` of ggml type `ty`, shape outermost first) into an omex layout for
/// `target`. Returns the packed sections and, where the target could not be honoured exactly, a note.
///
/// 1-D tensors (norm weights, biases) are always F32. Matrices: see [`Target`]; `keep` repacks Q8_0, Q4_0 and
/// Q4_1 losslessly and copies F32/F16; every other case dequantizes to f32 and quantizes to the target.
/// A quantized target needs `cols % 32 == 0`; a matrix that does not have it is stored as F16 with a note.
pub fn encode(
    ty: GgmlType,
    bytes: &[u8],
    shape: &[u32],
    target: Target,
) -> std::result::Result<(Packed, Option<String>), String> {
    let numel: u64 = shape.iter().map(|&d| d as u64).product();
    if ty.bytes_for(numel) != Some(bytes.len() as u64) {
        return Err(format!(
            "{} bytes of {ty} do not hold a {shape:?} tensor",
            bytes.len()
        ));
    }
    let dequantized = || -> std::result::Result<Vec<f32>, String> {
        let mut v = vec![0f32; numel as usize];
        dequant::dequantize(ty, bytes, &mut v)?;
        Ok(v)
    };
    let copy = |dtype| Ok((Packed::new(dtype, bytes.to_vec()), None));
    if shape.len() < 2 {
        return match ty {
            GgmlType::F32 => copy(DType::F32),
            _ => Ok((pack::quantize(&dequantized()?, DType::F32)?, None)),
        };
    }
    let mut note = None;
    let mut want = match (target, ty) {
        (Target::Keep, GgmlType::Q8_0) => return Ok((repack::q8_0(bytes)?, None)),
        (Target::Keep, GgmlType::Q4_1) => return Ok((repack::q4_1(bytes)?, None)),
        (Target::Keep, GgmlType::Q4_0) => match repack::q4_0(bytes)? {
            Some(p) => return Ok((p, None)),
            None => {
                note = Some("a Q4_0 scale times -8 overflows f16: dequantized and requantized to int4 instead of repacked".into());
                DType::Int4
            }
        },
        (Target::Keep | Target::F16, GgmlType::F16) => return copy(DType::F16),
        (Target::Keep, GgmlType::F32) => return copy(DType::F32),
        (Target::Keep, GgmlType::BF16) => DType::F32,
        (Target::Keep, GgmlType::Q4_K) => DType::Int4,
        (Target::Keep, GgmlType::Q5_K | GgmlType::Q6_K | GgmlType::Q5_0 | GgmlType::Q5_1) => DType::Int8,
        (Target::Keep, other) => return Err(format!("ggml type {other} is not supported (omex converts F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K)")),
        (Target::F16, _) => DType::F16,
        (Target::Int8, _) => DType::Int8,
        (Target::Int4, _) => DType::Int4,
        (Target::Ternary, _) => DType::Ternary,
    };
    let cols = *shape.last().expect("2-D") as usize;
    if want.is_quantized() && cols % kernels_cpu::GROUP != 0 {
        note = Some(format!(
            "{cols} columns are not a multiple of {}: stored as f16 instead of {want}",
            kernels_cpu::GROUP
        ));
        want = DType::F16;
    }
    if !dequant::supported(ty) {
        return Err(format!("omex cannot dequantize ggml type {ty}"));
    }
    Ok((pack::quantize(&dequantized()?, want)?, note))
}

/// One weight file and the tensors it holds, in order.
struct FilePlan {
    file: String,
    layer_id: u32,
    tensors: Vec<String>,
}

fn plan(t: &Transformer) -> Vec<FilePlan> {
    let mut v = vec![FilePlan {
        file: t.embedding_file.clone(),
        layer_id: EMBEDDING_LAYER,
        tensors: vec![t.token_embedding.clone()],
    }];
    for (i, b) in t.blocks.iter().enumerate() {
        v.push(FilePlan {
            file: b.file.clone(),
            layer_id: i as u32,
            tensors: b.names().into_iter().map(String::from).collect(),
        });
    }
    let mut head = vec![t.output_norm.clone()];
    if !t.tied_embeddings {
        head.push(t.output.clone());
    }
    v.push(FilePlan {
        file: t.head_file.clone(),
        layer_id: HEAD_LAYER,
        tensors: head,
    });
    v
}

/// Checks that the source has exactly the tensors the model reads, with the shapes it expects.
fn check_tensors(model: &SourceModel) -> Result<()> {
    let mut problems = Vec::new();
    let expected = model.transformer.expected_tensors();
    for (name, shape) in &expected {
        match model.tensor(name) {
            None => problems.push(format!("tensor {name} is missing")),
            Some(t) if &t.shape != shape => problems.push(format!(
                "tensor {name} ({}) has shape {:?}, the model needs {shape:?}",
                t.source_name, t.shape
            )),
            Some(_) => {}
        }
    }
    for t in &model.tensors {
        if !expected.iter().any(|(n, _)| n == &t.name) {
            problems.push(format!(
                "tensor {} ({}) is not read by the model",
                t.name, t.source_name
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Error::invalid(&model.path, problems.join("; ")))
    }
}

/// Removes the temporary output unless the conversion completed.
struct Staging {
    path: PathBuf,
    done: bool,
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

pub fn convert(
    input: &Path,
    out: &Path,
    opts: &Options,
    progress: &mut dyn FnMut(Event),
) -> Result<Summary> {
    let start = Instant::now();
    if out.exists() && !opts.force {
        return Err(Error::Usage(format!(
            "{}: already exists (pass --force to replace it)",
            out.display()
        )));
    }
    let model = SourceModel::open(input)?;
    check_tensors(&model)?;
    let mut warnings = model.warnings.clone();

    let out_name = out
        .file_name()
        .ok_or_else(|| Error::Usage(format!("{}: not a directory name", out.display())))?;
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let staging = Staging {
        path: parent.join(format!(
            ".{}.partial-{}",
            out_name.to_string_lossy(),
            std::process::id()
        )),
        done: false,
    };
    let _ = std::fs::remove_dir_all(&staging.path);
    let tmp = staging.path.clone();
    let weights = tmp.join("weights");
    std::fs::create_dir_all(&weights).map_err(|e| Error::io(&weights, e))?;

    // The tokenizer first: a model without a usable one fails before the long part.
    let tok_dir = tmp.join("tokenizer");
    match &model.tokenizer {
        TokenizerSource::Gguf(v) => crate::tokenizer::write_tokenizer_dir(v, &tok_dir)
            .map_err(|e| Error::Tokenizer(format!("{}: {e}", model.path.display())))?,
        TokenizerSource::HfDir(d) => crate::tokenizer::copy_hf_tokenizer(d, &tok_dir)
            .map_err(|e| Error::Tokenizer(e.to_string()))?,
    }

    let files = plan(&model.transformer);
    progress(Event::Begin {
        tensors: files.iter().map(|f| f.tensors.len()).sum(),
    });
    let mut index = WeightIndex::new(opts.target.name());
    for fp in &files {
        let mut w = LayerFileWriter::create(&weights, &fp.file, fp.layer_id)?;
        for name in &fp.tensors {
            progress(Event::Tensor { name });
            let t = model.tensor(name).expect("checked by check_tensors");
            let bytes = model.data(t)?;
            let (packed, note) = encode(t.ty, bytes, &t.shape, opts.target).map_err(|e| {
                Error::invalid(
                    &model.path,
                    format!(
                        "tensor {} ({} {}): {e}",
                        t.source_name,
                        t.ty,
                        fmt_shape(&t.shape)
                    ),
                )
            })?;
            if let Some(n) = note {
                warnings.push(format!("tensor {}: {n}", t.name));
            }
            let mut entry = w.write_tensor(name, packed.dtype, &t.shape, &packed.sections())?;
            entry.source = Some(model.source_json(t));
            index.tensors.push(entry);
        }
        w.finish()?;
    }
    progress(Event::Finishing);
    write_json(&tmp.join(INDEX_FILE), &index)?;
    let name = opts.name.clone().unwrap_or_else(|| model.name.clone());
    let graph = model
        .transformer
        .to_graph(&format!("{}_graph", slug(&name)));
    write_json(&tmp.join(GRAPH_FILE), &graph)?;

    let entries = list_files(&tmp)?;
    let weight_bytes: u64 = entries
        .iter()
        .filter(|e| e.path.starts_with("weights/") && e.path.ends_with(".bin"))
        .map(|e| e.bytes)
        .sum();
    let total_bytes: u64 = entries.iter().map(|e| e.bytes).sum();
    let parameters: u64 = index.tensors.iter().map(|t| t.numel()).sum();
    let (minimum, recommended, targets) =
        requirements(&model.transformer, weight_bytes, total_bytes);
    let metadata = Metadata {
        omex_version: OMEX_VERSION.into(),
        model_name: name.clone(),
        model_version: model.version.clone().unwrap_or_else(|| "1.0".into()),
        model_architecture: model.transformer.architecture.clone(),
        parameters: human_params(parameters),
        parameter_count: parameters,
        creation_date: rfc3339_now(),
        created_by: format!("omex convert {}", env!("CARGO_PKG_VERSION")),
        license: model.license.clone().unwrap_or_else(|| "unknown".into()),
        description: format!(
            "{name} ({}, {} parameters) converted from {} with --quant {}",
            model.transformer.architecture,
            human_params(parameters),
            model.format,
            opts.target
        ),
        source_format: model.format.clone(),
        quantization: QuantSummary {
            kind: opts.target.name().into(),
            method: opts.target.method().into(),
            // keep mixes layouts: symmetric unless some tensor carries a min (int4).
            symmetric: opts.target.symmetric() && !index.tensors.iter().any(|t| t.dtype == DType::Int4),
        },
        hardware_targets: targets,
        minimum_requirements: minimum,
        recommended_requirements: recommended,
        files: entries,
    };
    write_json(&tmp.join(METADATA_FILE), &metadata)?;
    let total_bytes = total_bytes
        + std::fs::metadata(tmp.join(METADATA_FILE))
            .map_err(|e| Error::io(&tmp, e))?
            .len();

    install(&tmp, out)?;
    let mut staging = staging;
    staging.done = true;
    let mut by_dtype: BTreeMap<String, (usize, u64)> = BTreeMap::new();
    for t in &index.tensors {
        let e = by_dtype.entry(t.dtype.to_string()).or_default();
        e.0 += 1;
        e.1 += t.payload_bytes();
    }
    Ok(Summary {
        out: out.to_path_buf(),
        source_format: model.format.clone(),
        target: opts.target,
        tensors: index.tensors.len(),
        parameters,
        by_dtype,
        weight_bytes,
        total_bytes,
        seconds: start.elapsed().as_secs_f64(),
        warnings,
    })
}

fn fmt_shape(s: &[u32]) -> String {
    format!("{s:?}")
}

/// Moves the finished directory into place, replacing an existing one only after the new one is complete.
fn install(tmp: &Path, out: &Path) -> Result<()> {
    if out.exists() {
        let old = tmp.with_file_name(format!(
            "{}.old",
            tmp.file_name().expect("named").to_string_lossy()
        ));
        std::fs::rename(out, &old).map_err(|e| Error::io(out, e))?;
        std::fs::rename(tmp, out).map_err(|e| Error::io(out, e))?;
        let r = if old.is_dir() {
            std::fs::remove_dir_all(&old)
        } else {
            std::fs::remove_file(&old)
        };
        r.map_err(|e| Error::io(&old, e))
    } else {
        std::fs::rename(tmp, out).map_err(|e| Error::io(out, e))
    }
}

fn write_json<T: serde::Serialize>(path: &Path, v: &T) -> Result<()> {
    let mut s = serde_json::to_string_pretty(v).map_err(|e| Error::json(path, e))?;
    s.push('\n');
    std::fs::write(path, s).map_err(|e| Error::io(path, e))
}

/// Every file under `root` but metadata.json, with size and sha256, sorted by path (`/`-separated).
pub(crate) fn list_files(root: &Path) -> Result<Vec<FileEntry>> {
    let mut out = Vec::new();
    for rel in crate::validate::walk(root)?
        .into_iter()
        .filter(|r| r != METADATA_FILE)
    {
        let (sha256, bytes) = sha256_file(&root.join(&rel))?;
        out.push(FileEntry {
            path: rel,
            bytes,
            sha256,
        });
    }
    Ok(out)
}

/// Minimum and recommended requirements from the real sizes: the weights, an f16 KV cache (2048 positions
/// at least, the full context recommended) and the runtime's buffers; and the hardware classes that fit.
fn requirements(
    t: &Transformer,
    weight_bytes: u64,
    total_bytes: u64,
) -> (Requirements, Requirements, Vec<String>) {
    let kv_per_pos = 2 * t.n_layers() as u64 * t.n_kv_heads as u64 * t.head_dim as u64 * 2;
    let buffers = 4
        * (t.vocab_size as u64 + 4 * t.hidden_size as u64 + 2 * t.intermediate_size as u64)
        + (64 << 20);
    let min_ram = weight_bytes + kv_per_pos * (t.context_length.min(2048) as u64) + buffers;
    let rec_ram = weight_bytes + kv_per_pos * t.context_length as u64 + buffers;
    let minimum = Requirements {
        ram: human_bytes(min_ram),
        compute: "2 CPU cores".into(),
        storage: human_bytes(total_bytes),
    };
    let recommended = Requirements {
        ram: human_bytes(rec_ram),
        compute: format!("4 CPU cores, 1 GPU with {} of memory", human_bytes(rec_ram)),
        storage: human_bytes(total_bytes),
    };
    let mut targets = Vec::new();
    if min_ram <= 2_000_000_000 {
        targets.push("mobile".to_string());
    }
    targets.push("desktop".into());
    targets.push("server".into());
    (minimum, recommended, targets)
}

fn slug(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    let s = s
        .split('_')
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join("_");
    if s.is_empty() {
        "model".into()
    } else {
        s
    }
}

/// Now as `YYYY-MM-DDTHH:MM:SSZ`.
fn rfc3339_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = ((secs / 86400) as i64, secs % 86400);
    // Days since 1970-01-01 to a civil date (proleptic Gregorian), after H. Hinnant's algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_and_dates() {
        assert_eq!(slug("Smollm2 135M 8k"), "smollm2_135m_8k");
        assert_eq!(slug("--"), "model");
        let d = rfc3339_now();
        assert_eq!(d.len(), 20, "{d}");
        assert!(d.starts_with("20"));
    }

    #[test]
    fn keep_policy() {
        let q8 = vec![0u8; 34 * 2];
        let (p, _) = encode(GgmlType::Q8_0, &q8, &[2, 32], Target::Keep).unwrap();
        assert_eq!(p.dtype, DType::Int8);
        let (p, _) = encode(GgmlType::Q8_0, &q8, &[2, 32], Target::Ternary).unwrap();
        assert_eq!(p.dtype, DType::Ternary);
        let f = vec![0u8; 4 * 3 * 40];
        let (p, note) = encode(GgmlType::F32, &f, &[3, 40], Target::Int4).unwrap();
        assert_eq!(p.dtype, DType::F16);
        assert!(note.is_some());
        let (p, _) = encode(GgmlType::F16, &f[..80], &[40], Target::Keep).unwrap();
        assert_eq!(p.dtype, DType::F32);
        assert!(encode(GgmlType::IQ2_XS, &[0; 74], &[1, 256], Target::Keep).is_err());
        // A Q4_0 scale whose -8x overflows f16 is requantized, with a note.
        let mut q4 = vec![0x88u8; 18];
        q4[..2].copy_from_slice(&half::f16::from_f32(10000.0).to_bits().to_le_bytes());
        let (p, note) = encode(GgmlType::Q4_0, &q4, &[1, 32], Target::Keep).unwrap();
        assert_eq!(p.dtype, DType::Int4);
        assert!(note.unwrap().contains("overflows"));
        assert_eq!(p.dequantize(1, 32).unwrap(), vec![0.0; 32]);
        assert!(encode(GgmlType::F32, &f[..8], &[3, 40], Target::Keep).is_err());
    }
}
