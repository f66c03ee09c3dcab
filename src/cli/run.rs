//! `omex run`: generate text from a prompt, streamed to stdout; timings to stderr (or one JSON object).

use super::engine_args::EngineArgs;
use clap::Args;
use omex::runtime::GenerateOptions;
use omex::sampling::SamplerOptions;
use omex::tokenizer::ChatMessage;
use omex::{Error, Result};
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

#[derive(Args, Debug)]
pub struct RunArgs {
    /// The model directory (made by `omex convert`)
    pub model: PathBuf,
    /// The prompt
    #[arg(long, short = 'p')]
    pub prompt: String,
    /// Tokens to generate at most
    #[arg(long, short = 'n', default_value_t = 128)]
    pub max_tokens: usize,
    /// Sampling temperature; 0 is greedy
    #[arg(long = "temp", default_value_t = 0.0)]
    pub temperature: f32,
    /// Sample only among the K most likely tokens; 0 keeps them all
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Nucleus sampling: keep the most likely tokens whose probabilities sum to P (0 < P <= 1; 1 keeps all)
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// Drop tokens less likely than P times the most likely one (0 <= P < 1; 0 keeps all)
    #[arg(long, default_value_t = 0.0)]
    pub min_p: f32,
    /// Divide the logits of tokens already in the context by this (> 0; 1 is off, 1.1 is a common choice)
    #[arg(long = "repeat-penalty", default_value_t = 1.0)]
    pub repetition_penalty: f32,
    /// Random seed of the sampler: the same seed, prompt and flags give the same text
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Wrap the prompt in the model's chat template as a user message
    #[arg(long)]
    pub chat: bool,
    /// A system message for --chat
    #[arg(long)]
    pub system: Option<String>,
    /// Stop when the output contains this string (repeatable)
    #[arg(long = "stop")]
    pub stop: Vec<String>,
    /// Keep generating past end-of-sequence tokens
    #[arg(long)]
    pub ignore_eos: bool,
    /// Drop the oldest prompt tokens when the prompt does not fit the context
    #[arg(long)]
    pub truncate: bool,
    /// KV cache length in tokens (default: the model's context, capped at 4096)
    #[arg(long)]
    pub ctx: Option<usize>,
    /// Print one JSON object on stdout instead of streaming text
    #[arg(long)]
    pub json: bool,
    /// Record GPU and host memory and the upload/compute timeline to this JSON file (draw it with
    /// `omex memory-trace`)
    #[arg(long, value_name = "TRACE.json")]
    pub memory_trace: Option<PathBuf>,
    #[command(flatten)]
    pub engine: EngineArgs,
}

/// Refuses sampling flags outside their domain before anything is loaded.
fn check_sampling(args: &RunArgs) -> Result<()> {
    let bad = |flag: &str, v: f32, domain: &str| Err(Error::Usage(format!("{flag} {v}: must be {domain}")));
    if !args.temperature.is_finite() || args.temperature < 0.0 {
        return bad("--temp", args.temperature, "a finite number >= 0 (0 is greedy)");
    }
    if !(args.top_p > 0.0 && args.top_p <= 1.0) {
        return bad("--top-p", args.top_p, "in (0, 1]");
    }
    if !(0.0..1.0).contains(&args.min_p) {
        return bad("--min-p", args.min_p, "in [0, 1)");
    }
    if !(args.repetition_penalty.is_finite() && args.repetition_penalty > 0.0) {
        return bad("--repeat-penalty", args.repetition_penalty, "a finite number > 0 (1 is off)");
    }
    Ok(())
}

pub fn run(args: RunArgs) -> Result<()> {
    check_sampling(&args)?;
    if args.system.is_some() && !args.chat {
        return Err(Error::Usage(
            "--system applies only with --chat (the system message goes into the chat template)".into(),
        ));
    }
    let t0 = Instant::now();
    let model = args.engine.load(&args.model)?;
    let mut opts = args.engine.options(args.ctx);
    opts.memory_trace = args.memory_trace.clone();
    let mut session = model.session(&opts)?;
    session.set_adapters(model.active_adapters(&args.engine.adapters)?)?;
    let load_ms = t0.elapsed().as_secs_f64() * 1e3;
    let engine = session.engine().describe();
    log::info!("engine: {engine}");

    let prompt = if args.chat {
        let mut messages = Vec::new();
        if let Some(system) = &args.system {
            messages.push(ChatMessage::system(system.as_str()));
        }
        messages.push(ChatMessage::user(args.prompt.as_str()));
        model.tokenizer.apply_chat_template(&messages, true).map_err(|e| Error::Tokenizer(e.to_string()))?
    } else {
        args.prompt.clone()
    };
    let opts = GenerateOptions {
        max_tokens: args.max_tokens,
        sampler: SamplerOptions {
            temperature: args.temperature,
            top_k: args.top_k,
            top_p: args.top_p,
            min_p: args.min_p,
            repetition_penalty: args.repetition_penalty,
            seed: args.seed,
            ..Default::default()
        },
        stop_strings: args.stop.clone(),
        ignore_eos: args.ignore_eos,
        truncate_prompt: args.truncate,
    };

    let cancelled = Arc::new(AtomicBool::new(false));
    let flag = cancelled.clone();
    // A second Ctrl-C while we wind down still kills the process (the handler only sets the flag once).
    let _ = ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
    });
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let json = args.json;
    let mut on_text = |piece: &str| {
        if !json {
            let _ = out.write_all(piece.as_bytes());
            let _ = out.flush();
        }
        !cancelled.load(Ordering::SeqCst)
    };
    let g = session.generate(&prompt, &opts, &mut on_text)?;
    let t = &g.timings;
    if json {
        let v = serde_json::json!({
            "engine": engine, "kv": args.engine.memory.kv.name(),
            "prompt_ids": g.prompt_ids, "output_ids": g.output_ids, "text": g.text,
            "stop": format!("{:?}", g.stop),
            "timings": {"load_ms": load_ms, "prompt_tokens": t.prompt_tokens, "prompt_tok_s": t.prompt_tok_s(),
                        "decode_tokens": t.decode_tokens, "decode_tok_s": t.decode_tok_s()},
        });
        writeln!(out, "{v}").map_err(|e| Error::io("stdout", e))?;
    } else {
        writeln!(out).map_err(|e| Error::io("stdout", e))?;
        eprintln!(
            "load {load_ms:.0} ms | prompt {}, {:.1} tok/s | decode {}, {:.1} tok/s | stop: {:?}",
            super::count(t.prompt_tokens, "token"),
            t.prompt_tok_s(),
            super::count(t.decode_tokens, "token"),
            t.decode_tok_s(),
            g.stop
        );
    }
    Ok(())
}
