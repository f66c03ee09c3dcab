//! From GGUF tokenizer fields to an omex `tokenizer/` folder in the Hugging Face format: `tokenizer.json`
//! (loadable by the `tokenizers` library) and `tokenizer_config.json`. The converter reads the GGUF and
//! calls [`write_tokenizer_dir`].

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs;
use std::path::Path;

use serde_json::{json, Value};

use super::config::{derive_stop_tokens, TokenizerConfig};
use super::hf_pipeline::{LLAMA3_PATTERN, QWEN2_PATTERN};
use super::{Tokenizer, TokenizerError};

/// GGUF token types (`tokenizer.ggml.token_type`).
const NORMAL: i32 = 1;
const UNKNOWN: i32 = 2;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;

/// The tokenizer fields of a GGUF file (`tokenizer.ggml.*`, `tokenizer.chat_template`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GgufVocab {
    /// `tokenizer.ggml.model`: "gpt2" (byte-level BPE) or "llama" (SentencePiece BPE).
    pub model: String,
    /// `tokenizer.ggml.pre`: "smollm", "llama-bpe", "gpt2", "default"...
    pub pre: Option<String>,
    pub tokens: Vec<String>,
    /// One per token, or empty (all normal).
    pub token_types: Vec<i32>,
    /// One per token for "llama" (merge priorities), may be empty for "gpt2".
    pub scores: Vec<f32>,
    /// "left right" per merge, in rank order ("gpt2" only).
    pub merges: Vec<String>,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    pub unk_id: Option<u32>,
    pub pad_id: Option<u32>,
    pub add_bos: Option<bool>,
    pub add_eos: Option<bool>,
    /// `tokenizer.ggml.add_space_prefix` ("llama" only): SentencePiece's dummy "▁" before the text. Absent
    /// means on (Llama-2); Gemma's vocabularies say false.
    pub add_space_prefix: Option<bool>,
    pub chat_template: Option<String>,
}

fn gguf_err(field: &'static str, problem: impl Into<String>) -> TokenizerError {
    TokenizerError::Gguf { field, problem: problem.into() }
}

impl GgufVocab {
    fn token_type(&self, id: usize) -> i32 {
        self.token_types.get(id).copied().unwrap_or(NORMAL)
    }

    fn check(&self) -> Result<(), TokenizerError> {
        let n = self.tokens.len();
        if n == 0 {
            return Err(gguf_err("tokenizer.ggml.tokens", "empty"));
        }
        if !self.token_types.is_empty() && self.token_types.len() != n {
            return Err(gguf_err(
                "tokenizer.ggml.token_type",
                format!("{} entries for {n} tokens", self.token_types.len()),
            ));
        }
        if !self.scores.is_empty() && self.scores.len() != n {
            return Err(gguf_err("tokenizer.ggml.scores", format!("{} entries for {n} tokens", self.scores.len())));
        }
        for (field, id) in [
            ("tokenizer.ggml.bos_token_id", self.bos_id),
            ("tokenizer.ggml.eos_token_id", self.eos_id),
            ("tokenizer.ggml.unknown_token_id", self.unk_id),
            ("tokenizer.ggml.padding_token_id", self.pad_id),
        ] {
            if let Some(id) = id.filter(|&i| i as usize >= n) {
                return Err(gguf_err(field, format!("id {id} is out of range ({n} tokens)")));
            }
        }
        Ok(())
    }

    fn name(&self, id: Option<u32>) -> Option<String> {
        id.and_then(|i| self.tokens.get(i as usize)).cloned()
    }
}

/// Merges of a SentencePiece vocabulary that has scores but no merge list: every normal piece that splits
/// into two vocabulary pieces gives a merge (within a piece, ordered by the two ids); then a stable sort
/// by the piece's score, highest first (the order of transformers' `SentencePieceExtractor`).
fn merges_from_scores(v: &GgufVocab, first_id: &HashMap<&str, usize>) -> Vec<(usize, usize)> {
    let mut merges: Vec<(usize, usize, f32)> = Vec::new();
    for (i, piece) in v.tokens.iter().enumerate() {
        if v.token_type(i) != NORMAL {
            continue;
        }
        let score = v.scores.get(i).copied().unwrap_or(-(i as f32));
        let start = merges.len();
        for (k, _) in piece.char_indices().skip(1) {
            if let (Some(&l), Some(&r)) = (first_id.get(&piece[..k]), first_id.get(&piece[k..])) {
                merges.push((l, r, score));
            }
        }
        merges[start..].sort_by_key(|&(l, r, _)| (l, r));
    }
    merges.sort_by(|a, b| b.2.partial_cmp(&a.2).unwrap_or(std::cmp::Ordering::Equal));
    merges.into_iter().map(|(l, r, _)| (l, r)).collect()
}

fn byte_level(use_regex: bool) -> Value {
    json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex})
}

/// The pre-tokenizer of a GGUF `tokenizer.ggml.pre`, as Hugging Face writes it.
fn gpt2_pre_tokenizer(pre: Option<&str>) -> Result<Value, TokenizerError> {
    Ok(match pre.unwrap_or("default") {
        "default" | "gpt2" | "gpt-2" => byte_level(true),
        "smollm" => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true}, byte_level(true)]}),
        "llama-bpe" | "llama3" | "llama-v3" => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": LLAMA3_PATTERN}, "behavior": "Isolated", "invert": false},
            byte_level(false)]}),
        "qwen2" => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": QWEN2_PATTERN}, "behavior": "Isolated", "invert": false},
            byte_level(false)]}),
        other => {
            return Err(gguf_err(
                "tokenizer.ggml.pre",
                format!("`{other}` is not supported (omex knows default, gpt2, smollm, llama-bpe, qwen2)"),
            ))
        }
    })
}

/// A `TemplateProcessing` that adds BOS/EOS, or null.
fn post_processor(bos: Option<(&str, u32)>, eos: Option<(&str, u32)>) -> Value {
    if bos.is_none() && eos.is_none() {
        return Value::Null;
    }
    let special = |(t, _): (&str, u32)| json!({"SpecialToken": {"id": t, "type_id": 0}});
    let wrap = |part: &str| -> Vec<Value> {
        let mut v: Vec<Value> = bos.map(special).into_iter().collect();
        v.push(json!({"Sequence": {"id": part, "type_id": 0}}));
        v.extend(eos.map(special));
        v
    };
    let tokens: serde_json::Map<String, Value> = bos
        .into_iter()
        .chain(eos)
        .map(|(t, id)| (t.to_string(), json!({"id": t, "ids": [id], "tokens": [t]})))
        .collect();
    let pair = [wrap("A"), wrap("B")].concat();
    json!({"type": "TemplateProcessing", "single": wrap("A"), "pair": pair, "special_tokens": tokens})
}

/// The parts of `tokenizer.json` that depend on the kind of model.
struct Pipeline {
    normalizer: Value,
    pre_tokenizer: Value,
    decoder: Value,
    /// The BPE model's `unk_token`.
    unk_token: Value,
    /// SentencePiece-style: `fuse_unk` and `byte_fallback` on.
    sentencepiece: bool,
    ignore_merges: bool,
}

fn pipeline(vocab: &GgufVocab, unk: Option<u32>) -> Result<Pipeline, TokenizerError> {
    match vocab.model.as_str() {
        // Gemma: spaces become "▁" and nothing is prepended (a Metaspace that never prepends, rather than HF's
        // Replace normalizer, which omex's tokenizer.json reader does not take), so the decoder strips nothing.
        "llama" if vocab.add_space_prefix == Some(false) => Ok(Pipeline {
            normalizer: Value::Null,
            pre_tokenizer: json!({"type": "Metaspace", "replacement": "▁", "prepend_scheme": "never",
                                  "split": false}),
            decoder: json!({"type": "Sequence", "decoders": [
                {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
                {"type": "ByteFallback"}, {"type": "Fuse"}]}),
            unk_token: vocab.name(unk).map_or(Value::Null, Value::String),
            sentencepiece: true,
            ignore_merges: false,
        }),
        // Llama-2 / TinyLlama: the `tokenizer.json` transformers writes for them.
        "llama" => Ok(Pipeline {
            normalizer: json!({"type": "Sequence", "normalizers": [
                {"type": "Prepend", "prepend": "▁"},
                {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]}),
            pre_tokenizer: Value::Null,
            decoder: json!({"type": "Sequence", "decoders": [
                {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
                {"type": "ByteFallback"}, {"type": "Fuse"},
                {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}),
            unk_token: vocab.name(unk).map_or(Value::Null, Value::String),
            sentencepiece: true,
            ignore_merges: false,
        }),
        "gpt2" => Ok(Pipeline {
            // Qwen2's tokenizer.json normalizes to NFC (llama.cpp does not).
            normalizer: if vocab.pre.as_deref() == Some("qwen2") { json!({"type": "NFC"}) } else { Value::Null },
            pre_tokenizer: gpt2_pre_tokenizer(vocab.pre.as_deref())?,
            decoder: json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true,
                            "use_regex": true}),
            unk_token: Value::Null,
            sentencepiece: false,
            ignore_merges: matches!(vocab.pre.as_deref(), Some("llama-bpe" | "llama3" | "llama-v3")),
        }),
        other => Err(gguf_err("tokenizer.ggml.model", format!("`{other}` is not supported (omex knows gpt2, llama)"))),
    }
}

/// Control (and unknown) tokens become special added tokens, user-defined ones plain added tokens.
fn added_tokens(vocab: &GgufVocab, first_id: &HashMap<&str, usize>) -> Value {
    let added =
        (0..vocab.tokens.len()).filter(|&i| first_id.get(vocab.tokens[i].as_str()) == Some(&i)).filter_map(|i| {
            let special = match vocab.token_type(i) {
                UNKNOWN | CONTROL => true,
                USER_DEFINED => false,
                _ => return None,
            };
            Some(json!({"id": i, "content": vocab.tokens[i], "single_word": false,
                        "lstrip": false, "rstrip": false, "normalized": false, "special": special}))
        });
    Value::Array(added.collect())
}

/// The `tokenizer.json` text, written by hand so the vocabulary keeps id order.
fn tokenizer_json(
    vocab: &GgufVocab,
    first_id: &HashMap<&str, usize>,
    merges: &[(usize, usize)],
    p: &Pipeline,
    post: Value,
) -> String {
    let mut s = String::with_capacity(vocab.tokens.len() * 24 + merges.len() * 20);
    let added = added_tokens(vocab, first_id);
    let (normalizer, pre, decoder) = (&p.normalizer, &p.pre_tokenizer, &p.decoder);
    let _ = write!(
        s,
        "{{\"version\":\"1.0\",\"truncation\":null,\"padding\":null,\n\"added_tokens\":{added},\n\
         \"normalizer\":{normalizer},\n\"pre_tokenizer\":{pre},\n\"post_processor\":{post},\n\
         \"decoder\":{decoder},\n\"model\":{{\"type\":\"BPE\",\"dropout\":null,\"unk_token\":{},\
         \"continuing_subword_prefix\":null,\"end_of_word_suffix\":null,\"fuse_unk\":{sp},\
         \"byte_fallback\":{sp},\"ignore_merges\":{},\n\"vocab\":{{",
        p.unk_token,
        p.ignore_merges,
        sp = p.sentencepiece,
    );
    let mut sep = "";
    for (i, t) in vocab.tokens.iter().enumerate() {
        if first_id.get(t.as_str()) == Some(&i) {
            let _ = write!(s, "{sep}\n{}:{i}", Value::String(t.clone()));
            sep = ",";
        } else {
            log::warn!("GGUF token {i} `{t}` repeats an earlier token; tokenizer.json leaves it out");
        }
    }
    s.push_str("},\n\"merges\":[");
    for (k, &(l, r)) in merges.iter().enumerate() {
        let sep = if k == 0 { "" } else { "," };
        let (l, r) = (Value::String(vocab.tokens[l].clone()), Value::String(vocab.tokens[r].clone()));
        let _ = write!(s, "{sep}\n[{l},{r}]");
    }
    s.push_str("]}}\n");
    s
}

/// Writes `dir/tokenizer.json` (Hugging Face format) and `dir/tokenizer_config.json` for a GGUF vocabulary.
pub fn write_tokenizer_dir(vocab: &GgufVocab, dir: &Path) -> Result<(), TokenizerError> {
    vocab.check()?;
    let mut first_id: HashMap<&str, usize> = HashMap::with_capacity(vocab.tokens.len());
    for (i, t) in vocab.tokens.iter().enumerate() {
        first_id.entry(t.as_str()).or_insert(i);
    }
    let unk = vocab.unk_id.or_else(|| vocab.token_types.iter().position(|&t| t == UNKNOWN).map(|i| i as u32));
    let p = pipeline(vocab, unk)?;
    let merges: Vec<(usize, usize)> = if p.sentencepiece {
        merges_from_scores(vocab, &first_id)
    } else {
        let mut out = Vec::with_capacity(vocab.merges.len());
        for (i, m) in vocab.merges.iter().enumerate() {
            let pair = m.split_once(' ').and_then(|(a, b)| Some((*first_id.get(a)?, *first_id.get(b)?)));
            out.push(pair.ok_or_else(|| {
                gguf_err("tokenizer.ggml.merges", format!("merge #{i} `{m}` does not name two tokens"))
            })?);
        }
        out
    };
    let add_bos = vocab.add_bos.unwrap_or(p.sentencepiece);
    let add_eos = vocab.add_eos.unwrap_or(false);
    let named = |id: Option<u32>, on: bool| id.filter(|_| on).map(|i| (vocab.tokens[i as usize].as_str(), i));
    let post = post_processor(named(vocab.bos_id, add_bos), named(vocab.eos_id, add_eos));
    let json = tokenizer_json(vocab, &first_id, &merges, &p, post);
    // Qwen2 GGUFs name `<|im_end|>` as EOS; Qwen2.5's generation_config.json also stops at `<|endoftext|>`.
    let extra_stops: Vec<String> = match vocab.pre.as_deref() {
        Some("qwen2") => vec!["<|endoftext|>".into()],
        _ => Vec::new(),
    };

    let cfg = TokenizerConfig {
        bos_token: vocab.name(vocab.bos_id),
        eos_token: vocab.name(vocab.eos_id),
        unk_token: vocab.name(unk),
        pad_token: vocab.name(vocab.pad_id),
        add_bos_token: Some(add_bos),
        add_eos_token: Some(add_eos),
        chat_template: vocab.chat_template.clone(),
        stop_tokens: Some(derive_stop_tokens(
            |t| first_id.contains_key(t),
            vocab.name(vocab.eos_id).as_deref(),
            &extra_stops,
            vocab.chat_template.as_deref(),
        )),
    };
    // Load what is about to be written, so a bad vocabulary fails here and not at run time.
    let mut check = Tokenizer::parse_named(json.as_bytes(), "tokenizer.json (from GGUF)")?;
    check.apply_config(&cfg, "tokenizer_config.json (from GGUF)")?;

    fs::create_dir_all(dir).map_err(|source| TokenizerError::Io { path: dir.to_path_buf(), source })?;
    let write = |name: &str, bytes: &[u8]| {
        let path = dir.join(name);
        fs::write(&path, bytes).map_err(|source| TokenizerError::Io { path, source })
    };
    write("tokenizer.json", json.as_bytes())?;
    write("tokenizer_config.json", cfg.to_json().as_bytes())
}
