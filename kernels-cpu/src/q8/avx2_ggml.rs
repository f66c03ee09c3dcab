//! AVX2 q8 kernels over raw GGUF blocks, read in place. The row is walked in chunks of 8 groups of 32 (one
//! k-quant block, or 8 small blocks), which puts the per-group weight factors `a` and `b` (`w = a q + b`, see
//! the module doc of [`super`]) in the 8 lanes of one register: `a d_x` for the chunk is one multiply per
//! (row, token) and the min term `b s_x` one FMA straight into the accumulator. Per group the weight quants
//! are unpacked to 32 bytes once and reused for `T` tokens: `maddubs` (u8 x i8 -> i16 pairs) then `madd`
//! (-> i32), by ones, or by Q6_K's two sub-block scales (|pair| <= 2 * 32 * 127, times |sc| <= 128, fits i32).
//! Signed quants (Q8_0, Q6_K) go as `|q|` with their sign moved onto `x` (`_mm256_sign_epi8`); Q5_0 goes as
//! unsigned `q` with a min term `b = -16 d`, which saves the sign and absolute value per group.

use super::{Q8Activations, STREAM_TOKENS};
use crate::ggml::{k_scales, GgmlBlock, Q4_K_BYTES, Q5_0_BYTES, Q5_1_BYTES, Q5_K_BYTES, Q6_K_BYTES, Q8_0_BYTES};
use crate::layout::{Matrix, GROUP};
use crate::x86::{hsum, load_f32x8, unpack_int4};
use std::arch::x86_64::*;

pub(super) const Q4K: u8 = 0;
pub(super) const Q5K: u8 = 1;
pub(super) const Q6K: u8 = 2;
pub(super) const Q5_0: u8 = 3;
pub(super) const Q5_1: u8 = 4;
pub(super) const Q8_0: u8 = 5;

/// Register block of the matmul: rows x tokens (12 accumulators).
const MM_R: usize = 4;
const MM_T: usize = 3;

pub(super) const fn block_bytes(l: u8) -> usize {
    match l {
        Q4K => Q4_K_BYTES,
        Q5K => Q5_K_BYTES,
        Q6K => Q6_K_BYTES,
        Q5_0 => Q5_0_BYTES,
        Q5_1 => Q5_1_BYTES,
        _ => Q8_0_BYTES,
    }
}

/// Groups of 32 per block.
pub(super) const fn groups_per_block(l: u8) -> usize {
    if l <= Q6K {
        8
    } else {
        1
    }
}

/// Quants with a sign (moved onto `x`), rather than unsigned with a min.
const fn signed(l: u8) -> bool {
    matches!(l, Q6K | Q8_0)
}

/// A min term `b s_x`.
const fn has_min(l: u8) -> bool {
    matches!(l, Q4K | Q5K | Q5_0 | Q5_1)
}

/// Raw view of a validated matrix of blocks.
pub(super) struct Rows {
    pub(super) p: *const u8,
    pub(super) row_bytes: usize,
    pub(super) gpr: usize,
    pub(super) cols: usize,
}

/// The f16 at `p` broadcast to 8 f32 lanes, by F16C (`half` would test for F16C at run time on every call,
/// which cost a third of a Q4_K matvec).
///
/// # Safety
/// AVX2/F16C; `p` valid for 2 reads.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn f16_splat(p: *const u8) -> __m256 {
    let h = _mm_set1_epi16(std::ptr::read_unaligned(p as *const i16));
    _mm256_cvtph_ps(h)
}

/// Eight bytes (one per lane) as f32 lanes.
///
/// # Safety
/// AVX2.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn bytes_f32(v: u64) -> __m256 {
    _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128(v as i64)))
}

/// The factors `(a, b)` of groups `g0..g0 + ng` of the row at `row`, one per lane (zero past `ng`).
///
/// # Safety
/// AVX2/F16C; `g0 + ng` groups of the row readable; for k-quants `g0 % 8 == 0` and `ng == 8`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) unsafe fn factors<const L: u8>(row: *const u8, g0: usize, ng: usize) -> (__m256, __m256) {
    let bb = block_bytes(L);
    match L {
        Q4K | Q5K => {
            let blk = row.add(g0 / 8 * bb);
            let (sc, mn) = k_scales(std::slice::from_raw_parts(blk.add(4), 12));
            let a = _mm256_mul_ps(f16_splat(blk), bytes_f32(sc));
            // -(dmin mn): negating the exact product or a factor is the same.
            let neg = _mm256_castsi256_ps(_mm256_set1_epi32(i32::MIN));
            (a, _mm256_mul_ps(_mm256_xor_ps(f16_splat(blk.add(2)), neg), bytes_f32(mn)))
        }
        Q6K => (f16_splat(row.add(g0 / 8 * bb + 208)), _mm256_setzero_ps()),
        _ => {
            // d (and Q5_1's m) of ng blocks, assembled in general registers (see x86::load_f16x8).
            let (mut d, mut m) = ([0u64; 2], [0u64; 2]);
            for k in 0..ng {
                let blk = row.add((g0 + k) * bb);
                d[k / 4] |= (std::ptr::read_unaligned(blk as *const u16) as u64) << (16 * (k % 4));
                if L == Q5_1 {
                    m[k / 4] |= (std::ptr::read_unaligned(blk.add(2) as *const u16) as u64) << (16 * (k % 4));
                }
            }
            let cvt = |v: [u64; 2]| _mm256_cvtph_ps(_mm_set_epi64x(v[1] as i64, v[0] as i64));
            let d = cvt(d);
            // Q5_0's `d (q - 16)` as `d q + b` with `b = -16 d` (exact): unsigned quants and a min term.
            (d, if L == Q5_1 { cvt(m) } else { _mm256_mul_ps(d, _mm256_set1_ps(-16.0)) })
        }
    }
}

/// 0x10 in byte `v` where bit `v` of `qh` is set: Q5_0/Q5_1's fifth bits in value order.
///
/// # Safety
/// AVX2.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn fifth_bits(qh: u32) -> __m256i {
    // Byte v takes byte v / 8 of qh (the shuffle stays inside each 128-bit half, and both halves hold qh).
    let idx = _mm256_setr_epi8(
        0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3,
    );
    let bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(qh as i32), idx);
    let bit = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
    _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(bytes, bit), bit), _mm256_set1_epi8(0x10))
}

/// Sub-block `J` (k-quants) of the block at `blk`, or the whole small block at `blk`, as `(|q| or q unsigned,
/// q with its sign, madd multipliers)`; the second is only meaningful for signed kinds. `q6` is
/// [`q6_scales`] of a Q6_K block.
///
/// # Safety
/// AVX2; the block readable.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) unsafe fn group<const L: u8, const J: usize>(
    blk: *const u8,
    q6: &[__m256i; 2],
) -> (__m256i, __m256i, __m256i) {
    let ones = _mm256_set1_epi16(1);
    let m0f = _mm256_set1_epi8(0x0F);
    let load = |at: usize| _mm256_loadu_si256(blk.add(at) as *const __m256i);
    // Nibbles of sub-block J of a Q4_K/Q5_K block: bytes 32 (J / 2).., low nibbles for even J.
    let nibbles = |at: usize| {
        let v = load(at + 32 * (J / 2));
        _mm256_and_si256(if J % 2 == 1 { _mm256_srli_epi16(v, 4) } else { v }, m0f)
    };
    match L {
        Q4K => (nibbles(16), _mm256_setzero_si256(), ones),
        Q5K => {
            let bit = _mm256_set1_epi8(1 << J);
            let hi = _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(load(16), bit), bit), _mm256_set1_epi8(0x10));
            (_mm256_or_si256(nibbles(48), hi), _mm256_setzero_si256(), ones)
        }
        Q6K => {
            let (h, k) = (J / 4, J % 4);
            let ql = load(64 * h + 32 * (k % 2));
            let lo = if k / 2 == 1 { _mm256_srli_epi16(ql, 4) } else { ql };
            let lo = _mm256_and_si256(lo, m0f);
            let qh = load(128 + 32 * h);
            let qh = match k {
                0 => qh,
                1 => _mm256_srli_epi16(qh, 2),
                2 => _mm256_srli_epi16(qh, 4),
                _ => _mm256_srli_epi16(qh, 6),
            };
            // Two bits per byte, then moved up to bits 4..6 (nothing crosses a byte once masked).
            let hi = _mm256_slli_epi16(_mm256_and_si256(qh, _mm256_set1_epi8(3)), 4);
            let q = _mm256_sub_epi8(_mm256_or_si256(lo, hi), _mm256_set1_epi8(32));
            // i16 lanes 0..8 take scale 2J, lanes 8..16 scale 2J + 1 (each 128-bit half of `q6` holds 8).
            let pick = |i: usize| (((2 * (i % 8) + 1) << 8) | (2 * (i % 8))) as i16;
            let mask = _mm256_set_m128i(_mm_set1_epi16(pick(2 * J + 1)), _mm_set1_epi16(pick(2 * J)));
            (_mm256_abs_epi8(q), q, _mm256_shuffle_epi8(q6[J / 4], mask))
        }
        Q5_0 | Q5_1 => {
            let at = if L == Q5_0 { 2 } else { 4 };
            let qh = std::ptr::read_unaligned(blk.add(at) as *const u32);
            (_mm256_or_si256(unpack_int4(blk.add(at + 4)), fifth_bits(qh)), _mm256_setzero_si256(), ones)
        }
        _ => {
            let q = load(2);
            (_mm256_abs_epi8(q), q, ones)
        }
    }
}

/// A Q6_K block's 16 i8 scales as i16: scales 0..8 in both 128-bit halves, then scales 8..16 in both.
///
/// # Safety
/// AVX2; the block readable.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn q6_scales(blk: *const u8) -> [__m256i; 2] {
    let s = _mm256_cvtepi8_epi16(_mm_loadu_si128(blk.add(192) as *const __m128i));
    [_mm256_permute4x64_epi64(s, 0b01_00_01_00), _mm256_permute4x64_epi64(s, 0b11_10_11_10)]
}

/// Dot products of weight rows `r..r+R` with activation rows `t..t+T`.
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
    let mut acc = [[_mm256_setzero_ps(); T]; R];
    let mut g0 = 0;
    while g0 + 8 <= w.gpr {
        chunk::<L, R, T, true>(w, r, xq, t, g0, 8, &mut acc);
        g0 += 8;
    }
    if g0 < w.gpr {
        chunk::<L, R, T, false>(w, r, xq, t, g0, w.gpr - g0, &mut acc);
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
    let ng = if FULL { 8 } else { ng };
    let mut sc = [[[0f32; 8]; T]; R];
    for i in 0..R {
        let (a, b) = factors::<L>(w.p.add((r + i) * w.row_bytes), g0, ng);
        for j in 0..T {
            let dx = load_f32x8(xq.d.as_ptr().add((t + j) * gpr + g0), ng);
            _mm256_storeu_ps(sc[i][j].as_mut_ptr(), _mm256_mul_ps(a, dx));
            if has_min(L) {
                let sx = load_f32x8(xq.s.as_ptr().add((t + j) * gpr + g0), ng);
                acc[i][j] = _mm256_fmadd_ps(b, sx, acc[i][j]);
            }
        }
    }
    // The same chunk two row blocks ahead, for weights streamed from DRAM (a prefetch never faults; wrapping
    // arithmetic keeps the address defined past the end of the matrix).
    let bytes = if groups_per_block(L) == 8 { block_bytes(L) } else { ng * block_bytes(L) };
    for i in 0..R {
        let p = w.p.wrapping_add((r + i + 2 * R) * w.row_bytes + g0 / groups_per_block(L) * block_bytes(L));
        let mut off = 0;
        while off < bytes {
            _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(off) as *const i8);
            off += 64;
        }
    }
    if groups_per_block(L) == 8 {
        let mut blk = [std::ptr::null::<u8>(); R];
        let mut q6 = [[_mm256_setzero_si256(); 2]; R];
        for i in 0..R {
            blk[i] = w.p.add((r + i) * w.row_bytes + g0 / 8 * block_bytes(L));
            if L == Q6K {
                q6[i] = q6_scales(blk[i]);
            }
        }
        step::<L, R, T, 0>(w, &blk, &q6, xq, t, g0, &sc, acc);
        step::<L, R, T, 1>(w, &blk, &q6, xq, t, g0 + 1, &sc, acc);
        step::<L, R, T, 2>(w, &blk, &q6, xq, t, g0 + 2, &sc, acc);
        step::<L, R, T, 3>(w, &blk, &q6, xq, t, g0 + 3, &sc, acc);
        step::<L, R, T, 4>(w, &blk, &q6, xq, t, g0 + 4, &sc, acc);
        step::<L, R, T, 5>(w, &blk, &q6, xq, t, g0 + 5, &sc, acc);
        step::<L, R, T, 6>(w, &blk, &q6, xq, t, g0 + 6, &sc, acc);
        step::<L, R, T, 7>(w, &blk, &q6, xq, t, g0 + 7, &sc, acc);
    } else {
        let q6 = [[_mm256_setzero_si256(); 2]; R];
        for k in 0..ng {
            let mut blk = [std::ptr::null::<u8>(); R];
            for i in 0..R {
                blk[i] = w.p.add((r + i) * w.row_bytes + (g0 + k) * block_bytes(L));
            }
            step::<L, R, T, 0>(w, &blk, &q6, xq, t, g0 + k, &sc, acc);
        }
    }
}

/// Group `g` (sub-block `J` of the blocks at `blk` for k-quants, else the small blocks at `blk`) of `R` rows
/// against `T` tokens; `sc[i][j][g % 8]` is its combined scale `a d_x`.
///
/// # Safety
/// As [`chunk`], with `blk` the rows' blocks holding group `g`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
#[allow(clippy::too_many_arguments)]
unsafe fn step<const L: u8, const R: usize, const T: usize, const J: usize>(
    w: &Rows,
    blk: &[*const u8; R],
    q6: &[[__m256i; 2]; R],
    xq: &Q8Activations,
    t: usize,
    g: usize,
    sc: &[[[f32; 8]; T]; R],
    acc: &mut [[__m256; T]; R],
) {
    let mut wa = [_mm256_setzero_si256(); R];
    let mut ws = [_mm256_setzero_si256(); R];
    let mut mul = [_mm256_setzero_si256(); R];
    for i in 0..R {
        (wa[i], ws[i], mul[i]) = group::<L, J>(blk[i], &q6[i]);
    }
    for j in 0..T {
        let xv = _mm256_loadu_si256(xq.qs.as_ptr().add((t + j) * w.cols + g * GROUP) as *const __m256i);
        for i in 0..R {
            let x = if signed(L) { _mm256_sign_epi8(xv, ws[i]) } else { xv };
            let p32 = _mm256_madd_epi16(_mm256_maddubs_epi16(wa[i], x), mul[i]);
            acc[i][j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p32), _mm256_broadcast_ss(&sc[i][j][g % 8]), acc[i][j]);
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

/// `outs[j][i] = W[r0 + i] . x[t0 + j]` for a matrix of raw GGUF blocks.
///
/// # Safety
/// AVX2/FMA/F16C; `m` validated and of a raw GGUF layout; `r0 + outs[j].len() <= m.rows` for every `j` (all
/// equally long) and `t0 + outs.len() <= xq.n()`; `xq.cols() == m.cols`.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn tile(m: &Matrix, xq: &Q8Activations, r0: usize, t0: usize, outs: &mut [&mut [f32]]) {
    let nt = outs.len();
    let nr = outs.first().map_or(0, |o| o.len());
    assert!(outs.iter().all(|o| o.len() == nr) && r0 + nr <= m.rows && t0 + nt <= xq.n && xq.cols == m.cols);
    let (kind, bytes) = m.w.as_ggml().expect("a raw GGUF layout");
    let w = Rows { p: bytes.as_ptr(), row_bytes: kind.bytes_for(m.cols), gpr: m.cols / GROUP, cols: m.cols };
    match kind {
        GgmlBlock::Q4K => tile_l::<Q4K>(&w, xq, r0, t0, outs),
        GgmlBlock::Q5K => tile_l::<Q5K>(&w, xq, r0, t0, outs),
        GgmlBlock::Q6K => tile_l::<Q6K>(&w, xq, r0, t0, outs),
        GgmlBlock::Q5_0 => tile_l::<Q5_0>(&w, xq, r0, t0, outs),
        GgmlBlock::Q5_1 => tile_l::<Q5_1>(&w, xq, r0, t0, outs),
        GgmlBlock::Q8_0 => tile_l::<Q8_0>(&w, xq, r0, t0, outs),
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
