//! Integer dot products against 8-bit quantized activations, the way llama.cpp's Q8 paths work.
//!
//! Each activation row is cut into groups of [`GROUP`] values; a group keeps 32 `i8` quants `q`, a scale
//! `d = absmax / 127` (so `x ~ d * q`, `|x - d q| <= d / 2`) and `s = d * sum(q)`. Then per weight group:
//!
//! - Int8:    `d_w d_x sum(q_w q_x)`
//! - Int4:    `d_w d_x sum(q_w q_x) + m_w s_x`  (from `w = d_w q_w + m_w`)
//! - Ternary: `d_w d_x sum(sign(c - 1) q_x)`, the inner sum by add/subtract/skip (`_mm256_sign_epi8`)
//!
//! - raw GGUF blocks: per group of 32, `a d_x sum(q q_x) + b s_x` with `w = a q + b`: Q8_0 `a = d`; Q5_0
//!   `a = d`, `q` in -16..16; Q5_1 `a = d`, `b = m`; Q4_K/Q5_K `a = d sc`, `b = -dmin mn` of the group's
//!   sub-block; Q6_K `a = d` with the two 16-value sub-block scales multiplied into the integer sum.
//!
//! F32 and F16 weights take the float path on the unquantized copy of `x` that [`Q8Activations`] keeps.
//! Quantization itself is bit-identical on every ISA (round to nearest, ties to even).

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx2_ggml;
#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(target_arch = "aarch64")]
mod neon;
mod portable;
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
mod simd128;

use crate::isa::{self, Isa};
use crate::layout::{Matrix, Weights, GROUP};
use crate::{matvec, par};

/// Tiles of at most this many tokens (decode, a small batch of sequences) read each weight from DRAM once, so
/// the x86 kernels walk them one row at a time: one sequential stream per thread, which the hardware prefetcher
/// follows. Register blocks of 4 interleaved rows starved it: on 2 Zen 4 cores Qwen2.5-Coder-1.5B Q4_K_M decoded
/// 15 tok/s with them and 24 with one row; Qwen2.5-Coder-0.5B, 2 sequences at once, 57 against 90, and 8 at
/// once 97 against 108. Larger tiles (prefill on AVX2-only machines) are compute-bound and keep 4x3 blocks
/// (SmolLM2 pp128 with AVX2: 429 tok/s against 316 with one row).
#[cfg(target_arch = "x86_64")]
const STREAM_TOKENS: usize = 8;

/// `n` activation rows of `cols` values, quantized per group of 32 (see the module doc).
#[derive(Clone, Debug, Default)]
pub struct Q8Activations {
    n: usize,
    cols: usize,
    /// `[n, cols]` quants in `-127..=127`.
    qs: Vec<i8>,
    /// `[n, cols / 32]` scales `d = absmax / 127`.
    d: Vec<f32>,
    /// `[n, cols / 32]` `d * sum(q)` of each group.
    s: Vec<f32>,
    /// `[n, cols]` the unquantized input, for the float fallback (F32/F16 weights).
    x: Vec<f32>,
}

impl Q8Activations {
    /// An empty buffer, to be filled by [`Q8Activations::quantize_into`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Rows held.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Values per row.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// `[n, cols]` quants.
    pub fn quants(&self) -> &[i8] {
        &self.qs
    }

    /// `[n, cols / 32]` group scales.
    pub fn scales(&self) -> &[f32] {
        &self.d
    }

    /// `[n, cols / 32]` group sums `d * sum(q)`.
    pub fn sums(&self) -> &[f32] {
        &self.s
    }

    /// `[n, cols]` the float input this was quantized from.
    pub fn floats(&self) -> &[f32] {
        &self.x
    }

    /// Quantizes `x` (`[n, cols]` row-major, `cols = x.len() / n`, a multiple of 32) into this buffer, reusing
    /// its allocations.
    pub fn quantize_into(&mut self, x: &[f32], n: usize) {
        self.quantize_into_with(isa::detect(), x, n)
    }

    /// [`Q8Activations::quantize_into`] with an explicit ISA.
    pub fn quantize_into_with(&mut self, isa: Isa, x: &[f32], n: usize) {
        isa.check();
        assert!(n > 0 && x.len().is_multiple_of(n), "q8: x has {} values, not a multiple of n = {n}", x.len());
        let cols = x.len() / n;
        assert!(cols > 0 && cols.is_multiple_of(GROUP), "q8: cols = {cols} must be a positive multiple of {GROUP}");
        let groups = x.len() / GROUP;
        self.n = n;
        self.cols = cols;
        self.qs.resize(x.len(), 0);
        self.d.resize(groups, 0.0);
        self.s.resize(groups, 0.0);
        self.x.clear();
        self.x.extend_from_slice(x);
        let groups_iter = x.chunks_exact(GROUP).zip(self.qs.chunks_exact_mut(GROUP));
        for ((xg, qg), (d, s)) in groups_iter.zip(self.d.iter_mut().zip(self.s.iter_mut())) {
            let (dg, sum) = quantize_group(isa, xg, qg);
            *d = dg;
            *s = dg * sum as f32;
        }
    }
}

/// Quantizes `x` (`[n, cols]`) with the detected ISA.
pub fn quantize(x: &[f32], n: usize) -> Q8Activations {
    quantize_with(isa::detect(), x, n)
}

/// [`quantize`] with an explicit ISA.
pub fn quantize_with(isa: Isa, x: &[f32], n: usize) -> Q8Activations {
    let mut q = Q8Activations::new();
    q.quantize_into_with(isa, x, n);
    q
}

fn quantize_group(isa: Isa, x: &[f32], q: &mut [i8]) -> (f32, i32) {
    #[cfg(target_arch = "x86_64")]
    if isa.uses_avx2() {
        // SAFETY: `uses_avx2` is only true for levels that include AVX2/FMA/F16C, and the caller ran
        // `isa.check()`, so this CPU has them; both slices are exactly GROUP long (chunks_exact).
        return unsafe { avx2::quantize_group(x, q) };
    }
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    if isa.uses_simd128() {
        return simd128::quantize_group(x, q);
    }
    let _ = isa;
    portable::quantize_group(x, q)
}

/// `y = W x` with `x` quantized (`xq.n() == 1`), detected ISA.
pub fn matvec_q8(m: &Matrix, xq: &Q8Activations, y: &mut [f32]) {
    matvec_q8_with(isa::detect(), m, xq, y)
}

/// [`matvec_q8`] with an explicit ISA.
pub fn matvec_q8_with(isa: Isa, m: &Matrix, xq: &Q8Activations, y: &mut [f32]) {
    isa.check();
    check_shapes(m, xq, 1, y);
    if matches!(m.w, Weights::F32(_) | Weights::F16(_)) {
        return matvec::matvec_with(isa, m, &xq.x, y);
    }
    let row_bytes = m.row_bytes();
    par::for_row_chunks(y, row_bytes, |r0, ych| tile(isa, m, xq, r0, 0, &mut [ych], true));
}

/// `y[t] = W x[t]` for the `n` rows of `xq` (`y` is `[n, rows]`), detected ISA.
pub fn matmul_q8(m: &Matrix, xq: &Q8Activations, n: usize, y: &mut [f32]) {
    matmul_q8_with(isa::detect(), m, xq, n, y)
}

/// [`matmul_q8`] with an explicit ISA.
pub fn matmul_q8_with(isa: Isa, m: &Matrix, xq: &Q8Activations, n: usize, y: &mut [f32]) {
    isa.check();
    check_shapes(m, xq, n, y);
    if matches!(m.w, Weights::F32(_) | Weights::F16(_)) {
        return crate::matmul::matmul_with(isa, m, &xq.x, n, y);
    }
    if m.rows == 0 {
        return;
    }
    if n == 1 {
        return matvec_q8_with(isa, m, xq, y);
    }
    let (rb, tb) = par::tile_shape(m.rows, m.cols, n, m.row_bytes());
    par::for_tiles(y, m.rows, rb, tb, |r0, t0, outs| tile(isa, m, xq, r0, t0, outs, false));
}

fn check_shapes(m: &Matrix, xq: &Q8Activations, n: usize, y: &[f32]) {
    if let Err(e) = m.validate() {
        panic!("q8: invalid matrix: {e}");
    }
    assert_eq!(xq.n, n, "q8: activations hold {} rows, call asks for n = {n}", xq.n);
    assert_eq!(xq.cols, m.cols, "q8: activations have {} cols, matrix has {}", xq.cols, m.cols);
    assert_eq!(y.len(), n * m.rows, "q8: y has {} values, needs n * rows = {}", y.len(), n * m.rows);
}

/// Computes `outs[j][i] = W[r0 + i] . x[t0 + j]` for a quantized `m`.
fn tile(isa: Isa, m: &Matrix, xq: &Q8Activations, r0: usize, t0: usize, outs: &mut [&mut [f32]], matvec: bool) {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512Vnni && outs.len() >= avx512::MIN_TOKENS {
        // SAFETY: `isa.check()` ran, so AVX-512 F/BW/VL/DQ/VNNI (and AVX2/FMA/F16C) are present; `m` is quantized
        // (float weights returned earlier); bounds as below.
        return unsafe { avx512::tile(m, xq, r0, t0, outs) };
    }
    #[cfg(target_arch = "x86_64")]
    if isa.uses_avx2() {
        if m.w.as_ggml().is_some() {
            // SAFETY: as below.
            return unsafe { avx2_ggml::tile(m, xq, r0, t0, outs) };
        }
        // SAFETY: AVX2/FMA/F16C are present (see `quantize_group`); `m` was validated, and the tile lies inside
        // `[rows, n]` because `outs` are pieces of `y`, whose length was checked against `n * rows`.
        return unsafe { avx2::tile(m, xq, r0, t0, outs) };
    }
    #[cfg(target_arch = "aarch64")]
    if isa == Isa::Neon && m.w.as_ggml().is_none() {
        // SAFETY: `isa.check()` ran, so NEON is present; bounds as above.
        return unsafe { neon::tile(m, xq, r0, t0, outs, matvec) };
    }
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    if isa.uses_simd128() && m.w.as_ggml().is_none() {
        // SAFETY: SIMD128 was compiled in (wasm has no run-time detection); `m` is quantized and validated, and
        // the tile lies inside `[rows, n]` as above.
        return unsafe { simd128::tile(m, xq, r0, t0, outs) };
    }
    let _ = (isa, matvec);
    portable::tile(m, xq, r0, t0, outs)
}
