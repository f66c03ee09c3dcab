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

pub fn convert(input: &Path, out: &Path, opts: &Options, progress: &mut dyn FnMut(Event)) -> Result<Summary> {
    let start = Instant::now();
    if out.exists() && !opts.force {
        return Err(Error::Usage(format!("{}: already exists (pass --force to replace it)", out.display())));
    }
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
    for fp in &files {
        let mut w = LayerFileWriter::create(&weights, &fp.file, fp.layer_id)?;
        for name in &fp.tensors {
            progress(Event::Tensor { name });
            let t = model.tensor(name).expect("checked by check_tensors");
            let bytes = model.data(t)?;
            let (packed, note) = encode(t.ty, bytes, &t.shape, opts.target).map_err(|e| {
                Error::invalid(&model.path, format!("tensor {} ({} {}): {e}", t.source_name, t.ty, fmt_shape(&t.shape)))
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
