//! The endpoints. A completion is: read the body (at most `--max-body`), check it, render the chat template,
//! tokenize (off the async threads), submit to the scheduler, then collect its events into one response or
//! forward them as server-sent events.

use super::errors::ApiError;
use super::openai::{self, Head, Kind, Params};
use super::AppState;
use crate::runtime::scheduler::{Event, Request as GenRequest, Stream, SubmitError};
use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde_json::{json, Value};
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

type Shared = State<Arc<AppState>>;

fn json_response(status: StatusCode, v: &Value) -> Response {
    let mut r = (status, v.to_string()).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

pub async fn health() -> Response {
    json_response(StatusCode::OK, &json!({"status": "ok"}))
}

pub async fn metrics(State(s): Shared) -> Response {
    let text = super::metrics::render(s.scheduler.metrics(), &s.http);
    let mut r = (StatusCode::OK, text).into_response();
    let kind = HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8");
    r.headers_mut().insert(header::CONTENT_TYPE, kind);
    r
}

fn model_object(s: &AppState) -> Value {
    json!({"id": s.opts.model_id, "object": "model", "created": s.started, "owned_by": "omex"})
}

pub async fn models(State(s): Shared) -> Response {
    json_response(StatusCode::OK, &json!({"object": "list", "data": [model_object(&s)]}))
}

pub async fn model(State(s): Shared, Path(id): Path<String>) -> Response {
    if id != s.opts.model_id {
        let e = ApiError::model_not_found(&id, &s.opts.model_id);
        return ApiError { status: StatusCode::NOT_FOUND, ..e }.into_response();
    }
    json_response(StatusCode::OK, &model_object(&s))
}

pub async fn not_found(method: Method, uri: Uri) -> Response {
    ApiError::for_status(StatusCode::NOT_FOUND, method.as_str(), uri.path()).into_response()
}

pub async fn chat(State(s): Shared, req: Request) -> Response {
    complete(s, req, Kind::Chat).await.unwrap_or_else(IntoResponse::into_response)
}

pub async fn completions(State(s): Shared, req: Request) -> Response {
    complete(s, req, Kind::Text).await.unwrap_or_else(IntoResponse::into_response)
}

/// The body, refused with 413 as soon as it is known to pass `limit` bytes, and with 408 when it has not
/// arrived within `timeout`.
async fn read_body(req: Request, limit: usize, timeout: Duration) -> Result<Vec<u8>, ApiError> {
    tokio::time::timeout(timeout, read_body_untimed(req, limit)).await.map_err(|_| ApiError::read_timeout(timeout))?
}

async fn read_body_untimed(req: Request, limit: usize) -> Result<Vec<u8>, ApiError> {
    let declared = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::too_large(limit));
    }
    let mut body = req.into_body().into_data_stream();
    let mut out = Vec::with_capacity(declared.map_or(0, |n| n as usize));
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| ApiError::invalid(format!("reading the request body failed: {e}")))?;
        if out.len() + chunk.len() > limit {
            return Err(ApiError::too_large(limit));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

async fn complete(s: Arc<AppState>, req: Request, kind: Kind) -> Result<Response, ApiError> {
    let body = read_body(req, s.opts.max_body, s.opts.read_timeout).await?;
    let (input, params, param) = match kind {
        Kind::Chat => {
            let (messages, p) = openai::parse_chat(&body)?;
            (Err(messages), p, "messages")
        }
        Kind::Text => {
            let (prompt, p) = openai::parse_completion(&body)?;
            (Ok(prompt), p, "prompt")
        }
    };
    drop(body);
    let mut adapters = Vec::new();
    let asked_model = params.model.clone();
    if let Some(asked) = params.model.as_deref().filter(|m| *m != s.opts.model_id) {
        let spec = asked.strip_prefix(s.opts.model_id.as_str()).and_then(|rest| rest.strip_prefix(':'));
        match (spec, &s.adapters) {
            (Some(spec), Some(resolve)) => {
                adapters = resolve(spec).map_err(|e| {
                    let message = format!("the model `{asked}`: {e}");
                    ApiError { code: Some("model_not_found"), ..ApiError::field("model", message) }
                })?;
            }
            _ => return Err(ApiError::model_not_found(asked, &s.opts.model_id)),
        }
    }
    // The template and the tokenizer run over up to --max-body bytes: not on the async threads.
    let tok = s.tokenizer.clone();
    let ids = tokio::task::spawn_blocking(move || {
        let text = match input {
            Ok(prompt) => prompt,
            Err(messages) => tok.apply_chat_template(&messages, true).map_err(|e| {
                ApiError::field("messages", format!("the model's chat template cannot render these messages: {e}"))
            })?,
        };
        Ok::<_, ApiError>(tok.encode_with_specials(&text))
    })
    .await
    .map_err(|e| ApiError::internal(format!("tokenizing the prompt failed: {e}")))??;
    // The name the request asked for (`BASE:ADAPTER` included), which is the model that answers.
    let model = if adapters.is_empty() { s.opts.model_id.clone() } else { asked_model.unwrap_or_default() };
    let Params { max_tokens, sampler, stop, ignore_eos, stream, include_usage, .. } = params;
    let request = GenRequest { prompt: ids, max_tokens, sampler, stop, ignore_eos, adapters };
    let events = s.scheduler.submit(request).map_err(|e| submit_error(e, param))?;
    let head = Head { kind, id: response_id(&s, kind), created: super::unix_now(), model };
    match stream {
        true => Ok(sse(head, events, include_usage)),
        false => collect(head, events).await,
    }
}

fn submit_error(e: SubmitError, param: &str) -> ApiError {
    match e {
        SubmitError::Invalid(m) => ApiError::field(param, m),
        e @ SubmitError::TooLong { .. } => ApiError::field(param, e.to_string()).with_code("context_length_exceeded"),
        e @ SubmitError::QueueFull(_) => ApiError::busy(e.to_string()),
        SubmitError::ShuttingDown => ApiError::shutting_down(),
    }
}

/// `chatcmpl-…` / `cmpl-…`: a random 64-bit value (the standard library's per-instance hash keys) over a
/// counter.
fn response_id(s: &AppState, kind: Kind) -> String {
    let n = s.served.fetch_add(1, Ordering::Relaxed);
    let mut h = RandomState::new().build_hasher();
    h.write_u64(n);
    let prefix = if kind == Kind::Chat { "chatcmpl" } else { "cmpl" };
    format!("{prefix}-{:016x}{n:x}", h.finish())
}

/// What a request's stream ending without a finish (cancelled at shutdown, or the scheduler gone) gives.
fn ended_early() -> ApiError {
    ApiError::shutting_down().with_code("request_cancelled")
}

async fn collect(head: Head, mut events: Stream) -> Result<Response, ApiError> {
    let mut text = String::new();
    while let Some(event) = events.next().await {
        match event {
            Event::Text(t) => text.push_str(&t),
            Event::Done(f) => {
                let Some(reason) = openai::finish_reason(&f.reason) else { return Err(ended_early()) };
                let usage = openai::usage(f.prompt_tokens, f.cached_tokens, f.completion_tokens);
                return Ok(json_response(StatusCode::OK, &head.response(&text, reason, usage)));
            }
            Event::Error(e) => return Err(ApiError::internal(format!("generation failed: {e}"))),
        }
    }
    Err(ended_early())
}

fn event(v: &Value) -> Bytes {
    Bytes::from(format!("data: {v}\n\n"))
}

/// Where a streamed response is.
struct Sse {
    head: Head,
    events: Stream,
    include_usage: bool,
    /// The chat role chunk went out.
    opened: bool,
}

/// The events as server-sent events: (chat) a role chunk, a chunk per text piece, the finish chunk, the usage
/// chunk if asked, `[DONE]`. An error or a cancellation ends the stream with an error event instead.
fn sse(head: Head, events: Stream, include_usage: bool) -> Response {
    let opened = head.kind != Kind::Chat;
    let state = Some(Sse { head, events, include_usage, opened });
    let body = futures::stream::unfold(state, |state| async move {
        let mut st = state?;
        if !st.opened {
            st.opened = true;
            let first = event(&st.head.chunk(Some(""), true, None));
            return Some((Ok::<_, std::convert::Infallible>(first), Some(st)));
        }
        let out = match st.events.next().await {
            Some(Event::Text(t)) => return Some((Ok(event(&st.head.chunk(Some(&t), false, None))), Some(st))),
            Some(Event::Done(f)) => match openai::finish_reason(&f.reason) {
                Some(reason) => {
                    let text = (st.head.kind == Kind::Text).then_some("");
                    let mut out = format!("data: {}\n\n", st.head.chunk(text, false, Some(reason)));
                    if st.include_usage {
                        let usage = openai::usage(f.prompt_tokens, f.cached_tokens, f.completion_tokens);
                        out.push_str(&format!("data: {}\n\n", st.head.usage_chunk(usage)));
                    }
                    out.push_str("data: [DONE]\n\n");
                    Bytes::from(out)
                }
                None => event(&ended_early().to_json()),
            },
            Some(Event::Error(e)) => event(&ApiError::internal(format!("generation failed: {e}")).to_json()),
            None => event(&ended_early().to_json()),
        };
        Some((Ok(out), None))
    });
    let mut r = Response::new(Body::from_stream(body));
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}
