//! `omex validate DIR [--json]`: every problem of a model directory, then the warnings; non-zero exit when
//! there is a problem.

use clap::Args;
use omex::{Error, Result};
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct ValidateArgs {
    /// The model directory
    pub model: PathBuf,
    /// Print the report as one JSON object on stdout
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: ValidateArgs) -> Result<()> {
    let bar = super::progress(0, "checking sizes, checksums and values");
    let r = omex::validate::validate(&args.model);
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&r).map_err(|e| Error::Usage(e.to_string()))?);
    } else {
        for p in &r.problems {
            outln!("problem: {p}");
        }
        for w in &r.warnings {
            outln!("warning: {w}");
        }
        if r.ok {
            outln!(
                "{}: valid ({}, {} checked, {})",
                args.model.display(),
                super::count(r.tensors_checked, "tensor"),
                super::count(r.files_checked, "file"),
                super::count(r.warnings.len(), "warning")
            );
        }
    }
    if r.ok {
        Ok(())
    } else {
        Err(Error::invalid(&args.model, format!("{} found", super::count(r.problems.len(), "problem"))))
    }
}
