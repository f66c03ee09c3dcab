//! `omex optimize MODEL`: times each decode matvec kernel this GPU adapter can run on every distinct linear op
//! of the model and writes the fastest per op into `optimization/<adapter>.json` in the model directory, which
//! the GPU engine then uses on this adapter (see `omex::backend::gpu::tuning`).

use super::engine_args::EngineArgs;
use clap::Args;
use omex::backend::gpu::{tuning, DeviceOptions, GpuContext, GpuEngine};
use omex::{Error, Result};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Args, Debug)]
pub struct OptimizeArgs {
    /// The model directory
    pub model: PathBuf,
    /// Launches of each kernel per measurement (after one warm-up)
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub reps: u32,
    #[command(flatten)]
    pub engine: EngineArgs,
}

pub fn run(args: OptimizeArgs) -> Result<()> {
    let model = args.engine.load(&args.model)?;
    let mut opts = model.gpu_options(&args.engine.options(Some(128.min(model.config.context_length as usize))))?;
    // Decode products are what is measured: small prefill buffers do.
    opts.max_batch = 16;
    let ctx = Arc::new(GpuContext::open_blocking(&DeviceOptions::default())?);
    let path = tuning::profile_path(&model.dir, &ctx.gpu);
    let mut engine = GpuEngine::load_blocking(ctx.clone(), &model.dir, &model.config, opts)?;
    let profile = engine.autotune(&model.dir, args.reps)?;
    outln!("{} ({}), {} activations", profile.adapter, profile.driver, profile.activations);
    outln!("{:<56} {:>6} {:>16} {:>16}", "op (layout, rows x cols)", "blocks", "default", "fastest");
    for (key, t) in &profile.ops {
        let us = |k: &str| t.us.get(k).copied().unwrap_or(f64::NAN);
        outln!(
            "{key:<56} {:>6} {:>16} {:>16}",
            t.blocks,
            format!("{} {:.1} us", t.default, us(&t.default)),
            format!("{} {:.1} us", t.kernel, us(&t.kernel))
        );
    }
    let (default, tuned) = profile.gain_us();
    outln!(
        "a decode step's products: {:.0} us with the defaults, {:.0} us tuned ({:+.1}%)",
        default,
        tuned,
        100.0 * (tuned - default) / default.max(1e-9)
    );
    let dir = path.parent().expect("optimization/ in the model directory");
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let bytes = serde_json::to_vec_pretty(&profile).map_err(|e| Error::Usage(e.to_string()))?;
    std::fs::write(&path, bytes).map_err(|e| Error::io(&path, e))?;
    outln!("wrote {} (the GPU engine uses it on this adapter)", path.display());
    Ok(())
}
