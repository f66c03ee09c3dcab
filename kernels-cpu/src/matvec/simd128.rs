//! SIMD128 float matvec for Int8 and Int4 weights (the browser's default `f32` activations): each group's 32
//! quants are widened to f32 in registers and multiplied with `x`; four groups' partial sums are reduced into
//! one vector (one lane per group) and scaled by their four f16 scales at once, plus int4's `m sum(x)`.
//! F32, F16 and Ternary weights take the portable kernel (which the compiler vectorises under SIMD128).

use crate::layout::{Matrix, Weights, GROUP, INT4_GROUP_BYTES};
use crate::wasm::{hsum_f32, load_f16x4, reduce4_f32};
use core::arch::wasm32::*;
use half::f16;

const INT8: u8 = 0;
const INT4: u8 = 1;

/// Whether this kernel handles `m`'s layout.
pub fn handles(m: &Matrix) -> bool {
    matches!(m.w, Weights::Int8 { .. } | Weights::Int4 { .. })
}

/// `y[i] = W[r0 + i] . x` for Int8/Int4 `m` ([`handles`]).
///
/// # Safety
/// `m` validated; `x.len() == m.cols`; `xsum.len() == m.cols / 32` for int4; `r0 + y.len() <= m.rows`.
pub unsafe fn rows(m: &Matrix, x: &[f32], xsum: &[f32], r0: usize, y: &mut [f32]) {
    assert!(x.len() == m.cols && r0 + y.len() <= m.rows);
    let gpr = m.cols / GROUP;
    match m.w {
        Weights::Int8 { q, scales } => {
            for (i, o) in y.iter_mut().enumerate() {
                *o = row::<INT8>(q.as_ptr() as *const u8, scales.as_ptr(), scales.as_ptr(), x, xsum, r0 + i, gpr);
            }
        }
        Weights::Int4 { q, scales, mins } => {
            assert_eq!(xsum.len(), gpr);
            for (i, o) in y.iter_mut().enumerate() {
                *o = row::<INT4>(q.as_ptr(), scales.as_ptr(), mins.as_ptr(), x, xsum, r0 + i, gpr);
            }
        }
        _ => unreachable!("simd128::rows handles Int8 and Int4 only"),
    }
}

/// `sum(q x)` of group `g` of the row at `p` (unscaled), as four partial sums.
///
/// # Safety
/// `p` valid for the group's bytes; `x` for 32 floats.
#[inline(always)]
unsafe fn group<const L: u8>(p: *const u8, x: *const f32) -> v128 {
    let xv = x as *const v128;
    let f = |k: usize, q: v128| f32x4_mul(q, v128_load(xv.add(k)));
    if L == INT8 {
        let (a, b) = (v128_load(p as *const v128), v128_load(p.add(16) as *const v128));
        let w = [
            i16x8_extend_low_i8x16(a),
            i16x8_extend_high_i8x16(a),
            i16x8_extend_low_i8x16(b),
            i16x8_extend_high_i8x16(b),
        ];
        let c = |k: usize| {
            let lo = f(2 * k, f32x4_convert_i32x4(i32x4_extend_low_i16x8(w[k])));
            f32x4_add(lo, f(2 * k + 1, f32x4_convert_i32x4(i32x4_extend_high_i16x8(w[k]))))
        };
        f32x4_add(f32x4_add(c(0), c(1)), f32x4_add(c(2), c(3)))
    } else {
        let b = v128_load(p as *const v128);
        let (lo, hi) = (v128_and(b, u8x16_splat(0x0F)), u8x16_shr(b, 4));
        let w = [
            u16x8_extend_low_u8x16(lo),
            u16x8_extend_high_u8x16(lo),
            u16x8_extend_low_u8x16(hi),
            u16x8_extend_high_u8x16(hi),
        ];
        let c = |k: usize| {
            let lo = f(2 * k, f32x4_convert_u32x4(u32x4_extend_low_u16x8(w[k])));
            f32x4_add(lo, f(2 * k + 1, f32x4_convert_u32x4(u32x4_extend_high_u16x8(w[k]))))
        };
        f32x4_add(f32x4_add(c(0), c(1)), f32x4_add(c(2), c(3)))
    }
}

/// Row `r` dotted with `x`.
///
/// # Safety
/// As [`rows`].
#[inline(always)]
unsafe fn row<const L: u8>(
    q: *const u8,
    scales: *const u16,
    mins: *const u16,
    x: &[f32],
    xsum: &[f32],
    r: usize,
    gpr: usize,
) -> f32 {
    let gb = if L == INT8 { GROUP } else { INT4_GROUP_BYTES };
    let base = r * gpr;
    let gs = |g: usize| group::<L>(q.add((base + g) * gb), x.as_ptr().add(g * GROUP));
    let mut acc = f32x4_splat(0.0);
    let mut g = 0;
    while g + 4 <= gpr {
        let s = reduce4_f32([gs(g), gs(g + 1), gs(g + 2), gs(g + 3)]);
        acc = f32x4_add(acc, f32x4_mul(s, load_f16x4(scales.add(base + g))));
        if L == INT4 {
            acc = f32x4_add(
                acc,
                f32x4_mul(load_f16x4(mins.add(base + g)), v128_load(xsum.as_ptr().add(g) as *const v128)),
            );
        }
        g += 4;
    }
    let mut tail = 0f32;
    while g < gpr {
        tail += f16::from_bits(*scales.add(base + g)).to_f32() * hsum_f32(gs(g));
        if L == INT4 {
            tail += f16::from_bits(*mins.add(base + g)).to_f32() * xsum[g];
        }
        g += 1;
    }
    hsum_f32(acc) + tail
}
