//! `omex convert INPUT -o OUT.omex [--quant keep|f16|int8|int4|ternary]`: a GGUF file or a Hugging Face
//! directory to an omex model directory. A progress bar when stdout is a terminal; a summary at the end.

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use omex::format::metadata::human_bytes;
use omex::import::{convert, Event, Options};
use omex::quant::Target;
use omex::Result;
use std::io::IsTerminal;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct ConvertArgs {
    /// A .gguf file, a Hugging Face model directory (config.json + safetensors), or a .safetensors file in one
    pub input: PathBuf,
    /// The model directory to write (e.g. model.omex)
    #[arg(long, short = 'o')]
    pub output: PathBuf,
    /// keep: repack the source's blocks losslessly where omex has the layout; or quantize every matrix to
    /// f16, int8 (absmax), int4 (min-max) or ternary (absmean)
    #[arg(long, short = 'q', default_value = "keep")]
    pub quant: Target,
    /// Replace OUTPUT if it exists
    #[arg(long)]
    pub force: bool,
    /// The model name written to metadata.json (default: the source's)
    #[arg(long)]
    pub name: Option<String>,
}

pub fn run(args: ConvertArgs) -> Result<()> {
    let opts = Options { target: args.quant, force: args.force, name: args.name };
    let bar = std::io::stdout().is_terminal().then(|| {
        let b = ProgressBar::new(0);
        b.set_style(
            ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} {msg}")
                .expect("valid template"),
        );
        b
    });
    let mut progress = |e: Event| {
        if let Some(b) = &bar {
            match e {
                Event::Begin { tensors } => b.set_length(tensors as u64),
                Event::Tensor { name } => {
                    b.set_message(name.to_string());
                    b.inc(1);
                }
                Event::Finishing => b.set_message("checksums and metadata"),
            }
        }
    };
    let result = convert(&args.input, &args.output, &opts, &mut progress);
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    let s = result?;
    for w in &s.warnings {
        eprintln!("warning: {w}");
    }
    outln!("converted {} ({}) -> {} with --quant {}", args.input.display(), s.source_format, s.out.display(), s.target);
    outln!("  tensors     {} ({} parameters)", s.tensors, s.parameters);
    for (dtype, (n, bytes)) in &s.by_dtype {
        outln!("  {dtype:<11} {n:>4} tensors, {}", human_bytes(*bytes));
    }
    outln!("  weights     {} ({} bytes)", human_bytes(s.weight_bytes), s.weight_bytes);
    outln!("  total       {} ({} bytes)", human_bytes(s.total_bytes), s.total_bytes);
    outln!("  time        {:.2} s", s.seconds);
    Ok(())
}
