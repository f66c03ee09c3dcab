//! `omex graph-visualize DIR -o OUT.svg`: the op program of a tiny llama and a tiny gemma3 drawn as an SVG:
//! well formed, every op of the expanded block named, runs of blocks collapsed with their counts, weight bytes
//! that add up to the index's, names escaped; an existing output kept without --force, a missing model a clear
//! error.

#[path = "common/tiny_model.rs"]
mod tiny_model;

use omex::graph::SlidingWindow;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use tiny_model::{write_tiny_model, TinySpec};

fn tmp(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("cli-graph-visualize-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn omex(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_omex")).args(args.iter().map(|a| a.as_ref())).output().unwrap()
}

fn gemma3_spec() -> TinySpec {
    TinySpec {
        layers: 3,
        n_heads: 4,
        n_kv_heads: 1,
        head_dim: 32,
        gemma3: Some(SlidingWindow { window: 5, global_every: 3, local_rope_base: 100.0 }),
        ..TinySpec::small()
    }
}

/// Runs `omex graph-visualize model -o out ARGS`, asserts success and returns the SVG.
fn draw(model: &Path, out: &Path, args: &[&str]) -> String {
    let mut all: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"graph-visualize", &model, &"-o", &out];
    all.extend(args.iter().map(|a| a as &dyn AsRef<std::ffi::OsStr>));
    let o = omex(&all);
    assert!(o.status.success(), "omex graph-visualize failed: {}", String::from_utf8_lossy(&o.stderr));
    std::fs::read_to_string(out).unwrap()
}

/// The bytes of every tensor of weights/`file`, from weights/quantization.json: the sum of their sections.
fn index_bytes(model: &Path, file: &str) -> u64 {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(model.join("weights/quantization.json")).unwrap()).unwrap();
    let tensors = index["tensors"].as_array().unwrap();
    let of_file = tensors.iter().filter(|t| t["file"] == file);
    of_file.flat_map(|t| t["sections"].as_array().unwrap()).map(|s| s["bytes"].as_u64().unwrap()).sum()
}

/// "4.2 KB (4,224 B)" or "256 B", as the picture writes byte counts.
fn shown(n: u64) -> String {
    let digits = n.to_string();
    let mut grouped = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            grouped.push(',');
        }
        grouped.push(c);
    }
    if n < 1000 {
        format!("{n} B")
    } else {
        format!("({grouped} B)")
    }
}

/// The op boxes of the expanded block: (kind, bytes) from each `<g class="op" ...>`.
fn ops(svg: &str) -> Vec<(String, u64)> {
    let attr = |tag: &str, name: &str| {
        let start = tag.find(&format!("{name}=\"")).unwrap() + name.len() + 2;
        tag[start..start + tag[start..].find('"').unwrap()].to_string()
    };
    svg.match_indices("<g class=\"op\"")
        .map(|(at, _)| {
            let tag = &svg[at..at + svg[at..].find('>').unwrap()];
            (attr(tag, "data-kind"), attr(tag, "data-bytes").parse().unwrap())
        })
        .collect()
}

/// Well formed enough: one root, tags balanced, a box per op and more.
fn check_svg(svg: &str, n_ops: usize) {
    assert!(svg.starts_with("<svg"), "{}", &svg[..80.min(svg.len())]);
    assert!(svg.trim_end().ends_with("</svg>"));
    assert_eq!(svg.matches("<svg").count(), 1);
    assert_eq!(svg.matches("<text").count(), svg.matches("</text>").count());
    assert_eq!(svg.matches("<g").count(), svg.matches("</g>").count());
    assert!(svg.matches("<rect").count() > n_ops, "a box per op, and the overview's");
    assert!(svg.contains("<line") && svg.contains("marker-end"), "arrows between the boxes");
    for bad in ["<<", "& ", "&&"] {
        assert!(!svg.contains(bad), "unescaped {bad:?}");
    }
}

#[test]
fn a_llama_is_one_run_of_blocks_and_its_first_block_adds_up() {
    let dir = tmp("llama");
    let model = dir.join("tiny.omex");
    let t = write_tiny_model(&model, &TinySpec::small(), 7);
    let out = dir.join("graph.svg");
    let svg = draw(&model, &out, &[]);
    let program = omex::arch::program(&t).unwrap();
    let block = &program.blocks[0];
    check_svg(&svg, block.ops.len());
    assert!(svg.contains("llama") && svg.contains("tiny"), "the title names the architecture and the model");
    assert!(svg.contains("blocks 0–1") && svg.contains("× 2"), "both blocks in one run");

    let ops = ops(&svg);
    let kinds: Vec<&str> = ops.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(kinds, ["Linear", "RopeStore", "Attention", "Linear", "Linear", "Glu", "Linear"]);
    for k in &kinds {
        assert!(svg.contains(&format!(". {k} ")), "op {k} is named in its box");
    }
    let sum: u64 = ops.iter().map(|(_, b)| b).sum();
    assert_eq!(sum, index_bytes(&model, &block.file), "the ops read every tensor of the block once");
    for (_, b) in ops.iter().filter(|(_, b)| *b > 0) {
        assert!(svg.contains(&shown(*b)), "{b} bytes are shown");
    }
    assert!(svg.contains(&shown(sum)), "the block's total is shown");
    // The whole model's bytes in the title, and the kernels of both engines.
    let total: u64 =
        ["embedding.bin", "layer_0.bin", "layer_1.bin", "head.bin"].iter().map(|f| index_bytes(&model, f)).sum();
    assert!(svg.contains(&shown(total)), "total {total}");
    for kernel in ["matvec", "matmul", "attention_decode", "attention_prefill", "attention_window", "rope", "SwiGLU"] {
        assert!(svg.contains(kernel), "kernel {kernel}");
    }
    assert!(svg.contains("Embedding") && svg.contains("Final norm") && svg.contains("Head"));
}

#[test]
fn gemma3_local_and_global_blocks_form_two_runs() {
    let dir = tmp("gemma3");
    let model = dir.join("tiny.omex");
    let t = write_tiny_model(&model, &gemma3_spec(), 11);
    let program = omex::arch::program(&t).unwrap();
    let out = dir.join("graph.svg");
    let svg = draw(&model, &out, &[]);
    check_svg(&svg, program.blocks[0].ops.len());
    assert!(svg.contains("gemma3"));
    assert!(svg.contains("blocks 0–1  × 2") || svg.contains("blocks 0–1 × 2"), "the local blocks");
    assert!(svg.contains("block 2") && svg.contains("× 1"), "the global block");
    assert!(svg.contains("window 5") && svg.contains("full attention"));
    let kinds: Vec<String> = ops(&svg).into_iter().map(|(k, _)| k).collect();
    for k in ["Linear", "HeadNorm", "RopeStore", "Attention", "Norm", "Add", "Glu"] {
        assert!(kinds.iter().any(|x| x == k), "op {k} in {kinds:?}");
        assert!(svg.contains(&format!(". {k} ")), "op {k} is named in its box");
    }
    assert!(svg.contains("gelu_mul"), "GELU gating is not fused");

    // The global block expanded: its own file's bytes, attention over the whole context.
    let out2 = dir.join("global.svg");
    let svg = draw(&model, &out2, &["--expand", "2"]);
    let ops = ops(&svg);
    assert_eq!(ops.len(), program.blocks[2].ops.len());
    assert_eq!(ops.iter().map(|(_, b)| b).sum::<u64>(), index_bytes(&model, &program.blocks[2].file));
    assert!(svg.contains("Block 2 expanded") && svg.contains("whole context"));

    let o = omex(&[&"graph-visualize", &model, &"-o", &dir.join("x.svg"), &"--expand", &"3"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--expand 3"));
}

#[test]
fn names_are_escaped() {
    let dir = tmp("escape");
    let model = dir.join("tiny.omex");
    write_tiny_model(&model, &TinySpec::small(), 3);
    let meta_path = model.join("metadata.json");
    let mut meta: serde_json::Value = serde_json::from_slice(&std::fs::read(&meta_path).unwrap()).unwrap();
    meta["model_name"] = "tiny <&> \"model\"".into();
    std::fs::write(&meta_path, serde_json::to_string(&meta).unwrap()).unwrap();
    let svg = draw(&model, &dir.join("graph.svg"), &[]);
    assert!(svg.contains("tiny &lt;&amp;&gt; &quot;model&quot;"), "the name is escaped");
    assert!(!svg.contains("<&>"));
}

#[test]
fn an_existing_output_is_kept_without_force() {
    let dir = tmp("force");
    let model = dir.join("tiny.omex");
    write_tiny_model(&model, &TinySpec::small(), 5);
    let out = dir.join("graph.svg");
    std::fs::write(&out, "mine").unwrap();
    let o = omex(&[&"graph-visualize", &model, &"-o", &out]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("graph.svg") && err.contains("--force"), "{err}");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "mine", "the file is untouched");

    let svg = draw(&model, &out, &["--force"]);
    assert!(svg.starts_with("<svg"));

    // Never a directory, --force or not.
    let o = omex(&[&"graph-visualize", &model, &"-o", &dir, &"--force"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("directory"));
    assert!(model.join("graph.json").is_file());
}

#[test]
fn a_missing_model_is_a_clear_error() {
    let dir = tmp("missing");
    let out = dir.join("graph.svg");
    let o = omex(&[&"graph-visualize", &dir.join("nope.omex"), &"-o", &out]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.starts_with("error: ") && err.contains("nope.omex"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(!out.exists(), "nothing written");
}
