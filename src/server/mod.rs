//! An OpenAI-compatible HTTP server over the [`Scheduler`](crate::runtime::scheduler::Scheduler):
//! `POST /v1/chat/completions`, `POST /v1/completions` (whole or streamed as server-sent events), `GET
//! /v1/models`, `GET /health` and `GET /metrics` (Prometheus). Every error is OpenAI's error object with its
//! status. A client that goes away drops its request's stream, which cancels the request at the scheduler's
//! next step. `omex serve` is this with the engine flags and signal handling around it.
//!
//! ```no_run
//! # async fn f() -> omex::Result<()> {
//! use omex::runtime::{EngineOptions, Model, scheduler::{Scheduler, SchedulerOptions}};
//! use omex::server::{Server, ServerOptions};
//! let model = Model::load("smollm2.omex")?;
//! let tok = model.tokenizer.clone();
//! let opts = EngineOptions { context_length: Some(2048), kv_tokens: 4 * 2048, ..Default::default() };
//! let sched = Scheduler::start(move || model.engine(&opts), tok.clone(), SchedulerOptions::default())?;
//! let server = Server::new(sched, tok, ServerOptions::new("smollm2"));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await.map_err(|e| omex::Error::io("127.0.0.1:8080", e))?;
//! server.serve(listener, omex::server::shutdown_signal()).await
//! # }
//! ```

mod errors;
mod handlers;
mod metrics;
pub mod openai;

pub use errors::ApiError;

use crate::error::Result;
use crate::runtime::scheduler::Scheduler;
use crate::tokenizer::Tokenizer;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use std::future::Future;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Request bodies at most by default (1 MiB).
pub const DEFAULT_MAX_BODY: usize = 1 << 20;

/// How long a request's header, and then its body, may take to arrive by default.
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// How the server answers.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// The name of the one model served: requests naming another get 400 `model_not_found`.
    pub model_id: String,
    /// When set, every endpoint but `/health` needs `Authorization: Bearer KEY`.
    pub api_key: Option<String>,
    /// Request bodies larger than this get 413.
    pub max_body: usize,
    /// On shutdown, requests in flight run this long at most before they are cancelled.
    pub shutdown_grace: Duration,
    /// A request's header, and then its body, must arrive within this long: a connection that is slower
    /// is closed (header) or answered 408 (body).
    pub read_timeout: Duration,
}

impl ServerOptions {
    pub fn new(model_id: impl Into<String>) -> ServerOptions {
        ServerOptions {
            model_id: model_id.into(),
            api_key: None,
            max_body: DEFAULT_MAX_BODY,
            shutdown_grace: Duration::from_secs(10),
            read_timeout: DEFAULT_READ_TIMEOUT,
        }
    }
}

/// Resolves the adapter part of a request's `model` field (`BASE:ADAPTER`, the part after the colon: one or
/// more `NAME[:SCALE]` joined by `+`) to the adapters it runs with.
pub type AdapterResolver = dyn Fn(&str) -> crate::Result<Vec<crate::backend::lora::ActiveAdapter>> + Send + Sync;

/// What every handler shares.
pub(crate) struct AppState {
    /// `None`: `BASE:ADAPTER` model names are refused.
    pub(crate) adapters: Option<Arc<AdapterResolver>>,
    pub(crate) scheduler: Arc<Scheduler>,
    pub(crate) tokenizer: Arc<Tokenizer>,
    pub(crate) opts: ServerOptions,
    pub(crate) http: metrics::HttpCounts,
    /// Unix time the server started (the model's `created`).
    pub(crate) started: u64,
    /// Responses so far, for their ids.
    pub(crate) served: AtomicU64,
}

/// The HTTP server over one scheduler.
pub struct Server {
    state: Arc<AppState>,
}

impl Server {
    pub fn new(scheduler: Scheduler, tokenizer: Arc<Tokenizer>, opts: ServerOptions) -> Server {
        let state = AppState {
            adapters: None,
            scheduler: Arc::new(scheduler),
            tokenizer,
            opts,
            http: metrics::HttpCounts::default(),
            started: unix_now(),
            served: AtomicU64::new(0),
        };
        Server { state: Arc::new(state) }
    }

    /// Lets requests name `BASE:ADAPTER` in their `model` field ([`AdapterResolver`]).
    pub fn with_adapters(mut self, resolver: Arc<AdapterResolver>) -> Server {
        Arc::get_mut(&mut self.state).expect("not shared before serving").adapters = Some(resolver);
        self
    }

    /// The routes, to serve with any listener (or to test without one).
    pub fn router(&self) -> Router {
        let s = self.state.clone();
        Router::new()
            .route("/health", get(handlers::health))
            .route("/metrics", get(handlers::metrics))
            .route("/v1/models", get(handlers::models))
            .route("/v1/models/{id}", get(handlers::model))
            .route("/v1/chat/completions", post(handlers::chat))
            .route("/v1/completions", post(handlers::completions))
            .fallback(handlers::not_found)
            .layer(axum::middleware::from_fn_with_state(s.clone(), gate))
            .with_state(s)
    }

    /// Serves on `listener` until `shutdown` completes; then takes no new connection, lets the requests in
    /// flight run for the grace ([`ServerOptions::shutdown_grace`]), cancels the rest (their streams end with
    /// an error event) and returns once the scheduler has stopped. A connection that has not sent a request's
    /// whole header within [`ServerOptions::read_timeout`] is closed (a body gets 408 in the handler), so
    /// clients that open connections and trickle bytes cannot hold them forever.
    pub async fn serve<F>(self, listener: tokio::net::TcpListener, shutdown: F) -> Result<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let grace = self.state.opts.shutdown_grace;
        let scheduler = self.state.scheduler.clone();
        let router = self.router();
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(self.state.opts.read_timeout);
        let connections = hyper_util::server::graceful::GracefulShutdown::new();
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            let stream = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of file descriptors, say: the connections in flight go on; try again shortly.
                        log::warn!("accepting a connection failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = &mut shutdown => break,
            };
            let _ = stream.set_nodelay(true);
            let service = hyper_util::service::TowerToHyperService::new(router.clone());
            let conn = http.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            let conn = connections.watch(conn);
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    log::debug!("a connection ended with an error: {e}");
                }
            });
        }
        drop(listener);
        log::info!("shutting down: requests in flight get {} s", grace.as_secs_f64());
        // The scheduler refuses new requests at once, and cancels what is left after the grace, which ends
        // the streams that keep connections open.
        let closing = tokio::task::spawn_blocking(move || scheduler.shutdown(grace));
        if tokio::time::timeout(grace + Duration::from_secs(1), connections.shutdown()).await.is_err() {
            log::warn!("connections still open {} s after the shutdown began: closing them", grace.as_secs());
        }
        let _ = closing.await;
        Ok(())
    }
}

/// Completes on Ctrl-C or (on Unix) SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Around every request: the API key (all but `/health`), OpenAI-shaped bodies for the errors the router
/// answers by itself (404, 405), and the count of each status for `/metrics`.
async fn gate(State(s): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    let response = match &s.opts.api_key {
        Some(key) if path != "/health" && !authorized(req.headers(), key) => ApiError::unauthorized().into_response(),
        _ => next.run(req).await,
    };
    let status = response.status();
    let response = if (status.is_client_error() || status.is_server_error())
        && response.extensions().get::<errors::Shaped>().is_none()
    {
        let (mut parts, _) = response.into_parts();
        let shaped = ApiError::for_status(status, method.as_str(), &path).into_response();
        parts.headers.remove(header::CONTENT_LENGTH);
        parts.headers.extend(shaped.headers().clone());
        Response::from_parts(parts, shaped.into_body())
    } else {
        response
    };
    s.http.count(status.as_u16());
    response
}

/// Whether the headers carry `Authorization: Bearer KEY`, compared in time that depends on the key's length
/// only.
fn authorized(headers: &HeaderMap, key: &str) -> bool {
    let Some(value) = headers.get(header::AUTHORIZATION).map(|v| v.as_bytes()) else { return false };
    let Some(given) = value.get(..7).filter(|p| p.eq_ignore_ascii_case(b"bearer ")).map(|_| &value[7..]) else {
        return false;
    };
    constant_time_eq(key.as_bytes(), given)
}

/// `want == given`, looking at every byte of `want` whatever `given` holds.
fn constant_time_eq(want: &[u8], given: &[u8]) -> bool {
    let mut diff = want.len() ^ given.len();
    for (i, &w) in want.iter().enumerate() {
        diff |= usize::from(w ^ given.get(i).copied().unwrap_or(!w));
    }
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_must_match_exactly() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::AUTHORIZATION, v.parse().unwrap());
            m
        };
        assert!(authorized(&h("Bearer sekret"), "sekret"));
        assert!(authorized(&h("bearer sekret"), "sekret"));
        for bad in ["Bearer sekre", "Bearer sekret2", "Bearer ", "sekret", "Basic sekret", "Bearer Sekret", "Bearer"] {
            assert!(!authorized(&h(bad), "sekret"), "{bad}");
        }
        assert!(!authorized(&HeaderMap::new(), "sekret"));
        assert!(constant_time_eq(b"", b""));
        assert!(!constant_time_eq(b"", b"x"));
    }
}
