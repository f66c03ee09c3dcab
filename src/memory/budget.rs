//! The GPU memory budget a user gives: `--gpu-mem SIZE`, else `OMEX_GPU_MEM`, else `gpu_memory_limit` in the
//! `[device]` section of `$OMEX_HOME/config.toml` (default `~/.omex/config.toml`). Sizes are `48MB`, `2GiB`, `1.5GB` or a plain number of bytes.

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

pub const ENV_VAR: &str = "OMEX_GPU_MEM";

/// Where a budget came from, for messages ("--gpu-mem 48MB is too small...").
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BudgetSource {
    Flag,
    Env,
    ConfigFile(PathBuf),
}

impl std::fmt::Display for BudgetSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BudgetSource::Flag => f.write_str("--gpu-mem"),
            BudgetSource::Env => f.write_str(ENV_VAR),
            BudgetSource::ConfigFile(p) => write!(f, "{} [device] gpu_memory_limit", p.display()),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Budget {
    pub bytes: u64,
    pub source: BudgetSource,
}

/// Parses `48MB`, `2GiB`, `1.5 GB`, `512k`, `1000000`: decimal (KB, MB, GB, TB) and binary (KiB, MiB, GiB,
/// TiB) units, case-insensitive, an optional `B`.
pub fn parse_size(text: &str) -> std::result::Result<u64, String> {
    let s = text.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (num, unit) = (s[..split].trim(), s[split..].trim().to_ascii_lowercase());
    let value: f64 =
        num.parse().map_err(|_| format!("{text:?} is not a size (try 48MB, 2GiB or a number of bytes)"))?;
    let scale: f64 = match unit.as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "t" | "tb" => 1e12,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        "tib" => 1024.0f64.powi(4),
        _ => return Err(format!("{text:?}: unknown size unit {unit:?} (B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)")),
    };
    let bytes = value * scale;
    if !bytes.is_finite() || bytes < 1.0 || bytes > u64::MAX as f64 {
        return Err(format!("{text:?} is not a usable size"));
    }
    Ok(bytes.round() as u64)
}

/// `$OMEX_HOME/config.toml`, else `~/.omex/config.toml`; none without either variable.
pub fn default_config_path() -> Option<PathBuf> {
    Some(crate::files::omex_home()?.join("config.toml"))
}

/// Reads `[device] gpu_memory_limit` (a size string or an integer of bytes) from a config file.
pub fn budget_from_config(path: &Path) -> Result<Option<u64>> {
    let text = match crate::files::read_regular_string(path, 1 << 20) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(path, e)),
    };
    let doc: toml::Table = text.parse().map_err(|e: toml::de::Error| Error::parse(path, e.to_string()))?;
    let Some(device) = doc.get("device") else { return Ok(None) };
    let Some(limit) = device.get("gpu_memory_limit") else { return Ok(None) };
    let bytes = match limit {
        toml::Value::String(s) => parse_size(s),
        toml::Value::Integer(n) if *n > 0 => Ok(*n as u64),
        other => Err(format!("expected a size such as \"2GiB\", found {other}")),
    };
    bytes.map(Some).map_err(|e| Error::invalid(path, format!("[device] gpu_memory_limit: {e}")))
}

/// The budget in force: the flag beats the environment, which beats the config file. `None`: no limit.
pub fn resolve(flag: Option<&str>, env: Option<&str>, config: Option<&Path>) -> Result<Option<Budget>> {
    if let Some(f) = flag {
        let bytes = parse_size(f).map_err(|e| Error::Usage(format!("--gpu-mem: {e}")))?;
        return Ok(Some(Budget { bytes, source: BudgetSource::Flag }));
    }
    if let Some(e) = env.filter(|e| !e.trim().is_empty()) {
        let bytes = parse_size(e).map_err(|err| Error::Usage(format!("{ENV_VAR}: {err}")))?;
        return Ok(Some(Budget { bytes, source: BudgetSource::Env }));
    }
    if let Some(path) = config {
        if let Some(bytes) = budget_from_config(path)? {
            return Ok(Some(Budget { bytes, source: BudgetSource::ConfigFile(path.to_path_buf()) }));
        }
    }
    Ok(None)
}

/// [`resolve`] with the process's environment and the default config file.
pub fn resolve_default(flag: Option<&str>) -> Result<Option<Budget>> {
    let env = std::env::var(ENV_VAR).ok();
    resolve(flag, env.as_deref(), default_config_path().as_deref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("48MB"), Ok(48_000_000));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("1.5 GB"), Ok(1_500_000_000));
        assert_eq!(parse_size("12345"), Ok(12345));
        assert_eq!(parse_size("64kib"), Ok(65536));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("0").is_err());
    }

    #[test]
    fn flag_beats_env_beats_file() {
        let dir = std::env::temp_dir().join(format!("omex-budget-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = dir.join("config.toml");
        std::fs::write(&cfg, "[device]\ngpu_memory_limit = \"3GB\"\n").unwrap();
        let b = |f, e| resolve(f, e, Some(&cfg)).unwrap().unwrap();
        assert_eq!(b(Some("1GB"), Some("2GB")), Budget { bytes: 1_000_000_000, source: BudgetSource::Flag });
        assert_eq!(b(None, Some("2GB")).bytes, 2_000_000_000);
        assert_eq!(b(None, None), Budget { bytes: 3_000_000_000, source: BudgetSource::ConfigFile(cfg.clone()) });
        std::fs::write(&cfg, "[device]\ngpu_memory_limit = 1000\n").unwrap();
        assert_eq!(b(None, None).bytes, 1000);
        std::fs::write(&cfg, "[device]\ngpu_memory_limit = true\n").unwrap();
        let err = resolve(None, None, Some(&cfg)).unwrap_err().to_string();
        assert!(err.contains("config.toml") && err.contains("gpu_memory_limit"), "{err}");
        assert_eq!(resolve(None, None, Some(&dir.join("missing.toml"))).unwrap(), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
