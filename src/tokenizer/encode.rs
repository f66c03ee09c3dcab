//! Text to ids: added tokens first, then the normalizer, the pre-tokenizer and BPE per pre-token, with a
//! word cache shared by the calls that do not overlap.

use super::added::Piece;
use super::bpe::Scratch;
use super::hash::{fast_map, FastMap};
use super::pretok::{split_gpt2, split_llama3, split_metaspace, split_qwen2, Digits};
use super::Tokenizer;

/// The normalizers omex implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Normalizer {
    None,
    /// `Sequence[Prepend("▁"), Replace(" ", "▁")]`: Llama-2 / TinyLlama SentencePiece.
    SpPrepend,
    /// `NFC`: Qwen2.
    Nfc,
}

/// How the regex step of a byte-level pre-tokenizer splits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Split {
    /// `ByteLevel(use_regex=false)` alone: the whole text is one word.
    None,
    /// The GPT-2 regex, after an optional `Digits` split (SmolLM2 isolates digits).
    Gpt2(Digits),
    /// The Llama-3 regex.
    Llama3,
    /// The Qwen2 regex (Llama-3's with single digits).
    Qwen2,
}

/// When `Metaspace` prepends `▁`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Prepend {
    Always,
    /// Only to the text at the very start of the input.
    First,
    Never,
}

/// The pre-tokenizers omex implements natively.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PreTokenizer {
    ByteLevel {
        split: Split,
        add_prefix_space: bool,
    },
    Metaspace {
        prepend: Prepend,
        split: bool,
    },
    /// No pre-tokenizer: each normalized text piece is one word (SentencePiece-style BPE).
    None,
}

const CACHE_ENTRIES: usize = 1 << 16;
const CACHE_MAX_WORD: usize = 256;

/// Pre-token -> ids, for pre-tokens of at most `CACHE_MAX_WORD` bytes. Words of up to 15 bytes (nearly
/// all) are keyed by one `u128` (bytes and length), which hashes and compares without a `memcmp`.
#[derive(Default)]
pub(crate) struct WordCache {
    short: FastMap<u128, (u32, u32)>,
    long: FastMap<Box<[u8]>, (u32, u32)>,
    ids: Vec<u32>,
}

#[inline(always)]
fn short_key(word: &[u8]) -> Option<u128> {
    if word.len() > 15 {
        return None;
    }
    let mut b = [0u8; 16];
    b[..word.len()].copy_from_slice(word);
    b[15] = word.len() as u8;
    Some(u128::from_le_bytes(b))
}

impl WordCache {
    #[inline]
    fn get(&self, word: &[u8]) -> Option<&[u32]> {
        let &(at, len) = match short_key(word) {
            Some(k) => self.short.get(&k)?,
            None => self.long.get(word)?,
        };
        self.ids.get(at as usize..(at + len) as usize)
    }

    fn insert(&mut self, word: &[u8], ids: &[u32]) {
        let entries = self.short.len() + self.long.len();
        if entries >= CACHE_ENTRIES || self.ids.len() > u32::MAX as usize / 2 {
            self.short.clear();
            self.long.clear();
            self.ids.clear();
        }
        if self.short.capacity() == 0 {
            self.short = fast_map(4096);
        }
        let at = (self.ids.len() as u32, ids.len() as u32);
        self.ids.extend_from_slice(ids);
        match short_key(word) {
            Some(k) => self.short.insert(k, at),
            None => self.long.insert(word.into(), at),
        };
    }
}

/// What one encode call works in: the word cache and reusable buffers.
#[derive(Default)]
pub(crate) struct EncodeState {
    cache: WordCache,
    scratch: Scratch,
    buf: String,
}

impl Tokenizer {
    /// Encodes `text` to ids. Added and special tokens written in the text (`<|im_start|>`) become their
    /// ids; no BOS/EOS is added (see [`Tokenizer::encode_with_specials`]). The same ids as Hugging Face
    /// `tokenizers` for the configurations omex supports.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        // The shared cache when no other call holds it, else a fresh one for this call.
        let mut guard = self.cache.try_lock().ok();
        let mut local = None;
        let state = match guard.as_deref_mut() {
            Some(s) => s,
            None => local.insert(EncodeState::default()),
        };
        self.encode_with(text, state)
    }

    fn encode_with(&self, text: &str, state: &mut EncodeState) -> Vec<u32> {
        let mut out = Vec::with_capacity(text.len() / 3 + 4);
        self.raw_added.split(text, 0, &mut |piece| match piece {
            Piece::Token(id) => out.push(id),
            Piece::Text(t, offset) => self.encode_text(t, offset == 0, &mut out, state),
        });
        out
    }

    /// Encodes `text`, adding BOS (if `add_bos` and the text does not already start with it) and EOS (if
    /// `add_eos`), as `tokenizer_config.json` asks.
    pub fn encode_with_specials(&self, text: &str) -> Vec<u32> {
        let mut ids = self.encode(text);
        if let (true, Some(bos)) = (self.add_bos, self.bos_id) {
            if ids.first() != Some(&bos) {
                ids.insert(0, bos);
            }
        }
        if let (true, Some(eos)) = (self.add_eos, self.eos_id) {
            ids.push(eos);
        }
        ids
    }

    /// Encodes many texts on all cores; each text as [`Tokenizer::encode`].
    #[cfg(not(target_arch = "wasm32"))]
    pub fn encode_batch(&self, texts: &[&str]) -> Vec<Vec<u32>> {
        use rayon::prelude::*;
        // A few contiguous chunks per thread, each with its own word cache.
        let chunk = texts.len().div_ceil(rayon::current_num_threads() * 4).max(1);
        let parts: Vec<Vec<Vec<u32>>> = texts
            .par_chunks(chunk)
            .map(|part| {
                let mut state = EncodeState::default();
                part.iter().map(|t| self.encode_with(t, &mut state)).collect()
            })
            .collect();
        parts.into_iter().flatten().collect()
    }

    /// A piece of the input between added tokens; `first` when it starts the input.
    fn encode_text(&self, text: &str, first: bool, out: &mut Vec<u32>, st: &mut EncodeState) {
        match self.normalizer {
            Normalizer::None => self.encode_normalized(text, first, out, st),
            Normalizer::Nfc => self.encode_normalized(&super::nfc::nfc(text), first, out, st),
            Normalizer::SpPrepend => {
                if text.is_empty() {
                    return;
                }
                let mut buf = std::mem::take(&mut st.buf);
                buf.clear();
                buf.push('▁');
                buf.extend(text.chars().map(|c| if c == ' ' { '▁' } else { c }));
                self.encode_normalized(&buf, first, out, st);
                st.buf = buf;
            }
        }
    }

    fn encode_normalized(&self, text: &str, first: bool, out: &mut Vec<u32>, st: &mut EncodeState) {
        if self.normalized_added.is_empty() {
            return self.pre_tokenize(text, first, out, st);
        }
        self.normalized_added.split(text, 0, &mut |piece| match piece {
            Piece::Token(id) => out.push(id),
            Piece::Text(t, offset) => self.pre_tokenize(t, first && offset == 0, out, st),
        });
    }

    fn pre_tokenize(&self, text: &str, first: bool, out: &mut Vec<u32>, st: &mut EncodeState) {
        if text.is_empty() {
            return;
        }
        match self.pre {
            PreTokenizer::ByteLevel { split, add_prefix_space } => {
                let prefixed;
                let text = if add_prefix_space && !text.starts_with(' ') {
                    prefixed = format!(" {text}");
                    prefixed.as_str()
                } else {
                    text
                };
                match split {
                    Split::None => self.word(text, true, out, st),
                    Split::Gpt2(d) => split_gpt2(text, d, &mut |p| self.word(p, true, out, st)),
                    Split::Llama3 => split_llama3(text, &mut |p| self.word(p, true, out, st)),
                    Split::Qwen2 => split_qwen2(text, &mut |p| self.word(p, true, out, st)),
                }
            }
            PreTokenizer::Metaspace { prepend, split } => {
                let wanted = match prepend {
                    Prepend::Always => true,
                    Prepend::First => first,
                    Prepend::Never => false,
                };
                let mut m = String::with_capacity(text.len() + 8);
                if wanted && !text.starts_with(['▁', ' ']) {
                    m.push('▁');
                }
                m.extend(text.chars().map(|c| if c == ' ' { '▁' } else { c }));
                if split {
                    split_metaspace(&m, &mut |p| self.word(p, false, out, st));
                } else {
                    self.word(&m, false, out, st);
                }
            }
            PreTokenizer::None => self.word(text, false, out, st),
        }
    }

    /// BPE of one pre-token, through the cache.
    #[inline]
    fn word(&self, word: &str, byte_level: bool, out: &mut Vec<u32>, st: &mut EncodeState) {
        let key = word.as_bytes();
        if byte_level && key.len() == 1 {
            let id = self.bpe.single_byte(key[0]);
            if id != super::bpe::NONE {
                out.push(id);
                return;
            }
        }
        let cacheable = key.len() <= CACHE_MAX_WORD;
        if cacheable {
            if let Some(ids) = st.cache.get(key) {
                out.extend_from_slice(ids);
                return;
            }
        }
        let start = out.len();
        if byte_level {
            self.bpe.encode_bytes(key, out, &mut st.scratch);
        } else {
            self.bpe.encode_chars(word, out, &mut st.scratch);
        }
        if cacheable {
            st.cache.insert(key, &out[start..]);
        }
    }
}
