//! AVX2 float matvec, `R` rows at a time (each `x` load serves `R` rows). Quantized groups are widened to f32
//! in registers; the group scale multiplies the group's partial sum once.

use crate::layout::{Matrix, Weights, GROUP, INT4_GROUP_BYTES, TERNARY_GROUP_BYTES};
use crate::x86::{hsum, load_f16x8, load_f32x8};
use std::arch::x86_64::*;

const F32: u8 = 0;
const F16: u8 = 1;
const INT8: u8 = 2;
const INT4: u8 = 3;
const TERN: u8 = 4;

/// Rows per register block: one, so each thread reads its rows as one sequential stream (see
/// `q8::STREAM_TOKENS`). The f16 products of a rank-16 LoRA adapter gained too: SmolLM2 decoded 157-162 tok/s
/// with the adapter against 122-128 with 4 rows.
const R: usize = 1;

/// Raw views of a validated matrix.
struct View {
    w: *const u8,
    scales: *const u16,
    mins: *const u16,
    cols: usize,
    gpr: usize,
}

/// `y[i] = W[r0 + i] . x`.
///
/// # Safety
/// AVX2/FMA/F16C; `m` validated; `x.len() == m.cols`; `xsum.len() == m.cols / 32` for int4;
/// `r0 + y.len() <= m.rows`.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn rows(m: &Matrix, x: &[f32], xsum: &[f32], r0: usize, y: &mut [f32]) {
    assert!(x.len() == m.cols && r0 + y.len() <= m.rows);
    let gpr = m.cols / GROUP;
    let none: &[u16] = &[];
    let (kind, w, scales, mins) = match m.w {
        Weights::F32(w) => (F32, w.as_ptr() as *const u8, none, none),
        Weights::F16(w) => (F16, w.as_ptr() as *const u8, none, none),
        Weights::Int8 { q, scales } => (INT8, q.as_ptr() as *const u8, scales, none),
        Weights::Int4 { q, scales, mins } => {
            assert_eq!(xsum.len(), gpr);
            (INT4, q.as_ptr(), scales, mins)
        }
        Weights::Ternary { q, scales } => (TERN, q.as_ptr(), scales, none),
        _ => unreachable!("raw GGUF blocks are dequantized to f32 rows first (matvec::ggml_rows)"),
    };
    let v = View { w, scales: scales.as_ptr(), mins: mins.as_ptr(), cols: m.cols, gpr };
    match kind {
        F32 => rows_l::<F32>(&v, x, xsum, r0, y),
        F16 => rows_l::<F16>(&v, x, xsum, r0, y),
        INT8 => rows_l::<INT8>(&v, x, xsum, r0, y),
        INT4 => rows_l::<INT4>(&v, x, xsum, r0, y),
        _ => rows_l::<TERN>(&v, x, xsum, r0, y),
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn rows_l<const L: u8>(v: &View, x: &[f32], xsum: &[f32], r0: usize, y: &mut [f32]) {
    let mut i = 0;
    while i < y.len() {
        let rr = (y.len() - i).min(R);
        match rr {
            4 => y[i..i + 4].copy_from_slice(&block::<L, 4>(v, x, xsum, r0 + i)),
            3 => y[i..i + 3].copy_from_slice(&block::<L, 3>(v, x, xsum, r0 + i)),
            2 => y[i..i + 2].copy_from_slice(&block::<L, 2>(v, x, xsum, r0 + i)),
            _ => y[i..i + 1].copy_from_slice(&block::<L, 1>(v, x, xsum, r0 + i)),
        }
        i += rr;
    }
}

/// Rows `r..r+N` dotted with `x`.
///
/// # Safety
/// As [`rows`], with `r + N <= rows`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn block<const L: u8, const N: usize>(v: &View, x: &[f32], xsum: &[f32], r: usize) -> [f32; N] {
    if L == F32 || L == F16 {
        return block_float::<L, N>(v, x, r);
    }
    let gpr = v.gpr;
    let xp = x.as_ptr();
    let mut acc = [_mm256_setzero_ps(); N];
    let mut sc = [[0f32; 8]; N];
    let mask3 = _mm256_set1_epi32(3);
    let zero = _mm256_setzero_si256();
    let one = _mm256_set1_epi32(1);
    let m0f = _mm_set1_epi8(0x0F);
    let mut g0 = 0;
    while g0 < gpr {
        let ng = (gpr - g0).min(8);
        for (i, s) in sc.iter_mut().enumerate() {
            _mm256_storeu_ps(s.as_mut_ptr(), load_f16x8(v.scales.add((r + i) * gpr + g0), ng));
        }
        // The same groups two row blocks ahead, for weights streamed from DRAM (see q8::avx2::chunk).
        let gb = match L {
            INT8 => GROUP,
            INT4 => INT4_GROUP_BYTES,
            _ => TERNARY_GROUP_BYTES,
        };
        for i in 0..N {
            let p = v.w.wrapping_add(((r + i + 2 * R) * gpr + g0) * gb);
            let mut off = 0;
            while off < ng * gb {
                _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(off) as *const i8);
                off += 64;
            }
        }
        for k in 0..ng {
            let g = g0 + k;
            let xg = xp.add(g * GROUP);
            let xv = [
                _mm256_loadu_ps(xg),
                _mm256_loadu_ps(xg.add(8)),
                _mm256_loadu_ps(xg.add(16)),
                _mm256_loadu_ps(xg.add(24)),
            ];
            for i in 0..N {
                let gi = (r + i) * gpr + g;
                let part = match L {
                    INT8 => {
                        let p = v.w.add(gi * GROUP);
                        let mut s = _mm256_setzero_ps();
                        for (c, xc) in xv.iter().enumerate() {
                            let q = _mm256_cvtepi8_epi32(_mm_loadl_epi64(p.add(8 * c) as *const __m128i));
                            s = _mm256_fmadd_ps(_mm256_cvtepi32_ps(q), *xc, s);
                        }
                        s
                    }
                    INT4 => {
                        let b = _mm_loadu_si128(v.w.add(gi * INT4_GROUP_BYTES) as *const __m128i);
                        let lo = _mm_and_si128(b, m0f);
                        let hi = _mm_and_si128(_mm_srli_epi16(b, 4), m0f);
                        let q = [lo, _mm_srli_si128(lo, 8), hi, _mm_srli_si128(hi, 8)];
                        let mut s = _mm256_setzero_ps();
                        for (qc, xc) in q.iter().zip(&xv) {
                            s = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(*qc)), *xc, s);
                        }
                        s
                    }
                    _ => {
                        // Byte b of the group, 8 of them widened to 32-bit lanes; bits 2j..2j+2 are value 8j+b.
                        let bytes =
                            _mm256_cvtepu8_epi32(_mm_loadl_epi64(v.w.add(gi * TERNARY_GROUP_BYTES) as *const __m128i));
                        let mut s = _mm256_setzero_ps();
                        for (j, xc) in xv.iter().enumerate() {
                            let c = _mm256_and_si256(_mm256_srlv_epi32(bytes, _mm256_set1_epi32(2 * j as i32)), mask3);
                            // code 0 -> -x, 1 -> skip, 2 -> +x: clear skipped lanes, flip the sign bit of negated.
                            let skip = _mm256_cmpeq_epi32(c, one);
                            let neg = _mm256_slli_epi32(_mm256_cmpeq_epi32(c, zero), 31);
                            let t = _mm256_xor_si256(_mm256_andnot_si256(skip, _mm256_castps_si256(*xc)), neg);
                            s = _mm256_add_ps(s, _mm256_castsi256_ps(t));
                        }
                        s
                    }
                };
                acc[i] = _mm256_fmadd_ps(part, _mm256_broadcast_ss(&sc[i][k]), acc[i]);
            }
        }
        g0 += 8;
    }
    let mut out = [0f32; N];
    for i in 0..N {
        let mut total = acc[i];
        if L == INT4 {
            let mut g0 = 0;
            while g0 < gpr {
                let ng = (gpr - g0).min(8);
                let mw = load_f16x8(v.mins.add((r + i) * gpr + g0), ng);
                total = _mm256_fmadd_ps(mw, load_f32x8(xsum.as_ptr().add(g0), ng), total);
                g0 += 8;
            }
        }
        out[i] = hsum(total);
    }
    out
}

/// F32/F16 rows: two accumulators per row over 16 columns, then 8, then a scalar tail.
///
/// # Safety
/// As [`block`].
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn block_float<const L: u8, const N: usize>(v: &View, x: &[f32], r: usize) -> [f32; N] {
    let cols = v.cols;
    let xp = x.as_ptr();
    let mut a0 = [_mm256_setzero_ps(); N];
    let mut a1 = [_mm256_setzero_ps(); N];
    let mut c = 0;
    while c + 16 <= cols {
        let (x0, x1) = (_mm256_loadu_ps(xp.add(c)), _mm256_loadu_ps(xp.add(c + 8)));
        for i in 0..N {
            a0[i] = _mm256_fmadd_ps(load::<L>(v.w, (r + i) * cols + c), x0, a0[i]);
            a1[i] = _mm256_fmadd_ps(load::<L>(v.w, (r + i) * cols + c + 8), x1, a1[i]);
        }
        c += 16;
    }
    if c + 8 <= cols {
        let x0 = _mm256_loadu_ps(xp.add(c));
        for i in 0..N {
            a0[i] = _mm256_fmadd_ps(load::<L>(v.w, (r + i) * cols + c), x0, a0[i]);
        }
        c += 8;
    }
    let mut out = [0f32; N];
    for i in 0..N {
        let mut s = hsum(_mm256_add_ps(a0[i], a1[i]));
        for k in c..cols {
            let idx = (r + i) * cols + k;
            let w = if L == F32 {
                *(v.w as *const f32).add(idx)
            } else {
                half::f16::from_bits(*(v.w as *const u16).add(idx)).to_f32()
            };
            s += w * x[k];
        }
        out[i] = s;
    }
    out
}

/// 8 weights at element `idx` of an F32 or F16 matrix, as f32.
///
/// # Safety
/// AVX2/F16C; `idx + 8` elements readable from `w`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn load<const L: u8>(w: *const u8, idx: usize) -> __m256 {
    if L == F32 {
        _mm256_loadu_ps((w as *const f32).add(idx))
    } else {
        _mm256_cvtph_ps(_mm_loadu_si128((w as *const u16).add(idx) as *const __m128i))
    }
}
