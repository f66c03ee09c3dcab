//! `omex exec CONTAINER.json [--model DIR] [--out RUN_DIR]`: runs an execution container (see
//! `omex::container`); a rerun into the same run directory skips the nodes whose inputs and output are unchanged.

use clap::Args;
use omex::runtime::BackendChoice;
use omex::{Error, Result};
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct ExecArgs {
    /// The container file (the seeds' execution container format)
    pub container: PathBuf,
    /// The model directory its model_inference nodes run
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// The run directory: outputs and manifest.json (default: CONTAINER_ID.run beside the container)
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// The folder file_reader nodes read under (default: the container's folder)
    #[arg(long)]
    pub root: Option<PathBuf>,
    /// Where inference nodes run (a node with executor local_cpu always runs on the CPU)
    #[arg(long, default_value = "auto")]
    pub backend: BackendChoice,
    /// KV cache length of inference nodes (default: the model's context, capped at 4096)
    #[arg(long)]
    pub ctx: Option<usize>,
    /// Nodes run at once at most (default: resources.max_compute_units, at most 4)
    #[arg(long)]
    pub parallel: Option<usize>,
    /// A program run as `HOOK NODE_ID GUIDANCE` for nodes with guidance; its output joins the node's prompt.
    /// Default: OMEX_GUIDANCE_HOOK
    #[arg(long, value_name = "PROGRAM")]
    pub guidance_hook: Option<PathBuf>,
    /// Print the manifest as JSON on stdout
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: ExecArgs) -> Result<()> {
    if let Some(p) = args.parallel {
        if !(1..=64).contains(&p) {
            return Err(Error::Usage(format!("--parallel {p}: must be 1 to 64")));
        }
    }
    let plan = omex::container::load(&args.container, args.root.as_deref())?;
    let out = args.out.clone().unwrap_or_else(|| {
        let dir = args.container.parent().map(PathBuf::from).unwrap_or_default();
        dir.join(format!("{}.run", plan.container.container_id))
    });
    let hook = args.guidance_hook.clone().or_else(|| std::env::var_os("OMEX_GUIDANCE_HOOK").map(PathBuf::from));
    let opts = omex::container::RunOptions {
        model: args.model.clone(),
        out: out.clone(),
        backend: args.backend,
        ctx: args.ctx,
        parallel: args.parallel,
        guidance_hook: hook,
    };
    let m = omex::container::run(&plan, &opts, &|line| eprintln!("{line}"))?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&m).map_err(|e| Error::Usage(e.to_string()))?);
    } else {
        for (id, r) in &m.nodes {
            outln!(
                "{id:<20} {:<10} {:>8.0} ms  {}",
                r.status,
                r.duration_ms,
                r.outputs.keys().cloned().collect::<Vec<_>>().join(", ")
            );
        }
        outln!("{}: {} (manifest: {})", m.container_id, m.status, out.join(omex::container::MANIFEST).display());
    }
    if m.status == "succeeded" {
        Ok(())
    } else {
        Err(Error::Usage(format!("container {} failed: see {}", m.container_id, out.join("manifest.json").display())))
    }
}
