//! Ids to text, whole or streamed. The streamed form never emits broken UTF-8: it holds back a partial
//! multi-byte character (byte-level) or a run of `<0xNN>` byte tokens (SentencePiece) until it is whole,
//! and the concatenation of its chunks equals [`Tokenizer::decode`].

use super::bytelevel::token_bytes;
use super::{Tokenizer, TokenizerError};

/// What the decoder does with `▁` in a token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Meta {
    /// Left as it is.
    Keep,
    /// `Replace("▁", " ")`.
    Space,
    /// The `Metaspace` decoder: every `▁` of the first token is dropped, later ones become spaces.
    DropInFirst,
}

/// The decoders omex implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DecodeKind {
    /// `ByteLevel`: the bytes behind the characters, then lossy UTF-8.
    ByteLevel,
    /// Token text with `▁` handled by `meta`; with `byte_fallback`, runs of `<0xNN>` become their bytes
    /// (or one U+FFFD per byte when the run is not valid UTF-8); then `strip` leading spaces removed.
    Pieces { meta: Meta, byte_fallback: bool, strip: usize },
}

/// Per id: the bytes it decodes to (before `▁` handling) and, for `<0xNN>` tokens, the byte.
pub(crate) struct DecodeTable {
    bytes: Vec<u8>,
    offsets: Vec<u32>,
    byte_token: Vec<i16>,
}

impl DecodeTable {
    pub(crate) fn new(tokens: &[Option<Box<str>>], kind: DecodeKind) -> Self {
        let mut t = DecodeTable { bytes: Vec::new(), offsets: vec![0], byte_token: Vec::new() };
        for tok in tokens {
            let s = tok.as_deref().unwrap_or("");
            match kind {
                DecodeKind::ByteLevel => t.bytes.extend_from_slice(&token_bytes(s)),
                DecodeKind::Pieces { .. } => t.bytes.extend_from_slice(s.as_bytes()),
            }
            t.offsets.push(t.bytes.len() as u32);
            let byte = match kind {
                DecodeKind::Pieces { byte_fallback: true, .. } => parse_byte_token(s).map_or(-1, i16::from),
                _ => -1,
            };
            t.byte_token.push(byte);
        }
        t
    }

    #[inline]
    fn get(&self, id: u32) -> &[u8] {
        let i = id as usize;
        &self.bytes[self.offsets[i] as usize..self.offsets[i + 1] as usize]
    }
}

/// `<0xNN>` -> NN, as the `ByteFallback` decoder reads it.
fn parse_byte_token(s: &str) -> Option<u8> {
    let hex = s.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

/// Appends a run of fallback bytes: as text if valid UTF-8, else one U+FFFD per byte.
fn flush_run(run: &mut Vec<u8>, out: &mut String) {
    match std::str::from_utf8(run) {
        Ok(s) => out.push_str(s),
        Err(_) => out.extend(std::iter::repeat_n('\u{FFFD}', run.len())),
    }
    run.clear();
}

/// Appends a token's text with its `▁` handled; `index` is its position among the decoded tokens.
fn push_piece(bytes: &[u8], meta: Meta, index: usize, out: &mut String) {
    let s = String::from_utf8_lossy(bytes);
    match meta {
        Meta::Keep => out.push_str(&s),
        Meta::Space => out.extend(s.chars().map(|c| if c == '▁' { ' ' } else { c })),
        Meta::DropInFirst if index == 0 => out.extend(s.chars().filter(|&c| c != '▁')),
        Meta::DropInFirst => out.extend(s.chars().map(|c| if c == '▁' { ' ' } else { c })),
    }
}

fn strip_spaces(s: &mut String, n: &mut usize) {
    let mut cut = 0;
    while *n > 0 && s.as_bytes().get(cut) == Some(&b' ') {
        cut += 1;
        *n -= 1;
    }
    s.drain(..cut);
    if !s.is_empty() {
        *n = 0;
    }
}

/// Moves the longest decodable prefix of `pending` into a string: valid UTF-8 as is, invalid sequences as
/// U+FFFD (as `from_utf8_lossy` does); an incomplete character at the end stays in `pending`.
fn take_utf8(pending: &mut Vec<u8>) -> String {
    let mut out = String::new();
    let mut pos = 0;
    while pos < pending.len() {
        match std::str::from_utf8(&pending[pos..]) {
            Ok(s) => {
                out.push_str(s);
                pos = pending.len();
            }
            Err(e) => {
                let valid = e.valid_up_to();
                if let Ok(s) = std::str::from_utf8(&pending[pos..pos + valid]) {
                    out.push_str(s);
                }
                match e.error_len() {
                    Some(n) => {
                        out.push('\u{FFFD}');
                        pos += valid + n;
                    }
                    None => {
                        pos += valid;
                        break;
                    }
                }
            }
        }
    }
    pending.drain(..pos);
    out
}

impl Tokenizer {
    /// Decodes ids to text, special tokens included (`skip_special_tokens=False` in `tokenizers`). Ids
    /// past the vocabulary are skipped, as `tokenizers` does; [`Tokenizer::decode_checked`] reports them.
    pub fn decode(&self, ids: &[u32]) -> String {
        self.decode_impl(ids, false)
    }

    /// Decodes ids to text without the special tokens (`<|im_end|>`, `<s>`...).
    pub fn decode_skip_special(&self, ids: &[u32]) -> String {
        self.decode_impl(ids, true)
    }

    /// As [`Tokenizer::decode`], but an id past the vocabulary is an error.
    pub fn decode_checked(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= self.vocab_size()) {
            return Err(TokenizerError::IdOutOfRange { id, vocab_size: self.vocab_size() });
        }
        Ok(self.decode(ids))
    }

    fn keep(&self, id: u32, skip_special: bool) -> bool {
        let i = id as usize;
        i < self.tokens.len() && self.tokens[i].is_some() && !(skip_special && self.special[i])
    }

    fn decode_impl(&self, ids: &[u32], skip_special: bool) -> String {
        let kept = ids.iter().copied().filter(|&id| self.keep(id, skip_special));
        match self.decoder {
            DecodeKind::ByteLevel => {
                let mut bytes = Vec::with_capacity(ids.len() * 4);
                kept.for_each(|id| bytes.extend_from_slice(self.dec.get(id)));
                String::from_utf8_lossy(&bytes).into_owned()
            }
            DecodeKind::Pieces { meta, strip, .. } => {
                let (mut out, mut run) = (String::with_capacity(ids.len() * 4), Vec::new());
                for (index, id) in kept.enumerate() {
                    match self.dec.byte_token[id as usize] {
                        b if b >= 0 => run.push(b as u8),
                        _ => {
                            flush_run(&mut run, &mut out);
                            push_piece(self.dec.get(id), meta, index, &mut out);
                        }
                    }
                }
                flush_run(&mut run, &mut out);
                let mut n = strip;
                strip_spaces(&mut out, &mut n);
                out
            }
        }
    }

    /// A streaming decoder over this tokenizer; `skip_special` leaves special tokens out of the text.
    pub fn stream_decoder(&self, skip_special: bool) -> StreamDecoder<'_> {
        let strip = match self.decoder {
            DecodeKind::Pieces { strip, .. } => strip,
            DecodeKind::ByteLevel => 0,
        };
        StreamDecoder { tok: self, skip_special, pending: Vec::new(), index: 0, strip }
    }
}

/// Turns ids into text one at a time; every chunk it returns is complete UTF-8.
pub struct StreamDecoder<'a> {
    tok: &'a Tokenizer,
    skip_special: bool,
    /// Bytes not yet emitted: a partial character (byte-level) or a run of `<0xNN>` bytes.
    pending: Vec<u8>,
    /// Tokens decoded so far (for the `Metaspace` first-token rule).
    index: usize,
    /// Leading spaces still to strip (the `Strip` decoder).
    strip: usize,
}

impl StreamDecoder<'_> {
    /// Adds one id; returns the text that is now complete, if any. Unknown ids are skipped.
    pub fn push(&mut self, id: u32) -> Option<String> {
        if !self.tok.keep(id, self.skip_special) {
            return None;
        }
        let tok = self.tok;
        let mut out = match tok.decoder {
            DecodeKind::ByteLevel => {
                let bytes = tok.dec.get(id);
                match std::str::from_utf8(bytes) {
                    Ok(s) if self.pending.is_empty() => s.to_string(),
                    _ => {
                        self.pending.extend_from_slice(bytes);
                        take_utf8(&mut self.pending)
                    }
                }
            }
            DecodeKind::Pieces { meta, .. } => {
                let index = self.index;
                self.index += 1;
                let b = tok.dec.byte_token[id as usize];
                if b >= 0 {
                    self.pending.push(b as u8);
                    return None;
                }
                let mut out = String::new();
                flush_run(&mut self.pending, &mut out);
                push_piece(tok.dec.get(id), meta, index, &mut out);
                out
            }
        };
        strip_spaces(&mut out, &mut self.strip);
        (!out.is_empty()).then_some(out)
    }

    /// Ends the stream: returns whatever was held back (an incomplete character becomes U+FFFD).
    pub fn finish(&mut self) -> Option<String> {
        let mut out = match self.tok.decoder {
            DecodeKind::ByteLevel => String::from_utf8_lossy(&self.pending).into_owned(),
            DecodeKind::Pieces { .. } => {
                let mut s = String::new();
                flush_run(&mut self.pending, &mut s);
                s
            }
        };
        self.pending.clear();
        strip_spaces(&mut out, &mut self.strip);
        (!out.is_empty()).then_some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_is_held_until_whole() {
        let mut p = "a😀".as_bytes()[..3].to_vec();
        assert_eq!(take_utf8(&mut p), "a");
        assert_eq!(p.len(), 2);
        p.extend_from_slice(&"😀".as_bytes()[2..]);
        assert_eq!(take_utf8(&mut p), "😀");
        let mut bad = vec![0xFF, b'x', 0xE2, 0x82];
        assert_eq!(take_utf8(&mut bad), "\u{FFFD}x");
        assert_eq!(bad, [0xE2, 0x82]);
    }

    #[test]
    fn byte_tokens() {
        assert_eq!(parse_byte_token("<0x0A>"), Some(10));
        assert_eq!(parse_byte_token("<0xZZ>"), None);
        let mut out = String::new();
        flush_run(&mut vec![0xE4, 0xBD], &mut out);
        assert_eq!(out, "\u{FFFD}\u{FFFD}");
    }
}
