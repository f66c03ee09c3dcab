//! Perplexity as llama-perplexity defines it: the text's tokens are cut into non-overlapping chunks of `ctx`
//! tokens (the remainder dropped); each chunk runs from an empty cache, and the logits at positions
//! `ctx/2 .. ctx-2` score the tokens `ctx/2 + 1 .. ctx-1`. ppl = exp(mean negative log-likelihood).

use crate::backend::{Engine, Logits};
use crate::error::{Error, Result};

#[derive(Clone, Debug, serde::Serialize)]
pub struct Perplexity {
    pub ctx: usize,
    pub chunks: usize,
    pub tokens_scored: usize,
    /// Mean NLL of each chunk.
    pub chunk_nll: Vec<f64>,
    pub perplexity: f64,
}

/// Scores `tokens` with `engine`; `on_chunk(i, n, running_ppl)` reports progress.
pub fn perplexity(
    engine: &mut dyn Engine,
    tokens: &[u32],
    ctx: usize,
    on_chunk: &mut dyn FnMut(usize, usize, f64),
) -> Result<Perplexity> {
    if ctx < 4 {
        return Err(Error::Usage(format!("--ctx {ctx} is too small for perplexity (at least 4)")));
    }
    if ctx > engine.context_length() {
        return Err(Error::Usage(format!("--ctx {ctx} exceeds the engine's context {}", engine.context_length())));
    }
    let chunks = tokens.len() / ctx;
    if chunks == 0 {
        return Err(Error::Usage(format!("the text has {} tokens, fewer than one chunk of {ctx}", tokens.len())));
    }
    let first = ctx / 2;
    let (mut total, mut count) = (0f64, 0usize);
    let mut chunk_nll = Vec::with_capacity(chunks);
    for c in 0..chunks {
        let chunk = &tokens[c * ctx..(c + 1) * ctx];
        let logits = engine.forward(chunk, 0, Logits::All)?;
        let vocab = logits.len() / ctx;
        let mut nll = 0f64;
        for pos in first..ctx - 1 {
            let row = &logits[pos * vocab..(pos + 1) * vocab];
            nll += log_softmax_neg(row, chunk[pos + 1] as usize);
        }
        let scored = ctx - 1 - first;
        chunk_nll.push(nll / scored as f64);
        total += nll;
        count += scored;
        on_chunk(c + 1, chunks, (total / count as f64).exp());
    }
    Ok(Perplexity { ctx, chunks, tokens_scored: count, chunk_nll, perplexity: (total / count as f64).exp() })
}

/// `-log softmax(row)[target]`, in f64.
fn log_softmax_neg(row: &[f32], target: usize) -> f64 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = row.iter().map(|&l| (l as f64 - max).exp()).sum();
    max + sum.ln() - row[target] as f64
}

#[cfg(test)]
mod tests {
    #[test]
    fn uniform_logits_cost_log_vocab() {
        let nll = super::log_softmax_neg(&[0.0; 8], 3);
        assert!((nll - 8f64.ln()).abs() < 1e-12);
    }
}
