//! `omex compare`: two models (a model and its int8 conversion, two quantizations) run on the same tokens:
//! at every position the difference of their logits (max and mean absolute) and whether their top token
//! agrees; the perplexity each gives the text (every next token scored, in one window from position 0); and
//! their prefill and greedy decode speed.

use crate::backend::{Engine, Logits};
use crate::error::{Error, Result};
use serde::Serialize;
use std::time::Instant;

#[derive(Clone, Debug, Serialize)]
pub struct PositionDiff {
    pub max_abs: f32,
    pub mean_abs: f32,
    pub top1_a: u32,
    pub top1_b: u32,
}

#[derive(Clone, Debug, Serialize)]
pub struct Side {
    pub perplexity: f64,
    pub prefill_tok_s: f64,
    pub decode_tok_s: f64,
    pub decode_tokens: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct Comparison {
    pub tokens: usize,
    /// Over every position: the largest absolute logit difference, and the mean of the per-position means.
    pub max_abs_diff: f32,
    pub mean_abs_diff: f64,
    /// Positions whose top token (argmax, lowest id on ties) is the same, as a fraction.
    pub top1_agreement: f64,
    pub a: Side,
    pub b: Side,
    pub positions: Vec<PositionDiff>,
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

/// Logits of every position, timed, checked finite.
fn all_logits(e: &mut dyn Engine, tokens: &[u32], which: &str) -> Result<(Vec<f32>, f64)> {
    let t0 = Instant::now();
    let logits = e.forward(tokens, 0, Logits::All)?;
    let secs = t0.elapsed().as_secs_f64();
    if let Some(i) = logits.iter().position(|v| !v.is_finite()) {
        return Err(Error::Usage(format!("model {which}: logit {i} is not finite ({})", logits[i])));
    }
    Ok((logits, tokens.len() as f64 / secs.max(1e-9)))
}

/// Mean negative log-likelihood of each next token: exp of it is the perplexity.
fn perplexity(logits: &[f32], tokens: &[u32], vocab: usize) -> f64 {
    let mut nll = 0f64;
    for pos in 0..tokens.len() - 1 {
        let row = &logits[pos * vocab..(pos + 1) * vocab];
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let sum: f64 = row.iter().map(|&l| (l as f64 - max).exp()).sum();
        nll += max + sum.ln() - row[tokens[pos + 1] as usize] as f64;
    }
    (nll / (tokens.len() - 1) as f64).exp()
}

/// Greedy decode of `steps` tokens after `tokens`, timed.
fn decode_speed(e: &mut dyn Engine, tokens: &[u32], last: &[f32], steps: usize) -> Result<(f64, usize)> {
    let steps = steps.min(e.context_length().saturating_sub(tokens.len()));
    if steps == 0 {
        return Ok((0.0, 0));
    }
    let mut id = argmax(last);
    let t0 = Instant::now();
    for i in 0..steps {
        let logits = e.forward(&[id], tokens.len() + i, Logits::Last)?;
        id = argmax(&logits);
    }
    Ok((steps as f64 / t0.elapsed().as_secs_f64().max(1e-9), steps))
}

/// Runs `tokens` (at least 2) through both engines and `decode_steps` greedy steps after them.
pub fn compare(a: &mut dyn Engine, b: &mut dyn Engine, tokens: &[u32], decode_steps: usize) -> Result<Comparison> {
    if tokens.len() < 2 {
        return Err(Error::Usage("the text has fewer than 2 tokens: nothing to compare".into()));
    }
    let ctx = a.context_length().min(b.context_length());
    if tokens.len() > ctx {
        return Err(Error::Usage(format!("the text has {} tokens, over the context of {ctx}", tokens.len())));
    }
    let (la, prefill_a) = all_logits(a, tokens, "A")?;
    let (lb, prefill_b) = all_logits(b, tokens, "B")?;
    let n = tokens.len();
    if la.len() != lb.len() || la.len() % n != 0 {
        return Err(Error::Usage(format!(
            "the models' vocabularies differ ({} and {} logits per token)",
            la.len() / n,
            lb.len() / n
        )));
    }
    let vocab = la.len() / n;
    let mut positions = Vec::with_capacity(n);
    let (mut max_abs, mut sum_mean, mut agree) = (0f32, 0f64, 0usize);
    for p in 0..n {
        let (ra, rb) = (&la[p * vocab..(p + 1) * vocab], &lb[p * vocab..(p + 1) * vocab]);
        let (mut m, mut s) = (0f32, 0f64);
        for (x, y) in ra.iter().zip(rb) {
            let d = (x - y).abs();
            m = m.max(d);
            s += d as f64;
        }
        let (ta, tb) = (argmax(ra), argmax(rb));
        agree += (ta == tb) as usize;
        max_abs = max_abs.max(m);
        sum_mean += s / vocab as f64;
        positions.push(PositionDiff { max_abs: m, mean_abs: (s / vocab as f64) as f32, top1_a: ta, top1_b: tb });
    }
    let (decode_a, steps_a) = decode_speed(a, tokens, &la[(n - 1) * vocab..], decode_steps)?;
    let (decode_b, steps_b) = decode_speed(b, tokens, &lb[(n - 1) * vocab..], decode_steps)?;
    Ok(Comparison {
        tokens: n,
        max_abs_diff: max_abs,
        mean_abs_diff: sum_mean / n as f64,
        top1_agreement: agree as f64 / n as f64,
        a: Side {
            perplexity: perplexity(&la, tokens, vocab),
            prefill_tok_s: prefill_a,
            decode_tok_s: decode_a,
            decode_tokens: steps_a,
        },
        b: Side {
            perplexity: perplexity(&lb, tokens, vocab),
            prefill_tok_s: prefill_b,
            decode_tok_s: decode_b,
            decode_tokens: steps_b,
        },
        positions,
    })
}
