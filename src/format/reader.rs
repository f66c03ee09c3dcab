//! Opens a `model.omex/` directory: the three JSON files eagerly, weight files lazily (mmapped natively,
//! fetched bytes in the browser). A tensor is handed out only after its record header has been parsed and
//! matched against the index, so every later slice of its sections is in bounds.

use super::dtype::SectionKind;
use super::graph::{GraphFile, GRAPH_FILE};
use super::index::{TensorEntry, WeightIndex, INDEX_FILE};
use super::metadata::{Metadata, METADATA_FILE};
use super::record::Record;
use crate::error::{Error, Result};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The bytes of one weight file, 4-byte aligned at least (mmaps are page aligned; owned copies are `u32`s).
pub enum Blob {
    #[cfg(not(target_arch = "wasm32"))]
    Mmap(memmap2::Mmap),
    Owned {
        words: Vec<u32>,
        len: usize,
    },
}

impl Blob {
    pub fn from_bytes(bytes: &[u8]) -> Blob {
        let mut words = vec![0u32; bytes.len().div_ceil(4)];
        bytemuck::cast_slice_mut::<u32, u8>(&mut words)[..bytes.len()].copy_from_slice(bytes);
        Blob::Owned { words, len: bytes.len() }
    }

    pub fn bytes(&self) -> &[u8] {
        match self {
            #[cfg(not(target_arch = "wasm32"))]
            Blob::Mmap(m) => m,
            Blob::Owned { words, len } => &bytemuck::cast_slice(words)[..*len],
        }
    }
}

/// Where weight files come from: the directory on disk, or files already in memory (the browser).
enum Source {
    Dir,
    Memory(HashMap<String, Arc<Blob>>),
}

pub struct ModelDir {
    pub root: PathBuf,
    pub metadata: Metadata,
    pub graph: GraphFile,
    pub index: WeightIndex,
    source: Source,
    blobs: Mutex<HashMap<String, Arc<Blob>>>,
}

/// A tensor whose record has been checked: its sections can be sliced out of `blob`.
#[derive(Clone)]
pub struct TensorView {
    pub entry: TensorEntry,
    pub blob: Arc<Blob>,
}

impl TensorView {
    /// The bytes of one section (`None` if this dtype has no such section).
    pub fn section(&self, kind: SectionKind) -> Option<&[u8]> {
        let s = self.entry.section(kind)?;
        Some(&self.blob.bytes()[s.offset as usize..(s.offset + s.bytes) as usize])
    }

    pub fn data(&self) -> &[u8] {
        self.section(SectionKind::Data).expect("every record has a data section")
    }
}

fn read_text(path: &Path) -> Result<Vec<u8>> {
    crate::files::read_regular(path, crate::files::MAX_TEXT_FILE).map_err(|e| Error::io(path, e))
}

/// The message for a path that is not a model directory, with the conversion that makes one: a source model
/// given where a model directory belongs is suggested an output beside it, never its own path.
fn not_a_model_dir(root: &Path) -> String {
    let is_source = root.is_file()
        && root.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf") || e.eq_ignore_ascii_case("safetensors"));
    if is_source {
        let out = root.with_extension("omex");
        format!(
            "{}: is a source model, not an omex model directory; convert it first with `omex convert {} -o {}`",
            root.display(),
            root.display(),
            out.display()
        )
    } else {
        format!(
            "{}: no omex model directory here; create one with `omex convert MODEL.gguf -o DIR.omex`",
            root.display()
        )
    }
}

pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let bytes = read_text(path)?;
    serde_json::from_slice(&bytes).map_err(|e| Error::json(path, e))
}

impl ModelDir {
    pub fn open(root: &Path) -> Result<ModelDir> {
        if !root.is_dir() {
            return Err(Error::Usage(not_a_model_dir(root)));
        }
        let metadata = read_json(&root.join(METADATA_FILE))?;
        let graph = read_json(&root.join(GRAPH_FILE))?;
        let index = read_json(&root.join(INDEX_FILE))?;
        Ok(ModelDir {
            root: root.to_path_buf(),
            metadata,
            graph,
            index,
            source: Source::Dir,
            blobs: Mutex::new(HashMap::new()),
        })
    }

    /// A model whose files are already in memory, keyed by their path relative to the model directory.
    pub fn from_memory(name: &str, files: HashMap<String, Vec<u8>>) -> Result<ModelDir> {
        let root = PathBuf::from(name);
        let json = |rel: &str| -> Result<&Vec<u8>> {
            files.get(rel).ok_or_else(|| Error::invalid(root.join(rel), "missing from the fetched files"))
        };
        let metadata =
            serde_json::from_slice(json(METADATA_FILE)?).map_err(|e| Error::json(root.join(METADATA_FILE), e))?;
        let graph = serde_json::from_slice(json(GRAPH_FILE)?).map_err(|e| Error::json(root.join(GRAPH_FILE), e))?;
        let index = serde_json::from_slice(json(INDEX_FILE)?).map_err(|e| Error::json(root.join(INDEX_FILE), e))?;
        let blobs = files.iter().filter(|(k, _)| k.starts_with("weights/") && k.ends_with(".bin"));
        let blobs = blobs.map(|(k, v)| (k["weights/".len()..].to_string(), Arc::new(Blob::from_bytes(v)))).collect();
        Ok(ModelDir { root, metadata, graph, index, source: Source::Memory(blobs), blobs: Mutex::new(HashMap::new()) })
    }

    pub fn weights_path(&self, file: &str) -> PathBuf {
        self.root.join("weights").join(file)
    }

    /// The weight file `file` (relative to `weights/`), mapped once and shared.
    pub fn blob(&self, file: &str) -> Result<Arc<Blob>> {
        if file.contains("..") || file.contains('/') || file.contains('\\') {
            return Err(Error::invalid(
                self.root.join(INDEX_FILE),
                format!("weight file name {file:?} leaves weights/"),
            ));
        }
        let mut blobs = self.blobs.lock().expect("blob cache poisoned");
        if let Some(b) = blobs.get(file) {
            return Ok(b.clone());
        }
        let blob = match &self.source {
            Source::Memory(files) => {
                files.get(file).cloned().ok_or_else(|| Error::invalid(self.weights_path(file), "missing"))?
            }
            Source::Dir => Arc::new(map_file(&self.weights_path(file))?),
        };
        blobs.insert(file.to_string(), blob.clone());
        Ok(blob)
    }

    /// The named tensor, its record parsed and checked against the index entry.
    pub fn tensor(&self, name: &str) -> Result<TensorView> {
        let entry = self
            .index
            .get(name)
            .ok_or_else(|| Error::invalid(self.root.join(INDEX_FILE), format!("no tensor named {name:?}")))?;
        let blob = self.blob(&entry.file)?;
        let path = self.weights_path(&entry.file);
        let bytes = blob.bytes();
        let rest = bytes.get(entry.offset as usize..).ok_or_else(|| {
            Error::invalid(
                &path,
                format!(
                    "tensor {name}: index offset {} is past the end of the file ({} bytes)",
                    entry.offset,
                    bytes.len()
                ),
            )
        })?;
        let rec =
            Record::decode(rest).map_err(|e| Error::parse(&path, format!("record at offset {}: {e}", entry.offset)))?;
        let problems = entry.mismatches(&rec);
        if let Some(p) = problems.first() {
            return Err(Error::invalid(&path, p.clone()));
        }
        Ok(TensorView { entry: entry.clone(), blob })
    }
}

#[cfg(not(target_arch = "wasm32"))]
fn map_file(path: &Path) -> Result<Blob> {
    let map = crate::files::map_regular(path).map_err(|e| Error::io(path, e))?;
    Ok(Blob::Mmap(map))
}

#[cfg(target_arch = "wasm32")]
fn map_file(path: &Path) -> Result<Blob> {
    Err(Error::Unsupported(format!("{}: the browser build reads models from fetched files", path.display())))
}
