//! NEON (baseline aarch64 Advanced SIMD) q8 kernels: widening `i8 x i8 -> i16` multiplies (`vmull_s8`, two
//! products per i16 lane at most 2 * 128 * 127 < 2^15), pairwise-accumulated into i32, converted and scaled per
//! group. Ternary adds, subtracts or skips each activation (mask and conditional negate), then sums pairwise.
//! Written without access to an aarch64 machine to time them; the tests run them under emulation.

use super::Q8Activations;
use crate::layout::{Matrix, Weights, GROUP, INT4_GROUP_BYTES, TERNARY_GROUP_BYTES};
use half::f16;
use std::arch::aarch64::*;

const INT8: u8 = 0;
const INT4: u8 = 1;
const TERN: u8 = 2;

/// Raw views of a validated quantized matrix.
struct Rows {
    q: *const u8,
    group_bytes: usize,
    scales: *const u16,
    mins: *const u16,
    gpr: usize,
    cols: usize,
}

/// One weight group as two signed 16-byte halves (values 0..16 and 16..32).
///
/// # Safety
/// NEON; `p` valid for the group's bytes.
#[target_feature(enable = "neon")]
#[inline]
unsafe fn load_group<const L: u8>(p: *const u8) -> (int8x16_t, int8x16_t) {
    match L {
        INT8 => (vld1q_s8(p as *const i8), vld1q_s8(p.add(16) as *const i8)),
        INT4 => {
            let b = vld1q_u8(p);
            (vreinterpretq_s8_u8(vandq_u8(b, vdupq_n_u8(0x0F))), vreinterpretq_s8_u8(vshrq_n_u8::<4>(b)))
        }
        _ => {
            // Byte b holds value 8j + b in bits 2j..2j+2; codes 0, 1, 2 become -1, 0, 1.
            let b = vld1_u8(p);
            let m3 = vdup_n_u8(3);
            let c0 = vand_u8(b, m3);
            let c1 = vand_u8(vshr_n_u8::<2>(b), m3);
            let c2 = vand_u8(vshr_n_u8::<4>(b), m3);
            let c3 = vshr_n_u8::<6>(b);
            let one = vdupq_n_s8(1);
            (
                vsubq_s8(vreinterpretq_s8_u8(vcombine_u8(c0, c1)), one),
                vsubq_s8(vreinterpretq_s8_u8(vcombine_u8(c2, c3)), one),
            )
        }
    }
}

/// Integer dot of one weight group with one activation group, 4 i32 lanes.
///
/// # Safety
/// NEON.
#[target_feature(enable = "neon")]
#[inline]
unsafe fn dot_group<const L: u8>(w: (int8x16_t, int8x16_t), x0: int8x16_t, x1: int8x16_t) -> int32x4_t {
    if L == TERN {
        // x where w = 1, -x where w = -1, 0 where w = 0: select and negate, no multiplication.
        let sel = |w: int8x16_t, x: int8x16_t| {
            let kept = vandq_s8(x, vreinterpretq_s8_u8(vtstq_s8(w, w)));
            vbslq_s8(vcltzq_s8(w), vnegq_s8(kept), kept)
        };
        let s = vpaddlq_s8(sel(w.0, x0));
        let s = vpadalq_s8(s, sel(w.1, x1));
        return vpaddlq_s16(s);
    }
    let a = vmlal_high_s8(vmull_s8(vget_low_s8(w.0), vget_low_s8(x0)), w.0, x0);
    let b = vmlal_high_s8(vmull_s8(vget_low_s8(w.1), vget_low_s8(x1)), w.1, x1);
    vpadalq_s16(vpaddlq_s16(a), b)
}

/// Dot products of weight rows `r..r+R` with activation rows `t..t+T`.
///
/// # Safety
/// NEON; `w` views a validated matrix with at least `r + R` rows; `xq` at least `t + T` rows of `w.cols`.
#[target_feature(enable = "neon")]
unsafe fn block<const L: u8, const R: usize, const T: usize>(
    w: &Rows,
    r: usize,
    xq: &Q8Activations,
    t: usize,
) -> [[f32; T]; R] {
    let gpr = w.gpr;
    let mut acc = [[vdupq_n_f32(0.0); T]; R];
    let mut minacc = [[0f32; T]; R];
    for g in 0..gpr {
        let mut wv = [(vdupq_n_s8(0), vdupq_n_s8(0)); R];
        let mut dw = [0f32; R];
        for i in 0..R {
            let gi = (r + i) * gpr + g;
            wv[i] = load_group::<L>(w.q.add(gi * w.group_bytes));
            dw[i] = f16::from_bits(*w.scales.add(gi)).to_f32();
        }
        for j in 0..T {
            let xp = xq.qs.as_ptr().add((t + j) * w.cols + g * GROUP);
            let (x0, x1) = (vld1q_s8(xp), vld1q_s8(xp.add(16)));
            let dx = xq.d[(t + j) * gpr + g];
            for i in 0..R {
                let p = vcvtq_f32_s32(dot_group::<L>(wv[i], x0, x1));
                acc[i][j] = vfmaq_n_f32(acc[i][j], p, dw[i] * dx);
                if L == INT4 {
                    let m = f16::from_bits(*w.mins.add((r + i) * gpr + g)).to_f32();
                    minacc[i][j] += m * xq.s[(t + j) * gpr + g];
                }
            }
        }
    }
    let mut out = [[0f32; T]; R];
    for i in 0..R {
        for j in 0..T {
            out[i][j] = vaddvq_f32(acc[i][j]) + minacc[i][j];
        }
    }
    out
}

/// `outs[j][i] = W[r0 + i] . x[t0 + j]` for a quantized `m`.
///
/// # Safety
/// NEON; `m` validated; `r0 + outs[j].len() <= m.rows` (all equally long); `t0 + outs.len() <= xq.n()`;
/// `xq.cols() == m.cols`.
#[target_feature(enable = "neon")]
pub unsafe fn tile(m: &Matrix, xq: &Q8Activations, r0: usize, t0: usize, outs: &mut [&mut [f32]], matvec: bool) {
    let nt = outs.len();
    let nr = outs.first().map_or(0, |o| o.len());
    assert!(outs.iter().all(|o| o.len() == nr) && r0 + nr <= m.rows && t0 + nt <= xq.n && xq.cols == m.cols);
    let gpr = m.cols / GROUP;
    let (kind, q, group_bytes, scales, mins) = match m.w {
        Weights::Int8 { q, scales } => (INT8, q.as_ptr() as *const u8, GROUP, scales, scales),
        Weights::Int4 { q, scales, mins } => (INT4, q.as_ptr(), INT4_GROUP_BYTES, scales, mins),
        Weights::Ternary { q, scales } => (TERN, q.as_ptr(), TERNARY_GROUP_BYTES, scales, scales),
        Weights::F32(_) | Weights::F16(_) => unreachable!("float weights take the float path"),
        _ => unreachable!("raw GGUF blocks take the portable q8 path on NEON"),
    };
    let w = Rows { q, group_bytes, scales: scales.as_ptr(), mins: mins.as_ptr(), gpr, cols: m.cols };
    match kind {
        INT8 => tile_l::<INT8>(&w, xq, r0, t0, outs, matvec),
        INT4 => tile_l::<INT4>(&w, xq, r0, t0, outs, matvec),
        _ => tile_l::<TERN>(&w, xq, r0, t0, outs, matvec),
    }
}

#[target_feature(enable = "neon")]
unsafe fn tile_l<const L: u8>(
    w: &Rows,
    xq: &Q8Activations,
    r0: usize,
    t0: usize,
    outs: &mut [&mut [f32]],
    matvec: bool,
) {
    let (nt, nr) = (outs.len(), outs[0].len());
    let mt = if matvec { 1 } else { 2 };
    let mut j = 0;
    while j < nt {
        let tt = (nt - j).min(mt);
        let mut i = 0;
        while i < nr {
            let rr = (nr - i).min(4);
            macro_rules! go {
                ($r:literal, $t:literal) => {{
                    let res = block::<L, $r, $t>(w, r0 + i, xq, t0 + j);
                    for (a, row) in res.iter().enumerate() {
                        for (b, v) in row.iter().enumerate() {
                            outs[j + b][i + a] = *v;
                        }
                    }
                }};
            }
            match (rr, tt) {
                (4, 2) => go!(4, 2),
                (4, 1) => go!(4, 1),
                (3, 2) => go!(3, 2),
                (3, 1) => go!(3, 1),
                (2, 2) => go!(2, 2),
                (2, 1) => go!(2, 1),
                (1, 2) => go!(1, 2),
                _ => go!(1, 1),
            }
            i += rr;
        }
        j += tt;
    }
}
