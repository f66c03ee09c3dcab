//! The run directory and its `manifest.json`: each node's status, start time, duration, attempts,
//! fingerprint and output hashes, rewritten after every node so a run that stops can be resumed.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

pub const MANIFEST: &str = "manifest.json";

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct NodeRecord {
    /// `succeeded`, `skipped` (unchanged since the last run), `failed` or `not_run`.
    pub status: String,
    pub fingerprint: String,
    pub attempts: u32,
    pub started_at: String,
    pub duration_ms: f64,
    /// Output file -> sha256.
    pub outputs: BTreeMap<String, String>,
    #[serde(default)]
    pub error: Option<String>,
    /// What was changed to make it run (reduced context...), the guidance note.
    #[serde(default)]
    pub notes: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub container_id: String,
    pub container_sha256: String,
    pub status: String,
    pub started_at: String,
    pub finished_at: String,
    pub nodes: BTreeMap<String, NodeRecord>,
}

pub(super) fn now() -> String {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    crate::format::metadata::rfc3339(secs)
}

/// Opens the run directory: a new or empty folder, or one holding an omex manifest (whose records are
/// returned); a folder of other files is the user's and is refused.
pub(super) fn open_run_dir(out: &Path) -> Result<Option<Manifest>> {
    if out.exists() {
        if !out.is_dir() {
            return Err(Error::Usage(format!("{}: exists and is not a directory", out.display())));
        }
        let manifest = out.join(MANIFEST);
        if manifest.is_file() {
            let bytes = crate::files::read_regular(&manifest, 16 << 20).map_err(|e| Error::io(&manifest, e))?;
            let m: Manifest = serde_json::from_slice(&bytes).map_err(|e| Error::json(&manifest, e))?;
            return Ok(Some(m));
        }
        let mut entries = std::fs::read_dir(out).map_err(|e| Error::io(out, e))?;
        if entries.next().is_some() {
            return Err(Error::Usage(format!(
                "{}: a folder with files and no {MANIFEST} is not an omex run directory; not writing into it",
                out.display()
            )));
        }
        return Ok(None);
    }
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    Ok(None)
}

/// Writes `bytes` to `path` through a temporary file and a rename.
pub(super) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

pub(super) fn manifest_json(m: &Manifest) -> Result<Vec<u8>> {
    let mut v = serde_json::to_vec_pretty(m).map_err(|e| Error::Usage(e.to_string()))?;
    v.push(b'\n');
    Ok(v)
}

pub(super) fn not_run(why: String) -> NodeRecord {
    NodeRecord {
        status: "not_run".into(),
        fingerprint: String::new(),
        attempts: 0,
        started_at: String::new(),
        duration_ms: 0.0,
        outputs: BTreeMap::new(),
        error: Some(why),
        notes: Vec::new(),
    }
}
