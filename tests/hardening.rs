//! Bad inputs found by trying the CLI as an attacker would: each is a clear error naming the file and the
//! field (or the flag) and a non-zero exit, never an abort, hang, panic, silently wrong answer or data loss.

#[path = "common/synth.rs"]
mod synth;

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use synth::GV;

/// The tiny GGUF llama converted into `dir/tiny.omex`.
fn tiny_model(dir: &Path) -> PathBuf {
    let gguf = synth::write(dir, "tiny.gguf", &synth::tiny_llama_gguf(5, false).build());
    let out = dir.join("tiny.omex");
    let (ok, _, stderr) = omex!("convert", gguf, "-o", out);
    assert!(ok, "{stderr}");
    out
}

/// Asserts a clean failure: non-zero exit (not an abort or a panic), an `error:` line containing every
/// string of `names`, and a short message.
fn clean_error(ok: bool, stderr: &str, names: &[&str]) {
    assert!(!ok, "succeeded: {stderr}");
    assert!(!stderr.contains("panicked") && !stderr.contains("memory allocation"), "{stderr}");
    assert!(stderr.contains("error: "), "{stderr}");
    for n in names {
        assert!(stderr.contains(n), "the error does not name {n:?}: {stderr}");
    }
    assert!(stderr.len() < 4096, "a {} byte error message", stderr.len());
}

/// Runs omex with a deadline; a process still running after it is killed and the test fails (a hang).
fn omex_within(args: &[&std::ffi::OsStr], secs: u64) -> (bool, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_omex"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if start.elapsed() > Duration::from_secs(secs) {
            child.kill().unwrap();
            panic!("omex {args:?} hung (killed after {secs} s)");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

fn set_kv(b: synth::GgufBuilder, key: &str, v: GV) -> synth::GgufBuilder {
    let mut b = b;
    b.kv.retain(|(k, _)| k != key);
    b.kv(key, v)
}

fn convert_fails(tmp: &Path, name: &str, b: &synth::GgufBuilder, names: &[&str]) {
    let input = synth::write(tmp, &format!("{name}.gguf"), &b.build());
    let out = tmp.join(format!("{name}.omex"));
    let (ok, _, stderr) = omex!("convert", input, "-o", out);
    clean_error(ok, &stderr, names);
    assert!(!out.exists());
}

#[test]
fn gguf_hyper_parameters_are_bounded_and_finite() {
    let tmp = synth::tmp_dir("harden-gguf");
    let good = synth::tiny_llama_gguf(1, false);
    convert_fails(
        &tmp,
        "blocks-max",
        &set_kv(good.clone(), "llama.block_count", GV::U32(u32::MAX)),
        &["blocks-max.gguf", "llama.block_count"],
    );
    convert_fails(
        &tmp,
        "blocks-1m",
        &set_kv(good.clone(), "llama.block_count", GV::U32(1_000_000)),
        &["llama.block_count"],
    );
    convert_fails(
        &tmp,
        "rope-nan",
        &set_kv(good.clone(), "llama.rope.freq_base", GV::F32(f32::NAN)),
        &["rope-nan.gguf", "rope base"],
    );
    convert_fails(&tmp, "rope-zero", &set_kv(good.clone(), "llama.rope.freq_base", GV::F32(0.0)), &["rope base"]);
    convert_fails(
        &tmp,
        "eps-negative",
        &set_kv(good.clone(), "llama.attention.layer_norm_rms_epsilon", GV::F32(-1.0)),
        &["eps"],
    );
    convert_fails(
        &tmp,
        "heads-huge",
        &set_kv(good.clone(), "llama.attention.head_count", GV::U32(1 << 20)),
        &["heads-huge.gguf"],
    );

    // NaN weights: a norm (f32) and a quantized matrix's scale.
    let mut b = good.clone();
    let norm = b.tensors.iter_mut().find(|t| t.name == "blk.0.attn_norm.weight").unwrap();
    norm.data[4..8].copy_from_slice(&f32::NAN.to_le_bytes());
    convert_fails(&tmp, "norm-nan", &b, &["norm-nan.gguf", "blk.0.attn_norm.weight", "NaN"]);
    let mut b = good.clone();
    let q = b.tensors.iter_mut().find(|t| t.name == "blk.0.attn_q.weight").unwrap();
    // Q4_0 (2) and Q4_1 (3) blocks both open with their f16 scale.
    assert!(matches!(q.ty, 2 | 3), "the tiny model's attn_q is Q4_0 or Q4_1, not type {}", q.ty);
    q.data[0..2].copy_from_slice(&half::f16::NAN.to_le_bytes());
    convert_fails(&tmp, "scale-nan", &b, &["blk.0.attn_q.weight", "NaN"]);
}

/// Rewrites one block config field of every transformer block in graph.json.
fn edit_graph(model: &Path, edit: impl Fn(&mut Value)) {
    let path = model.join("graph.json");
    let mut g: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    for n in g["nodes"].as_array_mut().unwrap() {
        if n["type"] == "transformer_block" {
            edit(&mut n["config"]);
        }
    }
    std::fs::write(&path, serde_json::to_vec_pretty(&g).unwrap()).unwrap();
}

#[test]
fn graph_hyper_parameters_are_bounded_and_finite() {
    let tmp = synth::tmp_dir("harden-graph");
    let base = tiny_model(&tmp);
    type Case = (&'static str, fn(&mut Value), &'static str);
    let cases: [Case; 5] = [
        // 65536 x 65536 wraps u32 to 0: it used to validate, then abort in run.
        (
            "wrap",
            |c| {
                c["num_attention_heads"] = 65536.into();
                c["num_key_value_heads"] = 65536.into();
                c["attention_head_size"] = 65536.into();
            },
            "num_attention_heads",
        ),
        ("eps", |c| c["norm"]["eps"] = (-1.0).into(), "eps"),
        ("base-zero", |c| c["rope"]["base"] = 0.0.into(), "rope base"),
        ("context", |c| c["context_length"] = u32::MAX.into(), "context_length"),
        ("heads-ratio", |c| c["num_key_value_heads"] = 3.into(), "KV heads"),
    ];
    for (name, edit, field) in cases {
        let dir = tmp.join(name);
        copy_dir(&base, &dir);
        edit_graph(&dir, edit);
        let (ok, stdout, stderr) = omex!("validate", dir);
        assert!(!ok && stdout.contains("graph.json") && stdout.contains(field), "{name}: {stdout}{stderr}");
        let (ok, _, stderr) = omex!("run", dir, "-p", "hi", "-n", "1", "--backend", "cpu");
        clean_error(ok, &stderr, &["graph.json", field]);
    }
}

#[test]
fn context_that_cannot_fit_is_refused_with_its_size() {
    let tmp = synth::tmp_dir("harden-ctx");
    let dir = tiny_model(&tmp);
    // The largest context omex accepts, with a KV cache far larger than any test machine's memory.
    edit_graph(&dir, |c| {
        c["context_length"] = (1u64 << 22).into();
    });
    let mut g: Value = serde_json::from_slice(&std::fs::read(dir.join("graph.json")).unwrap()).unwrap();
    let n_blocks = g["nodes"].as_array().unwrap().iter().filter(|n| n["type"] == "transformer_block").count();
    // Many blocks sharing one layer file's tensors: graph.json may name any file, so the cache is huge
    // while the weights stay tiny.
    let block = g["nodes"].as_array().unwrap().iter().find(|n| n["type"] == "transformer_block").unwrap().clone();
    assert!(n_blocks >= 1);
    let nodes = g["nodes"].as_array_mut().unwrap();
    nodes.retain(|n| n["type"] != "transformer_block");
    let mut edges = vec![];
    let mut prev = "embedding.hidden".to_string();
    for i in 0..1000 {
        let mut b = block.clone();
        b["id"] = format!("transformer_block_{i}").into();
        nodes.push(b);
        edges.push(serde_json::json!({"from": prev, "to": format!("transformer_block_{i}.input")}));
        prev = format!("transformer_block_{i}.output");
    }
    edges.push(serde_json::json!({"from": prev, "to": "final_norm.input"}));
    edges.push(serde_json::json!({"from": "final_norm.output", "to": "lm_head.input"}));
    g["edges"] = edges.into();
    std::fs::write(dir.join("graph.json"), serde_json::to_vec(&g).unwrap()).unwrap();
    let (ok, _, stderr) = omex_within(
        &[
            "run".as_ref(),
            dir.as_os_str(),
            "-p".as_ref(),
            "hi".as_ref(),
            "--ctx".as_ref(),
            "4194304".as_ref(),
            "--backend".as_ref(),
            "cpu".as_ref(),
        ],
        60,
    );
    clean_error(ok, &stderr, &["KV cache", "--ctx"]);
}

#[test]
fn a_context_of_one_token_cannot_generate() {
    let tmp = synth::tmp_dir("harden-ctx1");
    let dir = tiny_model(&tmp);
    let (ok, _, stderr) = omex!("run", dir, "-p", "hello there", "--ctx", "1", "--truncate", "--backend", "cpu");
    clean_error(ok, &stderr, &["context", "at least 2"]);
}

#[cfg(unix)]
fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
}

#[cfg(unix)]
#[test]
fn fifos_are_refused_not_waited_on() {
    let tmp = synth::tmp_dir("harden-fifo");
    let base = tiny_model(&tmp);
    for file in ["weights/layer_0.bin", "tokenizer/tokenizer.json", "graph.json"] {
        let dir = tmp.join(file.replace('/', "-"));
        copy_dir(&base, &dir);
        std::fs::remove_file(dir.join(file)).unwrap();
        mkfifo(&dir.join(file));
        let (ok, stdout, stderr) = omex_within(&["validate".as_ref(), dir.as_os_str()], 30);
        assert!(!ok && (stdout.contains("FIFO") || stderr.contains("FIFO")), "validate {file}: {stdout}{stderr}");
        let (ok, _, stderr) = omex_within(
            &["run".as_ref(), dir.as_os_str(), "-p".as_ref(), "hi".as_ref(), "--backend".as_ref(), "cpu".as_ref()],
            30,
        );
        clean_error(ok, &stderr, &[file.rsplit('/').next().unwrap(), "FIFO"]);
    }
}

#[test]
fn too_many_threads_are_capped_with_a_warning() {
    let tmp = synth::tmp_dir("harden-threads");
    let dir = tiny_model(&tmp);
    let (ok, _, stderr) = omex_within(
        &[
            "run".as_ref(),
            dir.as_os_str(),
            "-p".as_ref(),
            "hi".as_ref(),
            "-n".as_ref(),
            "2".as_ref(),
            "--threads".as_ref(),
            "5000".as_ref(),
            "--backend".as_ref(),
            "cpu".as_ref(),
        ],
        60,
    );
    assert!(ok, "{stderr}");
    assert!(stderr.contains("--threads 5000") && stderr.contains("cores"), "{stderr}");
}

#[cfg(target_os = "linux")]
#[test]
fn a_full_stdout_is_an_error_not_a_panic() {
    let tmp = synth::tmp_dir("harden-full");
    let dir = tiny_model(&tmp);
    let full = || std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
    for args in [
        vec!["validate".to_string()],
        vec!["layer-inspect".to_string()],
        vec!["tokenize".to_string(), "--text".to_string(), "hello".to_string()],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_omex"))
            .arg(&args[0])
            .arg(&dir)
            .args(&args[1..])
            .stdout(full())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        clean_error(out.status.success(), &stderr, &["stdout"]);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
    }
}

#[test]
fn convert_never_replaces_its_input_or_a_foreign_directory() {
    let tmp = synth::tmp_dir("harden-force");
    let bytes = synth::tiny_llama_gguf(2, false).build();
    let gguf = synth::write(&tmp, "x.gguf", &bytes);

    // -o the input itself, with --force: refused, the GGUF untouched.
    let (ok, _, stderr) = omex!("convert", gguf, "-o", gguf, "--force");
    clean_error(ok, &stderr, &["x.gguf", "input"]);
    assert_eq!(std::fs::read(&gguf).unwrap(), bytes);

    // -o the directory holding the input.
    let (ok, _, stderr) = omex!("convert", gguf, "-o", tmp, "--force");
    clean_error(ok, &stderr, &["input"]);
    assert_eq!(std::fs::read(&gguf).unwrap(), bytes);

    // A directory of the user's that is not an omex model.
    let mine = tmp.join("mine");
    synth::write(&mine, "notes.txt", b"precious");
    let (ok, _, stderr) = omex!("convert", gguf, "-o", mine, "--force");
    clean_error(ok, &stderr, &["mine", "not an omex model"]);
    assert_eq!(std::fs::read(mine.join("notes.txt")).unwrap(), b"precious");

    // A plain file.
    let file = synth::write(&tmp, "file.omex", b"a file");
    let (ok, _, stderr) = omex!("convert", gguf, "-o", file, "--force");
    clean_error(ok, &stderr, &["file.omex"]);
    assert_eq!(std::fs::read(&file).unwrap(), b"a file");

    // An omex model and an empty directory are replaced.
    let model = tmp.join("model.omex");
    let (ok, _, stderr) = omex!("convert", gguf, "-o", model);
    assert!(ok, "{stderr}");
    let (ok, _, stderr) = omex!("convert", gguf, "-o", model, "--force", "--quant", "int8");
    assert!(ok, "{stderr}");
    let empty = tmp.join("empty.omex");
    std::fs::create_dir(&empty).unwrap();
    let (ok, _, stderr) = omex!("convert", gguf, "-o", empty, "--force");
    assert!(ok, "{stderr}");

    // `run` on the GGUF suggests an output beside it, not its own path.
    let (ok, _, stderr) = omex!("run", gguf, "-p", "hi");
    clean_error(ok, &stderr, &["omex convert", "x.omex"]);
    assert!(!stderr.contains("-o ") || !stderr.contains(&format!("-o {}", gguf.display())), "{stderr}");
}

#[test]
fn ternary_of_an_ordinary_model_warns() {
    let tmp = synth::tmp_dir("harden-ternary");
    let gguf = synth::write(&tmp, "t.gguf", &synth::tiny_llama_gguf(4, false).build());
    let (ok, _, stderr) = omex!("convert", gguf, "-o", tmp.join("t.omex"), "--quant", "ternary");
    assert!(ok, "{stderr}");
    assert!(stderr.contains("warning") && stderr.contains("not trained for"), "{stderr}");
    let (ok, _, stderr) = omex!("convert", gguf, "-o", tmp.join("i.omex"), "--quant", "int8");
    assert!(ok && !stderr.contains("not trained for"), "{stderr}");
}

#[test]
fn memory_trace_slots_are_bounded() {
    let tmp = synth::tmp_dir("harden-trace");
    let trace = serde_json::json!({
        "model": "m", "device": "d", "budget_bytes": null, "overlap": true, "slots": 1u64 << 40,
        "units": [], "spans": [], "memory": [],
    });
    let path = synth::write(&tmp, "trace.json", trace.to_string().as_bytes());
    let (ok, _, stderr) =
        omex_within(&["memory-trace".as_ref(), path.as_os_str(), "-o".as_ref(), tmp.join("t.svg").as_os_str()], 30);
    clean_error(ok, &stderr, &["trace.json", "slots"]);
}

#[test]
fn verify_catches_a_corrupted_file() {
    let tmp = synth::tmp_dir("harden-verify");
    let dir = tiny_model(&tmp);
    let layer = dir.join("weights/layer_0.bin");
    let mut b = std::fs::read(&layer).unwrap();
    let at = b.len() - 7;
    b[at] ^= 0x40;
    std::fs::write(&layer, b).unwrap();
    let (ok, _, stderr) = omex!("run", dir, "-p", "hi", "-n", "1", "--backend", "cpu", "--verify");
    clean_error(ok, &stderr, &["weights/layer_0.bin", "checksum"]);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), dst).unwrap();
        }
    }
}

/// Ctrl-C in `omex run` makes the callback return false: the piece it was given must not come again.
#[test]
fn a_cancelled_generation_emits_each_piece_once() {
    use omex::runtime::{BackendChoice, EngineOptions, GenerateOptions, Model};
    let tmp = synth::tmp_dir("harden-cancel");
    let dir = tiny_model(&tmp);
    let model = Model::load(&dir).unwrap();
    let opts = EngineOptions { backend: BackendChoice::Cpu, context_length: Some(64), ..Default::default() };
    let mut session = model.session(&opts).unwrap();
    let gen = GenerateOptions { max_tokens: 16, ignore_eos: true, ..Default::default() };
    let mut pieces = Vec::new();
    let g = session
        .generate("hello", &gen, &mut |p| {
            pieces.push(p.to_string());
            false
        })
        .unwrap();
    assert_eq!(pieces.len(), 1, "{pieces:?}");
    assert!(g.text.starts_with(&pieces[0]), "{pieces:?} {:?}", g.text);
    assert_eq!(format!("{:?}", g.stop), "Cancelled");
}

#[test]
fn flags_outside_their_domain_are_refused() {
    let tmp = synth::tmp_dir("harden-flags");
    let dir = tiny_model(&tmp);
    let run = |extra: &[&str]| {
        let mut args: Vec<&std::ffi::OsStr> = vec!["run".as_ref(), dir.as_os_str(), "-p".as_ref(), "hi".as_ref()];
        args.extend(extra.iter().map(std::ffi::OsStr::new));
        omex_within(&args, 30)
    };
    for (flags, names) in [
        (&["--system", "be brief"][..], &["--system", "--chat"][..]),
        (&["--top-p", "0"], &["--top-p"]),
        (&["--min-p", "1.5"], &["--min-p"]),
        (&["--temp", "NaN"], &["--temp"]),
        (&["--repeat-penalty", "0"], &["--repeat-penalty"]),
    ] {
        let (ok, _, stderr) = run(flags);
        clean_error(ok, &stderr, names);
    }
    let (ok, _, stderr) = omex_within(&["bench".as_ref(), dir.as_os_str(), "-r".as_ref(), "0".as_ref()], 30);
    assert!(!ok && stderr.contains("repetitions"), "{stderr}");
    // `plan` does not run anything on the CPU, so it has no --threads.
    let (ok, _, stderr) = omex_within(&["plan".as_ref(), dir.as_os_str(), "--threads".as_ref(), "2".as_ref()], 30);
    assert!(!ok && stderr.contains("--threads"), "{stderr}");
}

#[test]
fn counts_of_one_are_singular() {
    let tmp = synth::tmp_dir("harden-plural");
    let dir = tiny_model(&tmp);
    // Exactly one problem: a space of graph.json's indentation turned into a tab keeps the JSON and its size
    // but not its checksum.
    let file = dir.join("graph.json");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains("\n  "), "graph.json is indented");
    std::fs::write(&file, text.replacen("\n  ", "\n \t", 1)).unwrap();
    let (ok, stdout, stderr) = omex_within(&["validate".as_ref(), dir.as_os_str()], 30);
    assert!(!ok, "{stdout}");
    assert_eq!(stdout.lines().filter(|l| l.starts_with("problem:")).count(), 1, "{stdout}");
    assert!(stderr.contains("1 problem found"), "{stderr}");
}

#[test]
fn perplexity_json_is_one_document() {
    let tmp = synth::tmp_dir("harden-ppl");
    let dir = tiny_model(&tmp);
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/perplexity.txt");
    let (ok, stdout, stderr) = omex_within(
        &["perplexity", dir.to_str().unwrap(), "--backend", "cpu", "-f", file, "--ctx", "32", "--json"]
            .map(std::ffi::OsStr::new),
        120,
    );
    assert!(ok, "{stderr}");
    let v: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert!(v["perplexity"].as_f64().unwrap().is_finite(), "{v}");
}

#[test]
fn omex_home_moves_the_config() {
    let tmp = synth::tmp_dir("harden-home");
    let dir = tiny_model(&tmp);
    let home = tmp.join("home");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::write(home.join("config.toml"), "[device]\ngpu_memory_limit = \"3MB\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_omex"))
        .args(["plan".as_ref(), dir.as_os_str(), "--json".as_ref()])
        .env("OMEX_HOME", &home)
        .env_remove("OMEX_GPU_MEM")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["budget_bytes"], 3_000_000, "{v}");
    assert!(v["budget_source"].as_str().unwrap().contains("config.toml"), "{v}");
}
