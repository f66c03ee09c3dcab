//! Plain-Rust q8 kernels: integer dot per group, f32 accumulation across groups.

use super::Q8Activations;
use crate::layout::{Matrix, Weights, GROUP, INT4_GROUP_BYTES, TERNARY_GROUP_BYTES};
use half::f16;

/// Quantizes one group; returns `(d, sum(q))`. The AVX2 twin gives bit-identical results.
pub fn quantize_group(x: &[f32], q: &mut [i8]) -> (f32, i32) {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut sum = 0i32;
    for (o, &v) in q.iter_mut().zip(x) {
        let r = ((v * id).round_ties_even() as i32).clamp(-128, 127);
        *o = r as i8;
        sum += r;
    }
    (d, sum)
}

fn h(bits: u16) -> f32 {
    f16::from_bits(bits).to_f32()
}

/// `outs[j][i] = W[r0 + i] . x[t0 + j]` for a quantized matrix.
pub fn tile(m: &Matrix, xq: &Q8Activations, r0: usize, t0: usize, outs: &mut [&mut [f32]]) {
    for (j, out) in outs.iter_mut().enumerate() {
        for (i, o) in out.iter_mut().enumerate() {
            *o = dot(m, r0 + i, xq, t0 + j);
        }
    }
}

fn dot(m: &Matrix, r: usize, xq: &Q8Activations, t: usize) -> f32 {
    let gpr = m.cols / GROUP;
    let xs = &xq.qs[t * m.cols..(t + 1) * m.cols];
    let xd = &xq.d[t * gpr..(t + 1) * gpr];
    let mut acc = 0f32;
    match m.w {
        Weights::Int8 { q, scales } => {
            let row = &q[r * m.cols..(r + 1) * m.cols];
            for g in 0..gpr {
                let wg = &row[g * GROUP..(g + 1) * GROUP];
                let xg = &xs[g * GROUP..(g + 1) * GROUP];
                let isum: i32 = wg.iter().zip(xg).map(|(&a, &b)| a as i32 * b as i32).sum();
                acc += h(scales[r * gpr + g]) * xd[g] * isum as f32;
            }
        }
        Weights::Int4 { q, scales, mins } => {
            let xsum = &xq.s[t * gpr..(t + 1) * gpr];
            for g in 0..gpr {
                let gi = r * gpr + g;
                let wg = &q[gi * INT4_GROUP_BYTES..(gi + 1) * INT4_GROUP_BYTES];
                let xg = &xs[g * GROUP..(g + 1) * GROUP];
                let mut isum = 0i32;
                for (i, &b) in wg.iter().enumerate() {
                    isum += (b & 0x0F) as i32 * xg[i] as i32 + (b >> 4) as i32 * xg[i + 16] as i32;
                }
                acc += h(scales[gi]) * xd[g] * isum as f32 + h(mins[gi]) * xsum[g];
            }
        }
        Weights::Ternary { q, scales } => {
            for g in 0..gpr {
                let gi = r * gpr + g;
                let wg = &q[gi * TERNARY_GROUP_BYTES..(gi + 1) * TERNARY_GROUP_BYTES];
                let xg = &xs[g * GROUP..(g + 1) * GROUP];
                let mut isum = 0i32;
                for (b, &byte) in wg.iter().enumerate() {
                    for j in 0..4 {
                        let v = xg[8 * j + b] as i32;
                        match (byte >> (2 * j)) & 3 {
                            0 => isum -= v,
                            2 => isum += v,
                            _ => {}
                        }
                    }
                }
                acc += h(scales[gi]) * xd[g] * isum as f32;
            }
        }
        Weights::F32(_) | Weights::F16(_) => unreachable!("float weights take the float path"),
    }
    acc
}
