//! ops against straightforward f64 implementations, on every ISA of this CPU.
#![allow(clippy::needless_range_loop)]

mod common;
use common::*;
use kernels_cpu::ops::{self, RopeStyle};

const LENS: [usize; 6] = [1, 7, 8, 33, 576, 1536];

fn close(got: &[f32], want: &[f64], rel: f64, abs: f64, what: &str) {
    assert_eq!(got.len(), want.len());
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g as f64 - w).abs();
        assert!(err <= rel * w.abs() + abs, "{what}[{i}]: got {g}, want {w}");
    }
}

#[test]
fn rmsnorm_and_layernorm() {
    let mut rng = Rng::new(20);
    for isa in isas() {
        for dim in LENS {
            for rows in [1, 3] {
                let x = rng.vec(rows * dim, -2.0, 2.0);
                let w = rng.vec(dim, 0.5, 1.5);
                let b = rng.vec(dim, -0.5, 0.5);
                let eps = 1e-5;
                let mut want_rms = Vec::new();
                let mut want_ln = Vec::new();
                for xr in x.chunks(dim) {
                    let ms: f64 = xr.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / dim as f64;
                    let r = 1.0 / (ms + eps as f64).sqrt();
                    want_rms.extend(xr.iter().zip(&w).map(|(&v, &g)| v as f64 * r * g as f64));
                    let mean = xr.iter().map(|&v| v as f64).sum::<f64>() / dim as f64;
                    let var = xr.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / dim as f64;
                    let r = 1.0 / (var + eps as f64).sqrt();
                    want_ln
                        .extend(xr.iter().enumerate().map(|(k, &v)| (v as f64 - mean) * r * w[k] as f64 + b[k] as f64));
                }
                let mut out = vec![0f32; rows * dim];
                ops::rmsnorm_with(isa, &x, &w, eps, &mut out);
                close(&out, &want_rms, 1e-5, 1e-6, &format!("rmsnorm {isa} {rows}x{dim}"));
                ops::layernorm_with(isa, &x, &w, Some(&b), eps, &mut out);
                close(&out, &want_ln, 1e-5, 1e-5, &format!("layernorm {isa} {rows}x{dim}"));
                ops::layernorm_with(isa, &x, &w, None, eps, &mut out);
                let want_nb: Vec<f64> = want_ln.iter().enumerate().map(|(i, v)| v - b[i % dim] as f64).collect();
                close(&out, &want_nb, 1e-5, 1e-5, &format!("layernorm no bias {isa} {rows}x{dim}"));
            }
        }
    }
}

#[test]
fn activations_and_add() {
    let mut rng = Rng::new(21);
    for isa in isas() {
        for n in LENS {
            let mut g = rng.vec(n, -12.0, 12.0);
            if n > 3 {
                g[0] = -100.0;
                g[1] = 100.0;
                g[2] = 0.0;
            }
            let u = rng.vec(n, -2.0, 2.0);
            let mut out = vec![0f32; n];
            ops::silu_mul_with(isa, &g, &u, &mut out);
            let want: Vec<f64> =
                g.iter().zip(&u).map(|(&a, &b)| a as f64 / (1.0 + (-(a as f64)).exp()) * b as f64).collect();
            close(&out, &want, 1e-6, 1e-30, &format!("silu_mul {isa} {n}"));

            let mut x = g.clone();
            ops::gelu_with(isa, &mut x);
            let want: Vec<f64> = g
                .iter()
                .map(|&v| {
                    let v = v as f64;
                    // 0.5 v (1 + tanh u) written as v / (1 + exp(-2u)), which keeps its precision for v << 0.
                    let u = (2.0 / std::f64::consts::PI).sqrt() * (v + 0.044715 * v * v * v);
                    v / (1.0 + (-2.0 * u).exp())
                })
                .collect();
            close(&x, &want, 1e-5, 1e-30, &format!("gelu {isa} {n}"));

            ops::add_with(isa, &g, &u, &mut out);
            let want: Vec<f64> = g.iter().zip(&u).map(|(&a, &b)| (a + b) as f64).collect();
            close(&out, &want, 0.0, 0.0, &format!("add {isa} {n}"));
            let mut a = g.clone();
            ops::add_assign_with(isa, &mut a, &u);
            close(&a, &want, 0.0, 0.0, &format!("add_assign {isa} {n}"));
        }
    }
}

#[test]
fn softmax_matches_f64() {
    let mut rng = Rng::new(22);
    for isa in isas() {
        for n in LENS {
            let mut x = rng.vec(n, -20.0, 20.0);
            if n > 4 {
                x[3] = f32::NEG_INFINITY; // a masked entry
            }
            let m = x.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b as f64));
            let e: Vec<f64> = x.iter().map(|&v| (v as f64 - m).exp()).collect();
            let s: f64 = e.iter().sum();
            let want: Vec<f64> = e.iter().map(|v| v / s).collect();
            ops::softmax_with(isa, &mut x);
            close(&x, &want, 1e-5, 1e-30, &format!("softmax {isa} {n}"));
        }
    }
}

#[test]
fn argmax_lowest_index_on_ties_and_ignores_nan() {
    let mut rng = Rng::new(23);
    for isa in isas() {
        for n in LENS {
            let mut x = rng.vec(n, -1.0, 1.0);
            let i = (rng.below(n as u64)) as usize;
            x[i] = 5.0;
            let j = (rng.below(n as u64)) as usize;
            x[j] = 5.0; // a tie (or the same index)
            assert_eq!(ops::argmax_with(isa, &x), i.min(j), "{isa} {n}");
            x[0] = f32::NAN;
            let want = if i.min(j) == 0 { i.max(j) } else { i.min(j) };
            if want != 0 || n == 1 {
                let got = ops::argmax_with(isa, &x);
                assert!(got == want || (n == 1 && got == 0), "{isa} {n}: nan case got {got}, want {want}");
            }
        }
        assert_eq!(ops::argmax_with(isa, &[]), 0);
        assert_eq!(ops::argmax_with(isa, &[f32::NAN, f32::NEG_INFINITY, -1.0]), 2);
        assert_eq!(ops::argmax_with(isa, &[f32::NAN; 9]), 0);
        let mut big = vec![-1.0f32; 49152];
        big[49151] = 0.5;
        big[40000] = 0.5;
        assert_eq!(ops::argmax_with(isa, &big), 40000);
    }
}

#[test]
fn rope_both_styles() {
    let mut rng = Rng::new(24);
    let (n_heads, hd) = (3, 64);
    let inv_freq: Vec<f32> = (0..hd / 2).map(|i| 10000f32.powf(-((2 * i) as f32) / hd as f32)).collect();
    for isa in isas() {
        for pos in [0, 1, 17, 8191] {
            for style in [RopeStyle::Interleaved, RopeStyle::Half] {
                let x = rng.vec(n_heads * hd, -1.0, 1.0);
                let mut want = vec![0f64; x.len()];
                for h in 0..n_heads {
                    for i in 0..hd / 2 {
                        let (a, b) = match style {
                            RopeStyle::Interleaved => (h * hd + 2 * i, h * hd + 2 * i + 1),
                            RopeStyle::Half => (h * hd + i, h * hd + i + hd / 2),
                        };
                        let theta = (pos as f32 * inv_freq[i]) as f64;
                        let (xa, xb) = (x[a] as f64, x[b] as f64);
                        want[a] = xa * theta.cos() - xb * theta.sin();
                        want[b] = xa * theta.sin() + xb * theta.cos();
                    }
                }
                let mut y = x.clone();
                ops::rope_with(isa, &mut y, n_heads, hd, pos, &inv_freq, style);
                close(&y, &want, 1e-6, 1e-6, &format!("rope {isa} {style:?} pos {pos}"));
            }
        }
    }
}
