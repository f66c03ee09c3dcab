//! `omex validate`: checks a `model.omex/` directory from the schemas down to the bytes, and reports every
//! problem found (not just the first) plus warnings for things that are unusual but harmless.
//!
//! Checked: metadata.json's schema and version; graph.json's structure and that it builds a model; every
//! tensor the graph reads is indexed with its shape, in the file the graph names; every index entry's record
//! parses from its file and equals the entry, records do not overlap, quantization scales are finite and
//! ternary codes valid; every file of `metadata.files` is present with its size and sha256; the tokenizer
//! loads; the optional folders' JSON files parse (agents: the whole agent schema). Files nobody lists are
//! warnings.

use crate::format::agent::AgentConfig;
use crate::format::checksum::sha256_file;
use crate::format::graph::{GraphFile, GRAPH_FILE};
use crate::format::index::{TensorEntry, WeightIndex, INDEX_FILE};
use crate::format::metadata::{Metadata, METADATA_FILE, OMEX_VERSION};
use crate::format::reader::read_json;
use crate::format::record::{Record, ALIGN, RECORD_VERSION};
use crate::format::{DType, SectionKind, OPTIONAL_DIRS};
use crate::graph::Transformer;
use half::f16;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::Path;

/// The outcome of a validation: the model is valid when `problems` is empty.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    pub ok: bool,
    pub problems: Vec<String>,
    pub warnings: Vec<String>,
    pub tensors_checked: usize,
    pub files_checked: usize,
}

impl Report {
    fn problem(&mut self, p: impl Into<String>) {
        self.problems.push(p.into());
    }

    fn warn(&mut self, w: impl Into<String>) {
        self.warnings.push(w.into());
    }
}

/// Validates the model directory `dir`.
pub fn validate(dir: &Path) -> Report {
    let mut r = Report::default();
    if !dir.is_dir() {
        r.problem(format!("{}: not a directory", dir.display()));
        return r;
    }
    let metadata: Option<Metadata> = read_json(&dir.join(METADATA_FILE)).map_err(|e| r.problem(e.to_string())).ok();
    if let Some(m) = &metadata {
        if m.omex_version != OMEX_VERSION {
            r.problem(format!("{METADATA_FILE}: omex_version {:?} (this omex reads {OMEX_VERSION:?})", m.omex_version));
        }
        if m.model_name.trim().is_empty() {
            r.problem(format!("{METADATA_FILE}: model_name is empty"));
        }
    }
    let graph: Option<GraphFile> = read_json(&dir.join(GRAPH_FILE)).map_err(|e| r.problem(e.to_string())).ok();
    let model = graph.as_ref().and_then(|g| {
        for p in g.problems() {
            r.problem(format!("{GRAPH_FILE}: {p}"));
        }
        let t = Transformer::from_graph(g, &dir.join(GRAPH_FILE)).map_err(|e| r.problem(e.to_string())).ok()?;
        // The op program every engine runs: the architecture is known and its ops fit together.
        if let Err(e) = crate::arch::program(&t) {
            r.problem(format!("{GRAPH_FILE}: {e}"));
        }
        Some(t)
    });
    let index: Option<WeightIndex> = read_json(&dir.join(INDEX_FILE)).map_err(|e| r.problem(e.to_string())).ok();
    if let Some(ix) = &index {
        check_index_header(&mut r, ix);
        if let Some(t) = &model {
            check_expected(&mut r, t, ix);
        }
        check_records(&mut r, dir, ix);
    }
    check_tokenizer(&mut r, dir, model.as_ref());
    if let Some(m) = &metadata {
        check_files(&mut r, dir, m);
    }
    check_optional(&mut r, dir);
    check_adapters(&mut r, dir, model.as_ref(), index.as_ref());
    r.ok = r.problems.is_empty();
    r
}

fn check_index_header(r: &mut Report, ix: &WeightIndex) {
    if ix.format != "omex-weights" {
        r.problem(format!("{INDEX_FILE}: format {:?} (expected \"omex-weights\")", ix.format));
    }
    if ix.record_version != RECORD_VERSION {
        r.problem(format!("{INDEX_FILE}: record_version {} (this omex reads {RECORD_VERSION})", ix.record_version));
    }
    if ix.alignment != ALIGN {
        r.problem(format!("{INDEX_FILE}: alignment {} (records are aligned to {ALIGN})", ix.alignment));
    }
    let mut seen = HashSet::new();
    for t in &ix.tensors {
        if !seen.insert(t.name.as_str()) {
            r.problem(format!("{INDEX_FILE}: tensor {} is listed twice", t.name));
        }
        if t.dtype == DType::Bf16 {
            r.problem(format!("{INDEX_FILE}: tensor {} is bf16, which no kernel reads", t.name));
        }
    }
}

/// Every tensor the graph reads: indexed, with its shape, in the file the graph names.
fn check_expected(r: &mut Report, t: &Transformer, ix: &WeightIndex) {
    let mut file_of: BTreeMap<&str, &str> = BTreeMap::new();
    file_of.insert(&t.token_embedding, &t.embedding_file);
    file_of.insert(&t.output_norm, &t.head_file);
    if !t.tied_embeddings {
        file_of.insert(&t.output, &t.head_file);
    }
    for b in &t.blocks {
        for n in b.names() {
            file_of.insert(n, &b.file);
        }
    }
    for (name, shape) in t.expected_tensors() {
        r.tensors_checked += 1;
        let Some(e) = ix.get(&name) else {
            r.problem(format!("{INDEX_FILE}: tensor {name} (read by {GRAPH_FILE}) is missing"));
            continue;
        };
        if e.shape != shape {
            r.problem(format!("{INDEX_FILE}: tensor {name} has shape {:?}, {GRAPH_FILE} needs {shape:?}", e.shape));
        }
        if let Some(f) = file_of.get(name.as_str()) {
            if e.file != *f {
                r.problem(format!(
                    "{INDEX_FILE}: tensor {name} is in weights/{}, {GRAPH_FILE} reads it from weights/{f}",
                    e.file
                ));
            }
        }
    }
}

/// Every record parses and equals its index entry; records of a file do not overlap.
fn check_records(r: &mut Report, dir: &Path, ix: &WeightIndex) {
    let mut by_file: BTreeMap<&str, Vec<&TensorEntry>> = BTreeMap::new();
    for e in &ix.tensors {
        by_file.entry(e.file.as_str()).or_default().push(e);
    }
    for (file, mut entries) in by_file {
        let rel = format!("weights/{file}");
        if file.contains('/') || file.contains('\\') || file.contains("..") || file.is_empty() {
            r.problem(format!("{INDEX_FILE}: weight file name {file:?} leaves weights/"));
            continue;
        }
        let path = dir.join("weights").join(file);
        let map = match crate::files::map_regular(&path) {
            Ok(m) => m,
            Err(e) => {
                r.problem(format!("{rel}: cannot be read ({e}); {} tensors of {INDEX_FILE} live in it", entries.len()));
                continue;
            }
        };
        let bytes: &[u8] = &map;
        entries.sort_by_key(|e| e.offset);
        let mut end_prev = 0u64;
        for e in entries {
            if e.offset % ALIGN != 0 {
                r.problem(format!("{rel}: tensor {} at offset {} is not {ALIGN}-aligned", e.name, e.offset));
            }
            if e.offset < end_prev {
                r.problem(format!(
                    "{rel}: tensor {} at offset {} overlaps the record before it (ends at {end_prev})",
                    e.name, e.offset
                ));
            }
            let Some(rest) = bytes.get(e.offset as usize..).filter(|_| e.offset <= bytes.len() as u64) else {
                r.problem(format!(
                    "{rel}: tensor {}: offset {} is past the end of the file ({} bytes)",
                    e.name,
                    e.offset,
                    bytes.len()
                ));
                continue;
            };
            let rec = match Record::decode(rest) {
                Ok(rec) => rec,
                Err(err) => {
                    r.problem(format!("{rel}: record of tensor {} at offset {}: {err}", e.name, e.offset));
                    continue;
                }
            };
            end_prev = e.offset + rec.record_bytes;
            let mismatches = e.mismatches(&rec);
            for m in &mismatches {
                r.problem(format!("{rel}: {m}"));
            }
            if mismatches.is_empty() {
                check_values(r, &rel, e, bytes);
            }
        }
        if end_prev < bytes.len() as u64 {
            r.warn(format!("{rel}: {} bytes after the last indexed record", bytes.len() as u64 - end_prev));
        }
    }
}

/// Content checks that need no model: finite scales and mins, valid ternary codes, finite float weights.
fn check_values(r: &mut Report, rel: &str, e: &TensorEntry, file: &[u8]) {
    let section = |k: SectionKind| e.section(k).map(|s| &file[s.offset as usize..(s.offset + s.bytes) as usize]);
    let bad_f16 = |b: &[u8]| b.chunks_exact(2).filter(|c| !f16::from_le_bytes([c[0], c[1]]).is_finite()).count();
    for kind in [SectionKind::Scales, SectionKind::Mins] {
        if let Some(n) = section(kind).map(bad_f16).filter(|&n| n > 0) {
            r.problem(format!("{rel}: tensor {}: {n} {kind:?} are NaN or infinite", e.name));
        }
    }
    let data = section(SectionKind::Data).unwrap_or(&[]);
    let bad = match e.dtype {
        DType::Ternary => data.iter().map(|b| (0..4).filter(|j| (b >> (2 * j)) & 3 == 3).count()).sum(),
        DType::F32 => {
            data.chunks_exact(4).filter(|c| !f32::from_le_bytes([c[0], c[1], c[2], c[3]]).is_finite()).count()
        }
        DType::F16 => bad_f16(data),
        d => match crate::quant::kept_ggml(d) {
            Some(_) => crate::quant::Packed::new(d, data.to_vec()).non_finite(),
            None => 0,
        },
    };
    if bad > 0 {
        let what =
            if e.dtype == DType::Ternary { "invalid ternary codes (3)" } else { "values that are NaN or infinite" };
        r.problem(format!("{rel}: tensor {}: {bad} {what}", e.name));
    }
}

fn check_tokenizer(r: &mut Report, dir: &Path, model: Option<&Transformer>) {
    let tdir = dir.join("tokenizer");
    let json = tdir.join("tokenizer.json");
    if !json.exists() {
        r.problem("tokenizer/tokenizer.json: missing (the model has no tokenizer)");
        return;
    }
    match crate::tokenizer::Tokenizer::load(&tdir) {
        Err(e) => r.problem(format!("tokenizer: {e}")),
        Ok(tok) => {
            if let Some(t) = model {
                if tok.vocab_size() > t.vocab_size as usize {
                    r.problem(format!(
                        "tokenizer/tokenizer.json: {} tokens, but the embedding has only {} rows",
                        tok.vocab_size(),
                        t.vocab_size
                    ));
                }
            }
        }
    }
}

/// Only the checksums: every file `metadata.json` lists is there with its size and sha256 (what `omex run
/// --verify` asks for before loading). Returns the number of files checked, or every problem found.
pub fn verify_files(dir: &Path, m: &Metadata) -> std::result::Result<usize, Vec<String>> {
    let mut r = Report::default();
    check_files(&mut r, dir, m);
    if r.problems.is_empty() {
        Ok(r.files_checked)
    } else {
        Err(r.problems)
    }
}

/// Every file of `metadata.files` is there with its size and sha256; files nobody lists are warnings.
fn check_files(r: &mut Report, dir: &Path, m: &Metadata) {
    let mut listed = BTreeSet::new();
    for f in &m.files {
        if !listed.insert(f.path.as_str()) {
            r.problem(format!("{METADATA_FILE}: {} is listed twice in files", f.path));
            continue;
        }
        if f.path.starts_with('/') || f.path.split('/').any(|c| c == ".." || c.is_empty()) || f.path.contains('\\') {
            r.problem(format!("{METADATA_FILE}: file path {:?} leaves the model directory", f.path));
            continue;
        }
        let path = dir.join(&f.path);
        if !path.exists() {
            r.problem(format!("{}: listed in {METADATA_FILE} but missing", f.path));
            continue;
        }
        r.files_checked += 1;
        match sha256_file(&path) {
            Err(e) => r.problem(e.to_string()),
            Ok((sha, bytes)) => {
                if bytes != f.bytes {
                    r.problem(format!(
                        "{}: size mismatch: {METADATA_FILE} says {} bytes, the file has {bytes}",
                        f.path, f.bytes
                    ));
                }
                if sha != f.sha256 {
                    r.problem(format!(
                        "{}: checksum mismatch: {METADATA_FILE} says sha256 {}, the file has {sha}",
                        f.path, f.sha256
                    ));
                }
            }
        }
    }
    match walk(dir) {
        Err(e) => r.problem(e.to_string()),
        Ok(files) => {
            // An adapter carries its own checksum (adapter.json), checked by check_adapters; anything else
            // under adapters/ is an unlisted file like any other.
            let adapters = crate::format::adapter::list(dir).unwrap_or_default();
            let own = |f: &str| {
                let dir = crate::format::adapter::ADAPTERS_DIR;
                adapters.iter().any(|a| f.starts_with(&format!("{dir}/{a}/")))
            };
            for f in files.iter().filter(|f| *f != METADATA_FILE && !listed.contains(f.as_str()) && !own(f)) {
                r.warn(format!("{f}: not listed in {METADATA_FILE} (not checksummed)"));
            }
        }
    }
}

/// Every adapter of `adapters/` reads (its checksum, records, shapes, finite values) and fits the base.
fn check_adapters(r: &mut Report, dir: &Path, model: Option<&Transformer>, index: Option<&WeightIndex>) {
    use crate::format::adapter::{self, AdapterData};
    let names = match adapter::list(dir) {
        Ok(n) => n,
        Err(e) => return r.problem(e.to_string()),
    };
    for name in names {
        let base = model.zip(index).map(|(t, ix)| (t.architecture.as_str(), t.hidden_size, ix));
        match AdapterData::open_for(dir, &name, base) {
            Err(e) => r.problem(e.to_string()),
            Ok(_) => r.files_checked += 2,
        }
    }
}

/// The optional folders' JSON files parse; agents follow the agent schema; unknown top-level entries are warnings.
fn check_optional(r: &mut Report, dir: &Path) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let mut top: Vec<String> = rd.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().to_string()).collect();
    top.sort();
    for name in top {
        let known = [METADATA_FILE, GRAPH_FILE, "weights", "tokenizer"].contains(&name.as_str());
        if known {
            continue;
        }
        if !OPTIONAL_DIRS.contains(&name.as_str()) || !dir.join(&name).is_dir() {
            r.warn(format!("{name}: not part of the omex layout"));
            continue;
        }
        let files = walk(&dir.join(&name)).unwrap_or_default();
        for f in files {
            let rel = format!("{name}/{f}");
            if !f.ends_with(".json") {
                if ["agents", "preprocessors", "postprocessors"].contains(&name.as_str()) {
                    r.warn(format!("{rel}: not a JSON file"));
                }
                continue;
            }
            if name == "agents" {
                // The whole schema: tools, permissions, memory policy (see format::agent).
                if let Err(e) = AgentConfig::load(&dir.join(&rel)) {
                    r.problem(e.to_string());
                }
                continue;
            }
            if let Err(e) = read_json::<serde_json::Value>(&dir.join(&rel)) {
                r.problem(e.to_string());
            }
        }
    }
}

/// Every file under `root`, as `/`-separated paths relative to it, sorted.
pub fn walk(root: &Path) -> crate::Result<Vec<String>> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).map_err(|e| crate::Error::io(&d, e))? {
            let p = e.map_err(|e| crate::Error::io(&d, e))?.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(root).expect("under root");
                out.push(rel.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/"));
            }
        }
    }
    out.sort();
    Ok(out)
}
