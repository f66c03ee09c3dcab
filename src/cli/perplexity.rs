//! `omex perplexity`: llama-perplexity's measure over a text file; the last stdout line is `perplexity: X`.

use super::engine_args::EngineArgs;
use clap::Args;
use omex::runtime::perplexity::perplexity;
use omex::{Error, Result};
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct PerplexityArgs {
    pub model: PathBuf,
    /// The text to score
    #[arg(long, short = 'f')]
    pub file: PathBuf,
    /// Tokens per chunk
    #[arg(long = "ctx", default_value_t = 512)]
    pub chunk: usize,
    /// Print one JSON object on stdout (perplexity, per-chunk values, token counts) instead of the text line
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub engine: EngineArgs,
}

pub fn run(args: PerplexityArgs) -> Result<()> {
    let text = omex::files::read_regular_string(&args.file, omex::files::MAX_TEXT_FILE)
        .map_err(|e| Error::io(&args.file, e))?;
    let model = args.engine.load(&args.model)?;
    let mut engine = model.engine(&args.engine.options(Some(args.chunk)))?;
    args.engine.apply_adapters(&model, engine.as_mut())?;
    let tokens = model.tokenizer.encode(&text);
    eprintln!(
        "{}: {}, {} of {}",
        args.file.display(),
        super::count(tokens.len(), "token"),
        super::count(tokens.len() / args.chunk, "chunk"),
        args.chunk
    );
    let mut progress = |i: usize, n: usize, ppl: f64| eprintln!("[{i}/{n}] running perplexity {ppl:.4}");
    let p = perplexity(engine.as_mut(), &tokens, args.chunk, &mut progress)?;
    if args.json {
        outln!("{}", serde_json::to_string(&p).map_err(|e| Error::Usage(e.to_string()))?);
    } else {
        outln!("perplexity: {:.4}", p.perplexity);
    }
    Ok(())
}
