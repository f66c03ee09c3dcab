//! Recognises the normalizer, pre-tokenizer, decoder and post-processor of a `tokenizer.json` among the
//! configurations omex runs natively (no regex is interpreted at run time: a `Split` regex must be one of
//! the known patterns). Anything else is an error that names the part and shows its JSON.

use serde_json::Value;

use super::decode::{DecodeKind, Meta};
use super::encode::{Normalizer, PreTokenizer, Prepend, Split};
use super::hf_json::{flag, show, type_of};
use super::pretok::Digits;
use super::TokenizerError;

pub(crate) const GPT2_PATTERN: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
pub(crate) const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
pub(crate) const QWEN2_PATTERN: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

fn is_string_pattern(v: &Value, want: &str) -> bool {
    v.get("pattern").and_then(|p| p.get("String")).and_then(Value::as_str) == Some(want)
}

pub(crate) fn parse_normalizer(v: &Value, file: &str) -> Result<Normalizer, TokenizerError> {
    let is_prepend = |n: &Value| type_of(n) == "Prepend" && n.get("prepend").and_then(Value::as_str) == Some("▁");
    let is_replace = |n: &Value| {
        type_of(n) == "Replace" && is_string_pattern(n, " ") && n.get("content").and_then(Value::as_str) == Some("▁")
    };
    let steps: Vec<&Value> = match (v, type_of(v)) {
        (Value::Null, _) => return Ok(Normalizer::None),
        (_, "Sequence") => {
            v.get("normalizers").and_then(Value::as_array).map(|a| a.iter().collect()).unwrap_or_default()
        }
        _ => vec![v],
    };
    match steps.as_slice() {
        [] => Ok(Normalizer::None),
        [n] if type_of(n) == "NFC" => Ok(Normalizer::Nfc),
        [a, b] if (is_prepend(a) && is_replace(b)) || (is_replace(a) && is_prepend(b)) => Ok(Normalizer::SpPrepend),
        _ => Err(TokenizerError::UnknownNormalizer { file: file.to_string(), config: show(v) }),
    }
}

pub(crate) fn parse_pre(v: &Value, file: &str) -> Result<PreTokenizer, TokenizerError> {
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
            Ok(PreTokenizer::Metaspace {
                prepend: prepend_scheme(v).ok_or_else(unknown)?,
                split: flag(v, "split", true),
            })
        }
        "Sequence" => {
            let steps = v.get("pretokenizers").and_then(Value::as_array).ok_or_else(unknown)?;
            match steps.as_slice() {
                [one] => parse_pre(one, file),
                [d, b] if type_of(d) == "Digits" && byte_level(b, true) => {
                    let digits =
                        if flag(d, "individual_digits", false) { Digits::Individual } else { Digits::Contiguous };
                    Ok(PreTokenizer::ByteLevel { split: Split::Gpt2(digits), add_prefix_space: false })
                }
                [s, b] if type_of(s) == "Split" && byte_level(b, false) => {
                    let pattern = s.get("pattern").and_then(|p| p.get("Regex")).and_then(Value::as_str);
                    let isolated =
                        s.get("behavior").and_then(Value::as_str) == Some("Isolated") && !flag(s, "invert", false);
                    match pattern {
                        Some(LLAMA3_PATTERN) if isolated => {
                            Ok(PreTokenizer::ByteLevel { split: Split::Llama3, add_prefix_space: false })
                        }
                        Some(QWEN2_PATTERN) if isolated => {
                            Ok(PreTokenizer::ByteLevel { split: Split::Qwen2, add_prefix_space: false })
                        }
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

pub(crate) fn parse_decoder(v: &Value, file: &str) -> Result<DecodeKind, TokenizerError> {
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
            "Strip"
                if fused
                    && s.get("content").and_then(Value::as_str) == Some(" ")
                    && s.get("stop").and_then(Value::as_u64) == Some(0) =>
            {
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
pub(crate) fn parse_post(v: &Value) -> (Option<u32>, Option<u32>) {
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
    let Some(single) = v.get("single").and_then(Value::as_array) else {
        return (None, None);
    };
    let special =
        |item: &Value| item.get("SpecialToken").and_then(|s| s.get("id")).and_then(Value::as_str).and_then(id_of);
    let seq_at = single.iter().position(|i| i.get("Sequence").is_some()).unwrap_or(0);
    let bos = single[..seq_at].iter().find_map(special);
    let eos = single.get(seq_at + 1..).unwrap_or(&[]).iter().find_map(special);
    (bos, eos)
}
