//! AVX2 matmul: weight rows dequantized to f32 (8 lanes at a time), then a 4-row x 3-token FMA kernel
//! (12 accumulators, 3 activation registers and 1 weight register: the 16 ymm registers).

use crate::layout::{Matrix, Weights, GROUP, INT4_GROUP_BYTES, TERNARY_GROUP_BYTES};
use crate::x86::hsum;
use std::arch::x86_64::*;

const MR: usize = 4;
const MT: usize = 3;

/// Writes rows `r0..r0 + out.len() / cols` of `m` into `out` as f32.
///
/// # Safety
/// AVX2/FMA/F16C; `m` validated.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dequant_rows(m: &Matrix, r0: usize, out: &mut [f32]) {
    let cols = m.cols;
    let nr = out.len() / cols;
    assert!(out.len() == nr * cols && r0 + nr <= m.rows);
    let gpr = cols / GROUP;
    let g_start = r0 * gpr;
    let o = out.as_mut_ptr();
    match m.w {
        Weights::F32(w) => out.copy_from_slice(&w[r0 * cols..(r0 + nr) * cols]),
        Weights::F16(w) => {
            let src = &w[r0 * cols..(r0 + nr) * cols];
            let mut c = 0;
            while c + 8 <= src.len() {
                _mm256_storeu_ps(o.add(c), _mm256_cvtph_ps(_mm_loadu_si128(src.as_ptr().add(c) as *const __m128i)));
                c += 8;
            }
            for k in c..src.len() {
                out[k] = half::f16::from_bits(src[k]).to_f32();
            }
        }
        Weights::Int8 { q, scales } => {
            for g in 0..nr * gpr {
                let d = _mm256_set1_ps(half::f16::from_bits(scales[g_start + g]).to_f32());
                let p = q[(g_start + g) * GROUP..(g_start + g + 1) * GROUP].as_ptr();
                for c in 0..4 {
                    let v = _mm256_cvtepi8_epi32(_mm_loadl_epi64(p.add(8 * c) as *const __m128i));
                    _mm256_storeu_ps(o.add(g * GROUP + 8 * c), _mm256_mul_ps(d, _mm256_cvtepi32_ps(v)));
                }
            }
        }
        Weights::Int4 { q, scales, mins } => {
            let m0f = _mm_set1_epi8(0x0F);
            for g in 0..nr * gpr {
                let gi = g_start + g;
                let d = _mm256_set1_ps(half::f16::from_bits(scales[gi]).to_f32());
                let mn = _mm256_set1_ps(half::f16::from_bits(mins[gi]).to_f32());
                let b =
                    _mm_loadu_si128(q[gi * INT4_GROUP_BYTES..(gi + 1) * INT4_GROUP_BYTES].as_ptr() as *const __m128i);
                let lo = _mm_and_si128(b, m0f);
                let hi = _mm_and_si128(_mm_srli_epi16(b, 4), m0f);
                for (c, part) in [lo, _mm_srli_si128(lo, 8), hi, _mm_srli_si128(hi, 8)].into_iter().enumerate() {
                    let v = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(part));
                    // d * q + m, each rounded, as the layout defines it.
                    _mm256_storeu_ps(o.add(g * GROUP + 8 * c), _mm256_add_ps(_mm256_mul_ps(d, v), mn));
                }
            }
        }
        Weights::Ternary { q, scales } => {
            let (mask3, zero, one) = (_mm256_set1_epi32(3), _mm256_setzero_si256(), _mm256_set1_epi32(1));
            for g in 0..nr * gpr {
                let gi = g_start + g;
                let d = _mm256_castps_si256(_mm256_set1_ps(half::f16::from_bits(scales[gi]).to_f32()));
                let p = q[gi * TERNARY_GROUP_BYTES..(gi + 1) * TERNARY_GROUP_BYTES].as_ptr();
                let bytes = _mm256_cvtepu8_epi32(_mm_loadl_epi64(p as *const __m128i));
                for j in 0..4i32 {
                    let c = _mm256_and_si256(_mm256_srlv_epi32(bytes, _mm256_set1_epi32(2 * j)), mask3);
                    // -d, 0 or d by selection: no multiplication.
                    let skip = _mm256_cmpeq_epi32(c, one);
                    let neg = _mm256_slli_epi32(_mm256_cmpeq_epi32(c, zero), 31);
                    let v = _mm256_xor_si256(_mm256_andnot_si256(skip, d), neg);
                    _mm256_storeu_ps(o.add(g * GROUP + 8 * j as usize), _mm256_castsi256_ps(v));
                }
            }
        }
        _ => {
            // The scalar dequantization, inlined here and so vectorised with AVX2 (still bit-exact).
            let (kind, bytes) = m.w.as_ggml().expect("every other layout is matched above");
            let rb = kind.bytes_for(cols);
            crate::ggml::dequantize_blocks(kind, &bytes[r0 * rb..(r0 + nr) * rb], out);
        }
    }
}

/// `outs[j][i] = w[i] . x[j]` for `w` `[nr, cols]` and `x` `[outs.len(), cols]`, `nr = outs[j].len()`.
///
/// # Safety
/// AVX2/FMA.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn block_tile(w: &[f32], x: &[f32], cols: usize, outs: &mut [&mut [f32]]) {
    let nt = outs.len();
    let nr = outs.first().map_or(0, |o| o.len());
    assert!(w.len() == nr * cols && x.len() == nt * cols && outs.iter().all(|o| o.len() == nr));
    let (wp, xp) = (w.as_ptr(), x.as_ptr());
    let mut j = 0;
    while j < nt {
        let tt = (nt - j).min(MT);
        let mut i = 0;
        while i < nr {
            let rr = (nr - i).min(MR);
            let (wi, xj) = (wp.add(i * cols), xp.add(j * cols));
            macro_rules! go {
                ($r:literal, $t:literal) => {{
                    let res = block::<$r, $t>(wi, xj, cols);
                    for (a, row) in res.iter().enumerate() {
                        for (b, v) in row.iter().enumerate() {
                            outs[j + b][i + a] = *v;
                        }
                    }
                }};
            }
            match (rr, tt) {
                (4, 3) => go!(4, 3),
                (4, 2) => go!(4, 2),
                (4, 1) => go!(4, 1),
                (3, 3) => go!(3, 3),
                (3, 2) => go!(3, 2),
                (3, 1) => go!(3, 1),
                (2, 3) => go!(2, 3),
                (2, 2) => go!(2, 2),
                (2, 1) => go!(2, 1),
                (1, 3) => go!(1, 3),
                (1, 2) => go!(1, 2),
                _ => go!(1, 1),
            }
            i += rr;
        }
        j += tt;
    }
}

/// `R` rows at `w` x `T` rows at `x`, both with stride `cols`.
///
/// # Safety
/// AVX2/FMA; `R` (resp. `T`) rows of `cols` floats readable at `w` (resp. `x`).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn block<const R: usize, const T: usize>(w: *const f32, x: *const f32, cols: usize) -> [[f32; T]; R] {
    let mut acc = [[_mm256_setzero_ps(); T]; R];
    let mut c = 0;
    while c + 8 <= cols {
        let mut xv = [_mm256_setzero_ps(); T];
        for (j, v) in xv.iter_mut().enumerate() {
            *v = _mm256_loadu_ps(x.add(j * cols + c));
        }
        for (i, acc_i) in acc.iter_mut().enumerate() {
            let wv = _mm256_loadu_ps(w.add(i * cols + c));
            for (a, xvj) in acc_i.iter_mut().zip(&xv) {
                *a = _mm256_fmadd_ps(wv, *xvj, *a);
            }
        }
        c += 8;
    }
    let mut out = [[0f32; T]; R];
    for i in 0..R {
        for j in 0..T {
            let mut s = hsum(acc[i][j]);
            for k in c..cols {
                s += *w.add(i * cols + k) * *x.add(j * cols + k);
            }
            out[i][j] = s;
        }
    }
    out
}
