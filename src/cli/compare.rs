//! `omex compare A B [-f TEXT] [--json]`: two models on the same text: per-position logit differences, top-1
//! agreement, perplexity and speed side by side (see `omex::runtime::compare`).

use super::engine_args::EngineArgs;
use clap::Args;
use omex::{Error, Result};
use std::path::PathBuf;

/// The text compared when no file is given.
const DEFAULT_TEXT: &str = "The history of the bicycle begins in the early nineteenth century. The first \
machines had no pedals: riders pushed them along with their feet. Pedals on the front wheel came in the 1860s, \
and by the 1890s the safety bicycle, with two wheels of the same size and a chain drive, had made cycling \
popular across Europe and America. Today bicycles are used for transport, sport and leisure in every country.";

#[derive(Args, Debug)]
pub struct CompareArgs {
    /// The first model directory
    pub a: PathBuf,
    /// The second model directory
    pub b: PathBuf,
    /// A UTF-8 text file to compare on (default: a built-in paragraph)
    #[arg(long, short = 'f', value_name = "TEXT")]
    pub file: Option<PathBuf>,
    /// Greedy decode steps timed after the text
    #[arg(long, short = 'n', default_value_t = 32)]
    pub decode: usize,
    /// KV cache length (default: the models' context, capped at 4096); the text is cut to fit it
    #[arg(long)]
    pub ctx: Option<usize>,
    /// Print one JSON object (with every position's numbers) instead of the table
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub engine: EngineArgs,
}

/// Largest text file read.
const MAX_TEXT_BYTES: u64 = 16 << 20;

pub fn run(args: CompareArgs) -> Result<()> {
    let text = match &args.file {
        Some(f) => omex::files::read_regular_string(f, MAX_TEXT_BYTES).map_err(|e| Error::io(f, e))?,
        None => DEFAULT_TEXT.to_string(),
    };
    let (ma, mb) = (args.engine.load(&args.a)?, args.engine.load(&args.b)?);
    let ids = ma.tokenizer.encode_with_specials(&text);
    if mb.tokenizer.encode_with_specials(&text) != ids {
        return Err(Error::Usage(format!(
            "{} and {} tokenize the text differently: compare needs models with the same tokenizer",
            args.a.display(),
            args.b.display()
        )));
    }
    let opts = args.engine.options(args.ctx);
    let (mut ea, mut eb) = (ma.engine(&opts)?, mb.engine(&opts)?);
    let room = ea.context_length().min(eb.context_length()).saturating_sub(args.decode).max(2);
    let ids = &ids[..ids.len().min(room)];
    let c = omex::runtime::compare::compare(ea.as_mut(), eb.as_mut(), ids, args.decode)?;
    if args.json {
        let v = serde_json::json!({
            "a": {"model": args.a, "engine": ea.describe()}, "b": {"model": args.b, "engine": eb.describe()},
            "comparison": c,
        });
        outln!("{v}");
        return Ok(());
    }
    outln!("A: {} ({})", args.a.display(), ea.describe());
    outln!("B: {} ({})", args.b.display(), eb.describe());
    outln!("{} tokens compared", c.tokens);
    outln!(
        "logits  max |A-B| {:.4}   mean |A-B| {:.5}   top-1 agreement {:.1}%",
        c.max_abs_diff,
        c.mean_abs_diff,
        100.0 * c.top1_agreement
    );
    outln!("{:<16}{:>14}{:>14}", "", "A", "B");
    outln!("{:<16}{:>14.3}{:>14.3}", "perplexity", c.a.perplexity, c.b.perplexity);
    outln!("{:<16}{:>14.1}{:>14.1}", "prefill tok/s", c.a.prefill_tok_s, c.b.prefill_tok_s);
    outln!("{:<16}{:>14.1}{:>14.1}", "decode tok/s", c.a.decode_tok_s, c.b.decode_tok_s);
    Ok(())
}
