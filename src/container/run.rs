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

use super::spec::{Input, NodeKind, Plan, PlannedNode};
use crate::agent::file_reader::{render_files, FileReader};
use crate::backend::{Activations, KvType};
use crate::error::{Error, Result};
use crate::format::checksum::sha256_bytes;
use crate::runtime::{BackendChoice, EngineOptions, GenerateOptions, Model, StopReason};
use crate::sampling::SamplerOptions;
use crate::tokenizer::ChatMessage;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub const MANIFEST: &str = "manifest.json";
/// Bytes of one earlier output an inference prompt takes at most.
pub const MAX_INPUT_BYTES: u64 = 1 << 20;
/// A guidance hook's time and output limits.
const HOOK_TIMEOUT: Duration = Duration::from_secs(30);
const HOOK_OUTPUT: usize = 64 << 10;
/// Context reductions tried under memory pressure.
const MAX_REDUCTIONS: u32 = 4;

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

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct NodeRecord {
    /// `succeeded`, `skipped` (unchanged since the last run), `failed` or `not_run`.
    pub status: String,
    pub fingerprint: String,
    pub attempts: u32,
    pub started_at: String,
    pub duration_ms: f64,
    /// Output file -> sha256.
    pub outputs: BTreeMap<String, String>,
    #[serde(default)]
    pub error: Option<String>,
    /// What was changed to make it run (reduced context...), the guidance note.
    #[serde(default)]
    pub notes: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub container_id: String,
    pub container_sha256: String,
    pub status: String,
    pub started_at: String,
    pub finished_at: String,
    pub nodes: BTreeMap<String, NodeRecord>,
}

fn now() -> String {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    crate::format::metadata::rfc3339(secs)
}

/// Opens the run directory: a new or empty folder, or one holding an omex manifest (whose records are
/// returned); a folder of other files is the user's and is refused.
fn open_run_dir(out: &Path) -> Result<Option<Manifest>> {
    if out.exists() {
        if !out.is_dir() {
            return Err(Error::Usage(format!("{}: exists and is not a directory", out.display())));
        }
        let manifest = out.join(MANIFEST);
        if manifest.is_file() {
            let bytes = crate::files::read_regular(&manifest, 16 << 20).map_err(|e| Error::io(&manifest, e))?;
            let m: Manifest = serde_json::from_slice(&bytes).map_err(|e| Error::json(&manifest, e))?;
            return Ok(Some(m));
        }
        let mut entries = std::fs::read_dir(out).map_err(|e| Error::io(out, e))?;
        if entries.next().is_some() {
            return Err(Error::Usage(format!(
                "{}: a folder with files and no {MANIFEST} is not an omex run directory; not writing into it",
                out.display()
            )));
        }
        return Ok(None);
    }
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    Ok(None)
}

/// Writes `bytes` to `path` through a temporary file and a rename.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
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

fn manifest_json(m: &Manifest) -> Result<Vec<u8>> {
    let mut v = serde_json::to_vec_pretty(m).map_err(|e| Error::Usage(e.to_string()))?;
    v.push(b'\n');
    Ok(v)
}

fn not_run(why: String) -> NodeRecord {
    NodeRecord {
        status: "not_run".into(),
        fingerprint: String::new(),
        attempts: 0,
        started_at: String::new(),
        duration_ms: 0.0,
        outputs: BTreeMap::new(),
        error: Some(why),
        notes: Vec::new(),
    }
}

/// Whether an error is the node running out of memory (its allocation, the host's, or the GPU's).
fn is_out_of_memory(e: &Error) -> bool {
    let s = e.to_string();
    s.contains("out of memory") || s.contains("memory_allocation") || s.contains("available:")
}

struct Ctx<'a> {
    plan: &'a Plan,
    opts: &'a RunOptions,
    model: Option<&'a Model>,
    model_hash: &'a str,
    threads: usize,
    previous: Option<&'a Manifest>,
    deadline: Option<Instant>,
    log: &'a (dyn Fn(&str) + Sync),
}

/// What a node reads, gathered before it runs: the text for its prompt or output, and the fingerprint.
struct Gathered {
    text: String,
    fingerprint: String,
}

impl Ctx<'_> {
    fn run_node(&self, i: usize) -> NodeRecord {
        let n = &self.plan.nodes[i];
        let started_at = now();
        let t0 = Instant::now();
        let mut rec = NodeRecord {
            status: "failed".into(),
            fingerprint: String::new(),
            attempts: 0,
            started_at,
            duration_ms: 0.0,
            outputs: BTreeMap::new(),
            error: None,
            notes: Vec::new(),
        };
        let policy = &self.plan.container.completion_policy;
        let reduce = policy.memory_pressure_strategy.as_deref() == Some("dynamic_precision_reduction");
        let retries = if policy.retry_on_fail { policy.max_retries } else { 0 };
        let (mut failures, mut reductions) = (0u32, 0u32);
        let result = loop {
            rec.attempts += 1;
            // What the node reads is gathered again on each attempt (a guidance hook may fail once).
            let attempt = self.gather(n).and_then(|gathered| {
                rec.fingerprint = gathered.fingerprint.clone();
                if rec.attempts == 1 {
                    if self.unchanged(n, &gathered.fingerprint).is_some() {
                        return Ok(None);
                    }
                }
                match &n.kind {
                    NodeKind::FileReader { .. } => Ok(Some(gathered.text)),
                    NodeKind::Inference { cpu, .. } => {
                        self.infer(n, *cpu, &gathered.text, reductions, &mut rec.notes).map(Some)
                    }
                }
            });
            let attempt = match attempt {
                Ok(None) => {
                    let prev = self.unchanged(n, &rec.fingerprint).expect("checked above");
                    rec.status = "skipped".into();
                    rec.attempts = 0;
                    rec.outputs = prev.outputs.clone();
                    rec.notes.push("inputs and output unchanged since the last run".into());
                    return rec;
                }
                Ok(Some(text)) => Ok(text),
                Err(e) => Err(e),
            };
            match attempt {
                Ok(text) => break Ok(text),
                Err(e) if reduce && reductions < MAX_REDUCTIONS && is_out_of_memory(&e) => {
                    reductions += 1;
                    rec.notes.push(format!(
                        "attempt {}: {e}; retrying with int8 activations and half the context",
                        rec.attempts
                    ));
                }
                Err(e) if failures < retries => {
                    failures += 1;
                    rec.notes.push(format!("attempt {}: {e}; retrying in {} ms", rec.attempts, policy.retry_delay_ms));
                    std::thread::sleep(Duration::from_millis(policy.retry_delay_ms));
                }
                Err(e) => break Err(e),
            }
        };
        rec.duration_ms = t0.elapsed().as_secs_f64() * 1e3;
        match result.and_then(|text| {
            write_atomic(&self.opts.out.join(&n.output), text.as_bytes())?;
            Ok(sha256_bytes(text.as_bytes()))
        }) {
            Ok(hash) => {
                rec.status = "succeeded".into();
                rec.outputs.insert(n.output.clone(), hash);
            }
            Err(e) => rec.error = Some(e.to_string()),
        }
        rec
    }

    /// The previous run's record of `n`, when it succeeded with this fingerprint and its output is intact.
    fn unchanged(&self, n: &PlannedNode, fingerprint: &str) -> Option<&NodeRecord> {
        let prev = self.previous?.nodes.get(&n.spec.id)?;
        if !matches!(prev.status.as_str(), "succeeded" | "skipped") || prev.fingerprint != fingerprint {
            return None;
        }
        let want = prev.outputs.get(&n.output)?;
        let bytes = crate::files::read_regular(&self.opts.out.join(&n.output), 1 << 30).ok()?;
        (sha256_bytes(&bytes) == *want).then_some(prev)
    }

    /// Reads what node `n` reads and fingerprints it.
    fn gather(&self, n: &PlannedNode) -> Result<Gathered> {
        let c = &self.plan.container;
        let mut fp = serde_json::to_string(&n.spec).map_err(|e| Error::Usage(e.to_string()))?;
        fp += &serde_json::to_string(&c.execution_config).map_err(|e| Error::Usage(e.to_string()))?;
        let text = match &n.kind {
            NodeKind::FileReader { access, paths } => {
                let reader = FileReader::new(access.clone(), &self.plan.root)?;
                let mut files = Vec::new();
                for p in paths {
                    files.extend(reader.read_path(p)?);
                }
                render_files(&files)
            }
            NodeKind::Inference { inputs, .. } => {
                fp += self.model_hash;
                fp += &serde_json::to_string(&c.input_data).map_err(|e| Error::Usage(e.to_string()))?;
                let mut parts = Vec::new();
                if let Some(context) = c.input_data.get("context") {
                    parts.push(format!("Context: {context}"));
                }
                for input in inputs {
                    match input {
                        Input::Data(key) => parts.push(format!("{key}: {}", c.input_data[key])),
                        Input::Output { file, .. } => {
                            let path = self.opts.out.join(file);
                            let text = crate::files::read_regular_string(&path, MAX_INPUT_BYTES)
                                .map_err(|e| Error::io(&path, e))?;
                            parts.push(format!("--- {file} ---\n{}", text.trim_end()));
                        }
                    }
                }
                if let Some(g) = n.spec.guidance.as_deref() {
                    if let Some(hook) = &self.opts.guidance_hook {
                        fp += &hook.to_string_lossy();
                        parts.push(format!("Guidance:\n{}", run_hook(hook, &n.spec.id, g)?));
                    }
                }
                let task =
                    n.spec.instruction.clone().or_else(|| c.input_data.get("prompt").cloned()).unwrap_or_default();
                parts.push(task);
                parts.join("\n\n")
            }
        };
        fp += &text;
        Ok(Gathered { text, fingerprint: sha256_bytes(fp.as_bytes()) })
    }

    /// One inference attempt; `reductions` halvings of the context under memory pressure.
    fn infer(
        &self,
        n: &PlannedNode,
        cpu: bool,
        prompt: &str,
        reductions: u32,
        notes: &mut Vec<String>,
    ) -> Result<String> {
        let model = self.model.expect("checked: inference nodes have a model");
        let c = &self.plan.container;
        let e = &c.execution_config;
        let max_tokens = n.spec.max_tokens.or(e.max_tokens).unwrap_or(256) as usize;
        let text = match model.tokenizer.chat_template() {
            Some(_) => model
                .tokenizer
                .apply_chat_template(&[ChatMessage::user(prompt)], true)
                .map_err(|e| Error::Tokenizer(e.to_string()))?,
            None => prompt.to_string(),
        };
        let ids = model.tokenizer.encode_with_specials(&text);
        let need = ids.len() + max_tokens;
        let backend = if cpu { BackendChoice::Cpu } else { self.opts.backend };
        let mut opts =
            EngineOptions { backend, threads: self.threads, context_length: self.opts.ctx, ..Default::default() };
        let mut ctx = model.context_length(&opts)?;
        if reductions > 0 {
            ctx >>= reductions;
            opts.activations = Activations::Int8;
            opts.gpu_activations = Activations::Int8;
            opts.kv = KvType::F16;
            if ctx < need {
                return Err(Error::Usage(format!(
                    "node {}: out of memory_allocation, and a context of {ctx} no longer holds the prompt and answer ({need} tokens)",
                    n.spec.id
                )));
            }
            notes.push(format!("context reduced to {ctx} tokens, int8 activations, f16 KV cache"));
        }
        if need > ctx {
            return Err(Error::Usage(format!(
                "node {}: the prompt ({} tokens) and max_tokens {max_tokens} do not fit the context of {ctx}",
                n.spec.id,
                ids.len()
            )));
        }
        opts.context_length = Some(ctx);
        if let Some(mem) = n.memory {
            if backend == BackendChoice::Cpu {
                let cfg = &model.config;
                let elem = if opts.kv == KvType::F32 { 4 } else { 2 };
                let kv = 2 * cfg.blocks.len() as u64 * ctx as u64 * (cfg.n_kv_heads * cfg.head_dim) as u64 * elem;
                if kv > mem {
                    return Err(Error::Usage(format!(
                        "node {}: out of memory: a KV cache of {ctx} tokens takes {kv} bytes, over its memory_allocation of {mem}",
                        n.spec.id
                    )));
                }
            } else {
                opts.gpu_mem = Some(mem.to_string());
            }
        }
        let mut session = model.session(&opts)?;
        let sampler = SamplerOptions {
            temperature: e.temperature.unwrap_or(0.0),
            top_p: e.top_p.unwrap_or(1.0),
            repetition_penalty: e.repetition_penalty.unwrap_or(1.0),
            ..Default::default()
        };
        let gen = GenerateOptions { max_tokens, sampler, stop_strings: e.stop_sequences.clone(), ..Default::default() };
        let timeout = n.spec.timeout_seconds.or(c.resources.timeout_seconds).map(Duration::from_secs);
        let t0 = Instant::now();
        let over = || timeout.is_some_and(|t| t0.elapsed() > t) || self.deadline.is_some_and(|d| Instant::now() > d);
        let g = session.generate_from_ids(ids, &gen, &mut |_| !over())?;
        if g.stop == StopReason::Cancelled {
            return Err(Error::Usage(format!("node {}: timed out", n.spec.id)));
        }
        (self.log)(&format!(
            "node {}: {} prompt tokens, {} generated ({:.1} tok/s)",
            n.spec.id,
            g.timings.prompt_tokens,
            g.timings.decode_tokens,
            g.timings.decode_tok_s()
        ));
        Ok(g.text.trim().to_string() + "\n")
    }
}

/// Runs the guidance hook `hook NODE_ID GUIDANCE` (no shell) and returns its standard output.
fn run_hook(hook: &Path, node: &str, guidance: &str) -> Result<String> {
    use std::io::Read;
    let mut child = std::process::Command::new(hook)
        .arg(node)
        .arg(guidance)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .map_err(|e| Error::io(hook, e))?;
    let mut stdout = child.stdout.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let r = (&mut stdout).take(HOOK_OUTPUT as u64 + 1).read_to_end(&mut buf);
        r.map(|_| buf)
    });
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().map_err(|e| Error::io(hook, e))? {
            break s;
        }
        if t0.elapsed() > HOOK_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            return Err(Error::Usage(format!("guidance hook {}: no answer in {HOOK_TIMEOUT:?}", hook.display())));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = reader
        .join()
        .map_err(|_| Error::Usage("guidance hook reader panicked".into()))?
        .map_err(|e| Error::io(hook, e))?;
    if !status.success() {
        return Err(Error::Usage(format!("guidance hook {} failed: {status}", hook.display())));
    }
    if out.len() > HOOK_OUTPUT {
        return Err(Error::Usage(format!("guidance hook {}: output over {HOOK_OUTPUT} bytes", hook.display())));
    }
    Ok(String::from_utf8_lossy(&out).trim().to_string())
}
