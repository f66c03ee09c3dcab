//! Grouped-query causal attention over a KV cache.
//!
//! Cache layout per layer: K and V are each `[ctx_max, n_kv_heads * head_dim]`, position-major, one row
//! appended per token ([`kv_store`]); elements f32, f16 or q8_0 blocks of 32 values ([`KvElem`]; a row is then
//! `n_kv_heads * head_dim / 32` blocks, each within one head). Query head `h` reads KV head
//! `h / (n_heads / n_kv_heads)`. Scores are `scale * q . k` in f32, softmax subtracts the max, and the output
//! is the probability-weighted sum of V rows. Work is split over (query row, KV head) pairs: the query heads
//! that share a KV head are done together so each K/V row is read once for all of them.

#[cfg(target_arch = "x86_64")]
mod avx2;
mod kv;
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
mod simd128;

pub use kv::{KvElem, KvQ8, KV_Q8_BLOCK};

use crate::isa::{self, Isa};
use crate::ops;
use rayon::prelude::*;

/// Writes `row` (`n_kv_heads * head_dim` values) into the cache at position `pos`.
pub fn kv_store<E: KvElem>(cache: &mut [E], pos: usize, row: &[f32]) {
    assert!(!row.is_empty(), "kv_store: empty row");
    assert!(
        row.len().is_multiple_of(E::VALUES),
        "kv_store: a row of {} values is not blocks of {}",
        row.len(),
        E::VALUES
    );
    let w = row.len() / E::VALUES;
    assert!(
        (pos + 1) * w <= cache.len(),
        "kv_store: position {pos} is past the cache ({} rows of {w})",
        cache.len() / w
    );
    E::store(row, &mut cache[pos * w..(pos + 1) * w]);
}

/// The cache's rows widened to f32 (`cache.len() * E::VALUES` values): what attention reads.
pub fn kv_load<E: KvElem>(cache: &[E]) -> Vec<f32> {
    let mut out = vec![0f32; cache.len() * E::VALUES];
    E::load(cache, &mut out);
    out
}

/// Causal GQA attention with the detected ISA; see [`attention_with`].
#[allow(clippy::too_many_arguments)]
pub fn attention<E: KvElem>(
    q: &[f32],
    k: &[E],
    v: &[E],
    pos0: usize,
    n_q: usize,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    scale: f32,
    out: &mut [f32],
) {
    attention_with(isa::detect(), q, k, v, pos0, n_q, n_heads, n_kv_heads, head_dim, scale, out)
}

/// `q` is `[n_q, n_heads * head_dim]`, its row `i` at absolute position `pos0 + i` and attending cache rows
/// `0..=pos0 + i`; `k`, `v` are `[ctx_max, n_kv_heads * head_dim]` caches already holding those rows; `out` is
/// `[n_q, n_heads * head_dim]`.
#[allow(clippy::too_many_arguments)]
pub fn attention_with<E: KvElem>(
    isa: Isa,
    q: &[f32],
    k: &[E],
    v: &[E],
    pos0: usize,
    n_q: usize,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    scale: f32,
    out: &mut [f32],
) {
    attention_window_with(isa, q, k, v, pos0, n_q, n_heads, n_kv_heads, head_dim, scale, None, out)
}

/// Sliding-window attention with the detected ISA; see [`attention_window_with`].
#[allow(clippy::too_many_arguments)]
pub fn attention_window<E: KvElem>(
    q: &[f32],
    k: &[E],
    v: &[E],
    pos0: usize,
    n_q: usize,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    scale: f32,
    window: Option<usize>,
    out: &mut [f32],
) {
    attention_window_with(isa::detect(), q, k, v, pos0, n_q, n_heads, n_kv_heads, head_dim, scale, window, out)
}

/// [`attention_with`] where, with `Some(window)`, the query at position `p` attends to cache rows
/// `p + 1 - window..=p` only (the last `window` positions, its own included).
#[allow(clippy::too_many_arguments)]
pub fn attention_window_with<E: KvElem>(
    isa: Isa,
    q: &[f32],
    k: &[E],
    v: &[E],
    pos0: usize,
    n_q: usize,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    scale: f32,
    window: Option<usize>,
    out: &mut [f32],
) {
    attention_paged_with(isa, q, k, v, None, pos0, n_q, n_heads, n_kv_heads, head_dim, scale, window, out)
}

/// A paged KV cache: the sequence's position `p` is cache row `table[p / block_tokens] * block_tokens + p %
/// block_tokens`, so a sequence's positions live in fixed-size blocks anywhere in the cache.
#[derive(Clone, Copy, Debug)]
pub struct Pages<'a> {
    pub table: &'a [u32],
    pub block_tokens: usize,
}

impl Pages<'_> {
    /// The cache row of position `p` (`p` itself without pages).
    #[inline]
    pub fn row(pages: Option<Pages>, p: usize) -> usize {
        match pages {
            None => p,
            Some(pg) => pg.table[p / pg.block_tokens] as usize * pg.block_tokens + p % pg.block_tokens,
        }
    }
}

/// [`attention_window_with`] over a paged cache (`pages`; `None`: position `p` is row `p`).
#[allow(clippy::too_many_arguments)]
pub fn attention_paged_with<E: KvElem>(
    isa: Isa,
    q: &[f32],
    k: &[E],
    v: &[E],
    pages: Option<Pages>,
    pos0: usize,
    n_q: usize,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    scale: f32,
    window: Option<usize>,
    out: &mut [f32],
) {
    isa.check();
    assert!(window != Some(0), "attention: a window of 0 positions");
    assert!(head_dim > 0 && n_kv_heads > 0, "attention: head_dim and n_kv_heads must be positive");
    assert!(
        n_heads.is_multiple_of(n_kv_heads),
        "attention: n_heads = {n_heads} not a multiple of n_kv_heads = {n_kv_heads}"
    );
    assert!(
        head_dim.is_multiple_of(E::VALUES),
        "attention: head_dim {head_dim} is not a whole number of cache blocks of {}",
        E::VALUES
    );
    let qw = n_heads * head_dim;
    // Cache elements per row and per head.
    let (kvw, hde) = (n_kv_heads * head_dim / E::VALUES, head_dim / E::VALUES);
    assert_eq!(q.len(), n_q * qw, "attention: q has {} values, needs n_q * n_heads * head_dim", q.len());
    assert_eq!(out.len(), n_q * qw, "attention: out has {} values, needs n_q * n_heads * head_dim", out.len());
    assert_eq!(k.len(), v.len(), "attention: K and V caches differ in length");
    assert!(k.len().is_multiple_of(kvw), "attention: cache length {} is not rows of {kvw}", k.len());
    match pages {
        None => {
            assert!((pos0 + n_q) * kvw <= k.len(), "attention: positions up to {} are past the cache", pos0 + n_q)
        }
        Some(pg) => {
            assert!(pg.block_tokens > 0, "attention: blocks of 0 tokens");
            let blocks = (pos0 + n_q).div_ceil(pg.block_tokens);
            assert!(pg.table.len() >= blocks, "attention: {blocks} blocks needed, the table has {}", pg.table.len());
            let rows = k.len() / kvw;
            assert!(
                pg.table[..blocks].iter().all(|&b| (b as usize + 1) * pg.block_tokens <= rows),
                "attention: a block of the table is past the cache ({rows} rows)"
            );
        }
    }
    if n_q == 0 || n_heads == 0 {
        return;
    }
    let rep = n_heads / n_kv_heads;
    // Each unit is (query row, KV head): its `rep` query heads are contiguous in q and out.
    let unit_work = (pos0 + 1) * rep * head_dim;
    let min_len = (1usize << 16).div_ceil(unit_work).max(1);
    out.par_chunks_mut(rep * head_dim).enumerate().with_min_len(min_len).for_each(|(u, o)| {
        let (i, h) = (u / n_kv_heads, u % n_kv_heads);
        let end = pos0 + i + 1;
        let start = window.map_or(0, |w| end.saturating_sub(w));
        let len = end - start;
        let qs = &q[i * qw + h * rep * head_dim..i * qw + (h + 1) * rep * head_dim];
        let mut scores = vec![0f32; rep * len];
        for j in 0..len {
            let r = Pages::row(pages, start + j) * kvw;
            let krow = &k[r + h * hde..r + (h + 1) * hde];
            for r in 0..rep {
                scores[r * len + j] = scale * E::dot(isa, &qs[r * head_dim..(r + 1) * head_dim], krow);
            }
        }
        for s in scores.chunks_exact_mut(len) {
            ops::softmax_with(isa, s);
        }
        o.fill(0.0);
        for j in 0..len {
            let r = Pages::row(pages, start + j) * kvw;
            let vrow = &v[r + h * hde..r + (h + 1) * hde];
            for r in 0..rep {
                E::axpy(isa, scores[r * len + j], vrow, &mut o[r * head_dim..(r + 1) * head_dim]);
            }
        }
    });
}
