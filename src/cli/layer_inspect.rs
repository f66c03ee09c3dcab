//! `omex layer-inspect DIR [--json]`: per weight file, its tensors (dtype, shape, parameters, bytes on disk,
//! bytes on a GPU) and totals.

use clap::Args;
use omex::format::metadata::human_bytes;
use omex::format::ModelDir;
use omex::{Error, Result};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct LayerInspectArgs {
    /// The model directory
    pub model: PathBuf,
    /// Print one JSON object on stdout
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct TensorRow {
    name: String,
    dtype: String,
    shape: Vec<u32>,
    parameters: u64,
    disk_bytes: u64,
    gpu_bytes: u64,
}

#[derive(Serialize, Default)]
struct FileRow {
    file: String,
    layer_id: u32,
    file_bytes: u64,
    parameters: u64,
    disk_bytes: u64,
    gpu_bytes: u64,
    tensors: Vec<TensorRow>,
}

#[derive(Serialize)]
struct Inspect {
    files: Vec<FileRow>,
    tensors: usize,
    parameters: u64,
    disk_bytes: u64,
    gpu_bytes: u64,
}

/// Weight files in model order: embedding, layer_0..layer_N, head, then any other.
fn order(file: &str) -> (u8, u64, String) {
    match file.strip_prefix("layer_").and_then(|s| s.strip_suffix(".bin")).and_then(|n| n.parse().ok()) {
        Some(n) => (1, n, String::new()),
        None if file == "embedding.bin" => (0, 0, String::new()),
        None if file == "head.bin" => (2, 0, String::new()),
        None => (3, 0, file.to_string()),
    }
}

pub fn run(args: LayerInspectArgs) -> Result<()> {
    let dir = ModelDir::open(&args.model)?;
    let mut files: BTreeMap<(u8, u64, String), FileRow> = BTreeMap::new();
    for e in &dir.index.tensors {
        let f = files.entry(order(&e.file)).or_insert_with(|| FileRow {
            file: e.file.clone(),
            layer_id: e.layer_id,
            ..Default::default()
        });
        let row = TensorRow {
            name: e.name.clone(),
            dtype: e.dtype.to_string(),
            shape: e.shape.clone(),
            parameters: e.numel(),
            disk_bytes: e.record_bytes,
            gpu_bytes: e.payload_bytes(),
        };
        f.parameters += row.parameters;
        f.disk_bytes += row.disk_bytes;
        f.gpu_bytes += row.gpu_bytes;
        f.tensors.push(row);
    }
    let mut files: Vec<FileRow> = files.into_values().collect();
    for f in &mut files {
        let path = dir.weights_path(&f.file);
        f.file_bytes = std::fs::metadata(&path).map_err(|e| Error::io(&path, e))?.len();
    }
    let out = Inspect {
        tensors: files.iter().map(|f| f.tensors.len()).sum(),
        parameters: files.iter().map(|f| f.parameters).sum(),
        disk_bytes: files.iter().map(|f| f.file_bytes).sum(),
        gpu_bytes: files.iter().map(|f| f.gpu_bytes).sum(),
        files,
    };
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&out).map_err(|e| Error::Usage(e.to_string()))?);
        return Ok(());
    }
    let layer = |id: u32| match id {
        omex::format::record::EMBEDDING_LAYER => "embedding".to_string(),
        omex::format::record::HEAD_LAYER => "head".to_string(),
        n => n.to_string(),
    };
    for f in &out.files {
        outln!("weights/{}  (layer {}, {} on disk)", f.file, layer(f.layer_id), human_bytes(f.file_bytes));
        outln!("  {:<28} {:<8} {:>14} {:>12} {:>12} {:>12}", "tensor", "dtype", "shape", "params", "disk", "gpu");
        for t in &f.tensors {
            let shape = t.shape.iter().map(u32::to_string).collect::<Vec<_>>().join("x");
            outln!(
                "  {:<28} {:<8} {:>14} {:>12} {:>12} {:>12}",
                t.name,
                t.dtype,
                shape,
                t.parameters,
                t.disk_bytes,
                t.gpu_bytes
            );
        }
        outln!("  {:<28} {:<8} {:>14} {:>12} {:>12} {:>12}", "total", "", "", f.parameters, f.disk_bytes, f.gpu_bytes);
    }
    outln!(
        "{} files, {} tensors, {} parameters, {} on disk, {} on a GPU",
        out.files.len(),
        out.tensors,
        out.parameters,
        human_bytes(out.disk_bytes),
        human_bytes(out.gpu_bytes)
    );
    Ok(())
}
