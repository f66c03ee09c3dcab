//! The module layering: each top-level module of `src/` sits in a layer, and its code may name (`crate::x`)
//! only modules of lower layers, so that no two modules import each other. The engines (`backend`) sit above
//! the services they use (`memory`, `sampling`) and below `Model`/`Session` (`runtime`); the CLI (`src/cli/`
//! and `src/main.rs`, the binary crate) is on top. A text scan of the sources: comments, doc comments and
//! string literals are skipped.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Lowest first. A module may use the modules of the layers below its own, never one of its own layer or
/// above. A new top-level module must be placed here (the test fails until it is).
const LAYERS: &[&[&str]] = &[
    // Leaves: errors and guarded file reading.
    &["error", "files"],
    // The file format (records, metadata, the graph's JSON) and the tokenizer.
    &["format", "tokenizer"],
    // The typed graph (a transformer's config) and quantisation over the format's records.
    &["graph", "quant"],
    // Architectures: a graph as an op program.
    &["arch"],
    // Services below the engines: the GPU memory budget, planner and trace; sampling.
    &["memory", "sampling"],
    // The engines (CPU, GPU), and checking a model directory.
    &["backend", "validate"],
    // Importing models (GGUF, safetensors); Model and Session.
    &["import", "runtime"],
    // The OpenAI-compatible HTTP server over the runtime's scheduler; agents, their tools and the chat loop
    // over a session.
    &["server", "agent"],
    // Execution containers: task graphs of inference and tool nodes (agent tools).
    &["container"],
    // The command line (the binary crate).
    &["cli"],
];

/// Names the crate root re-exports, and the module they come from.
const ROOT_REEXPORTS: &[(&str, &str)] = &[("Error", "error"), ("Result", "error")];

/// Crate roots: they declare the modules and belong to no layer.
const ROOTS: &[&str] = &["lib.rs", "main.rs"];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

/// Rust source with comments, string and char literals blanked out (lines are kept, for messages).
fn code_only(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    // Blanks b[from..to], keeping newlines.
    let blank = |out: &mut String, from: usize, to: usize| {
        for &c in &b[from..to] {
            out.push(if c == b'\n' { '\n' } else { ' ' });
        }
    };
    while i < b.len() {
        let rest = &b[i..];
        if rest.starts_with(b"//") {
            let end = rest.iter().position(|&c| c == b'\n').map_or(b.len(), |n| i + n);
            blank(&mut out, i, end);
            i = end;
        } else if rest.starts_with(b"/*") {
            // Block comments nest.
            let (mut depth, mut j) = (0usize, i);
            while j < b.len() {
                if b[j..].starts_with(b"/*") {
                    depth += 1;
                    j += 2;
                } else if b[j..].starts_with(b"*/") {
                    depth -= 1;
                    j += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    j += 1;
                }
            }
            blank(&mut out, i, j);
            i = j;
        } else if let Some(hashes) = raw_string_start(rest).filter(|_| !is_ident(prev(b, i))) {
            // r"..", r#".."#, br#".."#: ends at a quote followed by as many #.
            let open = rest.iter().position(|&c| c == b'"').unwrap() + 1;
            let close: Vec<u8> = std::iter::once(b'"').chain(std::iter::repeat_n(b'#', hashes)).collect();
            let end = rest[open..].windows(close.len()).position(|w| w == close.as_slice());
            let end = end.map_or(b.len(), |n| i + open + n + close.len());
            blank(&mut out, i, end);
            i = end;
        } else if b[i] == b'"' {
            let mut j = i + 1;
            while j < b.len() && b[j] != b'"' {
                j += if b[j] == b'\\' { 2 } else { 1 };
            }
            let end = (j + 1).min(b.len());
            blank(&mut out, i, end);
            i = end;
        } else if b[i] == b'\'' {
            // A char literal ('x', '\n', '\u{..}', '"'), or else a lifetime or label ('a), left as it is.
            let len = if rest.get(1) == Some(&b'\\') {
                rest.get(3..).and_then(|r| r.iter().position(|&c| c == b'\'')).map(|n| n + 4)
            } else {
                let ch = src[i + 1..].chars().next().map_or(0, char::len_utf8);
                (rest.get(1 + ch) == Some(&b'\'')).then_some(ch + 2)
            };
            let end = i + len.unwrap_or(1);
            if len.is_some() {
                blank(&mut out, i, end);
            } else {
                out.push('\'');
            }
            i = end;
        } else {
            let ch = src[i..].chars().next().unwrap();
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    out
}

fn prev(b: &[u8], i: usize) -> Option<u8> {
    i.checked_sub(1).map(|j| b[j])
}

fn is_ident(c: Option<u8>) -> bool {
    c.is_some_and(|c| c.is_ascii_alphanumeric() || c == b'_')
}

/// The number of `#` of a raw string literal starting here (`r"`, `r#"`, `br##"`...).
fn raw_string_start(s: &[u8]) -> Option<usize> {
    let s = s.strip_prefix(b"b").unwrap_or(s).strip_prefix(b"r")?;
    let hashes = s.iter().take_while(|&&c| c == b'#').count();
    (s.get(hashes) == Some(&b'"')).then_some(hashes)
}

/// The first path segment after each `crate::` in `code`, with its line: `crate::a::b` gives `a`,
/// `crate::{a::b, c}` gives `a` and `c`.
fn crate_paths(code: &str) -> Vec<(usize, String)> {
    let b = code.as_bytes();
    let mut found = Vec::new();
    for (at, _) in code.match_indices("crate::") {
        if is_ident(prev(b, at)) || prev(b, at) == Some(b':') {
            continue; // `foo_crate::`, `::crate::` (not a path to this crate)
        }
        let line = code[..at].matches('\n').count() + 1;
        let rest = &code[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let (mut depth, mut start) = (0usize, 0);
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        found.push((line, first_segment(&group[start..i])));
                        break;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        found.push((line, first_segment(&group[start..i])));
                        start = i + 1;
                    }
                    _ => {}
                }
            }
        } else {
            found.push((line, first_segment(rest)));
        }
    }
    found.retain(|(_, name)| !name.is_empty() && name != "self");
    found
}

fn first_segment(path: &str) -> String {
    path.trim_start().chars().take_while(|&c| c.is_ascii_alphanumeric() || c == '_').collect()
}

/// The violations in one file of `module`: "path:line: module uses crate::other".
fn check_file(module: &str, path: &str, src: &str) -> Vec<String> {
    let Some(own) = layer_of(module) else {
        return vec![format!("{path}: the module `{module}` is in no layer; add it to LAYERS in tests/layering.rs")];
    };
    let mut bad = Vec::new();
    for (line, name) in crate_paths(&code_only(src)) {
        let target = ROOT_REEXPORTS.iter().find(|(n, _)| *n == name).map_or(name.as_str(), |(_, m)| m);
        if target == module {
            continue;
        }
        match layer_of(target) {
            Some(l) if l < own => {}
            Some(l) => bad.push(format!(
                "{path}:{line}: `{module}` (layer {own}) uses `crate::{name}` (`{target}`, layer {l}), not below it"
            )),
            None => bad.push(format!("{path}:{line}: `crate::{name}` is no module in LAYERS")),
        }
    }
    bad
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let path = e.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|x| x == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn no_module_uses_one_above_or_beside_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let (mut bad, mut seen) = (Vec::new(), BTreeSet::new());
    for path in &files {
        let rel = path.strip_prefix(&src).unwrap();
        let first = rel.components().next().unwrap().as_os_str().to_str().unwrap();
        if rel.components().count() == 1 && ROOTS.contains(&first) {
            continue;
        }
        let module = first.strip_suffix(".rs").unwrap_or(first);
        seen.insert(module.to_string());
        let text = std::fs::read_to_string(path).unwrap();
        bad.extend(check_file(module, &format!("src/{}", rel.display()), &text));
    }
    assert!(bad.is_empty(), "layering violations:\n{}", bad.join("\n"));
    // The list names what the code has, no more: a module that goes away leaves it.
    for m in LAYERS.iter().flat_map(|l| l.iter()) {
        assert!(seen.contains(*m), "LAYERS names `{m}`, which is no module under src/");
    }
}

#[test]
fn the_scan_catches_an_engine_that_imports_the_runtime() {
    let file = "use crate::error::Result;\nuse crate::runtime::Session;\n";
    let bad = check_file("backend", "src/backend/x.rs", file);
    assert_eq!(bad.len(), 1, "{bad:?}");
    assert!(bad[0].starts_with("src/backend/x.rs:2:") && bad[0].contains("crate::runtime"), "{bad:?}");
    // Grouped paths, a service importing an engine, and a module of the same layer.
    assert_eq!(check_file("memory", "m.rs", "use crate::{files, backend::Engine};").len(), 1);
    assert_eq!(check_file("memory", "m.rs", "fn f() { crate::sampling::Sampler::new(o); }").len(), 1);
    assert_eq!(check_file("sampling", "s.rs", "use {\n    crate::memory::trace::SpanKind,\n};").len(), 1);
    assert_eq!(
        check_file("backend", "b.rs", "use crate::{Error, Result, memory::{budget, planner}};"),
        Vec::<String>::new()
    );
    assert_eq!(check_file("backend", "b.rs", "use crate::cli;").len(), 1);
    // Comments, doc comments and strings are not code.
    let quiet =
        "//! See [`crate::runtime::Session`].\n/// crate::runtime\n/* crate::runtime /* nested */ crate::cli */\n\
        const S: &str = \"crate::runtime\"; const R: &str = r#\"crate::\"runtime\"#; const C: char = '\"';\n\
        fn f<'a>(x: &'a str) -> &'a str { x } // crate::runtime\n";
    assert_eq!(check_file("backend", "b.rs", quiet), Vec::<String>::new());
    assert_eq!(check_file("backend", "b.rs", &format!("{quiet}use crate::runtime::Model;")).len(), 1);
    assert_eq!(check_file("nowhere", "n.rs", "").len(), 1, "a module in no layer is an error");
}
