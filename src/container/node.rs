//! One node's run: what it reads (and its fingerprint), whether the last run's output still stands, and
//! the inference with its memory check, reductions under memory pressure, timeout and retries.

use super::hook::run_hook;
use super::manifest::{now, write_atomic, Manifest, NodeRecord};
use super::run::RunOptions;
use super::spec::{Input, NodeKind, Plan, PlannedNode};
use crate::agent::file_reader::{render_files, FileReader};
use crate::backend::{Activations, KvType};
use crate::error::{Error, Result};
use crate::format::checksum::sha256_bytes;
use crate::runtime::{BackendChoice, EngineOptions, GenerateOptions, Model, StopReason};
use crate::sampling::SamplerOptions;
use crate::tokenizer::ChatMessage;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Bytes of one earlier output an inference prompt takes at most.
pub const MAX_INPUT_BYTES: u64 = 1 << 20;
/// Context reductions tried under memory pressure.
const MAX_REDUCTIONS: u32 = 4;

/// Whether an error is the node running out of memory (its allocation, the host's, or the GPU's).
fn is_out_of_memory(e: &Error) -> bool {
    let s = e.to_string();
    s.contains("out of memory") || s.contains("memory_allocation") || s.contains("available:")
}

pub(super) struct Ctx<'a> {
    pub(super) plan: &'a Plan,
    pub(super) opts: &'a RunOptions,
    pub(super) model: Option<&'a Model>,
    pub(super) model_hash: &'a str,
    pub(super) threads: usize,
    pub(super) previous: Option<&'a Manifest>,
    pub(super) deadline: Option<Instant>,
    pub(super) log: &'a (dyn Fn(&str) + Sync),
}

/// What a node reads, gathered before it runs: the text for its prompt or output, and the fingerprint.
struct Gathered {
    text: String,
    fingerprint: String,
}

impl Ctx<'_> {
    pub(super) fn run_node(&self, i: usize) -> NodeRecord {
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
                if rec.attempts == 1 && self.unchanged(n, &gathered.fingerprint).is_some() {
                    return Ok(None);
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
                let values = ctx as u64 * (cfg.n_kv_heads * cfg.head_dim) as u64;
                let kv = 2 * cfg.blocks.len() as u64 * opts.kv.bytes(values);
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
