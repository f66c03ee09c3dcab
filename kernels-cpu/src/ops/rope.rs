//! Rotary position embedding, in place on one token's heads.
//!
//! For pair `i` (`0 <= i < head_dim / 2`): `theta = f32(pos) * inv_freq[i]`, rounded to f32 as HF and
//! llama.cpp compute it; `cos`/`sin` of that f32 angle are evaluated in f64 and rounded to f32; then
//! `(a, b) <- (a cos - b sin, a sin + b cos)` for the pair's two elements, by [`RopeStyle`].

use crate::isa::{self, Isa};

/// Which elements of a head form rotation pair `i`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeStyle {
    /// `(2i, 2i + 1)`: GGUF llama (the converter's permuted q/k).
    Interleaved,
    /// `(i, i + head_dim / 2)`: HF / NeoX.
    Half,
}

/// Rotates `x` (`[n_heads, head_dim]`, any number of heads: q or k) for position `pos`.
pub fn rope(x: &mut [f32], n_heads: usize, head_dim: usize, pos: usize, inv_freq: &[f32], style: RopeStyle) {
    rope_with(isa::detect(), x, n_heads, head_dim, pos, inv_freq, style)
}

/// [`rope`] with an explicit ISA (every ISA runs the same portable code).
pub fn rope_with(
    isa: Isa,
    x: &mut [f32],
    n_heads: usize,
    head_dim: usize,
    pos: usize,
    inv_freq: &[f32],
    style: RopeStyle,
) {
    isa.check();
    assert!(head_dim.is_multiple_of(2), "rope: head_dim = {head_dim} must be even");
    assert_eq!(x.len(), n_heads * head_dim, "rope: x has {} values, needs n_heads * head_dim", x.len());
    assert_eq!(inv_freq.len(), head_dim / 2, "rope: inv_freq has {} entries, needs head_dim / 2", inv_freq.len());
    let half = head_dim / 2;
    let mut cs = Vec::with_capacity(half);
    for &f in inv_freq {
        let theta = (pos as f32 * f) as f64;
        cs.push((theta.cos() as f32, theta.sin() as f32));
    }
    for head in x.chunks_exact_mut(head_dim) {
        for (i, &(c, s)) in cs.iter().enumerate() {
            let (ia, ib) = match style {
                RopeStyle::Interleaved => (2 * i, 2 * i + 1),
                RopeStyle::Half => (i, i + half),
            };
            let (a, b) = (head[ia], head[ib]);
            head[ia] = a * c - b * s;
            head[ib] = a * s + b * c;
        }
    }
}
