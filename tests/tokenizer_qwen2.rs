//! Qwen2 / Qwen2.5 against Hugging Face `tokenizers`: the tokenizer omex writes from the Qwen2.5-Coder-0.5B
//! GGUF must give the ids `scripts/tokenizer_reference.py --qwen2` got from `tokenizers` (the GGUF's vocab
//! and merges under Qwen2.5's tokenizer.json pipeline: NFC, the Qwen2 regex, ByteLevel), decode as it
//! decodes, and render the GGUF's chat template as jinja2 renders it.

#[path = "tokenizer_gguf.rs"]
mod gguf;

use std::path::{Path, PathBuf};

use omex::tokenizer::{write_tokenizer_dir, ChatFormat, ChatMessage, Tokenizer, QWEN2_DEFAULT_SYSTEM};
use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Deserialize)]
struct Case {
    text: String,
    ids: Vec<u32>,
    /// HF's decode of `ids` (the NFC form of `text`); absent for the NFC cases.
    #[serde(default)]
    decoded: Option<String>,
}

#[derive(Deserialize)]
struct DecodeCase {
    ids: Vec<u32>,
    text: String,
    text_skip_special: String,
}

#[derive(Deserialize)]
struct ChatCase {
    messages: Vec<ChatMessage>,
    add_generation_prompt: bool,
    expected: Option<String>,
    error: Option<String>,
}

#[derive(Deserialize)]
struct Expected {
    cases: Vec<Case>,
    nfc_cases: Vec<Case>,
    decode: Vec<DecodeCase>,
    chat_template: String,
    chat: Vec<ChatCase>,
    bos_id: u32,
    eos_id: u32,
}

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tokenizer").join(name)
}

fn expected() -> Expected {
    let path = data("qwen2_expected.json");
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&bytes).expect("qwen2_expected.json parses")
}

/// The tokenizer omex writes from the real GGUF, or `None` (with a message) when the GGUF is absent.
fn from_gguf(name: &str) -> Option<Tokenizer> {
    let path = gguf::qwen05_path();
    if !path.exists() {
        eprintln!(
            "skipping: {} not found (set OMEX_QWEN05_GGUF or run scripts/fetch-model.sh qwen2.5-coder-0.5b)",
            path.display()
        );
        return None;
    }
    let vocab = gguf::read_vocab(&path).unwrap();
    assert_eq!((vocab.model.as_str(), vocab.pre.as_deref()), ("gpt2", Some("qwen2")));
    let dir = std::env::temp_dir().join(format!("omex-tokenizer-qwen2-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    write_tokenizer_dir(&vocab, &dir).unwrap();
    let tok = Tokenizer::load(&dir).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    Some(tok)
}

fn assert_cases(tok: &Tokenizer, cases: &[Case], what: &str) {
    let bad: Vec<String> = cases
        .iter()
        .filter_map(|c| {
            let got = tok.encode(&c.text);
            (got != c.ids).then(|| format!("{:?}\n  omex: {got:?}\n  hf:   {:?}", c.text, c.ids))
        })
        .collect();
    let shown: Vec<&str> = bad.iter().take(10).map(String::as_str).collect();
    assert!(bad.is_empty(), "{what}: {} of {} strings differ from HF:\n{}", bad.len(), cases.len(), shown.join("\n"));
}

#[test]
fn qwen2_from_gguf_matches_hf() {
    let Some(tok) = from_gguf("ids") else { return };
    let exp = expected();
    assert!(exp.cases.len() >= 400, "too few cases: {}", exp.cases.len());
    assert_cases(&tok, &exp.cases, "qwen2");
    for c in &exp.cases {
        assert_eq!(Some(tok.decode(&c.ids)), c.decoded, "decode of {:?}", c.ids);
    }
    for d in &exp.decode {
        assert_eq!(tok.decode(&d.ids), d.text, "decode of {:?}", d.ids);
        assert_eq!(tok.decode_skip_special(&d.ids), d.text_skip_special, "skip-special decode of {:?}", d.ids);
    }
}

#[test]
fn qwen2_nfc_matches_hf() {
    let Some(tok) = from_gguf("nfc") else { return };
    assert_cases(&tok, &expected().nfc_cases, "qwen2 NFC");
}

#[test]
fn qwen2_specials_stops_and_chat_from_gguf() {
    let Some(tok) = from_gguf("chat") else { return };
    let exp = expected();
    assert_eq!(tok.vocab_size(), 151936);
    assert_eq!((tok.eos_id(), tok.bos_id()), (Some(exp.eos_id), Some(exp.bos_id)));
    assert_eq!(tok.id_to_token(exp.eos_id), Some("<|im_end|>"));
    assert!(!tok.add_bos());
    // <|im_end|> (GGUF EOS) and <|endoftext|> end generation.
    assert_eq!(tok.stop_ids(), [151645, 151643]);
    assert!(tok.is_special(151644) && !tok.is_special(151657), "<|im_start|> special, <tool_call> not");
    assert_eq!(tok.encode("<|im_start|>user\n<|im_end|><|endoftext|>"), [151644, 872, 198, 151645, 151643]);
    assert_eq!(tok.decode_skip_special(&[151644, 872, 151645, 151657]), "user<tool_call>");

    assert_eq!(tok.chat_template(), Some(exp.chat_template.as_str()));
    let prompt = tok.apply_chat_template(&[ChatMessage::user("Write fizzbuzz")], true).unwrap();
    let want = format!(
        "<|im_start|>system\n{QWEN2_DEFAULT_SYSTEM}<|im_end|>\n<|im_start|>user\nWrite fizzbuzz<|im_end|>\n\
         <|im_start|>assistant\n"
    );
    assert_eq!(prompt, want);
    let ids = tok.encode(&prompt);
    assert_eq!((ids[0], ids[ids.len() - 3..].to_vec()), (151644, vec![151644, 77091, 198]));
    // Rendered chats are in the HF cases, so their ids are checked there; here each renders the same.
    for c in exp.chat.iter().filter(|c| c.expected.is_some()) {
        let got = tok.apply_chat_template(&c.messages, c.add_generation_prompt).unwrap();
        assert_eq!(Some(&got), c.expected.as_ref(), "{:?}", c.messages);
    }
}

/// The GGUF's template, recognised as Qwen2, renders every conversation as jinja2 did (no model needed).
#[test]
fn qwen2_chat_template_matches_jinja2() {
    let exp = expected();
    let format = ChatFormat::detect(&exp.chat_template).unwrap();
    assert_eq!(format, ChatFormat::Qwen2 { default_system: QWEN2_DEFAULT_SYSTEM.into() });
    assert_eq!(format, ChatFormat::qwen2());
    assert!(exp.chat.len() >= 20);
    for c in &exp.chat {
        let got = format.render(&c.messages, c.add_generation_prompt, "", "<|im_end|>");
        match (&c.expected, &c.error) {
            (Some(want), _) => assert_eq!(got.as_ref().ok(), Some(want), "{:?}", c.messages),
            (None, Some(e)) => assert!(got.is_err(), "jinja2 failed ({e}), omex rendered {got:?}"),
            (None, None) => panic!("a case with neither expected nor error"),
        }
    }
}

/// A `tokenizer.json` whose pre-tokenizer is Qwen2.5's `Split` regex is recognised, and splits every digit.
#[test]
fn qwen2_split_regex_in_tokenizer_json() {
    let path = data("gpt2_tokenizer.json");
    let mut v: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let pattern = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    v["pre_tokenizer"] = json!({"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": false},
        {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false}]});
    let tok = Tokenizer::from_hf_json(&serde_json::to_vec(&v).unwrap()).unwrap();
    let digits: Vec<u32> = "12345".chars().map(|c| tok.token_to_id(&c.to_string()).unwrap()).collect();
    assert_eq!(tok.encode("12345"), digits);
    assert_eq!(tok.decode(&tok.encode("x = 12345;\n")), "x = 12345;\n");
}
