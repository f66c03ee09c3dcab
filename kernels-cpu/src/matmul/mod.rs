//! `Y = X W^T` for `n` float activation rows (prefill). The output is cut into tiles of rows x tokens, one
//! rayon task each; a task dequantizes its weight rows once into a per-thread f32 scratch (F32 weights are read
//! in place) and then runs a register-blocked kernel (4 rows x 3 tokens on AVX2) over all its tokens, so every
//! dequantized weight is reused for every token of the tile.

#[cfg(target_arch = "x86_64")]
mod avx2;
mod portable;

use crate::isa::{self, Isa};
use crate::layout::{Matrix, Weights};
use crate::{matvec, par};
use std::cell::RefCell;

thread_local! {
    /// Dequantized weight rows of the tile a thread is working on.
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// `y[t, r] = sum_c W[r, c] x[t, c]` for `x` `[n, cols]` and `y` `[n, rows]`, detected ISA.
pub fn matmul(m: &Matrix, x: &[f32], n: usize, y: &mut [f32]) {
    matmul_with(isa::detect(), m, x, n, y)
}

/// [`matmul`] with an explicit ISA.
pub fn matmul_with(isa: Isa, m: &Matrix, x: &[f32], n: usize, y: &mut [f32]) {
    isa.check();
    if let Err(e) = m.validate() {
        panic!("matmul: invalid matrix: {e}");
    }
    assert_eq!(x.len(), n * m.cols, "matmul: x has {} values, needs n * cols = {}", x.len(), n * m.cols);
    assert_eq!(y.len(), n * m.rows, "matmul: y has {} values, needs n * rows = {}", y.len(), n * m.rows);
    if n == 0 || m.rows == 0 {
        return;
    }
    if n == 1 {
        return matvec::matvec_with(isa, m, x, y);
    }
    let (rb, tb) = par::tile_shape(m.rows, m.cols, n, 4 * m.cols);
    par::for_tiles(y, m.rows, rb, tb, |r0, t0, outs| tile(isa, m, x, r0, t0, outs));
}

/// `outs[j][i] = W[r0 + i] . x[t0 + j]`.
fn tile(isa: Isa, m: &Matrix, x: &[f32], r0: usize, t0: usize, outs: &mut [&mut [f32]]) {
    let nr = outs[0].len();
    let cols = m.cols;
    let xs = &x[t0 * cols..(t0 + outs.len()) * cols];
    let run = |w: &[f32], outs: &mut [&mut [f32]]| {
        #[cfg(target_arch = "x86_64")]
        if isa.uses_avx2() {
            // SAFETY: `isa.check()` ran and `uses_avx2` implies AVX2/FMA; `w` holds `nr` rows and `xs`
            // `outs.len()` rows of `cols` values, which `block_tile` asserts.
            return unsafe { avx2::block_tile(w, xs, cols, outs) };
        }
        portable::block_tile(w, xs, cols, outs)
    };
    if let Weights::F32(w) = m.w {
        return run(&w[r0 * cols..(r0 + nr) * cols], outs);
    }
    SCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        s.resize(nr * cols, 0.0);
        dequant_rows(isa, m, r0, &mut s);
        run(&s, outs);
    });
}

/// Rows `r0..r0 + out.len() / cols` of `m` as f32.
pub(crate) fn dequant_rows(isa: Isa, m: &Matrix, r0: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if isa.uses_avx2() {
        // SAFETY: AVX2/FMA/F16C present (see `tile`); `m` was validated and `dequant_rows` asserts that the
        // requested rows exist.
        return unsafe { avx2::dequant_rows(m, r0, out) };
    }
    let _ = isa;
    for (i, row) in out.chunks_exact_mut(m.cols).enumerate() {
        m.dequant_row(r0 + i, row);
    }
}
