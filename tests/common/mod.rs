//! Shared by the integration tests: the real models (SmolLM2-135M and Qwen2.5-Coder, fetched by
//! scripts/fetch-model.sh) and their omex conversions, made once per build of the `omex` binary and reused by every test binary.
#![allow(dead_code)]

pub mod logits;

use std::path::{Path, PathBuf};
use std::process::Command;

/// Where a fetched model lives: `$ENV_VAR`, else `file` in the fetch script's cache.
fn cached_model(env_var: &str, file: &str) -> PathBuf {
    std::env::var_os(env_var).map(PathBuf::from).unwrap_or_else(|| {
        let home = std::env::var_os("OMEX_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME is not set")).join(".cache/omex"));
        home.join("models").join(file)
    })
}

/// The GGUF: `$OMEX_SMOLLM2_GGUF`, else the fetch script's cache path. Panics with the fix if it is missing.
pub fn smollm2_gguf() -> PathBuf {
    let path = cached_model("OMEX_SMOLLM2_GGUF", "SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(path.is_file(), "{} is missing: run scripts/fetch-model.sh (or set OMEX_SMOLLM2_GGUF)", path.display());
    path
}

/// A Qwen2.5-Coder GGUF (`size` "0.5b" or "1.5b"), or `None` (with the reason on stderr) when it is not on this
/// machine: `$OMEX_QWEN05_GGUF` / `$OMEX_QWEN15_GGUF`, else the fetch script's cache path.
pub fn qwen_gguf(size: &str) -> Option<PathBuf> {
    let var = format!("OMEX_QWEN{}_GGUF", size.replace(['.', 'b'], ""));
    let path = cached_model(&var, &format!("qwen2.5-coder-{size}-instruct-q4_k_m.gguf"));
    if path.is_file() {
        return Some(path);
    }
    eprintln!("skipped: {} is missing (run scripts/fetch-model.sh qwen2.5-coder-{size}, or set {var})", path.display());
    None
}

/// The Gemma 3 270M GGUF, or `None` (with the reason on stderr) when it is not on this machine:
/// `$OMEX_GEMMA3_GGUF`, else the fetch script's cache path.
pub fn gemma3_gguf() -> Option<PathBuf> {
    let path = cached_model("OMEX_GEMMA3_GGUF", "gemma-3-270m-q4_k_m.gguf");
    if path.is_file() {
        return Some(path);
    }
    eprintln!(
        "skipped: {} is missing (run scripts/fetch-model.sh gemma3-270m, or set OMEX_GEMMA3_GGUF)",
        path.display()
    );
    None
}

pub fn omex_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_omex"))
}

/// The real model converted with `--quant quant`, under `target/test-models/`.
pub fn smollm2_omex(quant: &str) -> PathBuf {
    converted(&smollm2_gguf(), "smollm2", quant)
}

/// `gguf` converted with `--quant quant` under `target/test-models/`, once per build of the converter: the
/// directory name carries the binary's size and modification time, so a rebuilt converter converts again
/// instead of reusing stale output.
pub fn converted(gguf: &Path, label: &str, quant: &str) -> PathBuf {
    let bin = omex_bin();
    let meta = std::fs::metadata(&bin).expect("omex binary");
    let stamp =
        meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map_or(0, |d| d.as_secs());
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("../test-models");
    let dir = root.join(format!("{label}-{quant}-{}-{stamp}.omex", meta.len()));
    if dir.join("metadata.json").is_file() {
        return dir;
    }
    std::fs::create_dir_all(&root).unwrap();
    // Convert into a private name, then rename: concurrent tests never see a half-written model.
    let tmp = root.join(
        format!("tmp-{label}-{quant}-{}-{:?}.omex", std::process::id(), std::thread::current().id())
            .replace(['(', ')'], ""),
    );
    let _ = std::fs::remove_dir_all(&tmp);
    let out =
        Command::new(&bin).arg("convert").arg(gguf).arg("-o").arg(&tmp).args(["--quant", quant]).output().unwrap();
    assert!(
        out.status.success(),
        "omex convert {} --quant {quant} failed:\n{}",
        gguf.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    if std::fs::rename(&tmp, &dir).is_err() {
        // Another test won the race; its copy is identical.
        let _ = std::fs::remove_dir_all(&tmp);
    }
    assert!(dir.join("metadata.json").is_file());
    dir
}

/// The committed golden file `tests/golden/NAME`.
pub fn golden(name: &str) -> serde_json::Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(name);
    serde_json::from_slice(&std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

pub fn u32s(v: &serde_json::Value) -> Vec<u32> {
    v.as_array().expect("array").iter().map(|x| x.as_u64().expect("integer") as u32).collect()
}

pub fn f64s(v: &serde_json::Value) -> Vec<f64> {
    v.as_array().expect("array").iter().map(|x| x.as_f64().expect("number")).collect()
}
