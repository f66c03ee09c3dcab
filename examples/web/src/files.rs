//! A model from the files of a `model.omex/` directory held in memory: fetched over HTTP, or picked or dropped
//! by a person. `metadata.json` lists every other file with its size and SHA-256, so the page knows what to
//! fetch, and [`ModelFiles::check`] says exactly which file is missing or damaged before anything is parsed.

use omex::format::metadata::METADATA_FILE;
use omex::format::{Metadata, ModelDir};
use omex::runtime::Model;
use omex::tokenizer::{Tokenizer, TokenizerConfig};
use omex::{Error, Result};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::PathBuf;

pub const TOKENIZER_JSON: &str = "tokenizer/tokenizer.json";
pub const TOKENIZER_CONFIG: &str = "tokenizer/tokenizer_config.json";

/// The files of one model directory, keyed by their path inside it (`weights/layer_0.bin`).
pub struct ModelFiles {
    name: String,
    files: HashMap<String, Vec<u8>>,
}

impl ModelFiles {
    pub fn new(name: &str) -> ModelFiles {
        ModelFiles { name: name.to_string(), files: HashMap::new() }
    }

    /// Adds a file; `path` is relative to the model directory, with `/` separators.
    pub fn add(&mut self, path: &str, bytes: Vec<u8>) -> Result<()> {
        let path = path.trim_start_matches("./");
        let clean = !path.is_empty() && path.split('/').all(|part| !part.is_empty() && part != "." && part != "..");
        if !clean || path.contains('\\') {
            return Err(Error::Usage(format!("{path:?} is not a path inside a model directory")));
        }
        self.files.insert(path.to_string(), bytes);
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.files.len()
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    pub fn total_bytes(&self) -> u64 {
        self.files.values().map(|v| v.len() as u64).sum()
    }

    fn path(&self, rel: &str) -> PathBuf {
        PathBuf::from(&self.name).join(rel)
    }

    /// The parsed `metadata.json`.
    pub fn metadata(&self) -> Result<Metadata> {
        let path = self.path(METADATA_FILE);
        let bytes = self.files.get(METADATA_FILE).ok_or_else(|| {
            Error::invalid(&path, "missing: pick the model directory itself (the folder holding metadata.json)")
        })?;
        serde_json::from_slice(bytes).map_err(|e| Error::json(&path, e))
    }

    /// Checks every file `metadata.json` lists: present, of its size, and (with `checksums`) of its SHA-256.
    /// Returns all problems at once, one line each.
    pub fn check(&self, checksums: bool) -> Result<()> {
        let meta = self.metadata()?;
        let mut problems = Vec::new();
        for f in &meta.files {
            match self.files.get(&f.path) {
                None => problems.push(format!("{}: missing", f.path)),
                Some(b) if b.len() as u64 != f.bytes => {
                    problems.push(format!("{}: {} bytes, metadata.json says {}", f.path, b.len(), f.bytes))
                }
                Some(b) if checksums && !hex_sha256(b).eq_ignore_ascii_case(&f.sha256) => problems
                    .push(format!("{}: SHA-256 differs from metadata.json (a damaged or mixed download)", f.path)),
                Some(_) => {}
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::invalid(self.path(METADATA_FILE), problems.join("; ")))
        }
    }

    /// The tokenizer, the directory and its graph: a [`Model`] ready for an engine. The files are moved into
    /// the model (weight files become its blobs; nothing is copied twice at once beyond one file).
    pub fn open(mut self) -> Result<Model> {
        let tok_path = self.path(TOKENIZER_JSON);
        let json = self.files.remove(TOKENIZER_JSON).ok_or_else(|| Error::invalid(&tok_path, "missing"))?;
        let mut tokenizer = Tokenizer::from_hf_json(&json).map_err(|e| Error::Tokenizer(e.to_string()))?;
        drop(json);
        if let Some(cfg) = self.files.remove(TOKENIZER_CONFIG) {
            let file = self.path(TOKENIZER_CONFIG).display().to_string();
            let cfg = TokenizerConfig::from_json(&cfg, &file).map_err(|e| Error::Tokenizer(e.to_string()))?;
            tokenizer.apply_config(&cfg, &file).map_err(|e| Error::Tokenizer(e.to_string()))?;
        }
        let dir = ModelDir::from_memory(&self.name, self.files)?;
        Model::from_dir(dir, tokenizer)
    }
}

fn hex_sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_must_stay_inside_the_directory() {
        let mut m = ModelFiles::new("m");
        assert!(m.add("weights/layer_0.bin", vec![1]).is_ok());
        assert!(m.add("./graph.json", vec![2]).is_ok());
        for bad in ["", "../x", "weights/../../x", "/etc/passwd", "a//b", "a\\b"] {
            assert!(m.add(bad, vec![]).is_err(), "{bad:?} accepted");
        }
        assert_eq!(m.len(), 2);
        assert_eq!(m.total_bytes(), 2);
    }

    #[test]
    fn check_names_each_missing_or_short_file() {
        let mut m = ModelFiles::new("m");
        let meta = serde_json::json!({
            "omex_version": "1.0", "model_name": "t", "model_version": "1", "model_architecture": "llama",
            "parameters": "1", "creation_date": "", "created_by": "", "license": "", "description": "",
            "source_format": "gguf", "quantization": {"type": "int4", "method": "", "symmetric": false},
            "hardware_targets": [], "minimum_requirements": {"ram": "", "compute": "", "storage": ""},
            "recommended_requirements": {"ram": "", "compute": "", "storage": ""},
            "files": [
                {"path": "graph.json", "bytes": 3, "sha256": hex_sha256(b"abc")},
                {"path": "weights/a.bin", "bytes": 4, "sha256": "00"},
            ]
        });
        m.add(METADATA_FILE, serde_json::to_vec(&meta).unwrap()).unwrap();
        m.add("graph.json", b"abc".to_vec()).unwrap();
        assert!(m.metadata().is_ok(), "{:?}", m.metadata().err());
        let err = m.check(true).unwrap_err().to_string();
        assert!(err.contains("weights/a.bin: missing"), "{err}");
        m.add("weights/a.bin", vec![0; 3]).unwrap();
        let err = m.check(false).unwrap_err().to_string();
        assert!(err.contains("weights/a.bin: 3 bytes, metadata.json says 4"), "{err}");
        m.add("weights/a.bin", vec![0; 4]).unwrap();
        assert!(m.check(false).is_ok());
        let err = m.check(true).unwrap_err().to_string();
        assert!(err.contains("weights/a.bin: SHA-256"), "{err}");
        assert!(!err.contains("graph.json"), "{err}");
    }
}
