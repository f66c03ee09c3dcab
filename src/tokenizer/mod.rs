//! The tokenizer: byte-level BPE (GPT-2, Llama-3, SmolLM2 pre-tokenizers) and SentencePiece-style BPE
//! with byte fallback (Llama-2, TinyLlama), special tokens, chat templates and a streaming detokenizer.
//!
//! It reads Hugging Face `tokenizer.json` files and gives the same ids as the `tokenizers` library for the
//! configurations it recognises; anything else is a clear error, never a silent difference. Pre-tokenizer
//! regexes are implemented by hand (no regex engine at encode time), BPE merges through a rank map keyed
//! by id pairs, with a word cache.
//!
//! ```no_run
//! # fn main() -> Result<(), omex::tokenizer::TokenizerError> {
//! use omex::tokenizer::{ChatMessage, Tokenizer};
//! let tok = Tokenizer::load(std::path::Path::new("model.omex/tokenizer"))?;
//! let prompt = tok.apply_chat_template(&[ChatMessage::user("Hi!")], true)?;
//! let ids = tok.encode(&prompt);
//! let mut stream = tok.stream_decoder(true);
//! for id in ids {
//!     if let Some(text) = stream.push(id) {
//!         print!("{text}");
//!     }
//! }
//! # Ok(()) }
//! ```

mod added;
mod bpe;
mod bytelevel;
mod chat;
mod config;
mod decode;
mod encode;
mod error;
mod gguf_vocab;
mod hash;
mod hf_json;
mod hf_pipeline;
mod nfc;
#[rustfmt::skip]
mod nfc_tables;
mod pretok;
mod unicode;
#[rustfmt::skip]
mod unicode_tables;

use std::path::Path;
use std::sync::Mutex;

pub use chat::{ChatFormat, ChatMessage, QWEN2_DEFAULT_SYSTEM};
pub use config::{copy_hf_tokenizer, TokenizerConfig};
pub use decode::StreamDecoder;
pub use error::TokenizerError;
pub use gguf_vocab::{write_tokenizer_dir, GgufVocab};

use added::Matcher;
use decode::{DecodeKind, DecodeTable};
use encode::{EncodeState, Normalizer, PreTokenizer};
use hash::{fast_map, FastMap};

/// A loaded tokenizer. Cheap to share between threads (`&Tokenizer` is `Sync`).
pub struct Tokenizer {
    bpe: bpe::Bpe,
    normalizer: Normalizer,
    pre: PreTokenizer,
    decoder: DecodeKind,
    /// Added tokens matched in the raw text, and those matched after normalization.
    raw_added: Matcher,
    normalized_added: Matcher,
    added_ids: FastMap<Box<str>, u32>,
    /// id -> token string (added tokens' content where they have one); `None` for holes.
    tokens: Vec<Option<Box<str>>>,
    special: Vec<bool>,
    dec: DecodeTable,
    post_bos: Option<u32>,
    post_eos: Option<u32>,
    bos_id: Option<u32>,
    eos_id: Option<u32>,
    unk_id: Option<u32>,
    pad_id: Option<u32>,
    add_bos: bool,
    add_eos: bool,
    stop_ids: Vec<u32>,
    chat_template: Option<String>,
    cache: Mutex<EncodeState>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("pre", &self.pre)
            .field("decoder", &self.decoder)
            .field("bos_id", &self.bos_id)
            .field("eos_id", &self.eos_id)
            .field("stop_ids", &self.stop_ids)
            .finish_non_exhaustive()
    }
}

fn read_file(path: &Path, what: &'static str) -> Result<Vec<u8>, TokenizerError> {
    crate::files::read_regular(path, crate::files::MAX_TEXT_FILE).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => TokenizerError::MissingFile { path: path.to_path_buf(), what },
        _ => TokenizerError::Io { path: path.to_path_buf(), source },
    })
}

impl Tokenizer {
    /// Builds a tokenizer from the bytes of a Hugging Face `tokenizer.json` (no `tokenizer_config.json`:
    /// BOS/EOS come from its post-processor, if any).
    pub fn from_hf_json(json: &[u8]) -> Result<Tokenizer, TokenizerError> {
        Self::parse_named(json, "tokenizer.json")
    }

    /// Loads an omex `tokenizer/` folder (or a Hugging Face model folder): `tokenizer.json`, and
    /// `tokenizer_config.json` when present.
    pub fn load(dir: &Path) -> Result<Tokenizer, TokenizerError> {
        let path = dir.join("tokenizer.json");
        let bytes = read_file(&path, "the tokenizer")?;
        let mut tok = Self::parse_named(&bytes, &path.display().to_string())?;
        let cfg_path = dir.join("tokenizer_config.json");
        if cfg_path.exists() {
            let file = cfg_path.display().to_string();
            let cfg = TokenizerConfig::from_json(&read_file(&cfg_path, "the tokenizer config")?, &file)?;
            tok.apply_config(&cfg, &file)?;
        }
        Ok(tok)
    }

    pub(crate) fn parse_named(json: &[u8], file: &str) -> Result<Tokenizer, TokenizerError> {
        let p = hf_json::parse(json, file)?;
        let vocab_len = p.bpe.vocab.values().map(|&id| id as usize + 1).max().unwrap_or(0);
        let len = p.added.iter().map(|t| t.id as usize + 1).fold(vocab_len, usize::max);
        let count = p.bpe.vocab.len() + p.added.len();
        if len > 4 * count + 1024 {
            let problem = format!("ids are too sparse: the largest is {} for {count} tokens", len - 1);
            return Err(TokenizerError::field(file, "model.vocab", problem));
        }
        let mut tokens: Vec<Option<Box<str>>> = vec![None; len];
        for (t, &id) in &p.bpe.vocab {
            tokens[id as usize] = Some(t.clone());
        }
        let mut special = vec![false; len];
        let mut added_ids = fast_map(p.added.len());
        for t in &p.added {
            tokens[t.id as usize] = Some(t.content.as_str().into());
            special[t.id as usize] = t.special;
            added_ids.insert(t.content.as_str().into(), t.id);
        }
        let raw_added = Matcher::new(p.added.iter().filter(|t| !t.normalized).map(|t| (t, t.content.clone())));
        let normalize = |s: &str| match p.normalizer {
            Normalizer::None => s.to_string(),
            Normalizer::Nfc => nfc::nfc(s).into_owned(),
            Normalizer::SpPrepend => {
                std::iter::once('▁').chain(s.chars().map(|c| if c == ' ' { '▁' } else { c })).collect()
            }
        };
        let normalized_added =
            Matcher::new(p.added.iter().filter(|t| t.normalized).map(|t| (t, normalize(&t.content))));
        let dec = DecodeTable::new(&tokens, p.decoder);
        let unk_id = p.bpe.opts.unk_id;
        Ok(Tokenizer {
            bpe: p.bpe,
            normalizer: p.normalizer,
            pre: p.pre,
            decoder: p.decoder,
            raw_added,
            normalized_added,
            added_ids,
            tokens,
            special,
            dec,
            post_bos: p.post_bos,
            post_eos: p.post_eos,
            bos_id: p.post_bos,
            eos_id: p.post_eos,
            unk_id,
            pad_id: None,
            add_bos: p.post_bos.is_some(),
            add_eos: p.post_eos.is_some(),
            stop_ids: p.post_eos.into_iter().collect(),
            chat_template: None,
            cache: Mutex::new(EncodeState::default()),
        })
    }

    /// Applies a `tokenizer_config.json`; `file` names it in errors.
    pub fn apply_config(&mut self, cfg: &TokenizerConfig, file: &str) -> Result<(), TokenizerError> {
        let lookup = |field: &str, t: &Option<String>| -> Result<Option<u32>, TokenizerError> {
            match t {
                None => Ok(None),
                Some(t) => self.token_to_id(t).map(Some).ok_or_else(|| TokenizerError::UnknownToken {
                    file: file.to_string(),
                    field: field.to_string(),
                    token: t.clone(),
                }),
            }
        };
        let bos = lookup("bos_token", &cfg.bos_token)?;
        let eos = lookup("eos_token", &cfg.eos_token)?;
        let unk = lookup("unk_token", &cfg.unk_token)?;
        let pad = lookup("pad_token", &cfg.pad_token)?;
        let stops = match &cfg.stop_tokens {
            Some(list) => list.clone(),
            None => {
                let exists = |t: &str| self.token_to_id(t).is_some();
                config::derive_stop_tokens(exists, cfg.eos_token.as_deref(), &[], cfg.chat_template.as_deref())
            }
        };
        let mut stop_ids = Vec::with_capacity(stops.len());
        for s in &stops {
            stop_ids.extend(lookup("stop_tokens", &Some(s.clone()))?);
        }
        self.bos_id = bos.or(self.post_bos);
        self.eos_id = eos.or(self.post_eos);
        self.unk_id = unk.or(self.unk_id);
        self.pad_id = pad;
        self.add_bos = cfg.add_bos_token.unwrap_or(self.post_bos.is_some());
        self.add_eos = cfg.add_eos_token.unwrap_or(self.post_eos.is_some());
        if stop_ids.is_empty() {
            stop_ids.extend(self.eos_id);
        }
        self.stop_ids = stop_ids;
        self.chat_template = cfg.chat_template.clone();
        Ok(())
    }

    /// Number of ids: one past the largest id of the vocabulary and the added tokens.
    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    /// The id of a token string (added tokens first, then the model vocabulary).
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.added_ids.get(token).or_else(|| self.bpe.vocab.get(token)).copied()
    }

    /// The token string of an id, as the vocabulary writes it (`Ġhello`, `▁hello`, `<0x0A>`).
    pub fn id_to_token(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize)?.as_deref()
    }

    /// Whether an id is a special token (skipped by [`Tokenizer::decode_skip_special`]).
    pub fn is_special(&self, id: u32) -> bool {
        self.special.get(id as usize).copied().unwrap_or(false)
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos_id
    }

    pub fn eos_id(&self) -> Option<u32> {
        self.eos_id
    }

    pub fn unk_id(&self) -> Option<u32> {
        self.unk_id
    }

    pub fn pad_id(&self) -> Option<u32> {
        self.pad_id
    }

    /// Whether a prompt should start with BOS (`add_bos_token`).
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// Whether an encoded text should end with EOS (`add_eos_token`).
    pub fn add_eos(&self) -> bool {
        self.add_eos
    }

    /// Sets whether prompts start with BOS.
    pub fn set_add_bos(&mut self, add_bos: bool) {
        self.add_bos = add_bos;
    }

    /// The ids that end generation: EOS and the chat template's end-of-turn token (`<|im_end|>` for
    /// ChatML, `<|eot_id|>` for Llama-3).
    pub fn stop_ids(&self) -> &[u32] {
        &self.stop_ids
    }

    /// Whether generation should stop at `id`.
    pub fn is_stop(&self, id: u32) -> bool {
        self.stop_ids.contains(&id)
    }

    /// The Jinja chat template from `tokenizer_config.json`, if any.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// Renders a conversation with the model's chat template (see [`ChatFormat`] for the formats).
    pub fn apply_chat_template(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, TokenizerError> {
        let template = self.chat_template.as_deref().ok_or(TokenizerError::NoChatTemplate)?;
        let format = ChatFormat::detect(template)?;
        let name = |id: Option<u32>| id.and_then(|i| self.id_to_token(i)).unwrap_or("");
        format.render(messages, add_generation_prompt, name(self.bos_id), name(self.eos_id))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn tokenizer_is_shareable() {
        fn check<T: Send + Sync>() {}
        check::<super::Tokenizer>();
    }
}
