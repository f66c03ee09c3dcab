//! Writing the output directory: JSON files, the file list with checksums, the requirements estimate,
//! and the final rename into place.

use crate::error::{Error, Result};
use crate::format::checksum::sha256_file;
use crate::format::metadata::{human_bytes, FileEntry, Requirements, METADATA_FILE};
use crate::graph::Transformer;
use std::path::Path;

/// Moves the finished directory into place, replacing an existing one only after the new one is complete.
pub(crate) fn install(tmp: &Path, out: &Path) -> Result<()> {
    if out.exists() {
        let old = tmp.with_file_name(format!("{}.old", tmp.file_name().expect("named").to_string_lossy()));
        std::fs::rename(out, &old).map_err(|e| Error::io(out, e))?;
        std::fs::rename(tmp, out).map_err(|e| Error::io(out, e))?;
        let r = if old.is_dir() { std::fs::remove_dir_all(&old) } else { std::fs::remove_file(&old) };
        r.map_err(|e| Error::io(&old, e))
    } else {
        std::fs::rename(tmp, out).map_err(|e| Error::io(out, e))
    }
}

pub(crate) fn write_json<T: serde::Serialize>(path: &Path, v: &T) -> Result<()> {
    let mut s = serde_json::to_string_pretty(v).map_err(|e| Error::json(path, e))?;
    s.push('\n');
    std::fs::write(path, s).map_err(|e| Error::io(path, e))
}

/// Every file under `root` but metadata.json, with size and sha256, sorted by path (`/`-separated).
pub(crate) fn list_files(root: &Path) -> Result<Vec<FileEntry>> {
    let mut out = Vec::new();
    for rel in crate::validate::walk(root)?.into_iter().filter(|r| r != METADATA_FILE) {
        let (sha256, bytes) = sha256_file(&root.join(&rel))?;
        out.push(FileEntry { path: rel, bytes, sha256 });
    }
    Ok(out)
}

/// Minimum and recommended requirements from the real sizes: the weights, an f16 KV cache (2048 positions
/// at least, the full context recommended) and the runtime's buffers; and the hardware classes that fit.
pub(crate) fn requirements(
    t: &Transformer,
    weight_bytes: u64,
    total_bytes: u64,
) -> (Requirements, Requirements, Vec<String>) {
    let kv_per_pos = 2 * t.n_layers() as u64 * t.n_kv_heads as u64 * t.head_dim as u64 * 2;
    let buffers = 4 * (t.vocab_size as u64 + 4 * t.hidden_size as u64 + 2 * t.intermediate_size as u64) + (64 << 20);
    let min_ram = weight_bytes + kv_per_pos * (t.context_length.min(2048) as u64) + buffers;
    let rec_ram = weight_bytes + kv_per_pos * t.context_length as u64 + buffers;
    let minimum =
        Requirements { ram: human_bytes(min_ram), compute: "2 CPU cores".into(), storage: human_bytes(total_bytes) };
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

pub(crate) fn slug(name: &str) -> String {
    let s: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' }).collect();
    let s = s.split('_').filter(|p| !p.is_empty()).collect::<Vec<_>>().join("_");
    if s.is_empty() {
        "model".into()
    } else {
        s
    }
}

/// Now as `YYYY-MM-DDTHH:MM:SSZ`.
pub(crate) fn rfc3339_now() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    crate::format::metadata::rfc3339(secs)
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
}
