//! Baking a LoRA adapter into a new model directory: each targeted matrix is dequantized, `scale * B A` added,
//! and stored again (its own layout, or the one asked for); every other tensor is copied record for record,
//! and weight files without a target are copied whole. The base is only read.

use super::output::{install, list_files, write_json};
use crate::backend::lora::Adapter;
use crate::backend::WeightRef;
use crate::error::{Error, Result};
use crate::format::graph::GRAPH_FILE;
use crate::format::index::INDEX_FILE;
use crate::format::metadata::METADATA_FILE;
use crate::format::{DType, LayerFileWriter, ModelDir, SectionKind, TensorEntry};
use std::collections::BTreeMap;
use std::path::Path;

/// The layout of the merged matrices.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum MergeQuant {
    /// The matrix's own layout where omex can quantize to it (f32, f16, int8, int4, ternary); GGUF blocks
    /// kept from the source (Q4_K, ...), which omex does not re-encode, become int8.
    #[default]
    Keep,
    F32,
    F16,
    Int8,
    Int4,
}

impl std::str::FromStr for MergeQuant {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Ok(match s {
            "keep" => MergeQuant::Keep,
            "f32" => MergeQuant::F32,
            "f16" => MergeQuant::F16,
            "int8" => MergeQuant::Int8,
            "int4" => MergeQuant::Int4,
            _ => return Err(format!("unknown merge layout {s:?} (keep, f32, f16, int8 or int4)")),
        })
    }
}

impl MergeQuant {
    fn dtype_for(self, base: DType) -> DType {
        match self {
            MergeQuant::F32 => DType::F32,
            MergeQuant::F16 => DType::F16,
            MergeQuant::Int8 => DType::Int8,
            MergeQuant::Int4 => DType::Int4,
            MergeQuant::Keep => match base {
                DType::F32 | DType::F16 | DType::Int8 | DType::Int4 | DType::Ternary => base,
                _ => DType::Int8,
            },
        }
    }
}

/// What a merge wrote.
#[derive(Clone, Debug)]
pub struct MergeSummary {
    pub merged: usize,
    /// (tensor, base layout, merged layout) of each merged matrix whose layout `keep` could not keep.
    pub relayout: Vec<(String, DType, DType)>,
    pub bytes: u64,
}

/// Writes `out`, a copy of the model `base` with `adapter` (times `scale`) baked into its matrices. `out` must not
/// exist.
pub fn merge(base: &ModelDir, adapter: &Adapter, scale: f32, out: &Path, quant: MergeQuant) -> Result<MergeSummary> {
    if out.exists() {
        return Err(Error::Usage(format!("{}: exists; omex adapter merge writes a new directory", out.display())));
    }
    if !scale.is_finite() {
        return Err(Error::Usage(format!("merge scale {scale} is not finite")));
    }
    let parent = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let tmp = parent.join(format!(
        ".{}.merging-{}",
        out.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_else(|| "model".into()),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&tmp);
    let result = write_merged(base, adapter, scale, &tmp, quant);
    match result {
        Ok(summary) => {
            install(&tmp, out)?;
            Ok(summary)
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            Err(e)
        }
    }
}

fn write_merged(base: &ModelDir, adapter: &Adapter, scale: f32, tmp: &Path, quant: MergeQuant) -> Result<MergeSummary> {
    let weights = tmp.join("weights");
    std::fs::create_dir_all(&weights).map_err(|e| Error::io(&weights, e))?;
    copy_tree(&base.root.join("tokenizer"), &tmp.join("tokenizer"))?;
    std::fs::copy(base.root.join(GRAPH_FILE), tmp.join(GRAPH_FILE)).map_err(|e| Error::io(tmp.join(GRAPH_FILE), e))?;
    for t in adapter.mats.keys() {
        if base.index.get(t).is_none() {
            return Err(Error::Usage(format!("adapter {} targets {t}, which the base lacks", adapter.name)));
        }
    }
    let mut by_file: BTreeMap<&str, Vec<&TensorEntry>> = BTreeMap::new();
    for e in &base.index.tensors {
        by_file.entry(e.file.as_str()).or_default().push(e);
    }
    let mut index = base.index.clone();
    let mut new_entries: BTreeMap<String, TensorEntry> = BTreeMap::new();
    let mut summary = MergeSummary { merged: 0, relayout: Vec::new(), bytes: 0 };
    for (file, mut entries) in by_file {
        if !entries.iter().any(|e| adapter.mats.contains_key(&e.name)) {
            let dst = weights.join(file);
            std::fs::copy(base.weights_path(file), &dst).map_err(|e| Error::io(&dst, e))?;
            continue;
        }
        entries.sort_by_key(|e| e.offset);
        let mut w = LayerFileWriter::create(&weights, file, entries[0].layer_id)?;
        for e in entries {
            let view = base.tensor(&e.name)?;
            let mut entry = match adapter.mats.get(&e.name) {
                None => {
                    let sections: Vec<(SectionKind, &[u8])> =
                        e.sections.iter().map(|s| (s.kind, view.section(s.kind).expect("checked record"))).collect();
                    w.write_tensor(&e.name, e.dtype, &e.shape, &sections)?
                }
                Some(m) => {
                    let wr = WeightRef::load(base, &e.name, &e.shape)?;
                    let matrix = wr.matrix();
                    let (rows, cols) = (matrix.rows, matrix.cols);
                    let mut values = vec![0f32; rows * cols];
                    for (r, row) in values.chunks_exact_mut(cols).enumerate() {
                        matrix.dequant_row(r, row);
                    }
                    for (v, d) in values.iter_mut().zip(m.delta(m.scale * scale)) {
                        *v += d;
                    }
                    let dtype = quant.dtype_for(e.dtype);
                    let packed = crate::quant::quantize(&values, dtype)
                        .map_err(|why| Error::invalid(base.weights_path(file), format!("merged {}: {why}", e.name)))?;
                    if dtype != e.dtype && quant == MergeQuant::Keep {
                        summary.relayout.push((e.name.clone(), e.dtype, dtype));
                    }
                    summary.merged += 1;
                    let mut entry = w.write_tensor(&e.name, dtype, &e.shape, &packed.sections())?;
                    entry.source =
                        Some(serde_json::json!({"merged": adapter.name, "scale": scale, "base_dtype": e.dtype}));
                    entry
                }
            };
            if entry.source.is_none() {
                entry.source = e.source.clone();
            }
            new_entries.insert(e.name.clone(), entry);
        }
        w.finish()?;
    }
    for e in &mut index.tensors {
        if let Some(n) = new_entries.remove(&e.name) {
            *e = n;
        }
    }
    write_json(&tmp.join(INDEX_FILE), &index)?;
    let mut metadata = base.metadata.clone();
    metadata.model_name = format!("{}+{}", base.metadata.model_name, adapter.name);
    metadata.description = format!(
        "{} with the LoRA adapter {} merged (scale {scale}) by omex adapter merge",
        base.metadata.description, adapter.name
    );
    metadata.creation_date = super::output::rfc3339_now();
    metadata.files = list_files(tmp)?;
    summary.bytes = metadata.files.iter().map(|f| f.bytes).sum();
    write_json(&tmp.join(METADATA_FILE), &metadata)?;
    Ok(summary)
}

fn copy_tree(src: &Path, dst: &Path) -> Result<()> {
    std::fs::create_dir_all(dst).map_err(|e| Error::io(dst, e))?;
    for rel in crate::validate::walk(src)? {
        let to = dst.join(&rel);
        if let Some(p) = to.parent() {
            std::fs::create_dir_all(p).map_err(|e| Error::io(p, e))?;
        }
        std::fs::copy(src.join(&rel), &to).map_err(|e| Error::io(&to, e))?;
    }
    Ok(())
}
