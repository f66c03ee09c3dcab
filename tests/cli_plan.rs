//! `omex plan` on the real model (no GPU needed): the budget from the flag, the environment or the config
//! file; resident and streamed units that add up; a budget too small exits non-zero naming the minimum.

mod common;

use common::{omex_bin, smollm2_omex};
use std::process::{Command, Output};

/// `omex plan DIR ARGS --json` with a private OMEX_HOME and HOME (no profile, no config file) and `env`.
fn plan(args: &[&str], env: &[(&str, &str)]) -> Output {
    let home = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("cli-plan-{}", std::process::id()));
    std::fs::create_dir_all(&home).unwrap();
    let dir = smollm2_omex("keep");
    let mut cmd = Command::new(omex_bin());
    cmd.arg("plan").arg(&dir).args(args).env("OMEX_HOME", &home).env("HOME", &home).env_remove("OMEX_GPU_MEM");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn json(out: Output) -> serde_json::Value {
    assert!(out.status.success(), "omex plan failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn a_quarter_of_the_weights_streams_and_the_numbers_add_up() {
    let v = json(plan(&["--gpu-mem", "24161600", "--ctx", "128", "--json"], &[]));
    let units = v["units"].as_array().unwrap();
    assert_eq!(units.len(), 31, "the tied embedding/head and 30 blocks");
    let (mut resident, mut moved, mut weights) = (0, 0, 0);
    for u in units {
        let bytes = u["bytes"].as_u64().unwrap();
        weights += bytes;
        if u["resident"].as_bool().unwrap() {
            resident += bytes;
        } else {
            moved += u["moved_if_streamed"].as_u64().unwrap();
        }
    }
    assert_eq!(v["resident_bytes"].as_u64().unwrap(), resident);
    assert_eq!(v["streamed_bytes_per_token"].as_u64().unwrap(), moved);
    assert_eq!(v["weight_bytes"].as_u64().unwrap(), weights);
    assert!(moved > 0 && resident > 0, "{v}");
    let total = v["total_bytes"].as_u64().unwrap();
    assert!(total <= 24161600, "the plan takes {total} bytes");
    assert_eq!(v["budget_source"], "--gpu-mem");
    // No profile under this OMEX_HOME: no prediction, and no guessing.
    assert!(v["prediction"].is_null());
}

#[test]
fn the_flag_beats_the_environment_which_beats_nothing() {
    let v = json(plan(&["--json", "--ctx", "128"], &[("OMEX_GPU_MEM", "30MB")]));
    assert_eq!(v["budget_bytes"], 30_000_000);
    assert_eq!(v["budget_source"], "OMEX_GPU_MEM");
    let v = json(plan(&["--json", "--gpu-mem", "1GiB"], &[("OMEX_GPU_MEM", "30MB")]));
    assert_eq!(v["budget_bytes"], 1u64 << 30);
    assert_eq!(v["streamed_bytes_per_token"], 0, "a GiB holds the whole model");
    let v = json(plan(&["--json"], &[]));
    assert!(v["budget_bytes"].is_null());
}

#[test]
fn too_small_a_budget_names_the_minimum_and_fails() {
    let out = plan(&["--gpu-mem", "5MB", "--ctx", "128"], &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("too small") && err.contains("at least") && err.contains("--ctx"), "{err}");
    let out = plan(&["--gpu-mem", "lots"], &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--gpu-mem"));
}
