//! `tokenizer_config.json`: the special tokens, BOS/EOS flags, chat template and omex's `stop_tokens`.
//! Reads Hugging Face's form leniently (tokens as strings or `{"content": ...}`, templates as a string or
//! a named list) and writes a small, plain form.

use std::fs;
use std::path::Path;

use serde_json::{json, Map, Value};

use super::{Tokenizer, TokenizerError};

/// End-of-turn markers that stop generation when the chat template uses them.
const END_OF_TURN: [&str; 5] = ["<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|end|>", "<end_of_turn>"];

/// The fields of `tokenizer_config.json` that omex reads and writes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TokenizerConfig {
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    pub unk_token: Option<String>,
    pub pad_token: Option<String>,
    pub add_bos_token: Option<bool>,
    pub add_eos_token: Option<bool>,
    pub chat_template: Option<String>,
    /// omex's own: tokens that end generation (EOS and the template's end-of-turn token).
    pub stop_tokens: Option<Vec<String>>,
}

/// A token written as `"<s>"` or as `{"content": "<s>", ...}`.
fn token_field(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

/// A template written as a string or as `[{"name": "default", "template": ...}, ...]`.
fn template_field(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Array(list) => {
            let named = |want: &str| list.iter().find(|t| t.get("name").and_then(Value::as_str) == Some(want));
            let t = named("default").or_else(|| list.first())?;
            t.get("template").and_then(Value::as_str).map(str::to_string)
        }
        _ => None,
    }
}

fn read_json(path: &Path) -> Result<Option<Value>, TokenizerError> {
    let bytes = match crate::files::read_regular(path, crate::files::MAX_TEXT_FILE) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(TokenizerError::Io { path: path.to_path_buf(), source }),
    };
    let file = path.display().to_string();
    serde_json::from_slice(&bytes).map(Some).map_err(|source| TokenizerError::Json { file, source })
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), TokenizerError> {
    fs::write(path, bytes).map_err(|source| TokenizerError::Io { path: path.to_path_buf(), source })
}

impl TokenizerConfig {
    /// Parses a `tokenizer_config.json` (omex's or Hugging Face's).
    pub fn from_json(bytes: &[u8], file: &str) -> Result<Self, TokenizerError> {
        let v: Value =
            serde_json::from_slice(bytes).map_err(|source| TokenizerError::Json { file: file.to_string(), source })?;
        Self::from_value(&v, file)
    }

    fn from_value(v: &Value, file: &str) -> Result<Self, TokenizerError> {
        if !v.is_object() {
            return Err(TokenizerError::field(file, "(root)", "expected a JSON object"));
        }
        let stop_tokens = match v.get("stop_tokens") {
            None | Some(Value::Null) => None,
            Some(Value::Array(a)) => {
                let names: Option<Vec<String>> = a.iter().map(|t| token_field(Some(t))).collect();
                Some(names.ok_or_else(|| TokenizerError::field(file, "stop_tokens", "expected token strings"))?)
            }
            Some(_) => return Err(TokenizerError::field(file, "stop_tokens", "expected an array")),
        };
        Ok(TokenizerConfig {
            bos_token: token_field(v.get("bos_token")),
            eos_token: token_field(v.get("eos_token")),
            unk_token: token_field(v.get("unk_token")),
            pad_token: token_field(v.get("pad_token")),
            add_bos_token: v.get("add_bos_token").and_then(Value::as_bool),
            add_eos_token: v.get("add_eos_token").and_then(Value::as_bool),
            chat_template: template_field(v.get("chat_template")),
            stop_tokens,
        })
    }

    /// The JSON omex writes (readable by `transformers` too).
    pub fn to_json(&self) -> String {
        let mut m = Map::new();
        let mut put = |k: &str, v: Value| {
            m.insert(k.to_string(), v);
        };
        put("tokenizer_class", json!("PreTrainedTokenizerFast"));
        put("clean_up_tokenization_spaces", json!(false));
        for (k, v) in [
            ("bos_token", &self.bos_token),
            ("eos_token", &self.eos_token),
            ("unk_token", &self.unk_token),
            ("pad_token", &self.pad_token),
        ] {
            put(k, v.as_ref().map_or(Value::Null, |s| json!(s)));
        }
        put("add_bos_token", json!(self.add_bos_token.unwrap_or(false)));
        put("add_eos_token", json!(self.add_eos_token.unwrap_or(false)));
        if let Some(t) = &self.chat_template {
            put("chat_template", json!(t));
        }
        put("stop_tokens", json!(self.stop_tokens.clone().unwrap_or_default()));
        let mut s = serde_json::to_string_pretty(&Value::Object(m)).unwrap_or_default();
        s.push('\n');
        s
    }
}

/// EOS, the extra ids' tokens, and the end-of-turn markers the template uses, without repeats.
pub(crate) fn derive_stop_tokens(
    exists: impl Fn(&str) -> bool,
    eos: Option<&str>,
    extra: &[String],
    template: Option<&str>,
) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut add = |t: &str| {
        if exists(t) && !out.iter().any(|o| o == t) {
            out.push(t.to_string());
        }
    };
    eos.into_iter().for_each(&mut add);
    extra.iter().for_each(|t| add(t));
    if let Some(tpl) = template {
        END_OF_TURN.iter().filter(|m| tpl.contains(*m)).for_each(|m| add(m));
    }
    out
}

/// Copies a Hugging Face model directory's tokenizer into an omex `tokenizer/` folder: `tokenizer.json`
/// as it is (after checking omex can run it) and a `tokenizer_config.json` derived from the source's
/// `tokenizer_config.json`, `chat_template.jinja` / `chat_template.json` and `generation_config.json`.
pub fn copy_hf_tokenizer(src_dir: &Path, dst_dir: &Path) -> Result<(), TokenizerError> {
    let src = src_dir.join("tokenizer.json");
    let bytes =
        crate::files::read_regular(&src, crate::files::MAX_TEXT_FILE).map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => TokenizerError::MissingFile { path: src.clone(), what: "the tokenizer" },
            _ => TokenizerError::Io { path: src.clone(), source },
        })?;
    let tok = Tokenizer::parse_named(&bytes, &src.display().to_string())?;

    let cfg_path = src_dir.join("tokenizer_config.json");
    let mut cfg = match read_json(&cfg_path)? {
        Some(v) => TokenizerConfig::from_value(&v, &cfg_path.display().to_string())?,
        None => TokenizerConfig::default(),
    };
    if cfg.chat_template.is_none() {
        let jinja = src_dir.join("chat_template.jinja");
        if let Ok(t) = fs::read_to_string(&jinja) {
            cfg.chat_template = Some(t);
        } else if let Some(v) = read_json(&src_dir.join("chat_template.json"))? {
            cfg.chat_template = template_field(v.get("chat_template"));
        }
    }
    let name = |id: u32| tok.id_to_token(id).map(str::to_string);
    let mut extra_stops = Vec::new();
    if let Some(gen) = read_json(&src_dir.join("generation_config.json"))? {
        let ids: Vec<u32> = match gen.get("eos_token_id") {
            Some(Value::Number(n)) => n.as_u64().map(|i| i as u32).into_iter().collect(),
            Some(Value::Array(a)) => a.iter().filter_map(|i| i.as_u64().map(|i| i as u32)).collect(),
            _ => Vec::new(),
        };
        extra_stops = ids.into_iter().filter_map(name).collect();
        if cfg.bos_token.is_none() {
            cfg.bos_token = gen.get("bos_token_id").and_then(Value::as_u64).and_then(|i| name(i as u32));
        }
    }
    if cfg.bos_token.is_none() {
        cfg.bos_token = tok.post_bos.and_then(name);
    }
    if cfg.eos_token.is_none() {
        cfg.eos_token = tok.post_eos.and_then(name).or_else(|| extra_stops.first().cloned());
    }
    cfg.add_bos_token = cfg.add_bos_token.or(Some(tok.post_bos.is_some()));
    cfg.add_eos_token = cfg.add_eos_token.or(Some(tok.post_eos.is_some()));
    if cfg.stop_tokens.is_none() {
        let exists = |t: &str| tok.token_to_id(t).is_some();
        let stops = derive_stop_tokens(exists, cfg.eos_token.as_deref(), &extra_stops, cfg.chat_template.as_deref());
        cfg.stop_tokens = Some(stops);
    }
    // Check that every token the config names exists before writing anything.
    let mut check = tok;
    check.apply_config(&cfg, &cfg_path.display().to_string())?;

    fs::create_dir_all(dst_dir).map_err(|source| TokenizerError::Io { path: dst_dir.to_path_buf(), source })?;
    write(&dst_dir.join("tokenizer.json"), &bytes)?;
    write(&dst_dir.join("tokenizer_config.json"), cfg.to_json().as_bytes())
}
