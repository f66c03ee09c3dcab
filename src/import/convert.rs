//! `omex convert`: a [`SourceModel`] to a `model.omex/` directory. Every tensor is encoded once into the
//! layout the kernels read (see [`super::encode::encode`]), written record by record into its layer file, and indexed;
//! then `graph.json`, the tokenizer and, last, `metadata.json` with the size and sha256 of every file.
//! Everything is written into a temporary directory beside the output and renamed at the end, so a failed
//! conversion leaves no half model.

use super::encode::encode;
use super::output::{install, list_files, requirements, rfc3339_now, slug, write_json};
use super::{SourceModel, TokenizerSource};
use crate::error::{Error, Result};
use crate::format::graph::GRAPH_FILE;
use crate::format::index::INDEX_FILE;
use crate::format::metadata::{human_params, Metadata, QuantSummary, METADATA_FILE, OMEX_VERSION};
use crate::format::record::{EMBEDDING_LAYER, HEAD_LAYER};
use crate::format::{DType, LayerFileWriter, WeightIndex};
use crate::graph::Transformer;
use crate::quant::Target;
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
        Options { target: Target::Keep, force: false, name: None }
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
        tensors: std::iter::once(&t.token_embedding).chain(&t.position_embedding).cloned().collect(),
    }];
    for (i, b) in t.blocks.iter().enumerate() {
        v.push(FilePlan {
            file: b.file.clone(),
            layer_id: i as u32,
            tensors: b.names().into_iter().map(String::from).collect(),
        });
    }
    let mut head = vec![t.output_norm.clone()];
    head.extend(t.output_norm_bias.iter().cloned());
    if !t.tied_embeddings {
        head.push(t.output.clone());
    }
    v.push(FilePlan { file: t.head_file.clone(), layer_id: HEAD_LAYER, tensors: head });
    v
}

/// Checks that the source has exactly the tensors the model reads, with the shapes it expects.
fn check_tensors(model: &SourceModel) -> Result<()> {
    let mut problems = Vec::new();
    let expected = model.transformer.expected_tensors();
    for (name, shape) in &expected {
        match model.tensor(name) {
            None => problems.push(format!("tensor {name} is missing")),
            Some(t) if &t.shape != shape => problems
                .push(format!("tensor {name} ({}) has shape {:?}, the model needs {shape:?}", t.source_name, t.shape)),
            Some(_) => {}
        }
    }
    for t in &model.tensors {
        if !expected.iter().any(|(n, _)| n == &t.name) {
            problems.push(format!("tensor {} ({}) is not read by the model", t.name, t.source_name));
        }
    }
    if problems.is_empty() {
        return Ok(());
    }
    const SHOWN: usize = 8;
    let more = problems.len().saturating_sub(SHOWN);
    problems.truncate(SHOWN);
    if more > 0 {
        problems.push(format!("and {more} more"));
    }
    Err(Error::invalid(&model.path, problems.join("; ")))
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

/// Refuses an output path that would lose something the user owns: the input itself (or a directory holding
/// it), or, even with `--force`, anything that is not an omex model directory or an empty directory.
pub(crate) fn check_output(input: &Path, out: &Path, force: bool) -> Result<()> {
    let Ok(meta) = std::fs::symlink_metadata(out) else { return Ok(()) };
    if let (Ok(i), Ok(o)) = (input.canonicalize(), out.canonicalize()) {
        if i.starts_with(&o) {
            return Err(Error::Usage(format!(
                "{}: is the input {} or holds it; omex never replaces its input (choose another -o)",
                out.display(),
                input.display()
            )));
        }
    }
    if !force {
        return Err(Error::Usage(format!("{}: already exists (pass --force to replace it)", out.display())));
    }
    let is_empty_dir = meta.is_dir() && std::fs::read_dir(out).map(|mut d| d.next().is_none()).unwrap_or(false);
    let is_model = meta.is_dir() && is_omex_model(out);
    if !(is_empty_dir || is_model) {
        let what = if meta.is_dir() { "a directory that is not an omex model" } else { "not a directory" };
        return Err(Error::Usage(format!(
            "{}: is {what}; --force only replaces an omex model directory (one with metadata.json naming an \
             omex_version) or an empty directory",
            out.display()
        )));
    }
    Ok(())
}

/// Whether `dir` holds an omex model: a metadata.json that parses with an `omex_version`.
fn is_omex_model(dir: &Path) -> bool {
    crate::format::reader::read_json::<serde_json::Value>(&dir.join(METADATA_FILE))
        .is_ok_and(|v| v.get("omex_version").is_some_and(|v| v.is_string()))
}

pub fn convert(input: &Path, out: &Path, opts: &Options, progress: &mut dyn FnMut(Event)) -> Result<Summary> {
    let start = Instant::now();
    check_output(input, out, opts.force)?;
    let model = SourceModel::open(input)?;
    check_tensors(&model)?;
    let mut warnings = model.warnings.clone();

    let out_name = out.file_name().ok_or_else(|| Error::Usage(format!("{}: not a directory name", out.display())))?;
    let parent = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let staging = Staging {
        path: parent.join(format!(".{}.partial-{}", out_name.to_string_lossy(), std::process::id())),
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
        TokenizerSource::HfDir(d) => {
            crate::tokenizer::copy_hf_tokenizer(d, &tok_dir).map_err(|e| Error::Tokenizer(e.to_string()))?
        }
    }

    let files = plan(&model.transformer);
    progress(Event::Begin { tensors: files.iter().map(|f| f.tensors.len()).sum() });
    let mut index = WeightIndex::new(opts.target.name());
    let mut ternary_error = QuantError::default();
    for fp in &files {
        let mut w = LayerFileWriter::create(&weights, &fp.file, fp.layer_id)?;
        for name in &fp.tensors {
            progress(Event::Tensor { name });
            let t = model.tensor(name).expect("checked by check_tensors");
            let bytes = model.data(t)?;
            let (packed, note) = encode(t.ty, &bytes, &t.shape, opts.target).map_err(|e| {
                Error::invalid(&model.path, format!("tensor {} ({} {}): {e}", t.source_name, t.ty, fmt_shape(&t.shape)))
            })?;
            if let Some(n) = note {
                warnings.push(format!("tensor {}: {n}", t.name));
            }
            let bad = packed.non_finite();
            if bad > 0 {
                return Err(Error::invalid(
                    &model.path,
                    format!("tensor {}: {bad} values (or their scales) are NaN or infinite", t.source_name),
                ));
            }
            if opts.target == Target::Ternary && t.shape.len() == 2 && packed.dtype == DType::Ternary {
                ternary_error.add(t.ty, &bytes, &packed, &t.shape)?;
            }
            let mut entry = w.write_tensor(name, packed.dtype, &t.shape, &packed.sections())?;
            entry.source = Some(model.source_json(t));
            index.tensors.push(entry);
        }
        w.finish()?;
    }
    progress(Event::Finishing);
    if let Some(w) = ternary_error.warning() {
        warnings.push(w);
    }
    write_json(&tmp.join(INDEX_FILE), &index)?;
    let name = opts.name.clone().unwrap_or_else(|| model.name.clone());
    let graph = model.transformer.to_graph(&format!("{}_graph", slug(&name)));
    write_json(&tmp.join(GRAPH_FILE), &graph)?;

    let entries = list_files(&tmp)?;
    let weight_bytes: u64 =
        entries.iter().filter(|e| e.path.starts_with("weights/") && e.path.ends_with(".bin")).map(|e| e.bytes).sum();
    let total_bytes: u64 = entries.iter().map(|e| e.bytes).sum();
    let parameters: u64 = index.tensors.iter().map(|t| t.numel()).sum();
    let (minimum, recommended, targets) = requirements(&model.transformer, weight_bytes, total_bytes);
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
    let total_bytes = total_bytes + std::fs::metadata(tmp.join(METADATA_FILE)).map_err(|e| Error::io(&tmp, e))?.len();

    check_output(input, out, opts.force)?; // again: the path may have changed during the conversion
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

/// How far a quantization moved the weights: the relative RMS error over every matrix, sum(e^2) / sum(w^2).
#[derive(Default)]
struct QuantError {
    err2: f64,
    norm2: f64,
}

impl QuantError {
    fn add(
        &mut self,
        ty: crate::quant::GgmlType,
        bytes: &[u8],
        packed: &crate::quant::Packed,
        shape: &[u32],
    ) -> Result<()> {
        let (rows, cols) = (shape[0] as usize, shape[1] as usize);
        let mut src = vec![0f32; rows * cols];
        crate::quant::dequant::dequantize(ty, bytes, &mut src).map_err(|e| Error::Unsupported(e.to_string()))?;
        let got = packed.dequantize(rows, cols).map_err(Error::Unsupported)?;
        for (a, b) in src.iter().zip(&got) {
            self.err2 += ((a - b) as f64).powi(2);
            self.norm2 += (*a as f64).powi(2);
        }
        Ok(())
    }

    /// A warning when ternary weights are far from the source: absmean ternary keeps a model only if it was
    /// trained for it (BitNet b1.58 reaches a few percent); an ordinary model lands near 50% and is useless.
    fn warning(&self) -> Option<String> {
        let rel = (self.err2 / self.norm2.max(f64::MIN_POSITIVE)).sqrt();
        (self.norm2 > 0.0 && rel > 0.1).then(|| {
            format!(
                "--quant ternary moved the weights by {:.0}% (relative RMS error): this model was not trained for \
                 ternary weights (as BitNet b1.58 models are) and will likely produce garbage; check it with \
                 `omex perplexity`, or use --quant int4 or int8",
                rel * 100.0
            )
        })
    }
}

fn fmt_shape(s: &[u32]) -> String {
    format!("{s:?}")
}
