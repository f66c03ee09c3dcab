//! `y = W x` with float activations, for every layout: the decode-time kernel when activations are not
//! quantized (and the only one for F32/F16 weights). Rows are split across the current rayon pool.
//!
//! Quantized layouts never materialise dequantized weights: per group the kernel forms `sum(q x)` and scales it
//! once (`d * sum(q x)`); int4's min term is `m * sum(x)` with the group sums of `x` computed once per call;
//! ternary adds, subtracts or skips each `x` and multiplies by the group scale once.
//!
//! Raw GGUF blocks are the exception: a few rows at a time are dequantized (bit-exactly) into a per-thread f32
//! scratch and dotted by the F32 kernel. Decode should use [`crate::q8`], which reads the blocks in place.

#[cfg(target_arch = "x86_64")]
mod avx2;
pub(crate) mod portable;
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
mod simd128;

use crate::isa::{self, Isa};
use crate::layout::{Matrix, Weights, GROUP};
use crate::par;
use std::cell::RefCell;

/// Rows of raw GGUF blocks dequantized at a time by the float path (reused from L1 for the dot).
const GGML_ROWS: usize = 4;

thread_local! {
    /// Dequantized rows of raw GGUF blocks.
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// `y[r] = sum_c W[r, c] x[c]` with the detected ISA.
pub fn matvec(m: &Matrix, x: &[f32], y: &mut [f32]) {
    matvec_with(isa::detect(), m, x, y)
}

/// [`matvec`] with an explicit ISA.
pub fn matvec_with(isa: Isa, m: &Matrix, x: &[f32], y: &mut [f32]) {
    isa.check();
    if let Err(e) = m.validate() {
        panic!("matvec: invalid matrix: {e}");
    }
    assert_eq!(x.len(), m.cols, "matvec: x has {} values, matrix has {} cols", x.len(), m.cols);
    assert_eq!(y.len(), m.rows, "matvec: y has {} values, matrix has {} rows", y.len(), m.rows);
    if m.w.as_ggml().is_some() {
        return par::for_row_chunks(y, m.row_bytes(), |r0, ych| ggml_rows(isa, m, x, r0, ych));
    }
    let xsum = group_sums(m, x);
    par::for_row_chunks(y, m.row_bytes(), |r0, ych| rows(isa, m, x, &xsum, r0, ych));
}

/// Per-group sums of `x`, needed by int4's min term (empty for other layouts).
fn group_sums(m: &Matrix, x: &[f32]) -> Vec<f32> {
    match m.w {
        Weights::Int4 { .. } => x.chunks_exact(GROUP).map(|g| g.iter().sum()).collect(),
        _ => Vec::new(),
    }
}

fn rows(isa: Isa, m: &Matrix, x: &[f32], xsum: &[f32], r0: usize, y: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if isa.uses_avx2() {
        // SAFETY: the caller ran `isa.check()` and `uses_avx2` implies AVX2/FMA/F16C; `m` was validated,
        // `x.len() == cols`, `xsum` has `cols / 32` entries for int4, and `y` is a chunk of the `rows`-long
        // output starting at `r0`, so rows `r0..r0 + y.len()` exist.
        return unsafe { avx2::rows(m, x, xsum, r0, y) };
    }
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    if isa.uses_simd128() && simd128::handles(m) {
        // SAFETY: SIMD128 was compiled in; the bounds are those of the AVX2 call above.
        return unsafe { simd128::rows(m, x, xsum, r0, y) };
    }
    let _ = isa;
    portable::rows(m, x, xsum, r0, y)
}

/// `y[i] = W[r0 + i] . x` for raw GGUF blocks: `GGML_ROWS` rows dequantized, then the F32 kernel.
fn ggml_rows(isa: Isa, m: &Matrix, x: &[f32], r0: usize, y: &mut [f32]) {
    SCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        s.resize(GGML_ROWS * m.cols, 0.0);
        for (k, ych) in y.chunks_mut(GGML_ROWS).enumerate() {
            let r = r0 + k * GGML_ROWS;
            let w = &mut s[..ych.len() * m.cols];
            crate::matmul::dequant_rows(isa, m, r, w);
            let f = Matrix { rows: ych.len(), cols: m.cols, w: Weights::F32(w) };
            rows(isa, &f, x, &[], 0, ych);
        }
    });
}
