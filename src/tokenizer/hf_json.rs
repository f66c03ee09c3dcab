//! Reads a Hugging Face `tokenizer.json`: the BPE model and the added tokens here, the normalizer,
//! pre-tokenizer, decoder and post-processor in `hf_pipeline`.

use serde_json::Value;

use super::added::AddedToken;
use super::bpe::{Bpe, BpeOptions, MergeError};
use super::decode::DecodeKind;
use super::encode::{Normalizer, PreTokenizer};
use super::hash::fast_map;
use super::hf_pipeline::{parse_decoder, parse_normalizer, parse_post, parse_pre};
use super::TokenizerError;

/// The parts of a `tokenizer.json`.
pub(crate) struct Parsed {
    pub bpe: Bpe,
    pub normalizer: Normalizer,
    pub pre: PreTokenizer,
    pub decoder: DecodeKind,
    pub added: Vec<AddedToken>,
    /// The special token the post-processor puts first / last in a single sequence, if any.
    pub post_bos: Option<u32>,
    pub post_eos: Option<u32>,
}

/// Compact JSON of a config part, cut short for error messages.
pub(crate) fn show(v: &Value) -> String {
    let mut s = v.to_string();
    if s.len() > 300 {
        let cut = (0..=300).rev().find(|&i| s.is_char_boundary(i)).unwrap_or(0);
        s.truncate(cut);
        s.push_str("...");
    }
    s
}

pub(crate) fn type_of(v: &Value) -> &str {
    v.get("type").and_then(Value::as_str).unwrap_or("")
}

pub(crate) fn flag(v: &Value, key: &str, default: bool) -> bool {
    v.get(key).and_then(Value::as_bool).unwrap_or(default)
}

pub(crate) fn parse(bytes: &[u8], file: &str) -> Result<Parsed, TokenizerError> {
    let root: Value =
        serde_json::from_slice(bytes).map_err(|source| TokenizerError::Json { file: file.to_string(), source })?;
    if !root.is_object() {
        return Err(TokenizerError::field(file, "(root)", "expected a JSON object"));
    }
    let model = root.get("model").ok_or_else(|| TokenizerError::field(file, "model", "missing"))?;
    let bpe = parse_model(model, file)?;
    let added = parse_added(root.get("added_tokens").unwrap_or(&Value::Null), file)?;
    let normalizer = parse_normalizer(root.get("normalizer").unwrap_or(&Value::Null), file)?;
    let pre = parse_pre(root.get("pre_tokenizer").unwrap_or(&Value::Null), file)?;
    let decoder = parse_decoder(root.get("decoder").unwrap_or(&Value::Null), file)?;
    let (post_bos, post_eos) = parse_post(root.get("post_processor").unwrap_or(&Value::Null));
    Ok(Parsed { bpe, normalizer, pre, decoder, added, post_bos, post_eos })
}

fn parse_model(m: &Value, file: &str) -> Result<Bpe, TokenizerError> {
    let unsupported = |problem: String| TokenizerError::UnsupportedModel { file: file.to_string(), problem };
    let ty = type_of(m);
    if !ty.is_empty() && ty != "BPE" {
        return Err(unsupported(format!("model type `{ty}` (omex runs BPE models)")));
    }
    if m.get("dropout").and_then(Value::as_f64).is_some_and(|d| d > 0.0) {
        return Err(unsupported("BPE dropout (random merges) is for training".into()));
    }
    for key in ["continuing_subword_prefix", "end_of_word_suffix"] {
        if m.get(key).and_then(Value::as_str).is_some_and(|s| !s.is_empty()) {
            return Err(unsupported(format!("`{key}` is set")));
        }
    }
    let vocab_v = m.get("vocab").and_then(Value::as_object);
    let vocab_v = vocab_v.ok_or_else(|| TokenizerError::field(file, "model.vocab", "missing or not an object"))?;
    let mut vocab = fast_map(vocab_v.len());
    for (tok, id) in vocab_v {
        let id = id.as_u64().filter(|&i| i < u32::MAX as u64);
        let id = id.ok_or_else(|| TokenizerError::field(file, "model.vocab", format!("token `{tok}`: bad id")))?;
        vocab.insert(Box::<str>::from(tok.as_str()), id as u32);
    }
    let merges_v = m.get("merges").and_then(Value::as_array);
    let merges_v = merges_v.ok_or_else(|| TokenizerError::field(file, "model.merges", "missing or not an array"))?;
    let mut merges = Vec::with_capacity(merges_v.len());
    for (i, mv) in merges_v.iter().enumerate() {
        let pair = match mv {
            Value::String(s) => s.split_once(' ').filter(|(_, b)| !b.contains(' ')),
            Value::Array(a) if a.len() == 2 => a[0].as_str().zip(a[1].as_str()),
            _ => None,
        };
        let bad = || TokenizerError::field(file, format!("model.merges[{i}]"), format!("not a pair: {mv}"));
        merges.push(pair.ok_or_else(bad)?);
    }
    let unk_id = match m.get("unk_token").and_then(Value::as_str) {
        Some(u) => match vocab.get(u) {
            Some(&id) => Some(id),
            None => {
                log::warn!("{file}: unk_token `{u}` is not in the vocabulary; unknown characters are dropped");
                None
            }
        },
        None => None,
    };
    let opts = BpeOptions {
        byte_fallback: flag(m, "byte_fallback", false),
        unk_id,
        fuse_unk: flag(m, "fuse_unk", false),
        ignore_merges: flag(m, "ignore_merges", false),
    };
    Bpe::new(vocab, merges.into_iter(), opts).map_err(|(index, left, right, e)| TokenizerError::BadMerge {
        file: file.to_string(),
        index,
        problem: match e {
            MergeError::Left => format!("`{left}` is not in the vocabulary"),
            MergeError::Right => format!("`{right}` is not in the vocabulary"),
            MergeError::Merged(m) => format!("the merged token `{m}` is not in the vocabulary"),
        },
        left,
        right,
    })
}

fn parse_added(v: &Value, file: &str) -> Result<Vec<AddedToken>, TokenizerError> {
    let Some(list) = v.as_array() else {
        return if v.is_null() {
            Ok(Vec::new())
        } else {
            Err(TokenizerError::field(file, "added_tokens", "not an array"))
        };
    };
    let mut out = Vec::with_capacity(list.len());
    for (i, t) in list.iter().enumerate() {
        let field = || format!("added_tokens[{i}]");
        let id = t.get("id").and_then(Value::as_u64).filter(|&i| i < u32::MAX as u64);
        let id = id.ok_or_else(|| TokenizerError::field(file, field(), "missing or bad `id`"))?;
        let content = t.get("content").and_then(Value::as_str);
        let content = content.ok_or_else(|| TokenizerError::field(file, field(), "missing `content`"))?;
        out.push(AddedToken {
            id: id as u32,
            content: content.to_string(),
            special: flag(t, "special", false),
            single_word: flag(t, "single_word", false),
            lstrip: flag(t, "lstrip", false),
            rstrip: flag(t, "rstrip", false),
            normalized: flag(t, "normalized", !flag(t, "special", false)),
        });
    }
    Ok(out)
}
