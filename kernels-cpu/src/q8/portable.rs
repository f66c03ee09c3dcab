//! Plain-Rust q8 kernels: integer dot per group, f32 accumulation across groups.

use super::Q8Activations;
use crate::ggml::{f16_at, k_scales, GgmlBlock};
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
    if let Some((kind, bytes)) = m.w.as_ggml() {
        let rb = kind.bytes_for(m.cols);
        return ggml_dot(kind, &bytes[r * rb..(r + 1) * rb], xq, t);
    }
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
        _ => unreachable!("raw GGUF blocks take ggml_dot"),
    }
    acc
}

/// Group `g` (32 values) of a row of raw GGUF blocks as integers `q` with `w = a * q + b`: returns `(a, b)`.
/// Q6_K's two sub-block scales go into `q` (`q = sc * (raw - 32)`, `a = d`); a k-quant min is `b = -dmin mn`.
pub(crate) fn ggml_group(kind: GgmlBlock, row: &[u8], g: usize, q: &mut [i32; GROUP]) -> (f32, f32) {
    let blk = &row[g * GROUP / kind.block_values() * kind.block_bytes()..][..kind.block_bytes()];
    let j = g % (kind.block_values() / GROUP);
    let five = |at: usize, q: &mut [i32; GROUP]| {
        let qh = u32::from_le_bytes([blk[at], blk[at + 1], blk[at + 2], blk[at + 3]]);
        for (i, v) in q.iter_mut().enumerate() {
            let byte = blk[at + 4 + i % 16];
            *v = (if i < 16 { byte & 0x0F } else { byte >> 4 }) as i32 | (((qh >> i) & 1) << 4) as i32;
        }
    };
    match kind {
        GgmlBlock::Q8_0 => {
            for (v, &b) in q.iter_mut().zip(&blk[2..]) {
                *v = b as i8 as i32;
            }
            (f16_at(blk, 0), 0.0)
        }
        GgmlBlock::Q5_0 => {
            five(2, q);
            q.iter_mut().for_each(|v| *v -= 16);
            (f16_at(blk, 0), 0.0)
        }
        GgmlBlock::Q5_1 => {
            five(4, q);
            (f16_at(blk, 0), f16_at(blk, 2))
        }
        GgmlBlock::Q4K | GgmlBlock::Q5K => {
            let (sc, mn) = k_scales(&blk[4..16]);
            let qs = if kind == GgmlBlock::Q4K { &blk[16..144] } else { &blk[48..176] };
            for (l, v) in q.iter_mut().enumerate() {
                let hi = if kind == GgmlBlock::Q5K { ((blk[16 + l] >> j) & 1) << 4 } else { 0 };
                *v = (((qs[32 * (j / 2) + l] >> (4 * (j % 2))) & 0x0F) | hi) as i32;
            }
            let a = f16_at(blk, 0) * ((sc >> (8 * j)) & 0xFF) as f32;
            (a, -(f16_at(blk, 2) * ((mn >> (8 * j)) & 0xFF) as f32))
        }
        GgmlBlock::Q6K => {
            let (h, k) = (j / 4, j % 4);
            for (l, v) in q.iter_mut().enumerate() {
                let lo = (blk[64 * h + 32 * (k % 2) + l] >> (4 * (k / 2))) & 0x0F;
                let hi = (blk[128 + 32 * h + l] >> (2 * k)) & 3;
                let sc = blk[192 + 2 * j + l / 16] as i8 as i32;
                *v = sc * ((lo | (hi << 4)) as i32 - 32);
            }
            (f16_at(blk, 208), 0.0)
        }
    }
}

/// One row of raw GGUF blocks dotted with activation row `t`: per group `a d_x sum(q q_x) + b s_x`.
fn ggml_dot(kind: GgmlBlock, row: &[u8], xq: &Q8Activations, t: usize) -> f32 {
    let cols = xq.cols;
    let gpr = cols / GROUP;
    let mut q = [0i32; GROUP];
    let mut acc = 0f32;
    for g in 0..gpr {
        let (a, b) = ggml_group(kind, row, g, &mut q);
        let xg = &xq.qs[t * cols + g * GROUP..t * cols + (g + 1) * GROUP];
        let isum: i32 = q.iter().zip(xg).map(|(&w, &x)| w * x as i32).sum();
        acc += a * xq.d[t * gpr + g] * isum as f32 + b * xq.s[t * gpr + g];
    }
    acc
}
