//! `omex serve`: the OpenAI-compatible HTTP server (`omex::server`) over a continuous-batching scheduler.
//! Prints one line, `omex serve: listening on http://HOST:PORT`, once it listens; logs go to stderr. SIGTERM or
//! Ctrl-C stops taking requests, gives those in flight `--shutdown-grace` seconds, and exits 0.

use super::engine_args::EngineArgs;
use clap::Args;
use omex::runtime::scheduler::{Scheduler, SchedulerOptions};
use omex::runtime::{BackendChoice, EngineOptions, Model};
use omex::server::{Server, ServerOptions};
use omex::{Error, Result};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// KV cache positions over all sequences at most (2^26: 64 sequences of the format's largest context).
const MAX_KV_TOKENS: usize = 1 << 26;

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// The model directory (made by `omex convert`)
    pub model: PathBuf,
    /// Address to listen on (loopback by default; 0.0.0.0 listens on every interface)
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on; 0 picks a free one (the listening line names it)
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Require `Authorization: Bearer KEY` on every endpoint but /health. Default: $OMEX_API_KEY, else none
    #[arg(long, value_name = "KEY")]
    pub api_key: Option<String>,
    /// Sequences decoded together at most (1 to 256)
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub parallel: u32,
    /// Tokens of one sequence's context: prompt plus output (default: the model's context, capped at 4096)
    #[arg(long)]
    pub ctx: Option<usize>,
    /// KV cache positions shared by all sequences (default: --parallel times --ctx); fewer makes sequences
    /// wait or be computed again when the cache runs out
    #[arg(long)]
    pub kv_tokens: Option<usize>,
    /// Requests waiting for a place at most; more get 429 (1 to 100000)
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub queue: u32,
    /// Request bodies larger than this many bytes get 413 (64 to 268435456)
    #[arg(long, value_name = "BYTES", default_value_t = omex::server::DEFAULT_MAX_BODY as u64,
          value_parser = clap::value_parser!(u64).range(64..=(1 << 28)))]
    pub max_body: u64,
    /// Seconds requests in flight may run on after SIGTERM or Ctrl-C before they are cancelled (0 to 3600)
    #[arg(long, value_name = "SECS", default_value_t = 10, value_parser = clap::value_parser!(u32).range(0..=3600))]
    pub shutdown_grace: u32,
    /// Seconds a request's header, then its body, may take to arrive; a slower connection is closed (header)
    /// or answered 408 (body) (1 to 3600)
    #[arg(long, value_name = "SECS", default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=3600))]
    pub read_timeout: u32,
    /// The model's name in requests and /v1/models (default: the directory's name without `.omex`)
    #[arg(long, value_name = "ID")]
    pub model_id: Option<String>,
    #[command(flatten)]
    pub engine: EngineArgs,
}

/// The directory's file name without a trailing `.omex`: `/x/smollm2.omex` is `smollm2`.
fn default_model_id(path: &Path) -> String {
    let abs = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let name = abs.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into());
    match name.strip_suffix(".omex") {
        Some(stem) if !stem.is_empty() => stem.to_string(),
        _ => name,
    }
}

/// The API key: the flag, else a non-empty $OMEX_API_KEY.
fn api_key(flag: Option<String>) -> Result<Option<String>> {
    match flag {
        Some(k) if k.is_empty() => Err(Error::Usage("--api-key is empty: give a key, or leave the flag out".into())),
        Some(k) => Ok(Some(k)),
        None => Ok(std::env::var("OMEX_API_KEY").ok().filter(|k| !k.is_empty())),
    }
}

/// KV positions over all sequences: the flag or `parallel * ctx`, at least one context.
fn kv_tokens(flag: Option<usize>, parallel: usize, ctx: usize) -> Result<usize> {
    let n = match flag {
        Some(n) => n,
        None => parallel.checked_mul(ctx).filter(|&n| n <= MAX_KV_TOKENS).ok_or_else(|| {
            Error::Usage(format!("--parallel {parallel} times a context of {ctx} is over {MAX_KV_TOKENS} KV positions: lower one, or give --kv-tokens"))
        })?,
    };
    if n < ctx {
        return Err(Error::Usage(format!("--kv-tokens {n}: must hold at least one context ({ctx} tokens)")));
    }
    if n > MAX_KV_TOKENS {
        return Err(Error::Usage(format!("--kv-tokens {n}: at most {MAX_KV_TOKENS}")));
    }
    Ok(n)
}

/// The engine the scheduler runs. An engine that cannot batch sequences (one without a paged cache): with
/// `--backend auto` the model is served on the CPU instead.
fn batching_engine(model: &Model, opts: &EngineOptions) -> Result<Box<dyn omex::backend::Engine>> {
    let engine = model.engine(opts)?;
    if engine.kv_blocks().is_none() && opts.backend == BackendChoice::Auto {
        log::warn!("{} cannot batch sequences: serving on the CPU", engine.describe());
        drop(engine);
        return model.engine(&EngineOptions { backend: BackendChoice::Cpu, ..opts.clone() });
    }
    Ok(engine)
}

pub fn run(args: ServeArgs) -> Result<()> {
    if !args.engine.adapters.is_empty() {
        return Err(Error::Usage(
            "--adapter: omex serve selects adapters per request: name the model `BASE:ADAPTER` in the request".into(),
        ));
    }
    // main() restores SIGPIPE's default (die) for `omex ... | head`; a server must instead see a write to a
    // closed connection as an error (hyper writes with writev, which raises SIGPIPE).
    #[cfg(unix)]
    // SAFETY: SIG_IGN is a valid disposition; changing it does not touch memory other threads use.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
    let api_key = api_key(args.api_key)?;
    let model_id = args.model_id.unwrap_or_else(|| default_model_id(&args.model));
    if model_id.is_empty() || model_id.len() > 256 {
        return Err(Error::Usage("--model-id must have 1 to 256 bytes".into()));
    }
    let model = Arc::new(args.engine.load(&args.model)?);
    let mut opts = args.engine.options(args.ctx);
    let ctx = model.context_length(&opts)?;
    let parallel = args.parallel as usize;
    opts.kv_tokens = kv_tokens(args.kv_tokens, parallel, ctx)?;
    opts.max_sequences = parallel;
    let sched_opts = SchedulerOptions { parallel, queue: args.queue as usize, ..Default::default() };
    let tokenizer = model.tokenizer.clone();
    let (m, o) = (model.clone(), opts.clone());
    let scheduler = Scheduler::start(move || batching_engine(&m, &o), tokenizer.clone(), sched_opts)?;
    eprintln!(
        "omex serve: `{model_id}`, {parallel} sequences at once, context {}, {} KV positions, queue {}",
        scheduler.context_length(),
        opts.kv_tokens,
        args.queue
    );
    let server_opts = ServerOptions {
        model_id,
        api_key,
        max_body: args.max_body as usize,
        shutdown_grace: Duration::from_secs(args.shutdown_grace as u64),
        read_timeout: Duration::from_secs(args.read_timeout as u64),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("omex-http")
        .enable_all()
        .build()
        .map_err(|e| Error::io("the async runtime", e))?;
    let (host, port) = (args.host, args.port);
    let result = runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind((host.as_str(), port))
            .await
            .map_err(|e| Error::io(format!("{host}:{port}"), e))?;
        let addr = listener.local_addr().map_err(|e| Error::io(format!("{host}:{port}"), e))?;
        outln!("omex serve: listening on http://{addr}");
        let shutdown = async {
            omex::server::shutdown_signal().await;
            eprintln!("omex serve: shutting down (a second signal exits at once)");
            tokio::spawn(async {
                omex::server::shutdown_signal().await;
                std::process::exit(130);
            });
        };
        let resolver_model = model.clone();
        let resolver: Arc<omex::server::AdapterResolver> = Arc::new(move |spec: &str| {
            let specs: Vec<String> = spec.split('+').map(str::to_string).collect();
            resolver_model.active_adapters(&specs)
        });
        Server::new(scheduler, tokenizer, server_opts).with_adapters(resolver).serve(listener, shutdown).await
    });
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_model_id_is_the_directory_name_without_omex() {
        assert_eq!(default_model_id(Path::new("/nowhere/x/smollm2.omex")), "smollm2");
        assert_eq!(default_model_id(Path::new("/nowhere/x/qwen05")), "qwen05");
        assert_eq!(default_model_id(Path::new("/nowhere/.omex")), ".omex");
    }

    #[test]
    fn kv_tokens_are_bounded() {
        assert_eq!(kv_tokens(None, 4, 512).unwrap(), 2048);
        assert_eq!(kv_tokens(Some(600), 4, 512).unwrap(), 600);
        assert!(kv_tokens(Some(100), 4, 512).is_err());
        assert!(kv_tokens(Some(usize::MAX), 4, 512).is_err());
        assert!(kv_tokens(None, 256, 1 << 22).is_err());
    }
}
