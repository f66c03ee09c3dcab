//! Running a checked [`Plan`]: nodes start once their dependencies succeeded, up to `parallel` at a time and
//! within `resources.max_memory_mb` (the sum of running nodes' `memory_allocation`); each writes its one
//! output into the run directory, and `manifest.json` there records every node's status, times, attempts,
//! fingerprint and output hashes after each node ends, so a run that stops can be resumed.
//!
//! A node's fingerprint hashes its definition, the execution config, the input data, the model's
//! `metadata.json` (inference) and the bytes of everything it reads (earlier outputs, tool files). A rerun
//! skips a node whose fingerprint matches the manifest's and whose output is still there with the recorded
//! sha256; a changed input runs the node again, and so every node downstream whose input then changes.
//!
//! Memory: on the CPU an inference node's `memory_allocation` bounds its KV cache (weights are mapped
//! files, shared and not counted); on the GPU it is the engine's memory budget (`--gpu-mem`), beyond which
//! weights stream. A node over its allocation fails with an out-of-memory error; with
//! `memory_pressure_strategy: dynamic_precision_reduction` it is retried with int8 activations and an f16
//! KV cache and half the context each time, while the prompt and answer still fit.

use super::manifest::{manifest_json, not_run, now, open_run_dir, write_atomic, Manifest, NodeRecord, MANIFEST};
use super::node::Ctx;
use super::spec::Plan;
use crate::error::{Error, Result};
use crate::format::checksum::sha256_bytes;
use crate::runtime::{BackendChoice, Model};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    pub model: Option<PathBuf>,
    pub out: PathBuf,
    pub backend: BackendChoice,
    /// Context of inference nodes (`None`: the model's default).
    pub ctx: Option<usize>,
    /// Nodes run at once at most (`None`: from `resources.max_compute_units`, at most 4).
    pub parallel: Option<usize>,
    /// A program run as `HOOK NODE_ID GUIDANCE` for nodes with `guidance`; its output joins the prompt.
    pub guidance_hook: Option<PathBuf>,
}

/// What one node's worker sends back.
struct Done {
    node: usize,
    record: NodeRecord,
}

/// Runs `plan`, writing outputs and the manifest into `opts.out`; `log` gets one line per event.
pub fn run(plan: &Plan, opts: &RunOptions, log: &(dyn Fn(&str) + Sync)) -> Result<Manifest> {
    let c = &plan.container;
    let model = match (&opts.model, plan.has_inference()) {
        (Some(dir), true) => Some(Model::load(dir)?),
        (None, true) => {
            return Err(Error::Usage(format!(
                "{}: the container has model_inference nodes: give the model with --model DIR{}",
                plan.path.display(),
                c.model_reference.as_ref().map_or(String::new(), |m| format!(" (it names {:?})", m.model_id))
            )))
        }
        _ => None,
    };
    let model_hash = match &opts.model {
        Some(dir) if model.is_some() => {
            let p = dir.join(crate::format::metadata::METADATA_FILE);
            sha256_bytes(&crate::files::read_regular(&p, 64 << 20).map_err(|e| Error::io(&p, e))?)
        }
        _ => String::new(),
    };
    let previous = open_run_dir(&opts.out)?;
    let container_bytes = serde_json::to_vec(c).map_err(|e| Error::Usage(e.to_string()))?;
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let units = c.resources.max_compute_units.map_or(cores, |u| u as usize).max(1);
    let parallel = opts.parallel.unwrap_or(units.min(4)).clamp(1, 64);
    let threads = (units / parallel).max(1);
    let mem_cap = c.resources.max_memory_mb.map(|m| m << 20);
    let deadline = c.resources.timeout_seconds.map(|t| Instant::now() + Duration::from_secs(t));
    for n in &plan.nodes {
        if n.spec.model_config.is_some() {
            log(&format!("info: node {}: model_config ignored (omex runs the whole model)", n.spec.id));
        }
        if let Some(g) = &n.spec.guidance {
            if opts.guidance_hook.is_none() {
                log(&format!(
                    "info: node {}: guidance {g:?} ignored (no guidance hook: --guidance-hook or OMEX_GUIDANCE_HOOK)",
                    n.spec.id
                ));
            }
        }
    }

    let mut manifest = Manifest {
        container_id: c.container_id.clone(),
        container_sha256: sha256_bytes(&container_bytes),
        status: "running".into(),
        started_at: now(),
        finished_at: String::new(),
        nodes: BTreeMap::new(),
    };
    let ctx = Ctx {
        plan,
        opts,
        model: model.as_ref(),
        model_hash: &model_hash,
        threads,
        previous: previous.as_ref(),
        deadline,
        log,
    };
    // 0 pending, 1 running, 2 succeeded, 3 failed or not run.
    let mut state = vec![0u8; plan.nodes.len()];
    let (tx, rx) = mpsc::channel::<Done>();
    std::thread::scope(|scope| -> Result<()> {
        let mut running = 0usize;
        let mut mem_used = 0u64;
        loop {
            // Nodes behind a failure do not run.
            for &i in &plan.order {
                if state[i] == 0 && plan.nodes[i].deps.iter().any(|&d| state[d] == 3) {
                    state[i] = 3;
                    let failed: Vec<_> = plan.nodes[i]
                        .deps
                        .iter()
                        .filter(|&&d| state[d] == 3)
                        .map(|&d| plan.nodes[d].spec.id.clone())
                        .collect();
                    let rec = not_run(format!("dependency {} did not succeed", failed.join(", ")));
                    manifest.nodes.insert(plan.nodes[i].spec.id.clone(), rec);
                }
            }
            for &i in &plan.order {
                let n = &plan.nodes[i];
                if state[i] != 0 || running >= parallel || !n.deps.iter().all(|&d| state[d] == 2) {
                    continue;
                }
                let mem = n.memory.unwrap_or(0);
                if mem_cap.is_some_and(|cap| running > 0 && mem_used + mem > cap) {
                    continue;
                }
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    state[i] = 3;
                    manifest.nodes.insert(n.spec.id.clone(), not_run("the container's timeout_seconds passed".into()));
                    continue;
                }
                state[i] = 1;
                running += 1;
                mem_used += mem;
                let tx = tx.clone();
                let ctx = &ctx;
                scope.spawn(move || {
                    let record = ctx.run_node(i);
                    let _ = tx.send(Done { node: i, record });
                });
            }
            if running == 0 {
                break;
            }
            let done = rx.recv().map_err(|_| Error::Usage("a node's worker ended without a result".into()))?;
            running -= 1;
            mem_used -= plan.nodes[done.node].memory.unwrap_or(0);
            let ok = matches!(done.record.status.as_str(), "succeeded" | "skipped");
            state[done.node] = if ok { 2 } else { 3 };
            log(&format!(
                "node {}: {}{}",
                plan.nodes[done.node].spec.id,
                done.record.status,
                done.record.error.as_ref().map_or(String::new(), |e| format!(" ({e})"))
            ));
            manifest.nodes.insert(plan.nodes[done.node].spec.id.clone(), done.record);
            write_atomic(&opts.out.join(MANIFEST), &manifest_json(&manifest)?)?;
        }
        Ok(())
    })?;
    let all_ok = state.iter().all(|&s| s == 2);
    manifest.status = if all_ok { "succeeded" } else { "failed" }.into();
    manifest.finished_at = now();
    write_atomic(&opts.out.join(MANIFEST), &manifest_json(&manifest)?)?;
    Ok(manifest)
}
