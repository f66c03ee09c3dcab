//! `omex optimize` on the real SmolLM2 and whatever GPU adapter there is (lavapipe on CI): it times every
//! decode kernel the adapter can run on each distinct linear op and writes the profile; the GPU engine uses a
//! profile made for it (its decode dispatches change to the kernels chosen, its tokens do not) and ignores a
//! foreign or stale one with a warning.

mod common;
mod gpu_common;

use omex::backend::gpu::{GpuEngine, GpuOptions};
use omex::runtime::Model;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A private copy of the converted model (the profile is written into it).
fn private_copy(label: &str) -> PathBuf {
    let src = common::smollm2_omex("keep");
    let dst = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("optimize-{label}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dst);
    let out = Command::new("cp").arg("-r").arg(&src).arg(&dst).output().unwrap();
    assert!(out.status.success());
    dst
}

fn decode_kernels(dir: &Path) -> Vec<&'static str> {
    let model = Model::load(dir).unwrap();
    let ctx = gpu_common::gpu_arc().unwrap();
    let e = GpuEngine::load_blocking(ctx, &model.dir, &model.config, GpuOptions::new(64)).unwrap();
    e.decode_kernels()
}

fn run_gpu(dir: &Path) -> (Vec<u64>, String) {
    let out = Command::new(common::omex_bin())
        .env("RUST_LOG", "info")
        .arg("run")
        .arg(dir)
        .args(["--backend", "gpu", "--ctx", "64", "--json", "-n", "4", "-p", "The capital of France is"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{err}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    (v["output_ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).collect(), err)
}

#[test]
fn optimize_writes_a_profile_the_engine_uses_on_its_adapter_only() {
    if gpu_common::gpu_arc().is_none() {
        return;
    }
    let dir = private_copy("profile");
    let (want_ids, _) = run_gpu(&dir);
    let default_kernels = decode_kernels(&dir);

    let out = Command::new(common::omex_bin()).arg("optimize").arg(&dir).args(["--reps", "3"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("a decode step's products"), "{text}");
    let files: Vec<PathBuf> = std::fs::read_dir(dir.join("optimization")).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let path = &files[0];
    let mut profile: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    // Every linear op of SmolLM2's blocks, each measured with every kernel that runs it (the generic one and the
    // group kernels at least), the fastest chosen, in all 30 blocks.
    let ops = profile["ops"].as_object().unwrap();
    assert_eq!(ops.len(), 4, "{ops:?}");
    for (key, t) in ops {
        let us = t["us"].as_object().unwrap();
        assert!(us.len() >= 2 && us.contains_key("generic") && us.contains_key("groups"), "{key}: {us:?}");
        let fastest = us.iter().min_by(|a, b| a.1.as_f64().unwrap().total_cmp(&b.1.as_f64().unwrap())).unwrap().0;
        assert_eq!(t["kernel"].as_str(), Some(fastest.as_str()), "{key}");
        assert_eq!(t["blocks"], 30, "{key}");
    }

    // A profile choosing the generic matvec everywhere: the engine's decode runs it, and the same tokens.
    for t in profile["ops"].as_object_mut().unwrap().values_mut() {
        t["kernel"] = "generic".into();
    }
    std::fs::write(path, profile.to_string()).unwrap();
    let tuned = decode_kernels(&dir);
    assert_eq!(tuned.len(), default_kernels.len());
    assert!(tuned.iter().filter(|k| **k == "matvec").count() >= 4 * 30, "{tuned:?}");
    assert_ne!(tuned, default_kernels, "the profile changed no kernel");
    let (ids, log) = run_gpu(&dir);
    assert!(log.contains("using the optimization profile"), "{log}");
    assert_eq!(ids, want_ids, "greedy tokens with the generic kernels");

    // Foreign (another adapter) and stale (other weights): ignored with a warning, the defaults run.
    for (field, value, says) in [("adapter", "Some Other GPU", "made for adapter"), ("model", "00", "made for model")] {
        let mut p = profile.clone();
        p[field] = value.into();
        std::fs::write(path, p.to_string()).unwrap();
        assert_eq!(decode_kernels(&dir), default_kernels, "a {field} mismatch was not ignored");
        let (ids, log) = run_gpu(&dir);
        assert!(log.contains("ignored") && log.contains(says), "{log}");
        assert_eq!(ids, want_ids);
    }
    let _ = std::fs::remove_dir_all(&dir);
}
