//! `omex tokenize DIR --text TEXT [--json]` prints token ids; `omex tokenize DIR --decode IDS` the text.

use clap::Args;
use omex::tokenizer::Tokenizer;
use omex::{Error, Result};
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct TokenizeArgs {
    /// The model directory (its tokenizer/ folder is used)
    pub model: PathBuf,
    /// Text to encode
    #[arg(long, conflicts_with = "decode", required_unless_present = "decode")]
    pub text: Option<String>,
    /// Token ids to decode, comma or space separated
    #[arg(long)]
    pub decode: Option<String>,
    /// Print only a JSON value on stdout (an array of ids, or the decoded string)
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: TokenizeArgs) -> Result<()> {
    let dir = args.model.join("tokenizer");
    let tok = Tokenizer::load(&dir).map_err(|e| Error::Tokenizer(e.to_string()))?;
    if let Some(text) = &args.text {
        let ids = tok.encode(text);
        if args.json {
            outln!("{}", serde_json::to_string(&ids).expect("ids serialize"));
        } else {
            outln!("{}", ids.iter().map(u32::to_string).collect::<Vec<_>>().join(" "));
            eprintln!("{}", super::count(ids.len(), "token"));
        }
        return Ok(());
    }
    let list = args.decode.as_deref().unwrap_or_default();
    let ids = list
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<u32>().map_err(|_| Error::Usage(format!("--decode: {s:?} is not a token id"))))
        .collect::<Result<Vec<u32>>>()?;
    let text = tok.decode_checked(&ids).map_err(|e| Error::Tokenizer(e.to_string()))?;
    if args.json {
        outln!("{}", serde_json::to_string(&text).expect("strings serialize"));
    } else {
        outln!("{text}");
    }
    Ok(())
}
