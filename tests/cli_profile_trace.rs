//! `omex profile` and `omex memory-trace` as a user calls them: the profile cache under `OMEX_HOME` (with or
//! without a GPU adapter), and a trace drawn to SVG, with errors that name the file and exit non-zero.

use omex::backend::gpu::profile::MachineProfile;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn omex(args: &[&str], home: Option<&Path>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_omex"));
    cmd.args(args);
    if let Some(h) = home {
        cmd.env("OMEX_HOME", h);
    }
    cmd.output().unwrap()
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("omex-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

const TRACE: &str = r#"{
  "model": "tiny.omex", "device": "llvmpipe (Vulkan)", "budget_bytes": 3000000, "overlap": true, "slots": 2,
  "units": [
    {"name": "embedding.bin", "bytes": 1000000, "resident": true},
    {"name": "layer_0.bin", "bytes": 800000, "resident": false},
    {"name": "layer_1.bin", "bytes": 800000, "resident": false}
  ],
  "spans": [
    {"kind": "compute", "unit": "embedding.bin", "slot": null, "forward": 0, "start_us": 0, "end_us": 900, "bytes": 1000000},
    {"kind": "upload", "unit": "layer_0.bin", "slot": 0, "forward": 0, "start_us": 0, "end_us": 1000, "bytes": 800000},
    {"kind": "upload", "unit": "layer_1.bin", "slot": 1, "forward": 0, "start_us": 1000, "end_us": 2000, "bytes": 800000},
    {"kind": "compute", "unit": "layer_0.bin", "slot": 0, "forward": 0, "start_us": 1000, "end_us": 2500, "bytes": 800000},
    {"kind": "compute", "unit": "layer_1.bin", "slot": 1, "forward": 0, "start_us": 2500, "end_us": 4000, "bytes": 800000}
  ],
  "memory": [
    {"t_us": 0, "gpu_bytes": 1000000, "gpu_peak_bytes": 1000000, "host_rss_bytes": 50000000},
    {"t_us": 1000, "gpu_bytes": 1800000, "gpu_peak_bytes": 1800000, "host_rss_bytes": 51000000},
    {"t_us": 2000, "gpu_bytes": 2600000, "gpu_peak_bytes": 2600000, "host_rss_bytes": 51000000},
    {"t_us": 4000, "gpu_bytes": 2600000, "gpu_peak_bytes": 2600000, "host_rss_bytes": 51000000}
  ]
}"#;

#[test]
fn memory_trace_draws_an_svg_with_the_unit_names() {
    let dir = temp_dir("trace");
    let trace = dir.join("trace.json");
    std::fs::write(&trace, TRACE).unwrap();
    let svg = dir.join("out.svg");
    let out = omex(&["memory-trace", trace.to_str().unwrap(), "-o", svg.to_str().unwrap()], None);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.starts_with("<?xml") && text.trim_end().ends_with("</svg>"));
    for name in ["embedding.bin", "layer_0.bin", "layer_1.bin", "tiny.omex", "upload slot 1", "budget 3.0 MB"] {
        assert!(text.contains(name), "{name} missing from the SVG");
    }
    assert_eq!(text.matches("class=\"span ").count(), 5);
    // Without -o the SVG goes beside the trace.
    let out = omex(&["memory-trace", trace.to_str().unwrap()], None);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(dir.join("trace.svg").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_corrupt_or_missing_trace_is_an_error_naming_the_file() {
    let dir = temp_dir("bad-trace");
    let bad = dir.join("broken-trace.json");
    std::fs::write(&bad, &TRACE[..200]).unwrap();
    let svg = dir.join("out.svg");
    for path in [bad, dir.join("no-such-trace.json")] {
        let out = omex(&["memory-trace", path.to_str().unwrap(), "-o", svg.to_str().unwrap()], None);
        assert!(!out.status.success());
        let err = stderr(&out);
        assert!(err.contains(path.file_name().unwrap().to_str().unwrap()), "{err}");
        assert!(!svg.exists());
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Passes with a GPU adapter (lavapipe included) and without one: then `gpu` is null and the profile says why.
#[test]
fn profile_measures_once_and_caches_under_omex_home() {
    let home = temp_dir("profile");
    let out = omex(&["profile", "--json"], Some(&home));
    assert!(out.status.success(), "{}", stderr(&out));
    let printed: MachineProfile = serde_json::from_slice(&out.stdout).expect("--json prints the profile only");
    let cached: MachineProfile =
        serde_json::from_str(&std::fs::read_to_string(home.join("profile.json")).unwrap()).unwrap();
    assert_eq!(printed, cached);
    assert_eq!(cached.omex_version, env!("CARGO_PKG_VERSION"));
    if cfg!(target_os = "linux") {
        assert!(cached.host_memory_bytes.unwrap() > 0);
    }
    match &cached.gpu {
        Some(g) => {
            assert!(!cached.adapters.is_empty());
            for (what, v) in [
                ("copy", g.copy_gbs),
                ("upload", g.upload_gbs),
                ("staging upload", g.staging_upload_gbs),
                ("matvec", g.matvec_gbs),
                ("dispatch", g.dispatch_us),
            ] {
                assert!(v.is_finite() && v > 0.0, "{what}: {v}");
            }
        }
        None => assert!(!cached.gpu_error.as_deref().unwrap_or("").is_empty(), "no GPU numbers and no reason"),
    }

    // --cached shows the cache without measuring; the table names it.
    let out = omex(&["profile", "--cached"], Some(&home));
    assert!(out.status.success(), "{}", stderr(&out));
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(table.contains("host memory") && table.contains("profile.json"), "{table}");

    std::fs::write(home.join("profile.json"), "{ not json").unwrap();
    let out = omex(&["profile", "--cached", "--json"], Some(&home));
    assert!(!out.status.success());
    assert!(stderr(&out).contains("profile.json"), "{}", stderr(&out));
    let _ = std::fs::remove_dir_all(&home);
}
