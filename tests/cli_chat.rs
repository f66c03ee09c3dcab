//! `omex chat` as a user pipes into it: several turns answered on stdout, end of input leaves with success,
//! and flags outside their domain are refused before the model loads.

mod common;

use common::{omex_bin, smollm2_omex};
use std::io::Write;
use std::process::{Command, Stdio};

fn chat(args: &[&str], stdin: &str) -> std::process::Output {
    let model = smollm2_omex("keep");
    let mut child = Command::new(omex_bin())
        .args(["chat", model.to_str().unwrap(), "--backend", "cpu", "--activations", "f32"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn piped_turns_are_answered_and_end_of_input_leaves() {
    let out = chat(&["-n", "24"], "What is the capital of France?\nAnd of Germany?\n");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.matches("> ").count(), 3, "{text}");
    assert!(text.contains("Paris") && text.contains("Berlin"), "{text}");
}

#[test]
fn bad_flags_are_refused() {
    for (args, want) in [
        (&["--temp=-1"][..], "temperature"),
        (&["--window", "8"][..], "window"),
        (&["--window", "100000"][..], "does not fit the context"),
        (&["--root", "."][..], "--agent"),
        (&["--agent", "nobody"][..], "no agent \"nobody\""),
    ] {
        let out = chat(args, "");
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{args:?}: {err}");
    }
}
