//! `omex chat`'s loop driven over in-memory stdin/stdout on the real SmolLM2 (greedy), the agent schema's
//! refusals, the confined `file_reader` tool (symlinks out included), the tolerant tool-call parser, and
//! `omex agent add|list` / `omex validate` on agent files.

mod common;

use common::{omex_bin, smollm2_omex};
use omex::agent::chat::{Chat, ChatConfig};
use omex::agent::file_reader::FileReader;
use omex::agent::tool_call::{parse, Parsed, ToolCall};
use omex::format::agent::{AgentConfig, FileAccess};
use omex::runtime::{BackendChoice, EngineOptions, GenerateOptions, Model};
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::AtomicBool;

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("omex-chat-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn smol_chat(system: Option<&str>, window: usize, max_tokens: usize, tools: Vec<FileReader>) -> (Model, Chat) {
    let model = Model::load(smollm2_omex("keep")).unwrap();
    let opts = EngineOptions {
        backend: BackendChoice::Cpu,
        context_length: Some(1024),
        activations: omex::backend::Activations::F32,
        ..Default::default()
    };
    let session = model.session(&opts).unwrap();
    let generate = GenerateOptions { max_tokens, ..Default::default() };
    let chat = Chat::new(session, ChatConfig { system: system.map(str::to_string), window, generate, tools }).unwrap();
    (model, chat)
}

const SYSTEM: &str = "You are a helpful assistant. Answer in one short sentence.";

#[test]
fn a_multi_turn_chat_keeps_history_in_the_cache() {
    let (_model, mut chat) = smol_chat(Some(SYSTEM), 1024, 32, vec![]);
    let cancel = AtomicBool::new(false);
    let mut out = Vec::new();
    let r1 = chat.answer("What is the capital of France?", &mut out, &cancel).unwrap();
    assert!(r1.answer.contains("Paris"), "{}", r1.answer);
    let r2 = chat.answer("And the capital of Germany?", &mut out, &cancel).unwrap();
    assert!(r2.answer.contains("Berlin"), "{}", r2.answer);
    // The second turn's prompt holds the first; only the new turn (and the first answer's last id, never fed)
    // is prefilled.
    assert!(r2.prompt_tokens > r1.prompt_tokens + 10);
    assert!(r2.prefilled < r2.prompt_tokens - r1.prompt_tokens, "{r2:?} after {r1:?}");
    assert_eq!(chat.dropped_turns(), 0);
    assert_eq!(chat.kept_turns(), 2);
}

#[test]
fn the_sliding_window_drops_old_turns_and_keeps_the_system_prompt() {
    let window = 100;
    let (model, mut chat) = smol_chat(Some(SYSTEM), window, 24, vec![]);
    let questions = [
        "What is the capital of France?",
        "What is the capital of Italy?",
        "What is the capital of Spain?",
        "What is the capital of Japan?",
        "What is the capital of Egypt?",
    ];
    let stdin = questions.join("\n") + "\n";
    let mut out = Vec::new();
    chat.run(&mut Cursor::new(stdin), &mut out, &AtomicBool::new(false)).unwrap();
    let out = String::from_utf8(out).unwrap();
    // One prompt marker per question and one at the end of the input; an answer after each.
    assert_eq!(out.matches("> ").count(), questions.len() + 1, "{out}");
    assert!(out.contains("Paris") && out.contains("Tokyo"), "{out}");
    assert!(chat.dropped_turns() >= 2, "dropped {} turns:\n{out}", chat.dropped_turns());
    assert!(chat.kept_turns() + chat.dropped_turns() == questions.len());
    let prompt = chat.last_prompt().to_vec();
    assert!(prompt.len() <= window);
    let text = model.tokenizer.decode(&prompt);
    assert!(text.contains(SYSTEM), "the system prompt left the window: {text}");
    assert!(!text.contains("France"), "the first turn is still in the window: {text}");
    assert!(text.contains("Egypt"), "{text}");
    // The transcript keeps everything for /save.
    assert_eq!(chat.transcript().len(), 1 + 2 * questions.len());
}

#[test]
fn save_refuses_an_existing_file_and_reset_forgets() {
    let dir = temp_dir("save");
    let (_m, mut chat) = smol_chat(None, 512, 8, vec![]);
    let existing = dir.join("mine.json");
    std::fs::write(&existing, "user data").unwrap();
    let fresh = dir.join("chat.json");
    let stdin = format!("Hello!\n/save {}\n/save {}\n/reset\n/bogus\n", existing.display(), fresh.display());
    let mut out = Vec::new();
    chat.run(&mut Cursor::new(stdin), &mut out, &AtomicBool::new(false)).unwrap();
    let out = String::from_utf8(out).unwrap();
    assert!(out.contains("exists; not overwritten"), "{out}");
    assert_eq!(std::fs::read_to_string(&existing).unwrap(), "user data");
    let saved: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&fresh).unwrap()).unwrap();
    assert_eq!(saved["messages"][0]["content"], "Hello!");
    assert_eq!(saved["messages"][1]["role"], "assistant");
    assert!(out.contains("[conversation reset]") && out.contains("[commands:"), "{out}");
    assert_eq!(chat.kept_turns(), 0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_cancelled_answer_stops_and_the_chat_goes_on() {
    let (_m, mut chat) = smol_chat(None, 512, 64, vec![]);
    // A writer that raises the cancel flag after the first piece, as Ctrl-C would.
    struct Tripwire<'a>(&'a AtomicBool, Vec<u8>);
    impl std::io::Write for Tripwire<'_> {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
            self.1.extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let cancel = AtomicBool::new(false);
    let mut w = Tripwire(&cancel, Vec::new());
    let r = chat.answer("Tell me a long story about a dragon.", &mut w, &cancel).unwrap();
    assert_eq!(r.stop, omex::runtime::StopReason::Cancelled);
    let mut out = Vec::new();
    let r2 = chat.answer("What is the capital of France?", &mut out, &AtomicBool::new(false)).unwrap();
    assert_ne!(r2.stop, omex::runtime::StopReason::Cancelled);
    assert_eq!(chat.kept_turns(), 2);
}

fn reader(root: &Path, exts: &[&str], max: u64) -> FileReader {
    let access = FileAccess {
        tool_id: "file_reader".into(),
        extensions: exts.iter().map(|s| s.to_string()).collect(),
        max_file_bytes: max,
    };
    FileReader::new(access, root).unwrap()
}

#[test]
fn file_reader_stays_under_its_root() {
    let base = temp_dir("confine");
    let root = base.join("root");
    std::fs::create_dir_all(root.join("sub")).unwrap();
    std::fs::write(root.join("a.txt"), "alpha").unwrap();
    std::fs::write(root.join("sub/b.md"), "beta").unwrap();
    std::fs::write(root.join("big.txt"), "x".repeat(2000)).unwrap();
    std::fs::write(root.join("key.pem"), "secret").unwrap();
    std::fs::write(base.join("outside.txt"), "outside secret").unwrap();
    let r = reader(&root, &[".txt", ".md"], 1000);
    assert_eq!(r.read("a.txt").unwrap().text, "alpha");
    assert_eq!(r.read("./sub/b.md").unwrap().path, "sub/b.md");
    let refused = |p: &str, why: &str| {
        let e = r.read(p).unwrap_err().to_string();
        assert!(e.contains(why), "{p}: {e}");
    };
    refused("../outside.txt", "\"..\"");
    refused("sub/../../outside.txt", "\"..\"");
    refused(base.join("outside.txt").to_str().unwrap(), "absolute");
    refused("key.pem", "only files ending in");
    refused("big.txt", "over the tool's cap");
    refused("missing.txt", "cannot be read");
    refused("", "empty");
    #[cfg(unix)]
    {
        // A symlink inside the root that points out of it, with an allowed name; and one to a disallowed type.
        std::os::unix::fs::symlink(base.join("outside.txt"), root.join("link.txt")).unwrap();
        refused("link.txt", "outside the root");
        std::os::unix::fs::symlink(&base, root.join("up")).unwrap();
        refused("up/outside.txt", "outside the root");
        std::os::unix::fs::symlink(root.join("key.pem"), root.join("key.txt")).unwrap();
        refused("key.txt", "only files ending in");
        // A directory read skips what it may not read and refuses a link out.
        std::fs::remove_file(root.join("big.txt")).unwrap();
        std::fs::remove_file(root.join("key.txt")).unwrap();
        let e = r.read_path(".").unwrap_err().to_string();
        assert!(e.contains("outside the root"), "{e}");
        std::fs::remove_file(root.join("link.txt")).unwrap();
    }
    let files = r.read_path("sub").unwrap();
    assert_eq!(files.len(), 1);
    assert_eq!(files[0].text, "beta");
    let _ = std::fs::remove_dir_all(&base);
}

#[test]
fn tool_calls_parse_leniently_and_malformed_ones_say_why() {
    let call = |tool: &str, path: &str| Parsed::Call(ToolCall { tool: tool.into(), path: path.into() });
    assert_eq!(
        parse("Sure.\n<tool_call>{\"tool\": \"file_reader\", \"path\": \"a.txt\"}</tool_call>"),
        call("file_reader", "a.txt")
    );
    // No close tag, single quotes, a code fence, loose key=value, OpenAI-style nesting.
    assert_eq!(
        parse("<tool_call>{\"tool\": \"file_reader\", \"path\": \"a.txt\"} and more"),
        call("file_reader", "a.txt")
    );
    assert_eq!(
        parse("<tool_call>{'tool': 'file_reader', 'path': 'notes/b.md'}</tool_call>"),
        call("file_reader", "notes/b.md")
    );
    assert_eq!(parse("<tool_call>```json\n{\"tool\":\"r\",\"path\":\"x\"}\n```</tool_call>"), call("r", "x"));
    assert_eq!(
        parse("<tool_call>tool=file_reader path=\"my notes.txt\"</tool_call>"),
        call("file_reader", "my notes.txt")
    );
    assert_eq!(parse("<tool_call>{tool: file_reader, path: a.txt}</tool_call>"), call("file_reader", "a.txt"));
    assert_eq!(
        parse("<tool_call>{\"name\": \"file_reader\", \"arguments\": {\"path\": \"a.txt\"}}</tool_call>"),
        call("file_reader", "a.txt")
    );
    assert_eq!(parse("no call here, just {\"tool\": 1}"), Parsed::None);
    for bad in [
        "<tool_call></tool_call>",
        "<tool_call>",
        "<tool_call>{\"tool\": \"file_reader\"}</tool_call>",
        "<tool_call>{\"tool\": \"\", \"path\": \"a\"}</tool_call>",
        "<tool_call>read the garden file please</tool_call>",
        "<tool_call>{\"tool\": [1, 2], \"path\": {}}</tool_call>",
        "<tool_call>\u{0}\u{1}{{{{</tool_call>",
    ] {
        assert!(matches!(parse(bad), Parsed::Malformed(_)), "{bad:?}: {:?}", parse(bad));
    }
    let long = format!("<tool_call>{}</tool_call>", "x".repeat(10_000));
    assert!(matches!(parse(&long), Parsed::Malformed(_)));
}

fn agent_err(json: &str) -> String {
    AgentConfig::parse(json.as_bytes(), Path::new("agents/x.json")).unwrap_err().to_string()
}

#[test]
fn agent_files_are_checked_field_by_field() {
    let ok = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/agents/reader.json")).unwrap();
    let a = AgentConfig::parse(&ok, Path::new("reader.json")).unwrap();
    assert_eq!(a.window(), Some(1024));
    assert_eq!(a.file_tools()[0].extensions, [".txt", ".md"]);
    let cases = [
        (
            r#"{"agent_id": "a", "tools": [{"tool_id": "code_interpreter", "tool_type": "interpreter"}]}"#,
            "\"interpreter\" is not supported",
        ),
        (
            r#"{"agent_id": "a", "tools": [{"tool_id": "f", "tool_type": "file_access", "permissions": ["read", "write"], "allowed_extensions": [".txt"]}]}"#,
            "\"write\" is not granted",
        ),
        (
            r#"{"agent_id": "a", "tools": [{"tool_id": "f", "tool_type": "file_access", "permissions": ["read"]}]}"#,
            "allowed_extensions",
        ),
        (
            r#"{"agent_id": "a", "tools": [{"tool_id": "f", "tool_type": "file_access", "permissions": ["read"], "allowed_extensions": ["txt"]}]}"#,
            "\"txt\" is not an extension",
        ),
        (
            r#"{"agent_id": "a", "tools": [{"tool_id": "f", "tool_type": "file_access", "permissions": ["read"], "allowed_extensions": [".txt"], "max_file_bytes": 99999999999}]}"#,
            "max_file_bytes",
        ),
        (r#"{"agent_id": "a", "memory_management": {"context_window_size": 0}}"#, "context_window_size 0"),
        (r#"{"agent_id": "a", "memory_management": {"token_limit": 4294967295}}"#, "token_limit"),
        (
            r#"{"agent_id": "a", "memory_management": {"history_retention_strategy": "summarize"}}"#,
            "history_retention_strategy",
        ),
        (r#"{"agent_id": "a", "response_format": {"max_length": 0}}"#, "max_length"),
        (r#"{"agent_id": "../evil"}"#, "agent_id"),
        (r#"{"agent_id": "a", "tool": []}"#, "unknown field `tool`"),
        (r#"{"agent_type": "x"}"#, "agent_id"),
        // serde names the expected type and the position of the bad value.
        (r#"{"agent_id": "a", "memory_management": {"token_limit": -5}}"#, "expected u32 at line 1 column 57"),
    ];
    for (json, want) in cases {
        let e = agent_err(json);
        assert!(e.contains("agents/x.json") && e.contains(want), "{json}: {e}");
    }
}

fn omex(args: &[&str]) -> std::process::Output {
    Command::new(omex_bin()).args(args).output().unwrap()
}

/// A copy of the converted model's small files (weights linked), so tests can add agents without touching
/// the shared conversion.
fn model_copy(name: &str) -> PathBuf {
    let src = smollm2_omex("keep");
    let dir = temp_dir(name).join("model.omex");
    std::fs::create_dir_all(&dir).unwrap();
    for entry in ["metadata.json", "graph.json", "tokenizer", "weights"] {
        #[cfg(unix)]
        std::os::unix::fs::symlink(src.join(entry), dir.join(entry)).unwrap();
        #[cfg(not(unix))]
        let _ = entry;
    }
    dir
}

#[test]
fn agent_add_list_and_validate() {
    let model = model_copy("agent-cli");
    let m = model.to_str().unwrap();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/agents/reader.json");
    let out = omex(&["agent", "add", m, example.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(model.join("agents/reader.json").is_file());
    // The same id again is refused and the file left alone.
    let out = omex(&["agent", "add", m, example.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("exists already"));
    let out = omex(&["agent", "list", m]);
    let list = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && list.contains("reader") && list.contains("file_reader (file_access)"), "{list}");
    // A bad agent file is refused by add, and a bad file in agents/ fails validate naming the file and field.
    let bad = model.parent().unwrap().join("bad.json");
    std::fs::write(&bad, r#"{"agent_id": "coder", "tools": [{"tool_id": "py", "tool_type": "interpreter"}]}"#).unwrap();
    let out = omex(&["agent", "add", m, bad.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("\"interpreter\" is not supported"));
    std::fs::copy(&bad, model.join("agents/coder.json")).unwrap();
    let out = omex(&["validate", m]);
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(report.contains("agents/coder.json") && report.contains("tools[0]"), "{report}");
    // chat with an agent that has a file tool needs --root.
    let out = omex(&["chat", m, "--agent", "reader", "--backend", "cpu"]);
    assert!(!out.status.success());
    let _ = std::fs::remove_dir_all(model.parent().unwrap());
}

#[test]
fn an_agent_reads_a_file_through_the_tool_call_loop() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/agents/notes");
    let ok = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/agents/reader.json")).unwrap();
    let agent = AgentConfig::parse(&ok, Path::new("reader.json")).unwrap();
    let tools = omex::agent::tools(&agent, Some(&root)).unwrap();
    let system = omex::agent::system_prompt(&agent, None, &tools);
    assert!(system.contains("<tool_call>") && system.contains(".txt"), "{system}");
    let (_m, mut chat) = smol_chat(Some(&system), 1024, 60, tools);
    let result = |call: &str| chat.tool_result(call).unwrap();
    let got = result("<tool_call>{\"tool\": \"file_reader\", \"path\": \"garden.txt\"}</tool_call>");
    assert!(got.contains("tomatoes") && got.contains("--- garden.txt ---"), "{got}");
    let got = result("<tool_call>{\"tool\": \"file_reader\", \"path\": \".\"}</tool_call>");
    assert!(got.contains("2 file(s)") && got.contains("Chain oiled"), "{got}");
    assert!(
        result("<tool_call>{\"tool\": \"file_reader\", \"path\": \"../reader.json\"}</tool_call>").contains("failed")
    );
    assert!(result("<tool_call>{\"tool\": \"shell\", \"path\": \"ls\"}</tool_call>").contains("no tool \"shell\""));
    assert!(result("<tool_call>{\"tool\": \"file_reader\"").contains("not understood"));
    assert_eq!(chat.tool_result("The garden has tomatoes."), None);
    // On the real model: whatever it writes, the turn ends (tool rounds are bounded), and any call it made
    // was answered with the file in the conversation.
    let mut out = Vec::new();
    let r = chat.answer("What went into the south bed? Read garden.txt.", &mut out, &AtomicBool::new(false)).unwrap();
    let transcript = chat.transcript();
    assert_eq!(transcript.len(), 1 + 2 * (1 + r.tool_calls));
    if r.tool_calls > 0 {
        assert!(transcript[3].content.contains("file_reader"), "{:?}", transcript[3]);
    }
}
