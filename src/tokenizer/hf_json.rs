//! Reads a Hugging Face `tokenizer.json`: the BPE model, the added tokens, and the normalizer,
//! pre-tokenizer and decoder, each recognised among the configurations omex runs natively. Anything else
//! is an error that names the part and shows its JSON.

use serde_json::Value;

use super::added::AddedToken;
use super::bpe::{Bpe, BpeOptions, MergeError};
use super::decode::{DecodeKind, Meta};
use super::encode::{Normalizer, PreTokenizer, Prepend, Split};
use super::hash::fast_map;
use super::pretok::Digits;
use super::TokenizerError;

pub(crate) const GPT2_PATTERN: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
pub(crate) const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

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
fn show(v: &Value) -> String {
    let mut s = v.to_string();
    if s.len() > 300 {
        let cut = (0..=300).rev().find(|&i| s.is_char_boundary(i)).unwrap_or(0);
        s.truncate(cut);
        s.push_str("...");
    }
    s
}

fn type_of(v: &Value) -> &str {
    v.get("type").and_then(Value::as_str).unwrap_or("")
}

fn flag(v: &Value, key: &str, default: bool) -> bool {
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
        return if v.is_null() { Ok(Vec::new()) } else { Err(TokenizerError::field(file, "added_tokens", "not an array")) };
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

fn is_string_pattern(v: &Value, want: &str) -> bool {
    v.get("pattern").and_then(|p| p.get("String")).and_then(Value::as_str) == Some(want)
}

fn parse_normalizer(v: &Value, file: &str) -> Result<Normalizer, TokenizerError> {
    let is_prepend = |n: &Value| type_of(n) == "Prepend" && n.get("prepend").and_then(Value::as_str) == Some("▁");
    let is_replace = |n: &Value| {
        type_of(n) == "Replace" && is_string_pattern(n, " ") && n.get("content").and_then(Value::as_str) == Some("▁")
    };
    let steps: Vec<&Value> = match (v, type_of(v)) {
        (Value::Null, _) => return Ok(Normalizer::None),
        (_, "Sequence") => v.get("normalizers").and_then(Value::as_array).map(|a| a.iter().collect()).unwrap_or_default(),
        _ => vec![v],
    };
    match steps.as_slice() {
        [] => Ok(Normalizer::None),
        [a, b] if (is_prepend(a) && is_replace(b)) || (is_replace(a) && is_prepend(b)) => Ok(Normalizer::SpPrepend),
        _ => Err(TokenizerError::UnknownNormalizer { file: file.to_string(), config: show(v) }),
    }
}

fn parse_pre(v: &Value, file: &str) -> Result<PreTokenizer, TokenizerError> {
    let unknown = || TokenizerError::UnknownPreTokenizer { file: file.to_string(), config: show(v) };
    let byte_level = |b: &Value, regex: bool| {
        type_of(b) == "ByteLevel" && flag(b, "use_regex", true) == regex && !flag(b, "add_prefix_space", false)
    };
    match type_of(v) {
        _ if v.is_null() => Ok(PreTokenizer::None),
        "ByteLevel" => {
            let split = if flag(v, "use_regex", true) { Split::Gpt2(Digits::Off) } else { Split::None };
            Ok(PreTokenizer::ByteLevel { split, add_prefix_space: flag(v, "add_prefix_space", false) })
        }
        "Metaspace" => {
            if v.get("replacement").and_then(Value::as_str) != Some("▁") {
                return Err(unknown());
            }
            Ok(PreTokenizer::Metaspace { prepend: prepend_scheme(v).ok_or_else(unknown)?, split: flag(v, "split", true) })
        }
        "Sequence" => {
            let steps = v.get("pretokenizers").and_then(Value::as_array).ok_or_else(unknown)?;
            match steps.as_slice() {
                [one] => parse_pre(one, file),
                [d, b] if type_of(d) == "Digits" && byte_level(b, true) => {
                    let digits = if flag(d, "individual_digits", false) { Digits::Individual } else { Digits::Contiguous };
                    Ok(PreTokenizer::ByteLevel { split: Split::Gpt2(digits), add_prefix_space: false })
                }
                [s, b] if type_of(s) == "Split" && byte_level(b, false) => {
                    let pattern = s.get("pattern").and_then(|p| p.get("Regex")).and_then(Value::as_str);
                    let isolated = s.get("behavior").and_then(Value::as_str) == Some("Isolated") && !flag(s, "invert", false);
                    match pattern {
                        Some(LLAMA3_PATTERN) if isolated => Ok(PreTokenizer::ByteLevel { split: Split::Llama3, add_prefix_space: false }),
                        Some(GPT2_PATTERN) if isolated => {
                            Ok(PreTokenizer::ByteLevel { split: Split::Gpt2(Digits::Off), add_prefix_space: false })
                        }
                        _ => Err(unknown()),
                    }
                }
                _ => Err(unknown()),
            }
        }
        _ => Err(unknown()),
    }
}

/// `prepend_scheme` (or the older `add_prefix_space`) of a `Metaspace`.
fn prepend_scheme(v: &Value) -> Option<Prepend> {
    match v.get("prepend_scheme").and_then(Value::as_str) {
        Some("always") => Some(Prepend::Always),
        Some("first") => Some(Prepend::First),
        Some("never") => Some(Prepend::Never),
        Some(_) => None,
        None => Some(if flag(v, "add_prefix_space", true) { Prepend::Always } else { Prepend::Never }),
    }
}

fn parse_decoder(v: &Value, file: &str) -> Result<DecodeKind, TokenizerError> {
    let unknown = || TokenizerError::UnknownDecoder { file: file.to_string(), config: show(v) };
    if type_of(v) == "ByteLevel" {
        return Ok(DecodeKind::ByteLevel);
    }
    let steps: Vec<&Value> = match type_of(v) {
        "Sequence" => v.get("decoders").and_then(Value::as_array).ok_or_else(unknown)?.iter().collect(),
        "" => return Err(unknown()),
        _ => vec![v],
    };
    if let [one] = steps.as_slice() {
        if type_of(one) == "ByteLevel" {
            return Ok(DecodeKind::ByteLevel);
        }
    }
    // Order: [Replace(▁ -> " ") | Metaspace], ByteFallback?, Fuse?, Strip(" ", n, 0)? (after Fuse).
    let (mut meta, mut byte_fallback, mut fused, mut strip, mut stage) = (Meta::Keep, false, false, 0, 0);
    for s in steps {
        let next_stage = match type_of(s) {
            "Replace" if is_string_pattern(s, "▁") && s.get("content").and_then(Value::as_str) == Some(" ") => {
                meta = Meta::Space;
                1
            }
            "Metaspace" if s.get("replacement").and_then(Value::as_str) == Some("▁") => {
                meta = match prepend_scheme(s).ok_or_else(unknown)? {
                    Prepend::Never => Meta::Space,
                    _ => Meta::DropInFirst,
                };
                1
            }
            "ByteFallback" => {
                byte_fallback = true;
                2
            }
            "Fuse" => {
                fused = true;
                3
            }
            "Strip" if fused && s.get("content").and_then(Value::as_str) == Some(" ") && s.get("stop").and_then(Value::as_u64) == Some(0) => {
                strip = s.get("start").and_then(Value::as_u64).unwrap_or(0) as usize;
                4
            }
            _ => return Err(unknown()),
        };
        if next_stage <= stage {
            return Err(unknown());
        }
        stage = next_stage;
    }
    Ok(DecodeKind::Pieces { meta, byte_fallback, strip })
}

/// The special tokens a `TemplateProcessing` post-processor puts around a single sequence.
fn parse_post(v: &Value) -> (Option<u32>, Option<u32>) {
    if type_of(v) == "Sequence" {
        let found = v.get("processors").and_then(Value::as_array).into_iter().flatten().map(parse_post);
        return found.fold((None, None), |acc, p| (acc.0.or(p.0), acc.1.or(p.1)));
    }
    if type_of(v) != "TemplateProcessing" {
        return (None, None);
    }
    let id_of = |name: &str| -> Option<u32> {
        let ids = v.get("special_tokens")?.get(name)?.get("ids")?.as_array()?;
        ids.first()?.as_u64().map(|i| i as u32)
    };
    let Some(single) = v.get("single").and_then(Value::as_array) else { return (None, None) };
    let special = |item: &Value| item.get("SpecialToken").and_then(|s| s.get("id")).and_then(Value::as_str).and_then(id_of);
    let seq_at = single.iter().position(|i| i.get("Sequence").is_some()).unwrap_or(0);
    let bos = single[..seq_at].iter().find_map(special);
    let eos = single.get(seq_at + 1..).unwrap_or(&[]).iter().find_map(special);
    (bos, eos)
}
