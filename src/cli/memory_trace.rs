//! `omex memory-trace TRACE.json [-o OUT.svg]`: draws a memory trace recorded with `omex run --memory-trace`
//! (uploads per slot, compute, GPU memory and host RSS over time) as an SVG.

mod svg;

use clap::Args;
use omex::memory::trace::MemoryTrace;
use omex::{Error, Result};
use std::path::PathBuf;
use svg::render_svg;

#[derive(Args, Debug)]
pub struct MemoryTraceArgs {
    /// The trace `omex run --memory-trace` wrote (JSON)
    pub trace: PathBuf,
    /// Where to write the SVG (default: the trace's path with the extension .svg)
    #[arg(short, long)]
    pub output: Option<PathBuf>,
}

pub fn run(args: MemoryTraceArgs) -> Result<()> {
    let trace = MemoryTrace::load(&args.trace)?;
    let out = args.output.unwrap_or_else(|| args.trace.with_extension("svg"));
    if out == args.trace {
        return Err(Error::Usage(format!("{}: the SVG would overwrite the trace; pass -o OUT.svg", out.display())));
    }
    std::fs::write(&out, render_svg(&trace)).map_err(|e| Error::io(&out, e))?;
    outln!(
        "{}: {} spans, {} memory samples, {} units",
        out.display(),
        trace.spans.len(),
        trace.memory.len(),
        trace.units.len()
    );
    Ok(())
}
