//! Plain-Rust float matvec: 8 independent partial sums so the compiler can vectorise without reassociating.

use crate::layout::{Matrix, Weights, GROUP, INT4_GROUP_BYTES, TERNARY_GROUP_BYTES};
use half::f16;

fn h(bits: u16) -> f32 {
    f16::from_bits(bits).to_f32()
}

/// Dot product with 8 lane sums, summed pairwise at the end.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ac.remainder().iter().zip(bc.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ac.zip(bc) {
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

/// `y[i] = W[r0 + i] . x`.
pub fn rows(m: &Matrix, x: &[f32], xsum: &[f32], r0: usize, y: &mut [f32]) {
    let cols = m.cols;
    let gpr = cols / GROUP;
    let mut buf = [0f32; GROUP];
    for (i, out) in y.iter_mut().enumerate() {
        let r = r0 + i;
        *out = match m.w {
            Weights::F32(w) => dot(&w[r * cols..(r + 1) * cols], x),
            Weights::F16(w) => {
                let row = &w[r * cols..(r + 1) * cols];
                let mut acc = 0f32;
                for (wc, xc) in row.chunks(GROUP).zip(x.chunks(GROUP)) {
                    for (b, &v) in buf.iter_mut().zip(wc) {
                        *b = h(v);
                    }
                    acc += dot(&buf[..wc.len()], xc);
                }
                acc
            }
            Weights::Int8 { q, scales } => {
                let mut acc = 0f32;
                for g in 0..gpr {
                    let gi = r * gpr + g;
                    for (b, &v) in buf.iter_mut().zip(&q[gi * GROUP..(gi + 1) * GROUP]) {
                        *b = v as f32;
                    }
                    acc += h(scales[gi]) * dot(&buf, &x[g * GROUP..(g + 1) * GROUP]);
                }
                acc
            }
            Weights::Int4 { q, scales, mins } => {
                let mut acc = 0f32;
                for g in 0..gpr {
                    let gi = r * gpr + g;
                    for (k, &b) in q[gi * INT4_GROUP_BYTES..(gi + 1) * INT4_GROUP_BYTES].iter().enumerate() {
                        buf[k] = (b & 0x0F) as f32;
                        buf[k + 16] = (b >> 4) as f32;
                    }
                    acc += h(scales[gi]) * dot(&buf, &x[g * GROUP..(g + 1) * GROUP]) + h(mins[gi]) * xsum[g];
                }
                acc
            }
            Weights::Ternary { q, scales } => {
                let mut acc = 0f32;
                for g in 0..gpr {
                    let gi = r * gpr + g;
                    let xg = &x[g * GROUP..(g + 1) * GROUP];
                    let mut s = 0f32;
                    for (b, &byte) in q[gi * TERNARY_GROUP_BYTES..(gi + 1) * TERNARY_GROUP_BYTES].iter().enumerate() {
                        for j in 0..4 {
                            match (byte >> (2 * j)) & 3 {
                                0 => s -= xg[8 * j + b],
                                2 => s += xg[8 * j + b],
                                _ => {}
                            }
                        }
                    }
                    acc += h(scales[gi]) * s;
                }
                acc
            }
            _ => unreachable!("raw GGUF blocks are dequantized to f32 rows first (matvec::ggml_rows)"),
        };
    }
}
