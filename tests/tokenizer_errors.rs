//! Bad input gives a `TokenizerError` that names the file and the problem, never a panic.

use std::path::{Path, PathBuf};

use omex::tokenizer::{
    copy_hf_tokenizer, write_tokenizer_dir, ChatMessage, GgufVocab, Tokenizer, TokenizerConfig, TokenizerError,
};
use serde_json::Value;

fn gpt2_json() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tokenizer/gpt2_tokenizer.json");
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn with(mut v: Value, key: &str, value: Value) -> Vec<u8> {
    v[key] = value;
    serde_json::to_vec(&v).unwrap()
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("omex-tokenizer-errors-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn missing_file_names_the_path() {
    let dir = scratch("missing");
    let err = Tokenizer::load(&dir).unwrap_err();
    assert!(matches!(&err, TokenizerError::MissingFile { path, .. } if path.ends_with("tokenizer.json")), "{err}");
    assert!(err.to_string().contains("tokenizer.json"));
    assert!(matches!(copy_hf_tokenizer(&dir, &dir.join("out")), Err(TokenizerError::MissingFile { .. })));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn malformed_json_names_the_file() {
    let dir = scratch("malformed");
    std::fs::write(dir.join("tokenizer.json"), b"{\"model\": {\"vocab\": ").unwrap();
    let err = Tokenizer::load(&dir).unwrap_err();
    assert!(matches!(err, TokenizerError::Json { .. }), "{err}");
    assert!(err.to_string().contains("tokenizer.json"), "{err}");
    for junk in [&b""[..], b"[]", b"null", b"\xff\xfe", b"{}", b"{\"model\": 3}"] {
        assert!(Tokenizer::from_hf_json(junk).is_err());
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn unknown_configurations_are_refused() {
    let v = gpt2_json();
    let pre = serde_json::json!({"type": "Whitespace"});
    let err = Tokenizer::from_hf_json(&with(v.clone(), "pre_tokenizer", pre)).unwrap_err();
    assert!(matches!(err, TokenizerError::UnknownPreTokenizer { .. }), "{err}");
    assert!(err.to_string().contains("Whitespace"), "{err}");

    let regex = serde_json::json!({"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": "\\w+"}, "behavior": "Isolated", "invert": false},
        {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}]});
    let err = Tokenizer::from_hf_json(&with(v.clone(), "pre_tokenizer", regex)).unwrap_err();
    assert!(matches!(err, TokenizerError::UnknownPreTokenizer { .. }), "{err}");

    let nfkc = serde_json::json!({"type": "NFKC"});
    let err = Tokenizer::from_hf_json(&with(v.clone(), "normalizer", nfkc)).unwrap_err();
    assert!(matches!(err, TokenizerError::UnknownNormalizer { .. }), "{err}");

    let wp = serde_json::json!({"type": "WordPiece"});
    let err = Tokenizer::from_hf_json(&with(v.clone(), "decoder", wp)).unwrap_err();
    assert!(matches!(err, TokenizerError::UnknownDecoder { .. }), "{err}");

    let mut m = v.clone();
    m["model"]["type"] = "Unigram".into();
    let err = Tokenizer::from_hf_json(&serde_json::to_vec(&m).unwrap()).unwrap_err();
    assert!(matches!(err, TokenizerError::UnsupportedModel { .. }), "{err}");

    let mut m = v.clone();
    m["model"]["vocab"]["xx"] = serde_json::json!(4_000_000_000u64);
    let err = Tokenizer::from_hf_json(&serde_json::to_vec(&m).unwrap()).unwrap_err();
    assert!(matches!(err, TokenizerError::BadField { .. }), "{err}");

    let mut m = v;
    m["model"]["merges"][3] = serde_json::json!(["x", "not-a-token"]);
    let err = Tokenizer::from_hf_json(&serde_json::to_vec(&m).unwrap()).unwrap_err();
    assert!(matches!(&err, TokenizerError::BadMerge { index: 3, .. }), "{err}");
}

#[test]
fn config_naming_an_unknown_token_is_an_error() {
    let dir = scratch("config");
    std::fs::write(dir.join("tokenizer.json"), serde_json::to_vec(&gpt2_json()).unwrap()).unwrap();
    std::fs::write(dir.join("tokenizer_config.json"), br#"{"eos_token": "<|nope|>"}"#).unwrap();
    let err = Tokenizer::load(&dir).unwrap_err();
    assert!(matches!(&err, TokenizerError::UnknownToken { token, .. } if token == "<|nope|>"), "{err}");
    std::fs::write(dir.join("tokenizer_config.json"), b"{ not json").unwrap();
    let err = Tokenizer::load(&dir).unwrap_err();
    assert!(matches!(&err, TokenizerError::Json { file, .. } if file.contains("tokenizer_config.json")), "{err}");
    std::fs::write(dir.join("tokenizer_config.json"), br#"{"stop_tokens": 7}"#).unwrap();
    assert!(matches!(Tokenizer::load(&dir), Err(TokenizerError::BadField { .. })));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn hf_directory_copy_derives_the_config() {
    let src = scratch("hf-src");
    std::fs::write(src.join("tokenizer.json"), serde_json::to_vec(&gpt2_json()).unwrap()).unwrap();
    let tpl = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] \
               + '<|im_end|>' + '\\n'}}{% endfor %}";
    let cfg = serde_json::json!({"eos_token": {"content": "<|endoftext|>"}, "chat_template": [{"name": "default", "template": tpl}]});
    std::fs::write(src.join("tokenizer_config.json"), cfg.to_string()).unwrap();
    std::fs::write(src.join("generation_config.json"), br#"{"eos_token_id": [0]}"#).unwrap();
    let dst = src.join("omex");
    copy_hf_tokenizer(&src, &dst).unwrap();
    let written = TokenizerConfig::from_json(&std::fs::read(dst.join("tokenizer_config.json")).unwrap(), "t").unwrap();
    assert_eq!(written.eos_token.as_deref(), Some("<|endoftext|>"));
    assert_eq!(written.stop_tokens, Some(vec!["<|endoftext|>".to_string()]));
    assert_eq!(written.add_bos_token, Some(false));
    let tok = Tokenizer::load(&dst).unwrap();
    assert_eq!(tok.stop_ids(), [0]);
    // The template is ChatML without `<|im_start|>` in this vocabulary: it renders, the tokens are text.
    assert!(tok.apply_chat_template(&[ChatMessage::user("hi")], false).unwrap().starts_with("<|im_start|>user"));
    let _ = std::fs::remove_dir_all(&src);
}

#[test]
fn bad_gguf_vocabularies_are_errors() {
    let base = GgufVocab {
        model: "gpt2".into(),
        pre: Some("smollm".into()),
        tokens: ["a", "b", "ab", "<|end|>"].map(String::from).to_vec(),
        token_types: vec![1, 1, 1, 3],
        merges: vec!["a b".into()],
        eos_id: Some(3),
        ..GgufVocab::default()
    };
    let dir = scratch("gguf");
    write_tokenizer_dir(&base, &dir).unwrap();
    let tok = Tokenizer::load(&dir).unwrap();
    assert_eq!(tok.encode("ab<|end|>"), [2, 3]);
    assert_eq!(tok.stop_ids(), [3]);

    let cases: Vec<(GgufVocab, &str)> = vec![
        (GgufVocab { eos_id: Some(9), ..base.clone() }, "tokenizer.ggml.eos_token_id"),
        (GgufVocab { pre: Some("deepseek-coder".into()), ..base.clone() }, "tokenizer.ggml.pre"),
        (GgufVocab { model: "bert".into(), ..base.clone() }, "tokenizer.ggml.model"),
        (GgufVocab { merges: vec!["a c".into()], ..base.clone() }, "tokenizer.ggml.merges"),
        (GgufVocab { token_types: vec![1], ..base.clone() }, "tokenizer.ggml.token_type"),
        (GgufVocab { tokens: vec![], ..base.clone() }, "tokenizer.ggml.tokens"),
    ];
    for (v, want) in cases {
        match write_tokenizer_dir(&v, &dir.join("bad")) {
            Err(TokenizerError::Gguf { field, .. }) => assert_eq!(field, want),
            other => panic!("{want}: {other:?}"),
        }
    }
    // A merge whose result is missing: caught when the written tokenizer is checked.
    let v = GgufVocab { merges: vec!["b a".into()], ..base };
    assert!(matches!(write_tokenizer_dir(&v, &dir.join("bad")), Err(TokenizerError::BadMerge { .. })));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn ids_out_of_range_and_chat_errors() {
    let tok = Tokenizer::from_hf_json(&serde_json::to_vec(&gpt2_json()).unwrap()).unwrap();
    let big = tok.vocab_size() as u32;
    assert_eq!(tok.decode(&[big, u32::MAX]), "");
    let err = tok.decode_checked(&[5, big]).unwrap_err();
    assert!(matches!(err, TokenizerError::IdOutOfRange { id, .. } if id == big), "{err}");
    assert_eq!(tok.stream_decoder(false).push(u32::MAX), None);
    assert!(tok.id_to_token(big).is_none());
    let err = tok.apply_chat_template(&[ChatMessage::user("hi")], true).unwrap_err();
    assert!(matches!(err, TokenizerError::NoChatTemplate), "{err}");
}

#[test]
fn unsupported_chat_templates_and_roles_are_errors() {
    use omex::tokenizer::ChatFormat;
    let err = ChatFormat::detect("{% for m in messages %}<start_of_turn>{{ m.role }}{% endfor %}").unwrap_err();
    assert!(matches!(err, TokenizerError::UnsupportedChatTemplate { .. }), "{err}");
    let llama2 = "{% if messages[0]['role'] == 'system' %}<<SYS>>{% endif %}[INST] {{ message['content'] }} [/INST]";
    let f = ChatFormat::detect(llama2).unwrap();
    let err = f.render(&[ChatMessage::assistant("first")], false, "<s>", "</s>").unwrap_err();
    assert!(matches!(err, TokenizerError::ChatMessages(_)), "{err}");
    assert!(f.render(&[], false, "<s>", "</s>").is_err());
}

#[test]
fn random_text_and_ids_never_panic() {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tokenizer");
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for name in ["gpt2", "llama3", "sp", "sp_meta"] {
        let json = std::fs::read(data.join(format!("{name}_tokenizer.json"))).unwrap();
        let tok = Tokenizer::from_hf_json(&json).unwrap();
        for _ in 0..300 {
            let len = (next() % 64) as usize;
            // Mostly valid multi-byte UTF-8 with some ASCII and specials mixed in.
            let chars: String = (0..len)
                .map(|_| match next() % 4 {
                    0 => char::from_u32((next() % 0x11_0000) as u32).unwrap_or('\u{FFFD}'),
                    1 => (b' ' + (next() % 95) as u8) as char,
                    2 => ['\n', '\r', '\t', ' ', '\''][(next() % 5) as usize],
                    _ => char::from_u32(0x80 + (next() % 0x3000) as u32).unwrap_or('x'),
                })
                .collect();
            let ids = tok.encode(&chars);
            if name.starts_with("gpt2") || name == "llama3" {
                assert_eq!(tok.decode(&ids), chars);
            }
            let random: Vec<u32> = (0..len).map(|_| (next() % (tok.vocab_size() as u64 + 5)) as u32).collect();
            let whole = tok.decode(&random);
            let mut stream = tok.stream_decoder(false);
            let mut out: String = random.iter().filter_map(|&id| stream.push(id)).collect();
            out.extend(stream.finish());
            assert_eq!(out, whole);
        }
        // Truncated and corrupted files are errors, not panics.
        for cut in [1, 10, 100, json.len() / 2, json.len() - 1] {
            assert!(Tokenizer::from_hf_json(&json[..cut]).is_err());
        }
    }
}
