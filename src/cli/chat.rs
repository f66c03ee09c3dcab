//! `omex chat MODEL [--agent NAME] [--system ..]`: an interactive conversation on the terminal (the loop is
//! `omex::agent::chat`); Ctrl-C stops the current answer, Ctrl-D leaves.

use super::engine_args::EngineArgs;
use clap::Args;
use omex::agent::chat::{Chat, ChatConfig};
use omex::runtime::GenerateOptions;
use omex::sampling::SamplerOptions;
use omex::{Error, Result};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[derive(Args, Debug)]
pub struct ChatArgs {
    /// The model directory (made by `omex convert`)
    pub model: PathBuf,
    /// Chat as the agent NAME of the model's agents/ (see `omex agent list`)
    #[arg(long)]
    pub agent: Option<String>,
    /// The system message (after the agent's own instructions, if any)
    #[arg(long)]
    pub system: Option<String>,
    /// The folder the agent's file_reader tool may read (required when the agent has one)
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// Tokens of conversation kept (default: the agent's context_window_size/token_limit, else the context)
    #[arg(long)]
    pub window: Option<usize>,
    /// Tokens of one answer at most (default: the agent's response_format.max_length, else 512)
    #[arg(long, short = 'n')]
    pub max_tokens: Option<usize>,
    /// Sampling temperature; 0 is greedy
    #[arg(long = "temp", default_value_t = 0.0)]
    pub temperature: f32,
    /// Nucleus sampling: keep the most likely tokens whose probabilities sum to P
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// Divide the logits of tokens already in the context by this (1 is off)
    #[arg(long = "repeat-penalty", default_value_t = 1.0)]
    pub repetition_penalty: f32,
    /// Random seed of the sampler
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// KV cache length in tokens (default: the model's context, capped at 4096)
    #[arg(long)]
    pub ctx: Option<usize>,
    #[command(flatten)]
    pub engine: EngineArgs,
}

pub fn run(args: ChatArgs) -> Result<()> {
    let sampler = SamplerOptions {
        temperature: args.temperature,
        top_p: args.top_p,
        repetition_penalty: args.repetition_penalty,
        seed: args.seed,
        ..Default::default()
    };
    sampler.check().map_err(Error::Usage)?;
    let agent = args.agent.as_deref().map(|name| omex::agent::find(&args.model, name)).transpose()?;
    if agent.is_none() && args.root.is_some() {
        return Err(Error::Usage("--root names the folder of an agent's file tool: add --agent NAME".into()));
    }
    let tools = match &agent {
        Some(a) => omex::agent::tools(a, args.root.as_deref())?,
        None => Vec::new(),
    };
    let system = match &agent {
        Some(a) => Some(omex::agent::system_prompt(a, args.system.as_deref(), &tools)).filter(|s| !s.is_empty()),
        None => args.system.clone(),
    };
    let model = args.engine.load(&args.model)?;
    if model.tokenizer.chat_template().is_none() {
        return Err(Error::Usage(format!("{}: the model has no chat template", args.model.display())));
    }
    let mut session = model.session(&args.engine.options(args.ctx))?;
    log::info!("engine: {}", session.engine().describe());
    let ctx = session.context_length();
    let window = args.window.or(agent.as_ref().and_then(|a| a.window())).unwrap_or(ctx);
    if window > ctx {
        return Err(Error::Usage(format!(
            "a chat window of {window} tokens does not fit the context of {ctx}: raise --ctx or lower the window"
        )));
    }
    let max_tokens = args
        .max_tokens
        .or(agent.as_ref().and_then(|a| a.response_format.as_ref()?.max_length.map(|n| n as usize)))
        .unwrap_or(512);
    let generate = GenerateOptions { max_tokens, sampler, ..Default::default() };
    let mut chat = Chat::new(session, ChatConfig { system, window, generate, tools })?;

    let cancel = Arc::new(AtomicBool::new(false));
    let flag = cancel.clone();
    ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst))
        .map_err(|e| Error::Usage(format!("cannot catch Ctrl-C: {e}")))?;
    if std::io::stdin().is_terminal() {
        eprintln!(
            "omex chat: {} ({}; window {window} tokens). /help for commands, Ctrl-C stops an answer, Ctrl-D leaves.",
            args.model.display(),
            agent.as_ref().map_or("no agent".to_string(), |a| format!("agent {}", a.agent_id))
        );
    }
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    chat.run(&mut input, &mut out, &cancel)
}
