//! AVX2 q8 kernels: `maddubs` (u8 x i8 -> pairs of i16) then `madd` with ones (-> i32), converted to f32 and
//! scaled per group. A block of `R` weight rows x `T` activation rows is computed at once so that each
//! unpacked weight group is reused `T` times and each activation group `R` times.

use super::{Q8Activations, STREAM_TOKENS};
use crate::layout::{Matrix, Weights, GROUP, INT4_GROUP_BYTES, TERNARY_GROUP_BYTES};
use crate::x86::{hsum, load_f16x8, load_f32x8, unpack_int4, unpack_ternary};
use std::arch::x86_64::*;

const INT8: u8 = 0;
const INT4: u8 = 1;
const TERN: u8 = 2;

/// Register block of the matmul: rows x tokens (12 accumulators of 16 ymm registers).
const MM_R: usize = 4;
const MM_T: usize = 3;

/// Quantizes one group of 32; bit-identical to `portable::quantize_group`.
///
/// # Safety
/// AVX2; `x` and `q` hold at least 32 values.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn quantize_group(x: &[f32], q: &mut [i8]) -> (f32, i32) {
    assert!(x.len() >= GROUP && q.len() >= GROUP);
    let p = x.as_ptr();
    let v = [_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8)), _mm256_loadu_ps(p.add(16)), _mm256_loadu_ps(p.add(24))];
    let abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFF_FFFF));
    let mut m = _mm256_and_ps(v[0], abs_mask);
    for vi in &v[1..] {
        m = _mm256_max_ps(m, _mm256_and_ps(*vi, abs_mask));
    }
    let m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    let m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    let m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    let amax = _mm_cvtss_f32(m4);
    let d = amax / 127.0;
    let id = _mm256_set1_ps(if d != 0.0 { 1.0 / d } else { 0.0 });
    const RND: i32 = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
    let qi = v.map(|vi| _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(vi, id), RND)));
    let sum = _mm256_add_epi32(_mm256_add_epi32(qi[0], qi[1]), _mm256_add_epi32(qi[2], qi[3]));
    let s4 = _mm_add_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256(sum, 1));
    let s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0b01_00_11_10));
    let s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0b10_11_00_01));
    // packs interleave 128-bit lanes; the permute puts the 4-byte runs back in order.
    let b = _mm256_packs_epi16(_mm256_packs_epi32(qi[0], qi[1]), _mm256_packs_epi32(qi[2], qi[3]));
    let b = _mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256(q.as_mut_ptr() as *mut __m256i, b);
    (d, _mm_cvtsi128_si32(s4))
}

/// Raw views of a validated quantized matrix.
struct Rows {
    q: *const u8,
    group_bytes: usize,
    scales: *const u16,
    mins: *const u16,
    gpr: usize,
    cols: usize,
}

impl Rows {
    fn new(m: &Matrix) -> (u8, Rows) {
        let gpr = m.cols / GROUP;
        let (kind, q, group_bytes, scales, mins) = match m.w {
            Weights::Int8 { q, scales } => (INT8, q.as_ptr() as *const u8, GROUP, scales, scales),
            Weights::Int4 { q, scales, mins } => (INT4, q.as_ptr(), INT4_GROUP_BYTES, scales, mins),
            Weights::Ternary { q, scales } => (TERN, q.as_ptr(), TERNARY_GROUP_BYTES, scales, scales),
            Weights::F32(_) | Weights::F16(_) => unreachable!("float weights take the float path"),
            _ => unreachable!("raw GGUF blocks take q8::avx2_ggml"),
        };
        (kind, Rows { q, group_bytes, scales: scales.as_ptr(), mins: mins.as_ptr(), gpr, cols: m.cols })
    }
}

/// Dot products of weight rows `r..r+R` with activation rows `t..t+T`.
///
/// Groups go 8 at a time: the combined scales `d_w d_x` of 8 groups are formed with one multiply per
/// (row, token) and broadcast from a small stack table; int4's min term `m_w s_x` of the same 8 groups is added
/// straight into the accumulator (its lanes are summed at the end anyway).
///
/// # Safety
/// AVX2/FMA/F16C; `w` views a validated matrix with at least `r + R` rows; `xq` has at least `t + T` rows of
/// `w.cols` values.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn block<const L: u8, const R: usize, const T: usize>(
    w: &Rows,
    r: usize,
    xq: &Q8Activations,
    t: usize,
) -> [[f32; T]; R] {
    let gpr = w.gpr;
    let mut acc = [[_mm256_setzero_ps(); T]; R];
    let mut g0 = 0;
    while g0 + 8 <= gpr {
        chunk::<L, R, T, true>(w, r, xq, t, g0, 8, &mut acc);
        g0 += 8;
    }
    if g0 < gpr {
        chunk::<L, R, T, false>(w, r, xq, t, g0, gpr - g0, &mut acc);
    }
    let mut out = [[0f32; T]; R];
    for i in 0..R {
        for j in 0..T {
            out[i][j] = hsum(acc[i][j]);
        }
    }
    out
}

/// Groups `g0..g0 + ng` (`ng <= 8`; `FULL` means `ng == 8`, which lets the group loop unroll).
///
/// # Safety
/// As [`block`], with `g0 + ng <= gpr`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
#[allow(clippy::too_many_arguments)]
unsafe fn chunk<const L: u8, const R: usize, const T: usize, const FULL: bool>(
    w: &Rows,
    r: usize,
    xq: &Q8Activations,
    t: usize,
    g0: usize,
    ng: usize,
    acc: &mut [[__m256; T]; R],
) {
    let gpr = w.gpr;
    let ones16 = _mm256_set1_epi16(1);
    let ones8 = _mm256_set1_epi8(1);
    let ng = if FULL { 8 } else { ng };
    let mut sc = [[[0f32; 8]; T]; R];
    for i in 0..R {
        let dw = load_f16x8(w.scales.add((r + i) * gpr + g0), ng);
        let mw = if L == INT4 { load_f16x8(w.mins.add((r + i) * gpr + g0), ng) } else { dw };
        for j in 0..T {
            let dx = load_f32x8(xq.d.as_ptr().add((t + j) * gpr + g0), ng);
            _mm256_storeu_ps(sc[i][j].as_mut_ptr(), _mm256_mul_ps(dw, dx));
            if L == INT4 {
                let sx = load_f32x8(xq.s.as_ptr().add((t + j) * gpr + g0), ng);
                acc[i][j] = _mm256_fmadd_ps(mw, sx, acc[i][j]);
            }
        }
    }
    if FULL {
        // Decode streams weights from DRAM: ask for the same groups two blocks of rows ahead (a prefetch never
        // faults; wrapping arithmetic keeps the address computation defined past the end of the matrix).
        for i in 0..R {
            let p = w.q.wrapping_add(((r + i + 2 * R) * gpr + g0) * w.group_bytes);
            let mut off = 0;
            while off < 8 * w.group_bytes {
                _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(off) as *const i8);
                off += 64;
            }
        }
    }
    for k in 0..ng {
        let g = g0 + k;
        // Per row: the operand maddubs takes unsigned (wa) and, for int8/ternary, the signs (ws).
        let mut wa = [_mm256_setzero_si256(); R];
        let mut ws = [_mm256_setzero_si256(); R];
        for i in 0..R {
            let p = w.q.add(((r + i) * gpr + g) * w.group_bytes);
            match L {
                INT8 => {
                    ws[i] = _mm256_loadu_si256(p as *const __m256i);
                    wa[i] = _mm256_abs_epi8(ws[i]);
                }
                INT4 => wa[i] = unpack_int4(p),
                _ => ws[i] = unpack_ternary(p),
            }
        }
        for j in 0..T {
            let xv = _mm256_loadu_si256(xq.qs.as_ptr().add((t + j) * w.cols + g * GROUP) as *const __m256i);
            for i in 0..R {
                let p16 = match L {
                    // |w| * (x with w's sign): exact for w = -128 too, as |w| is read unsigned.
                    INT8 => _mm256_maddubs_epi16(wa[i], _mm256_sign_epi8(xv, ws[i])),
                    INT4 => _mm256_maddubs_epi16(wa[i], xv),
                    // x, -x or 0 by the ternary sign, then pairwise sums (by ones).
                    _ => _mm256_maddubs_epi16(ones8, _mm256_sign_epi8(xv, ws[i])),
                };
                let p32 = _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, ones16));
                acc[i][j] = _mm256_fmadd_ps(p32, _mm256_broadcast_ss(&sc[i][j][k]), acc[i][j]);
            }
        }
    }
}

/// Runs one block and stores it into `outs`.
///
/// # Safety
/// As [`block`], with `outs[j0 + j][i0 + i]` in bounds for the block.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn run<const L: u8, const R: usize, const T: usize>(
    w: &Rows,
    xq: &Q8Activations,
    r0: usize,
    t0: usize,
    i0: usize,
    j0: usize,
    outs: &mut [&mut [f32]],
) {
    let res = block::<L, R, T>(w, r0 + i0, xq, t0 + j0);
    for (i, row) in res.iter().enumerate() {
        for (j, v) in row.iter().enumerate() {
            outs[j0 + j][i0 + i] = *v;
        }
    }
}

/// `outs[j][i] = W[r0 + i] . x[t0 + j]` for a quantized `m`.
///
/// # Safety
/// AVX2/FMA/F16C; `m` validated; `r0 + outs[j].len() <= m.rows` for every `j` (all equally long) and
/// `t0 + outs.len() <= xq.n()`; `xq.cols() == m.cols`.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn tile(m: &Matrix, xq: &Q8Activations, r0: usize, t0: usize, outs: &mut [&mut [f32]]) {
    let nt = outs.len();
    let nr = outs.first().map_or(0, |o| o.len());
    assert!(outs.iter().all(|o| o.len() == nr) && r0 + nr <= m.rows && t0 + nt <= xq.n && xq.cols == m.cols);
    let (kind, w) = Rows::new(m);
    match kind {
        INT8 => tile_l::<INT8>(&w, xq, r0, t0, outs),
        INT4 => tile_l::<INT4>(&w, xq, r0, t0, outs),
        _ => tile_l::<TERN>(&w, xq, r0, t0, outs),
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile_l<const L: u8>(w: &Rows, xq: &Q8Activations, r0: usize, t0: usize, outs: &mut [&mut [f32]]) {
    let nt = outs.len();
    let nr = outs[0].len();
    let (mr, mt) = if nt <= STREAM_TOKENS { (1, MM_T) } else { (MM_R, MM_T) };
    let mut j = 0;
    while j < nt {
        let tt = (nt - j).min(mt);
        let mut i = 0;
        while i < nr {
            let rr = (nr - i).min(mr);
            match (rr, tt) {
                (4, 3) => run::<L, 4, 3>(w, xq, r0, t0, i, j, outs),
                (4, 2) => run::<L, 4, 2>(w, xq, r0, t0, i, j, outs),
                (4, 1) => run::<L, 4, 1>(w, xq, r0, t0, i, j, outs),
                (3, 3) => run::<L, 3, 3>(w, xq, r0, t0, i, j, outs),
                (3, 2) => run::<L, 3, 2>(w, xq, r0, t0, i, j, outs),
                (3, 1) => run::<L, 3, 1>(w, xq, r0, t0, i, j, outs),
                (2, 3) => run::<L, 2, 3>(w, xq, r0, t0, i, j, outs),
                (2, 2) => run::<L, 2, 2>(w, xq, r0, t0, i, j, outs),
                (2, 1) => run::<L, 2, 1>(w, xq, r0, t0, i, j, outs),
                (1, 3) => run::<L, 1, 3>(w, xq, r0, t0, i, j, outs),
                (1, 2) => run::<L, 1, 2>(w, xq, r0, t0, i, j, outs),
                _ => run::<L, 1, 1>(w, xq, r0, t0, i, j, outs),
            }
            i += rr;
        }
        j += tt;
    }
}
