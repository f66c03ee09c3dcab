//! `omex trace MODEL -p PROMPT -o trace.json`: a per-op timeline of one prompt and a few decode steps in the
//! Chrome trace-event format (see `omex::runtime::trace`); open it in https://ui.perfetto.dev or chrome://tracing.

use super::engine_args::EngineArgs;
use clap::Args;
use omex::tokenizer::ChatMessage;
use omex::{Error, Result};
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct TraceArgs {
    /// The model directory
    pub model: PathBuf,
    /// The prompt
    #[arg(long, short = 'p')]
    pub prompt: String,
    /// The trace file to write
    #[arg(long, short = 'o', value_name = "TRACE.json")]
    pub output: PathBuf,
    /// Greedy decode steps traced after the prompt
    #[arg(long, short = 'n', default_value_t = 4)]
    pub decode: usize,
    /// Wrap the prompt in the model's chat template as a user message
    #[arg(long)]
    pub chat: bool,
    /// KV cache length (default: the model's context, capped at 4096)
    #[arg(long)]
    pub ctx: Option<usize>,
    /// Replace OUTPUT if it exists
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub engine: EngineArgs,
}

pub fn run(args: TraceArgs) -> Result<()> {
    if args.output.exists() && !args.force {
        return Err(Error::Usage(format!("{}: exists; pass --force to replace it", args.output.display())));
    }
    let model = args.engine.load(&args.model)?;
    let mut engine = model.engine(&args.engine.options(args.ctx))?;
    let text = if args.chat {
        model
            .tokenizer
            .apply_chat_template(&[ChatMessage::user(args.prompt.as_str())], true)
            .map_err(|e| Error::Tokenizer(e.to_string()))?
    } else {
        args.prompt.clone()
    };
    let ids = model.tokenizer.encode_with_specials(&text);
    let trace = omex::runtime::trace::record(engine.as_mut(), &ids, args.decode)?;
    let json = omex::runtime::trace::chrome_json(&trace, &engine.describe());
    let bytes = serde_json::to_vec(&json).map_err(|e| Error::Usage(e.to_string()))?;
    std::fs::write(&args.output, bytes).map_err(|e| Error::io(&args.output, e))?;
    for (name, _, dur, tokens) in &trace.passes {
        outln!("{name:<10} {tokens:>5} tokens {:>9.2} ms", dur / 1e3);
    }
    outln!(
        "wrote {} ({} ops; open it in https://ui.perfetto.dev or chrome://tracing)",
        args.output.display(),
        trace.ops.len()
    );
    Ok(())
}
