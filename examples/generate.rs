//! Generate text with omex in a few lines: `cargo run --release --example generate -- MODEL.omex "prompt"`.

use omex::runtime::{EngineOptions, GenerateOptions, Model};
use std::io::Write;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(dir), Some(prompt)) = (args.next(), args.next()) else {
        return Err("usage: generate MODEL.omex PROMPT".into());
    };
    let model = Model::load(&dir)?;
    let mut session = model.session(&EngineOptions::default())?;
    let opts = GenerateOptions { max_tokens: 64, ..Default::default() };
    let out = session.generate(&prompt, &opts, &mut |piece| {
        print!("{piece}");
        std::io::stdout().flush().is_ok()
    })?;
    eprintln!("\n{} tokens, {:.1} tok/s", out.output_ids.len(), out.timings.decode_tok_s());
    Ok(())
}
