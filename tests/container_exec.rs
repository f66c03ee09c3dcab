//! `omex exec` as a user runs it on the real SmolLM2: the example container under examples/container runs,
//! a rerun skips unchanged nodes and a changed input reruns what depends on it, each refusal happens before
//! anything runs (and writes nothing), memory pressure reduces the context, and the guidance hook is called.

mod common;

use common::{omex_bin, smollm2_omex};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("omex-exec-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/container")
}

/// A copy of the example container's folder, with the container edited by `edit`.
fn workspace(name: &str, edit: impl FnOnce(&mut Value)) -> PathBuf {
    let dir = temp_dir(name);
    std::fs::create_dir_all(dir.join("notes")).unwrap();
    for f in ["garden.txt", "bikes.md"] {
        std::fs::copy(example().join("notes").join(f), dir.join("notes").join(f)).unwrap();
    }
    let mut c: Value =
        serde_json::from_str(&std::fs::read_to_string(example().join("container.json")).unwrap()).unwrap();
    // Short answers keep the test quick.
    c["execution_config"]["max_tokens"] = json!(24);
    edit(&mut c);
    std::fs::write(dir.join("container.json"), serde_json::to_string_pretty(&c).unwrap()).unwrap();
    dir
}

fn exec(dir: &Path, extra: &[&str]) -> Output {
    let model = smollm2_omex("keep");
    let mut cmd = Command::new(omex_bin());
    cmd.args(["exec", dir.join("container.json").to_str().unwrap(), "--model", model.to_str().unwrap()]);
    cmd.args(["--out", dir.join("run").to_str().unwrap(), "--backend", "cpu", "--json"]);
    cmd.args(extra);
    cmd.output().unwrap()
}

fn manifest(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("{e}: stdout {} stderr {}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    })
}

fn statuses(m: &Value) -> Vec<(String, String)> {
    m["nodes"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v["status"].as_str().unwrap().to_string()))
        .collect()
}

fn sha256(path: &Path) -> String {
    omex::format::checksum::sha256_bytes(&std::fs::read(path).unwrap())
}

#[test]
fn the_example_container_runs_and_resumes() {
    let dir = workspace("example", |_| {});
    let out = exec(&dir, &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let m = manifest(&out);
    assert_eq!(m["status"], "succeeded");
    let run = dir.join("run");
    for (node, file) in [("read_notes", "notes.txt"), ("summarise", "summary.md"), ("answer", "answer.md")] {
        let rec = &m["nodes"][node];
        assert_eq!(rec["status"], "succeeded", "{node}: {rec}");
        assert_eq!(rec["outputs"][file], sha256(&run.join(file)), "{node}");
        assert!(!std::fs::read_to_string(run.join(file)).unwrap().trim().is_empty(), "{node} wrote nothing");
    }
    let notes = std::fs::read_to_string(run.join("notes.txt")).unwrap();
    assert!(notes.contains("--- notes/garden.txt ---") && notes.contains("--- notes/bikes.md ---"), "{notes}");
    // The guidance of `summarise` is ignored with one info line.
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.matches("guidance \"zsei://frameworks/summarisation\" ignored").count(), 1, "{err}");

    // A rerun skips everything.
    let m = manifest(&exec(&dir, &[]));
    assert!(statuses(&m).iter().all(|(_, s)| s == "skipped"), "{m}");
    // A changed output is made again; the nodes it does not feed stay skipped.
    std::fs::write(run.join("answer.md"), "edited by hand").unwrap();
    let m = manifest(&exec(&dir, &[]));
    assert_eq!(m["nodes"]["answer"]["status"], "succeeded");
    assert_eq!(m["nodes"]["summarise"]["status"], "skipped");
    // A changed input file reruns the reader and, since its output changes, both nodes after it.
    std::fs::write(dir.join("notes/garden.txt"), "The peas went in on 2 May.\n").unwrap();
    let m = manifest(&exec(&dir, &[]));
    assert!(statuses(&m).iter().all(|(_, s)| s == "succeeded"), "{m}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_containers_are_refused_before_anything_runs() {
    type Edit = Box<dyn Fn(&mut Value)>;
    let node = |i: usize, key: &str, v: Value| -> Edit {
        let key = key.to_string();
        Box::new(move |c: &mut Value| c["execution_graph"]["nodes"][i][&key] = v.clone())
    };
    let cases: Vec<(&str, Edit, &str)> = vec![
        ("unknown-type", node(0, "type", json!("parse_codebase")), "type \"parse_codebase\" is unknown"),
        ("cycle", node(0, "dependencies", json!(["answer"])), "cycle"),
        ("missing-dep", node(2, "dependencies", json!(["nowhere"])), "dependency \"nowhere\" is no node"),
        ("missing-input", node(2, "inputs", json!(["facts.json"])), "input \"facts.json\" is missing"),
        ("missing-data", node(2, "inputs", json!(["input_data.question"])), "input_data has no \"question\""),
        ("not-a-dep", node(2, "inputs", json!(["summary.md"])), "not among its dependencies"),
        ("escape", node(0, "inputs", json!(["../outside"])), "\"..\" is not allowed"),
        ("absolute", node(0, "inputs", json!(["/etc"])), "absolute paths"),
        ("output-path", node(1, "outputs", json!(["../x.md"])), "plain file name"),
        ("shared-output", node(2, "outputs", json!(["summary.md"])), "written by another node"),
        ("memory", node(1, "memory_allocation", json!("lots")), "memory_allocation"),
        ("memory-cap", node(1, "memory_allocation", json!("2GB")), "over resources.max_memory_mb"),
        ("executor", node(1, "executor", json!("remote_cluster")), "executor \"remote_cluster\""),
        (
            "no-tool",
            Box::new(|c: &mut Value| {
                c["execution_graph"]["nodes"][0].as_object_mut().unwrap().remove("tool").map(|_| ()).unwrap()
            }),
            "needs a \"tool\"",
        ),
        (
            "write-tool",
            Box::new(|c: &mut Value| {
                c["execution_graph"]["nodes"][0]["tool"]["permissions"] = json!(["read", "write"])
            }),
            "\"write\" is not granted",
        ),
        (
            "interpreter",
            Box::new(|c: &mut Value| c["execution_graph"]["nodes"][0]["tool"]["tool_type"] = json!("interpreter")),
            "\"interpreter\" is not supported",
        ),
        ("temperature", Box::new(|c: &mut Value| c["execution_config"]["temperature"] = json!(-1.0)), "temperature"),
        ("retries", Box::new(|c: &mut Value| c["completion_policy"]["max_retries"] = json!(1000)), "max_retries"),
        (
            "strategy",
            Box::new(|c: &mut Value| c["completion_policy"]["memory_pressure_strategy"] = json!("pray")),
            "memory_pressure_strategy",
        ),
        (
            "unknown-field",
            Box::new(|c: &mut Value| c["execution_graph"]["nodes"][1]["prompt_template"] = json!("x")),
            "unknown field `prompt_template`",
        ),
    ];
    for (name, edit, want) in cases {
        let dir = workspace(name, edit);
        let out = exec(&dir, &[]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name}: ran");
        assert!(err.contains("container.json") && err.contains(want), "{name}: {err}");
        assert!(!dir.join("run").exists(), "{name}: wrote a run directory");
        let _ = std::fs::remove_dir_all(&dir);
    }
    // A symlink under the root that leads out of it.
    #[cfg(unix)]
    {
        let dir = workspace("symlink", |c| c["execution_graph"]["nodes"][0]["inputs"] = json!(["notes/link.txt"]));
        std::os::unix::fs::symlink("/etc/passwd", dir.join("notes/link.txt")).unwrap();
        let out = exec(&dir, &[]);
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("outside the root"));
        assert!(!dir.join("run").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
    // No model for inference nodes.
    let dir = workspace("no-model", |_| {});
    let out = Command::new(omex_bin()).args(["exec", dir.join("container.json").to_str().unwrap()]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--model"), "{}", String::from_utf8_lossy(&out.stderr));
    // A folder of the user's files is not a run directory.
    std::fs::create_dir_all(dir.join("run")).unwrap();
    std::fs::write(dir.join("run/thesis.txt"), "mine").unwrap();
    let out = exec(&dir, &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not an omex run directory"));
    assert_eq!(std::fs::read_dir(dir.join("run")).unwrap().count(), 1);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A container of the reader and one inference node with a small memory allocation.
fn pressure(name: &str, strategy: &str) -> PathBuf {
    workspace(name, |c| {
        let nodes = c["execution_graph"]["nodes"].as_array_mut().unwrap();
        nodes.truncate(3);
        nodes.remove(1);
        // SmolLM2's KV cache (f16) takes 23 KB per token: 1024 tokens do not fit 8 MB, 256 do.
        nodes[1]["memory_allocation"] = json!("8MB");
        c["completion_policy"] = json!({"retry_on_fail": false, "max_retries": 0, "retry_delay_ms": 0, "memory_pressure_strategy": strategy});
    })
}

#[test]
fn memory_pressure_reduces_the_context_or_fails_without_the_strategy() {
    let dir = pressure("pressure", "dynamic_precision_reduction");
    let out = exec(&dir, &["--ctx", "1024"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let m = manifest(&out);
    let rec = &m["nodes"]["answer"];
    assert_eq!(rec["status"], "succeeded");
    assert_eq!(rec["attempts"], 3, "{rec}");
    let notes = rec["notes"].to_string();
    assert!(notes.contains("out of memory") && notes.contains("context reduced to 256 tokens"), "{notes}");
    let _ = std::fs::remove_dir_all(&dir);

    let dir = pressure("no-pressure", "none");
    let out = exec(&dir, &["--ctx", "1024"]);
    assert!(!out.status.success());
    let m: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("run/manifest.json")).unwrap()).unwrap();
    assert_eq!(m["status"], "failed");
    assert_eq!(m["nodes"]["answer"]["status"], "failed");
    assert!(m["nodes"]["answer"]["error"].as_str().unwrap().contains("out of memory"));
    assert_eq!(m["nodes"]["read_notes"]["status"], "succeeded");
    let _ = std::fs::remove_dir_all(&dir);
}

#[cfg(unix)]
#[test]
fn the_guidance_hook_is_called_and_a_failed_attempt_is_retried() {
    use std::os::unix::fs::PermissionsExt;
    let dir = workspace("hook", |c| {
        let nodes = c["execution_graph"]["nodes"].as_array_mut().unwrap();
        nodes.truncate(2);
    });
    // Fails the first time (no marker yet), then prints guidance and records its arguments.
    let hook = dir.join("hook.sh");
    let marker = dir.join("called");
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\nif [ ! -e {m} ]; then echo \"$1 $2\" > {m}; exit 3; fi\necho 'Answer in one sentence.'\n",
            m = marker.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = exec(&dir, &["--guidance-hook", hook.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let m = manifest(&out);
    let rec = &m["nodes"]["summarise"];
    assert_eq!(rec["attempts"], 2, "{rec}");
    assert!(rec["notes"][0].as_str().unwrap().contains("retrying in 100 ms"), "{rec}");
    assert_eq!(std::fs::read_to_string(&marker).unwrap().trim(), "summarise zsei://frameworks/summarisation");
    assert!(!String::from_utf8_lossy(&out.stderr).contains("ignored"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_node_past_its_timeout_fails_after_its_retries() {
    let dir = temp_dir("timeout");
    // A story of 600 words takes SmolLM2 well over a second to write on a CPU (about 25 tokens/s on 2 cores).
    let c = json!({
        "omex_version": "0.1.0", "container_id": "timeout", "execution_config": {"max_tokens": 1500},
        "execution_graph": {"nodes": [{"id": "story", "type": "model_inference", "outputs": ["story.md"],
            "timeout_seconds": 1, "instruction": "Write a very long story about a dragon, at least 600 words."}]},
        "completion_policy": {"retry_on_fail": true, "max_retries": 1, "retry_delay_ms": 10}
    });
    std::fs::write(dir.join("container.json"), c.to_string()).unwrap();
    let out = exec(&dir, &[]);
    assert!(!out.status.success());
    let m: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("run/manifest.json")).unwrap()).unwrap();
    let rec = &m["nodes"]["story"];
    assert_eq!(rec["status"], "failed");
    assert_eq!(rec["attempts"], 2);
    assert!(rec["error"].as_str().unwrap().contains("timed out"), "{rec}");
    assert!(!dir.join("run/story.md").exists());
    let _ = std::fs::remove_dir_all(&dir);
}
