//! WebAssembly SIMD128 q8 kernels (the wasm CPU engine's decode and prefill products).
//!
//! SIMD128 has no `u8 x i8` multiply-add, but it has `i32x4.dot_i16x8_s` (pairwise `i16 x i16 -> i32`, one
//! `pmaddwd` on x86). So each activation row is widened to i16 once per call into a per-thread scratch, laid
//! out in the order the weight unpacking produces, and every weight group is unpacked to i16 lanes and dotted
//! with it:
//!
//! - Int8: the 32 bytes sign-extended (`extend_low/high`), activations in natural order.
//! - Int4: the 16 bytes read as 8 u16 lanes `b[2k] | b[2k+1] << 8`; masks and shifts give the values
//!   `2k`, `2k + 1`, `16 + 2k`, `17 + 2k` (low and high nibbles, GGUF order), so the activations are stored
//!   evens, odds, evens + 16, odds + 16. An integer sum does not depend on its order, so this is exact.
//! - Ternary: the 8 bytes zero-extended to 8 u16 lanes; `(lane >> 2j) & 3` is value `8j + lane`, minus 1.
//!
//! Four groups are reduced together into one i32x4 (one lane per group), converted once and scaled by the
//! four `d_w d_x` (f16 scales widened four at a time), plus int4's `m_w s_x`. Every (row, token) output is
//! computed by the same code whatever the tile, so a matmul row equals the matvec of that token alone.

use super::Q8Activations;
use crate::layout::{Matrix, Weights, GROUP, INT4_GROUP_BYTES, TERNARY_GROUP_BYTES};
use crate::wasm::{hsum_f32, hsum_i32, load_f16x4, reduce4_i32};
use core::arch::wasm32::*;
use half::f16;
use std::cell::RefCell;

const INT8: u8 = 0;
const INT4: u8 = 1;
const TERN: u8 = 2;

thread_local! {
    /// One activation row widened to i16, in the weight layout's order.
    static X16: RefCell<Vec<i16>> = const { RefCell::new(Vec::new()) };
}

/// Quantizes one group of 32; bit-identical to `portable::quantize_group` (the same max, the same product by
/// `1/d`, round to nearest ties to even, a saturating conversion and the same clamp).
pub fn quantize_group(x: &[f32], q: &mut [i8]) -> (f32, i32) {
    assert!(x.len() >= GROUP && q.len() >= GROUP);
    // SAFETY: both slices hold at least 32 values (asserted), so every 16-byte load and store is in bounds.
    unsafe {
        let p = x.as_ptr() as *const v128;
        let v = [
            v128_load(p),
            v128_load(p.add(1)),
            v128_load(p.add(2)),
            v128_load(p.add(3)),
            v128_load(p.add(4)),
            v128_load(p.add(5)),
            v128_load(p.add(6)),
            v128_load(p.add(7)),
        ];
        // pmax(m, |x|) keeps m when |x| is NaN, as `f32::max` does in the portable kernel.
        let mut m = f32x4_splat(0.0);
        for vi in v {
            m = f32x4_pmax(m, f32x4_abs(vi));
        }
        let amax = [
            f32x4_extract_lane::<0>(m),
            f32x4_extract_lane::<1>(m),
            f32x4_extract_lane::<2>(m),
            f32x4_extract_lane::<3>(m),
        ]
        .into_iter()
        .fold(0f32, f32::max);
        let d = amax / 127.0;
        let id = f32x4_splat(if d != 0.0 { 1.0 / d } else { 0.0 });
        let (lo, hi) = (i32x4_splat(-128), i32x4_splat(127));
        let qi = v.map(|vi| i32x4_min(i32x4_max(i32x4_trunc_sat_f32x4(f32x4_nearest(f32x4_mul(vi, id))), lo), hi));
        let sum = i32x4_add(
            i32x4_add(i32x4_add(qi[0], qi[1]), i32x4_add(qi[2], qi[3])),
            i32x4_add(i32x4_add(qi[4], qi[5]), i32x4_add(qi[6], qi[7])),
        );
        let w16 = [
            i16x8_narrow_i32x4(qi[0], qi[1]),
            i16x8_narrow_i32x4(qi[2], qi[3]),
            i16x8_narrow_i32x4(qi[4], qi[5]),
            i16x8_narrow_i32x4(qi[6], qi[7]),
        ];
        let o = q.as_mut_ptr() as *mut v128;
        v128_store(o, i8x16_narrow_i16x8(w16[0], w16[1]));
        v128_store(o.add(1), i8x16_narrow_i16x8(w16[2], w16[3]));
        (d, hsum_i32(sum))
    }
}

/// Raw views of a validated quantized matrix.
struct Rows {
    q: *const u8,
    group_bytes: usize,
    scales: *const u16,
    mins: *const u16,
    gpr: usize,
}

/// Writes activation row `t` of `xq` as i16 in the order layout `L` unpacks its weights (see the module doc).
fn widen<const L: u8>(xq: &Q8Activations, t: usize, out: &mut Vec<i16>) {
    let x = &xq.qs[t * xq.cols..(t + 1) * xq.cols];
    out.clear();
    for g in x.chunks_exact(GROUP) {
        if L == INT4 {
            for half in [&g[..16], &g[16..]] {
                out.extend(half.iter().step_by(2).map(|&v| v as i16));
                out.extend(half.iter().skip(1).step_by(2).map(|&v| v as i16));
            }
        } else {
            out.extend(g.iter().map(|&v| v as i16));
        }
    }
}

/// Integer dot of weight group `p` with the widened activation group `x`, as four i32 partial sums.
///
/// # Safety
/// `p` valid for the layout's group bytes, `x` for 32 i16.
#[inline(always)]
unsafe fn group<const L: u8>(p: *const u8, x: *const i16) -> v128 {
    let xv = x as *const v128;
    let dot4 = |w: [v128; 4]| {
        i32x4_add(
            i32x4_add(i32x4_dot_i16x8(w[0], v128_load(xv)), i32x4_dot_i16x8(w[1], v128_load(xv.add(1)))),
            i32x4_add(i32x4_dot_i16x8(w[2], v128_load(xv.add(2))), i32x4_dot_i16x8(w[3], v128_load(xv.add(3)))),
        )
    };
    match L {
        INT8 => {
            let (a, b) = (v128_load(p as *const v128), v128_load(p.add(16) as *const v128));
            dot4([
                i16x8_extend_low_i8x16(a),
                i16x8_extend_high_i8x16(a),
                i16x8_extend_low_i8x16(b),
                i16x8_extend_high_i8x16(b),
            ])
        }
        INT4 => {
            let l = v128_load(p as *const v128);
            let m = i16x8_splat(0x0F);
            dot4([v128_and(l, m), v128_and(u16x8_shr(l, 8), m), v128_and(u16x8_shr(l, 4), m), u16x8_shr(l, 12)])
        }
        _ => {
            let l = u16x8_load_extend_u8x8(p);
            let (m, one) = (i16x8_splat(3), i16x8_splat(1));
            let c = |s: u32| i16x8_sub(v128_and(u16x8_shr(l, s), m), one);
            dot4([c(0), c(2), c(4), c(6)])
        }
    }
}

/// Weight row `r` dotted with activation row `t` (`x16` its widened quants).
///
/// # Safety
/// `w` views a validated matrix with more than `r` rows; `x16` holds `cols` values; `t < xq.n`.
#[inline(always)]
unsafe fn row_dot<const L: u8>(w: &Rows, r: usize, xq: &Q8Activations, t: usize, x16: &[i16]) -> f32 {
    let gpr = w.gpr;
    let base = r * gpr;
    let (xd, xs) = (xq.d.as_ptr().add(t * gpr), xq.s.as_ptr().add(t * gpr));
    let gq = |g: usize| group::<L>(w.q.add((base + g) * w.group_bytes), x16.as_ptr().add(g * GROUP));
    let mut acc = f32x4_splat(0.0);
    let mut g = 0;
    while g + 4 <= gpr {
        let isum = reduce4_i32([gq(g), gq(g + 1), gq(g + 2), gq(g + 3)]);
        let scale = f32x4_mul(load_f16x4(w.scales.add(base + g)), v128_load(xd.add(g) as *const v128));
        acc = f32x4_add(acc, f32x4_mul(f32x4_convert_i32x4(isum), scale));
        if L == INT4 {
            let mins = load_f16x4(w.mins.add(base + g));
            acc = f32x4_add(acc, f32x4_mul(mins, v128_load(xs.add(g) as *const v128)));
        }
        g += 4;
    }
    let mut tail = 0f32;
    while g < gpr {
        let isum = hsum_i32(gq(g)) as f32;
        tail += f16::from_bits(*w.scales.add(base + g)).to_f32() * *xd.add(g) * isum;
        if L == INT4 {
            tail += f16::from_bits(*w.mins.add(base + g)).to_f32() * *xs.add(g);
        }
        g += 1;
    }
    hsum_f32(acc) + tail
}

/// `outs[j][i] = W[r0 + i] . x[t0 + j]` for a quantized `m` (Int8, Int4, Ternary).
///
/// # Safety
/// `m` validated; `r0 + outs[j].len() <= m.rows` (all equally long); `t0 + outs.len() <= xq.n()`;
/// `xq.cols() == m.cols`.
pub unsafe fn tile(m: &Matrix, xq: &Q8Activations, r0: usize, t0: usize, outs: &mut [&mut [f32]]) {
    let nr = outs.first().map_or(0, |o| o.len());
    assert!(outs.iter().all(|o| o.len() == nr) && r0 + nr <= m.rows && t0 + outs.len() <= xq.n && xq.cols == m.cols);
    let gpr = m.cols / GROUP;
    let (kind, q, group_bytes, scales, mins) = match m.w {
        Weights::Int8 { q, scales } => (INT8, q.as_ptr() as *const u8, GROUP, scales, scales),
        Weights::Int4 { q, scales, mins } => (INT4, q.as_ptr(), INT4_GROUP_BYTES, scales, mins),
        Weights::Ternary { q, scales } => (TERN, q.as_ptr(), TERNARY_GROUP_BYTES, scales, scales),
        Weights::F32(_) | Weights::F16(_) => unreachable!("float weights take the float path"),
        _ => unreachable!("raw GGUF blocks take the portable q8 path on wasm"),
    };
    let w = Rows { q, group_bytes, scales: scales.as_ptr(), mins: mins.as_ptr(), gpr };
    X16.with(|x16| {
        let mut x16 = x16.borrow_mut();
        for (j, out) in outs.iter_mut().enumerate() {
            let t = t0 + j;
            match kind {
                INT8 => rows::<INT8>(&w, xq, t, r0, out, &mut x16),
                INT4 => rows::<INT4>(&w, xq, t, r0, out, &mut x16),
                _ => rows::<TERN>(&w, xq, t, r0, out, &mut x16),
            }
        }
    });
}

/// # Safety
/// As [`tile`].
unsafe fn rows<const L: u8>(w: &Rows, xq: &Q8Activations, t: usize, r0: usize, out: &mut [f32], x16: &mut Vec<i16>) {
    widen::<L>(xq, t, x16);
    for (i, o) in out.iter_mut().enumerate() {
        *o = row_dot::<L>(w, r0 + i, xq, t, x16);
    }
}
