//! omex's tokenizer against Hugging Face `tokenizers`: every corpus string must encode to the ids that
//! `scripts/tokenizer_reference.py` got from the `tokenizers` library, decode as it decodes, stream to
//! the same text, and render chat templates as jinja2 renders them.

#[path = "tokenizer_gguf.rs"]
mod gguf;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use omex::tokenizer::{write_tokenizer_dir, ChatFormat, ChatMessage, GgufVocab, Tokenizer, TokenizerError};
use serde::Deserialize;
use serde_json::Value;

#[derive(Deserialize, Clone)]
struct Case {
    text: String,
    ids: Vec<u32>,
    decoded: String,
}

#[derive(Deserialize)]
struct DecodeCase {
    ids: Vec<u32>,
    text: String,
    text_skip_special: String,
}

#[derive(Deserialize)]
struct Expected {
    tokenizer: String,
    cases: Vec<Case>,
    decode: Vec<DecodeCase>,
}

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tokenizer").join(name)
}

fn read(name: &str) -> Vec<u8> {
    std::fs::read(data(name)).unwrap_or_else(|e| panic!("{}: {e}", data(name).display()))
}

fn expected(name: &str) -> Expected {
    serde_json::from_slice(&read(&format!("{name}_expected.json"))).expect("expected ids parse")
}

/// Where a test writes a tokenizer folder: `$OMEX_TOKENIZER_OUT/<name>` (kept, for
/// `scripts/tokenizer_reference.py --check-dir`, which loads it with HF), else a temporary folder.
fn scratch_dir(name: &str) -> PathBuf {
    let dir = match std::env::var_os("OMEX_TOKENIZER_OUT") {
        Some(out) => PathBuf::from(out).join(name),
        None => std::env::temp_dir().join(format!("omex-tokenizer-test-{}-{name}", std::process::id())),
    };
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn remove_scratch(dir: &Path) {
    if std::env::var_os("OMEX_TOKENIZER_OUT").is_none() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// One message per corpus string whose ids differ from the reference, naming the string and both lists.
fn mismatches(tok: &Tokenizer, exp: &Expected) -> Vec<String> {
    let mut out = Vec::new();
    for case in &exp.cases {
        let got = tok.encode(&case.text);
        if got != case.ids {
            out.push(format!("[{}] {:?}\n  omex: {:?}\n  hf:   {:?}", exp.tokenizer, case.text, got, case.ids));
        }
    }
    out
}

fn assert_same_ids(tok: &Tokenizer, exp: &Expected) {
    assert!(exp.cases.len() >= 220, "corpus too small: {}", exp.cases.len());
    let bad = mismatches(tok, exp);
    let shown: Vec<&str> = bad.iter().take(10).map(String::as_str).collect();
    assert!(
        bad.is_empty(),
        "{} of {} strings differ from HF tokenizers:\n{}",
        bad.len(),
        exp.cases.len(),
        shown.join("\n")
    );
}

/// decode() equals HF's decode of the same ids; byte-level BPE gives back the text exactly.
fn assert_same_decode(tok: &Tokenizer, exp: &Expected, byte_level: bool) {
    for case in &exp.cases {
        let text = tok.decode(&case.ids);
        assert_eq!(text, case.decoded, "[{}] decode of {:?}", exp.tokenizer, case.ids);
        if byte_level {
            assert_eq!(text, case.text, "[{}] decode(encode(s)) != s", exp.tokenizer);
        }
    }
    for d in &exp.decode {
        assert_eq!(tok.decode(&d.ids), d.text, "[{}] decode of {:?}", exp.tokenizer, d.ids);
        assert_eq!(tok.decode_skip_special(&d.ids), d.text_skip_special, "[{}] skip {:?}", exp.tokenizer, d.ids);
    }
}

/// Streaming every id list gives decode()'s text, in chunks that never split a character.
fn assert_stream(tok: &Tokenizer, exp: &Expected) {
    let lists = exp.cases.iter().map(|c| &c.ids).chain(exp.decode.iter().map(|d| &d.ids));
    for ids in lists {
        for skip in [false, true] {
            let whole = if skip { tok.decode_skip_special(ids) } else { tok.decode(ids) };
            let mut stream = tok.stream_decoder(skip);
            let mut out = String::new();
            for &id in ids {
                if let Some(chunk) = stream.push(id) {
                    assert!(!chunk.is_empty());
                    if !whole.contains('\u{FFFD}') {
                        assert!(!chunk.contains('\u{FFFD}'), "[{}] chunk {chunk:?} splits a character", exp.tokenizer);
                    }
                    out.push_str(&chunk);
                }
            }
            out.extend(stream.finish());
            assert_eq!(out, whole, "[{}] streamed {:?} (skip_special={skip})", exp.tokenizer, ids);
        }
    }
}

fn check_all(tok: &Tokenizer, name: &str, byte_level: bool) {
    let exp = expected(name);
    assert_same_ids(tok, &exp);
    assert_same_decode(tok, &exp, byte_level);
    assert_stream(tok, &exp);
}

/// A GGUF-style vocabulary made from a byte-level `tokenizer.json` (what the converter would read).
fn gguf_from_hf(name: &str, pre: &str) -> GgufVocab {
    let v: Value = serde_json::from_slice(&read(&format!("{name}_tokenizer.json"))).unwrap();
    let vocab = v["model"]["vocab"].as_object().unwrap();
    let mut tokens = vec![String::new(); vocab.len()];
    for (t, id) in vocab {
        tokens[id.as_u64().unwrap() as usize] = t.clone();
    }
    let mut token_types = vec![1; tokens.len()];
    for a in v["added_tokens"].as_array().unwrap() {
        token_types[a["id"].as_u64().unwrap() as usize] = 3;
    }
    let merges = v["model"]["merges"].as_array().unwrap();
    let merges = merges.iter().map(|m| format!("{} {}", m[0].as_str().unwrap(), m[1].as_str().unwrap())).collect();
    GgufVocab { model: "gpt2".into(), pre: Some(pre.into()), tokens, token_types, merges, ..GgufVocab::default() }
}

#[test]
fn smollm2_from_gguf_matches_hf() {
    let path = gguf::smollm2_path();
    if !path.exists() {
        eprintln!("skipping: {} not found (set OMEX_SMOLLM2_GGUF)", path.display());
        return;
    }
    let vocab = gguf::read_vocab(&path).unwrap();
    assert_eq!((vocab.model.as_str(), vocab.pre.as_deref()), ("gpt2", Some("smollm")));
    assert_eq!((vocab.tokens.len(), vocab.merges.len()), (49152, 48900));
    let dir = scratch_dir("smollm2");
    write_tokenizer_dir(&vocab, &dir).unwrap();
    let tok = Tokenizer::load(&dir).unwrap();
    assert_eq!(tok.vocab_size(), 49152);
    assert_eq!((tok.bos_id(), tok.eos_id(), tok.unk_id(), tok.pad_id()), (Some(1), Some(2), Some(0), Some(2)));
    assert!(!tok.add_bos());
    assert_eq!(tok.stop_ids(), [2]);
    assert_eq!(tok.id_to_token(2), Some("<|im_end|>"));
    assert_eq!(tok.token_to_id("<|im_start|>"), Some(1));
    check_all(&tok, "smollm2", true);

    // The emoji is several byte-level tokens: nothing comes out until the last one.
    let ids = tok.encode("😀");
    assert!(ids.len() > 1, "{ids:?}");
    let mut stream = tok.stream_decoder(false);
    let chunks: Vec<Option<String>> = ids.iter().map(|&id| stream.push(id)).collect();
    assert!(chunks[..ids.len() - 1].iter().all(Option::is_none));
    assert_eq!(chunks.last().unwrap().as_deref(), Some("😀"));

    let chats = chat_cases();
    assert_eq!(tok.chat_template(), Some(chats.templates["smollm2"].template.as_str()));
    for c in chats.cases.iter().filter(|c| c.template == "smollm2") {
        let got = tok.apply_chat_template(&c.messages, c.add_generation_prompt).unwrap();
        assert_eq!(Some(&got), c.expected.as_ref());
    }
    let prompt = tok.apply_chat_template(&[ChatMessage::user("hi")], true).unwrap();
    let ids = tok.encode(&prompt);
    assert_eq!(ids[0], 1);
    assert_eq!(
        tok.decode_skip_special(&ids),
        "system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face\nuser\nhi\nassistant\n"
    );
    remove_scratch(&dir);
}

#[test]
fn gpt2_matches_hf() {
    check_all(&Tokenizer::from_hf_json(&read("gpt2_tokenizer.json")).unwrap(), "gpt2", true);
}

#[test]
fn llama3_matches_hf() {
    check_all(&Tokenizer::from_hf_json(&read("llama3_tokenizer.json")).unwrap(), "llama3", true);
}

#[test]
fn sentencepiece_byte_fallback_matches_hf() {
    let tok = Tokenizer::from_hf_json(&read("sp_tokenizer.json")).unwrap();
    check_all(&tok, "sp", false);
    let exp = expected("sp");
    // Round trip, except where SentencePiece itself cannot: added tokens (the text after one gets its own
    // `▁` prefix) and a literal `▁` (decoded as a space).
    let unround = ["<unk>", "<s>", "</s>", "▁"];
    for case in exp.cases.iter().filter(|c| !unround.iter().any(|s| c.text.contains(s))) {
        assert_eq!(tok.decode(&case.ids), case.text, "decode(encode(s)) != s");
    }
    // Characters outside the small vocabulary take the <0xNN> byte tokens.
    let ids = tok.encode("龘");
    let bytes = ids.iter().filter(|&&id| tok.id_to_token(id).is_some_and(|t| t.starts_with("<0x"))).count();
    assert_eq!(bytes, 3, "{ids:?}");
    assert_eq!(tok.decode(&ids), "龘");
}

#[test]
fn metaspace_matches_hf() {
    check_all(&Tokenizer::from_hf_json(&read("sp_meta_tokenizer.json")).unwrap(), "sp_meta", false);
}

#[test]
fn gguf_byte_level_vocabularies_match_hf() {
    for (name, pre) in [("gpt2", "gpt2"), ("llama3", "llama-bpe")] {
        let dir = scratch_dir(name);
        write_tokenizer_dir(&gguf_from_hf(name, pre), &dir).unwrap();
        check_all(&Tokenizer::load(&dir).unwrap(), name, true);
        remove_scratch(&dir);
    }
}

#[test]
fn gguf_sentencepiece_merges_by_score_match_hf() {
    let v: Value = serde_json::from_slice(&read("sp_gguf_vocab.json")).unwrap();
    let strings = |k: &str| v[k].as_array().unwrap().iter().map(|t| t.as_str().unwrap().to_string()).collect();
    let vocab = GgufVocab {
        model: "llama".into(),
        pre: Some("default".into()),
        tokens: strings("tokens"),
        token_types: v["token_types"].as_array().unwrap().iter().map(|t| t.as_i64().unwrap() as i32).collect(),
        scores: v["scores"].as_array().unwrap().iter().map(|t| t.as_f64().unwrap() as f32).collect(),
        bos_id: Some(1),
        eos_id: Some(2),
        unk_id: Some(0),
        add_bos: Some(true),
        add_eos: Some(false),
        ..GgufVocab::default()
    };
    let dir = scratch_dir("sp_gguf");
    write_tokenizer_dir(&vocab, &dir).unwrap();
    let tok = Tokenizer::load(&dir).unwrap();
    check_all(&tok, "sp_gguf", false);
    assert!(tok.add_bos());
    assert_eq!(tok.encode_with_specials("hi")[0], 1);
    assert_eq!(tok.encode_with_specials("<s>hi").iter().filter(|&&i| i == 1).count(), 1);
    remove_scratch(&dir);
}

#[derive(Deserialize)]
struct Template {
    template: String,
    bos_token: String,
    eos_token: String,
}

#[derive(Deserialize)]
struct ChatCase {
    template: String,
    messages: Vec<ChatMessage>,
    add_generation_prompt: bool,
    expected: Option<String>,
    error: Option<String>,
}

#[derive(Deserialize)]
struct ChatCases {
    templates: HashMap<String, Template>,
    cases: Vec<ChatCase>,
}

fn chat_cases() -> ChatCases {
    serde_json::from_slice(&read("chat_expected.json")).unwrap()
}

#[test]
fn chat_templates_match_jinja2() {
    let chats = chat_cases();
    assert!(chats.cases.len() >= 40);
    for c in &chats.cases {
        let t = &chats.templates[&c.template];
        let format = ChatFormat::detect(&t.template).unwrap();
        let got = format.render(&c.messages, c.add_generation_prompt, &t.bos_token, &t.eos_token);
        match (&c.expected, got) {
            (Some(want), Ok(got)) => assert_eq!(&got, want, "{} {:?}", c.template, c.messages),
            (None, Err(TokenizerError::ChatMessages(_))) => assert!(c.error.is_some()),
            (want, got) => panic!("{} {:?}: want {want:?} / {:?}, got {got:?}", c.template, c.messages, c.error),
        }
    }
}

#[test]
fn a_wrong_id_is_reported_with_the_string_and_both_lists() {
    let tok = Tokenizer::from_hf_json(&read("gpt2_tokenizer.json")).unwrap();
    let mut exp = expected("gpt2");
    let i = exp.cases.iter().position(|c| c.text == "Hello, world!").unwrap();
    let good = exp.cases[i].ids.clone();
    exp.cases[i].ids[0] += 1;
    let bad = mismatches(&tok, &exp);
    assert_eq!(bad.len(), 1);
    assert!(bad[0].contains("\"Hello, world!\""), "{}", bad[0]);
    assert!(bad[0].contains(&format!("{good:?}")) && bad[0].contains(&format!("{:?}", exp.cases[i].ids)), "{}", bad[0]);
}
