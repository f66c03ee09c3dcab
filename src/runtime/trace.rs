//! `omex trace`: a per-op timeline of one prompt and a few greedy decode steps, as Chrome trace events (the
//! JSON that Perfetto and chrome://tracing open). Thread 1 holds the ops in the order they ran, named from
//! the model's op program ("blk.3 linear attn_q|attn_k|attn_v"); thread 0 holds one span per forward pass
//! ("prefill", "decode 1", ...) around its ops.

use crate::backend::{Engine, Logits, OpSpan};
use crate::error::{Error, Result};
use serde_json::{json, Value};

/// A recorded run: its forward passes and their ops.
#[derive(Clone, Debug)]
pub struct Trace {
    /// (name, start µs, duration µs, tokens) of each forward pass.
    pub passes: Vec<(String, f64, f64, usize)>,
    /// Each pass's ops, in order.
    pub ops: Vec<(usize, OpSpan)>,
}

fn argmax(row: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best as u32
}

/// Runs `prompt` then `decode_steps` greedy steps with op tracing on.
pub fn record(engine: &mut dyn Engine, prompt: &[u32], decode_steps: usize) -> Result<Trace> {
    if prompt.is_empty() {
        return Err(Error::Usage("the prompt is empty (no tokens)".into()));
    }
    if prompt.len() + decode_steps > engine.context_length() {
        return Err(Error::Usage(format!(
            "the prompt ({} tokens) and {decode_steps} decode steps do not fit the context of {}",
            prompt.len(),
            engine.context_length()
        )));
    }
    if !engine.trace_ops(true) {
        return Err(Error::Unsupported(format!(
            "{} records no per-op timeline: the GPU engine records one with its weights resident (no --gpu-mem \
             that makes them stream; its --memory-trace shows a streamed run's uploads and compute), the CPU \
             engine always",
            engine.describe()
        )));
    }
    let mut trace = Trace { passes: Vec::new(), ops: Vec::new() };
    let mut pass = |engine: &mut dyn Engine, name: String, ids: &[u32], pos: usize| -> Result<Vec<f32>> {
        let logits = engine.forward(ids, pos, Logits::Last)?;
        let spans = engine.take_op_spans();
        let (first, last) = match (spans.first(), spans.last()) {
            (Some(f), Some(l)) => (f.start_us, l.start_us + l.dur_us),
            _ => return Err(Error::Unsupported(format!("{}: no ops were recorded", engine.describe()))),
        };
        let i = trace.passes.len();
        trace.passes.push((name, first, last - first, ids.len()));
        trace.ops.extend(spans.into_iter().map(|s| (i, s)));
        Ok(logits)
    };
    let logits = pass(engine, "prefill".into(), prompt, 0)?;
    let mut id = argmax(&logits);
    for step in 0..decode_steps {
        let logits = pass(engine, format!("decode {}", step + 1), &[id], prompt.len() + step)?;
        id = argmax(&logits);
    }
    engine.trace_ops(false);
    Ok(trace)
}

/// The Chrome trace-event JSON of `trace`.
pub fn chrome_json(trace: &Trace, engine: &str) -> Value {
    let mut events = Vec::new();
    for (name, ts, dur, tokens) in &trace.passes {
        events.push(json!({
            "name": name, "cat": "forward", "ph": "X", "ts": ts, "dur": dur, "pid": 1, "tid": 0,
            "args": {"tokens": tokens},
        }));
    }
    for (pass, s) in &trace.ops {
        events.push(json!({
            "name": s.name, "cat": "op", "ph": "X", "ts": s.start_us, "dur": s.dur_us, "pid": 1, "tid": 1,
            "args": {"pass": trace.passes[*pass].0, "block": s.block, "tokens": s.tokens},
        }));
    }
    json!({"traceEvents": events, "displayTimeUnit": "ms", "otherData": {"engine": engine}})
}
