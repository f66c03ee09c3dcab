//! OpenAI's request and response shapes: a request body checked field by field (a known field of the wrong
//! type or out of range is a 400 naming it; unknown fields are ignored, `null` is as if absent), and the
//! `chat.completion` / `text_completion` objects and their streamed chunks.

use super::errors::ApiError;
use crate::runtime::StopReason;
use crate::sampling::SamplerOptions;
use crate::tokenizer::ChatMessage;
use serde_json::{json, Map, Value};

/// Stop strings per request at most (OpenAI's limit).
pub const MAX_STOPS: usize = 4;
/// Bytes of one stop string at most: the scheduler looks for every stop string after each token.
pub const MAX_STOP_BYTES: usize = 512;
/// `max_tokens` at most (the scheduler caps it at the context anyway).
const MAX_TOKENS_LIMIT: u64 = 1 << 31;
/// `top_k` at most (a vocabulary of 2^22, the format's limit).
const TOP_K_LIMIT: u64 = 1 << 22;

/// The generation settings shared by both endpoints.
#[derive(Clone, Debug, PartialEq)]
pub struct Params {
    pub model: Option<String>,
    pub max_tokens: Option<usize>,
    pub sampler: SamplerOptions,
    pub stop: Vec<String>,
    pub ignore_eos: bool,
    pub stream: bool,
    pub include_usage: bool,
}

/// The fields of a request body, `null` read as absent.
struct Fields<'a>(&'a Map<String, Value>);

impl<'a> Fields<'a> {
    fn get(&self, name: &str) -> Option<&'a Value> {
        self.0.get(name).filter(|v| !v.is_null())
    }

    fn string(&self, name: &str) -> Result<Option<&'a str>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(ApiError::field(name, format!("`{name}` must be a string"))),
        }
    }

    fn bool(&self, name: &str) -> Result<Option<bool>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(ApiError::field(name, format!("`{name}` must be true or false"))),
        }
    }

    /// A number in `[lo, hi]`.
    fn number(&self, name: &str, lo: f64, hi: f64) -> Result<Option<f32>, ApiError> {
        let Some(v) = self.get(name) else { return Ok(None) };
        let x = v.as_f64().ok_or_else(|| ApiError::field(name, format!("`{name}` must be a number")))?;
        if !(x.is_finite() && (lo..=hi).contains(&x)) {
            return Err(ApiError::field(name, format!("`{name}` is {x}: it must be in [{lo}, {hi}]")));
        }
        Ok(Some(x as f32))
    }

    /// An integer in `[lo, hi]`.
    fn integer(&self, name: &str, lo: u64, hi: u64) -> Result<Option<u64>, ApiError> {
        let Some(v) = self.get(name) else { return Ok(None) };
        match v.as_u64() {
            Some(x) if (lo..=hi).contains(&x) => Ok(Some(x)),
            _ => Err(ApiError::field(name, format!("`{name}` must be an integer from {lo} to {hi}, not {v}"))),
        }
    }
}

/// The body as a JSON object, or the 400 saying why not.
fn object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ApiError::invalid("the request body must be a JSON object")),
        Err(e) => Err(ApiError::invalid(format!("the request body is not valid JSON: {e}"))),
    }
}

fn params(f: &Fields) -> Result<Params, ApiError> {
    let model = f.string("model")?.map(str::to_string);
    // One choice per request: `n` may only be 1.
    f.integer("n", 1, 1)?;
    // `max_completion_tokens` is the newer name of `max_tokens`; it wins when both are given.
    let max_tokens = match f.integer("max_completion_tokens", 1, MAX_TOKENS_LIMIT)? {
        Some(n) => Some(n),
        None => f.integer("max_tokens", 1, MAX_TOKENS_LIMIT)?,
    };
    let defaults = SamplerOptions::default();
    let seed = match f.get("seed") {
        None => defaults.seed,
        Some(v) => v
            .as_u64()
            .or_else(|| v.as_i64().map(|s| s as u64))
            .ok_or_else(|| ApiError::field("seed", "`seed` must be an integer"))?,
    };
    // top_p 0 asks for the most likely token only; the sampler's domain is (0, 1].
    let top_p = f.number("top_p", 0.0, 1.0)?.map_or(defaults.top_p, |p| p.max(f32::MIN_POSITIVE));
    let sampler = SamplerOptions {
        temperature: f.number("temperature", 0.0, 2.0)?.unwrap_or(defaults.temperature),
        top_k: f.integer("top_k", 0, TOP_K_LIMIT)?.map_or(defaults.top_k, |k| k as usize),
        top_p,
        min_p: f.number("min_p", 0.0, 1.0)?.unwrap_or(defaults.min_p),
        repetition_penalty: f.number("repetition_penalty", 0.01, 100.0)?.unwrap_or(defaults.repetition_penalty),
        seed,
        ..defaults
    };
    let stream = f.bool("stream")?.unwrap_or(false);
    let include_usage = match f.get("stream_options") {
        None => false,
        Some(Value::Object(o)) => Fields(o)
            .bool("include_usage")
            .map_err(|_| ApiError::field("stream_options", "`stream_options.include_usage` must be true or false"))?
            .unwrap_or(false),
        Some(_) => return Err(ApiError::field("stream_options", "`stream_options` must be an object")),
    };
    Ok(Params {
        model,
        max_tokens: max_tokens.map(|n| n as usize),
        sampler,
        stop: stops(f.get("stop"))?,
        ignore_eos: f.bool("ignore_eos")?.unwrap_or(false),
        stream,
        include_usage,
    })
}

/// `stop`: a string or an array of at most [`MAX_STOPS`] strings; empty strings are dropped.
fn stops(v: Option<&Value>) -> Result<Vec<String>, ApiError> {
    let list: Vec<&Value> = match v {
        None => Vec::new(),
        Some(s @ Value::String(_)) => vec![s],
        Some(Value::Array(a)) if a.len() <= MAX_STOPS => a.iter().collect(),
        Some(Value::Array(a)) => {
            return Err(ApiError::field("stop", format!("`stop` has {} strings: at most {MAX_STOPS}", a.len())))
        }
        Some(_) => return Err(ApiError::field("stop", "`stop` must be a string or an array of strings")),
    };
    let mut out = Vec::new();
    for v in list {
        let s = v.as_str().ok_or_else(|| ApiError::field("stop", "`stop` must hold strings only"))?;
        if s.len() > MAX_STOP_BYTES {
            return Err(ApiError::field(
                "stop",
                format!("a stop string is {} bytes: at most {MAX_STOP_BYTES}", s.len()),
            ));
        }
        if !s.is_empty() {
            out.push(s.to_string());
        }
    }
    Ok(out)
}

/// A `/v1/chat/completions` body: the conversation and the settings.
pub fn parse_chat(body: &[u8]) -> Result<(Vec<ChatMessage>, Params), ApiError> {
    let map = object(body)?;
    let f = Fields(&map);
    let Some(list) = f.get("messages") else {
        return Err(ApiError::field("messages", "`messages` is required"));
    };
    let list = list.as_array().ok_or_else(|| ApiError::field("messages", "`messages` must be an array"))?;
    if list.is_empty() {
        return Err(ApiError::field("messages", "`messages` is empty: give at least one message"));
    }
    let messages = list.iter().enumerate().map(|(i, m)| message(i, m)).collect::<Result<Vec<_>, _>>()?;
    Ok((messages, params(&f)?))
}

fn message(i: usize, v: &Value) -> Result<ChatMessage, ApiError> {
    let param = format!("messages[{i}]");
    let bad = |what: &str| ApiError::field(&param, format!("{param}: {what}"));
    let m = v.as_object().ok_or_else(|| bad("a message must be an object with `role` and `content`"))?;
    let role = match m.get("role").and_then(Value::as_str) {
        Some(r @ ("system" | "user" | "assistant")) => r,
        // OpenAI's newer name of the system role.
        Some("developer") => "system",
        Some(r) => return Err(bad(&format!("the role {r:?} is not supported (system, user or assistant)"))),
        None => return Err(bad("`role` must be a string")),
    };
    let content = match m.get("content") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            for p in parts {
                match (p.get("type").and_then(Value::as_str), p.get("text").and_then(Value::as_str)) {
                    (Some("text"), Some(t)) => text.push_str(t),
                    _ => {
                        return Err(bad(
                            "a content part must be {\"type\": \"text\", \"text\": ...}: only text is supported",
                        ))
                    }
                }
            }
            text
        }
        None | Some(Value::Null) if role == "assistant" => String::new(),
        _ => return Err(bad("`content` must be a string or an array of text parts")),
    };
    Ok(ChatMessage::new(role, content))
}

/// A `/v1/completions` body: the prompt (a string, or an array of one string) and the settings.
pub fn parse_completion(body: &[u8]) -> Result<(String, Params), ApiError> {
    let map = object(body)?;
    let f = Fields(&map);
    let prompt = match f.get("prompt") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(a)) if a.len() == 1 && a[0].is_string() => a[0].as_str().unwrap_or_default().to_string(),
        None => return Err(ApiError::field("prompt", "`prompt` is required")),
        Some(_) => return Err(ApiError::field("prompt", "`prompt` must be a string (or an array of one string)")),
    };
    Ok((prompt, params(&f)?))
}

/// OpenAI's `finish_reason` of a scheduler stop (`None` for a cancelled request, which has none).
pub fn finish_reason(r: &StopReason) -> Option<&'static str> {
    match r {
        StopReason::EndOfSequence | StopReason::StopString => Some("stop"),
        StopReason::MaxTokens | StopReason::ContextFull => Some("length"),
        StopReason::Cancelled => None,
    }
}

/// The `usage` object.
pub fn usage(prompt: usize, cached: usize, completion: usize) -> Value {
    json!({
        "prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    })
}

/// Which endpoint a response belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Chat,
    Text,
}

/// Fields every response and chunk of one request shares.
#[derive(Clone, Debug)]
pub struct Head {
    pub kind: Kind,
    pub id: String,
    pub created: u64,
    pub model: String,
}

impl Head {
    /// The whole (non-streamed) response.
    pub fn response(&self, text: &str, finish: &str, usage: Value) -> Value {
        let (object, choice) = match self.kind {
            Kind::Chat => (
                "chat.completion",
                json!({"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": null,
                       "finish_reason": finish}),
            ),
            Kind::Text => {
                ("text_completion", json!({"index": 0, "text": text, "logprobs": null, "finish_reason": finish}))
            }
        };
        json!({"id": self.id, "object": object, "created": self.created, "model": self.model,
               "choices": [choice], "usage": usage})
    }

    /// A streamed chunk: `text` (for chat, `role` on the first) and the finish reason on the last.
    pub fn chunk(&self, text: Option<&str>, role: bool, finish: Option<&str>) -> Value {
        let (object, choice) = match self.kind {
            Kind::Chat => {
                let mut delta = Map::new();
                if role {
                    delta.insert("role".into(), "assistant".into());
                }
                if let Some(t) = text {
                    delta.insert("content".into(), t.into());
                }
                (
                    "chat.completion.chunk",
                    json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}),
                )
            }
            Kind::Text => (
                "text_completion",
                json!({"index": 0, "text": text.unwrap_or(""), "logprobs": null, "finish_reason": finish}),
            ),
        };
        json!({"id": self.id, "object": object, "created": self.created, "model": self.model, "choices": [choice]})
    }

    /// The chunk after the last one when `stream_options.include_usage` asks: no choices, the usage.
    pub fn usage_chunk(&self, usage: Value) -> Value {
        let object = match self.kind {
            Kind::Chat => "chat.completion.chunk",
            Kind::Text => "text_completion",
        };
        json!({"id": self.id, "object": object, "created": self.created, "model": self.model, "choices": [],
               "usage": usage})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(body: &str) -> ApiError {
        parse_chat(body.as_bytes()).unwrap_err()
    }

    #[test]
    fn a_full_chat_request_parses() {
        let (m, p) = parse_chat(
            br#"{"model":"x","messages":[{"role":"system","content":"Be brief."},
                {"role":"user","content":[{"type":"text","text":"Hi"},{"type":"text","text":"!"}]}],
                "max_tokens":5,"temperature":0.5,"top_p":0.9,"seed":-1,"stop":["a","","b"],"stream":true,
                "stream_options":{"include_usage":true},"n":1,"top_k":40,"min_p":0.05,"repetition_penalty":1.1,
                "ignore_eos":true,"unknown":{"x":1},"logit_bias":null}"#,
        )
        .unwrap();
        assert_eq!(m, vec![ChatMessage::system("Be brief."), ChatMessage::user("Hi!")]);
        assert_eq!(p.model.as_deref(), Some("x"));
        assert_eq!(p.max_tokens, Some(5));
        assert_eq!(p.stop, vec!["a", "b"]);
        assert_eq!(p.sampler.seed, u64::MAX);
        assert_eq!((p.sampler.top_k, p.sampler.temperature), (40, 0.5));
        assert!(p.stream && p.include_usage && p.ignore_eos);
    }

    #[test]
    fn bad_fields_are_400s_naming_the_field() {
        let m = r#""messages":[{"role":"user","content":"x"}]"#;
        for (body, param) in [
            (format!("{{{m},\"max_tokens\":-1}}"), "max_tokens"),
            (format!("{{{m},\"max_tokens\":\"5\"}}"), "max_tokens"),
            (format!("{{{m},\"max_tokens\":2.5}}"), "max_tokens"),
            (format!("{{{m},\"n\":2}}"), "n"),
            (format!("{{{m},\"temperature\":3}}"), "temperature"),
            (format!("{{{m},\"temperature\":\"hot\"}}"), "temperature"),
            (format!("{{{m},\"top_p\":1.5}}"), "top_p"),
            (format!("{{{m},\"stream\":\"yes\"}}"), "stream"),
            (format!("{{{m},\"stop\":[\"a\",\"b\",\"c\",\"d\",\"e\"]}}"), "stop"),
            (format!("{{{m},\"stop\":7}}"), "stop"),
            (format!("{{{m},\"model\":5}}"), "model"),
            ("{\"messages\":[]}".into(), "messages"),
            ("{\"messages\":\"hi\"}".into(), "messages"),
            ("{}".into(), "messages"),
            ("{\"messages\":[{\"role\":\"tool\",\"content\":\"x\"}]}".into(), "messages[0]"),
            ("{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\"}]}]}".into(), "messages[0]"),
        ] {
            let e = err(&body);
            assert_eq!(e.status, 400, "{body}");
            assert_eq!(e.param.as_deref(), Some(param), "{body}: {e:?}");
        }
        for body in ["{", "[1]", "\"x\"", "", "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]} trailing"] {
            let e = err(body);
            assert_eq!((e.status.as_u16(), e.kind), (400, "invalid_request_error"), "{body}");
        }
    }

    #[test]
    fn a_prompt_is_a_string_or_one_string_in_an_array() {
        assert_eq!(parse_completion(br#"{"prompt":"a"}"#).unwrap().0, "a");
        assert_eq!(parse_completion(br#"{"prompt":["b"]}"#).unwrap().0, "b");
        for body in [r#"{"prompt":["a","b"]}"#, r#"{"prompt":[1,2]}"#, r#"{"prompt":5}"#, r#"{}"#] {
            assert_eq!(parse_completion(body.as_bytes()).unwrap_err().param.as_deref(), Some("prompt"), "{body}");
        }
    }

    #[test]
    fn chunks_have_openai_shapes() {
        let h = Head { kind: Kind::Chat, id: "c".into(), created: 1, model: "m".into() };
        let first = h.chunk(Some(""), true, None);
        assert_eq!(first["choices"][0]["delta"], json!({"role": "assistant", "content": ""}));
        assert_eq!(h.chunk(None, false, Some("stop"))["choices"][0]["delta"], json!({}));
        let r = h.response("hi", "length", usage(3, 1, 2));
        assert_eq!(r["choices"][0]["message"]["content"], "hi");
        assert_eq!(r["usage"]["total_tokens"], 5);
        assert_eq!(r["usage"]["prompt_tokens_details"]["cached_tokens"], 1);
    }
}
