//! `omex plan`: what a GPU memory budget means for a model: which weight units stay resident and which stream,
//! the bytes moved per token, and the speed the bandwidth model predicts from `omex profile`'s numbers.

use super::engine_args::MemoryArgs;
use clap::Args;
use omex::backend::gpu::{plan_memory, profile};
use omex::memory::planner::{predict, Prediction};
use omex::runtime::Model;
use omex::Result;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct PlanArgs {
    /// The model directory
    pub model: PathBuf,
    /// KV cache length in tokens (default: the model's context, capped at 4096)
    #[arg(long)]
    pub ctx: Option<usize>,
    /// Print one JSON object
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub memory: MemoryArgs,
}

fn mb(bytes: u64) -> String {
    format!("{:.2} MB", bytes as f64 / 1e6)
}

pub fn run(args: PlanArgs) -> Result<()> {
    let model = Model::load(&args.model)?;
    let opts = model.gpu_options(&args.memory.options(args.ctx))?;
    // No adapter is opened: the plan assumes bindings of up to 2 GiB (every desktop GPU's).
    let (_, memory) = plan_memory(&model.dir, &model.config, &opts, 2 << 30)?;
    let cached = profile::load_cached()?;
    let device = cached.as_ref().and_then(|m| m.gpu.clone());
    let prediction: Option<Prediction> =
        device.as_ref().map(|d| predict(&memory.plan, d, memory.dispatches_per_token, memory.max_batch));
    let p = &memory.plan;
    if args.json {
        let out = serde_json::json!({
            "budget_bytes": opts.budget.as_ref().map(|b| b.bytes),
            "budget_source": opts.budget.as_ref().map(|b| b.source.to_string()),
            "context_length": opts.context_length,
            "slots": p.slots,
            "slot_bytes": p.slot_bytes,
            "units": memory.units.iter().zip(&p.resident).map(|(u, r)| serde_json::json!({
                "name": u.file, "bytes": u.bytes, "resident": r, "moved_if_streamed": u.moved, "read_per_token": u.read,
            })).collect::<Vec<_>>(),
            "resident_bytes": p.resident_bytes,
            "kv_bytes": p.kv_bytes,
            "activation_bytes": p.activation_bytes,
            "total_bytes": p.total_bytes,
            "weight_bytes": p.weight_bytes,
            "read_bytes_per_token": p.read_bytes_per_token,
            "streamed_bytes_per_token": p.streamed_bytes_per_token,
            "max_batch": memory.max_batch,
            "dispatches_per_token": memory.dispatches_per_token,
            "profile": device,
            "prediction": prediction,
        });
        outln!("{}", serde_json::to_string_pretty(&out).expect("serializable"));
        return Ok(());
    }
    match &opts.budget {
        Some(b) => outln!("budget      {} ({})", mb(b.bytes), b.source),
        None => outln!("budget      none (--gpu-mem, OMEX_GPU_MEM or $OMEX_HOME/config.toml set one)"),
    }
    outln!("context     {} tokens\n", opts.context_length);
    outln!("{:<48} {:>12}  where", "unit", "bytes");
    for (u, r) in memory.units.iter().zip(&p.resident) {
        let place = match (r, u.moved) {
            (true, _) => "resident",
            (false, 0) => "host (rows gathered on the CPU)",
            (false, _) if u.splittable => "streamed in pieces",
            (false, _) => "streamed",
        };
        outln!("{:<48} {:>12}  {place}", u.file, mb(u.bytes));
    }
    outln!();
    outln!("resident weights  {}", mb(p.resident_bytes));
    outln!("upload slots      {} x {}", p.slots, mb(p.slot_bytes));
    outln!("KV cache          {}", mb(p.kv_bytes));
    outln!("activations etc.  {} (prefill chunks of {} tokens)", mb(p.activation_bytes), memory.max_batch);
    outln!("total             {}", mb(p.total_bytes));
    outln!("moved per token   {} (decode; once per chunk in prefill)", mb(p.streamed_bytes_per_token));
    let routed = match &model.config.moe {
        Some(m) => format!(": a block of experts counts its dense part and {} of its {} experts", m.top_k, m.experts),
        None => String::new(),
    };
    outln!("read per token    {} (decode's weight reads{routed})", mb(p.read_bytes_per_token));
    match (&prediction, &device) {
        (Some(pr), Some(d)) => {
            outln!(
                "\npredicted decode  {:.1} tok/s with overlap, {:.1} tok/s serial (compute {:.2} ms, upload {:.2} ms a token)",
                pr.decode_tok_s, pr.decode_tok_s_serial, pr.compute_ms_per_token, pr.upload_ms_per_token
            );
            if let Some(bound) = pr.prefill_tok_s_upload_bound {
                outln!("prefill           at most {bound:.0} tok/s (uploads of {}-token chunks)", memory.max_batch);
            }
            outln!(
                "from the profile of {}: upload {:.2} GB/s, matvec {:.0} GB/s, {:.1} us a dispatch",
                d.adapter,
                d.upload_gbs,
                d.matvec_gbs,
                d.dispatch_us
            );
        }
        _ => outln!("\nno prediction: run `omex profile` once to measure this machine's bandwidths"),
    }
    Ok(())
}
