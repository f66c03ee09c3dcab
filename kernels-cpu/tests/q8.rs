//! q8 activations and the integer-dot matvec/matmul.
//!
//! Error bound. Quantization rounds `x / d` to the nearest integer with `d = absmax / 127`, so each
//! `|x_i - d q_i| <= d / 2` (the product `x * (1/d)` adds a relative 2^-24, covered by a 1e-5 slack). Hence
//! `|W x - W x^| <= sum_g (d_g / 2) sum_{i in g} |w_i|` exactly, and the kernel adds only f32 rounding on top
//! of an exact integer dot, checked separately against `W x^` with the float tolerance.

mod common;
use common::*;
use kernels_cpu::q8::{self, Q8Activations};
use kernels_cpu::{Isa, GROUP};

const TOL: f64 = 1e-5;

/// `x^ = d q` from the quantized activations, row `t`.
fn dequantized(xq: &Q8Activations, t: usize) -> Vec<f32> {
    let cols = xq.cols();
    let gpr = cols / GROUP;
    (0..cols).map(|c| xq.scales()[t * gpr + c / GROUP] * xq.quants()[t * cols + c] as f32).collect()
}

/// `sum_g (d_g / 2) sum_{i in g} |w[r, i]|` for every row.
fn quant_bound(o: &Owned, xq: &Q8Activations, t: usize) -> Vec<f64> {
    let m = o.matrix();
    let gpr = o.cols / GROUP;
    let mut w = vec![0f32; o.cols];
    (0..o.rows)
        .map(|r| {
            m.dequant_row(r, &mut w);
            (0..o.cols).map(|c| xq.scales()[t * gpr + c / GROUP] as f64 / 2.0 * (w[c] as f64).abs()).sum()
        })
        .collect()
}

fn check(o: &Owned, x: &[f32], xq: &Q8Activations, t: usize, y: &[f32], what: &str) {
    let xh = dequantized(xq, t);
    let (exact, scale) = reference(o, &xh);
    let (truth, _) = reference(o, x);
    let bound = quant_bound(o, xq, t);
    for r in 0..o.rows {
        let g = y[r] as f64;
        let err = (g - exact[r]).abs();
        assert!(err <= TOL * scale[r] + 1e-30, "{what} row {r}: {g} vs W x^ = {}, err {err:e}", exact[r]);
        let qerr = (g - truth[r]).abs();
        let b = bound[r] * (1.0 + TOL) + TOL * scale[r] + 1e-30;
        assert!(qerr <= b, "{what} row {r}: {g} vs W x = {}, err {qerr:e} > bound {b:e}", truth[r]);
    }
}

#[test]
fn quantize_is_within_half_step_and_same_on_every_isa() {
    let mut rng = Rng::new(10);
    for n in [1, 3] {
        for cols in [32, 96, 576] {
            let mut x = rng.vec(n * cols, -3.0, 3.0);
            x[0] = 0.0;
            if cols >= 64 {
                x[32..64].fill(0.0); // an all-zero group: d = 0, q = 0
            }
            let base = q8::quantize_with(Isa::Portable, &x, n);
            for (i, &v) in x.iter().enumerate() {
                let d = base.scales()[i / GROUP];
                let q = base.quants()[i];
                assert!((-127..=127).contains(&q));
                assert!((v - d * q as f32).abs() <= d / 2.0 * (1.0 + 1e-6), "x[{i}] = {v}, d {d}, q {q}");
            }
            for (g, (&d, &s)) in base.scales().iter().zip(base.sums()).enumerate() {
                let sum: i32 = base.quants()[g * GROUP..(g + 1) * GROUP].iter().map(|&q| q as i32).sum();
                assert_eq!(s, d * sum as f32);
            }
            for isa in isas() {
                let other = q8::quantize_with(isa, &x, n);
                assert_eq!(other.quants(), base.quants(), "{isa}");
                assert_eq!(other.scales(), base.scales(), "{isa}");
                assert_eq!(other.sums(), base.sums(), "{isa}");
            }
        }
    }
}

#[test]
fn quantize_into_reuses_buffer() {
    let mut rng = Rng::new(11);
    let mut buf = Q8Activations::new();
    let a = rng.vec(4 * 64, -1.0, 1.0);
    buf.quantize_into(&a, 4);
    let b = rng.vec(64, -1.0, 1.0);
    buf.quantize_into(&b, 1);
    let fresh = q8::quantize(&b, 1);
    assert_eq!((buf.n(), buf.cols()), (1, 64));
    assert_eq!(buf.quants(), fresh.quants());
    assert_eq!(buf.floats(), &b[..]);
}

#[test]
fn matvec_q8_every_layout_isa_shape() {
    let mut rng = Rng::new(12);
    for layout in LAYOUTS {
        for isa in isas() {
            for rows in [1, 3, 17, 129] {
                for cols in [32, 64, 96, 576, 1536] {
                    let o = Owned::random(layout, rows, cols, &mut rng);
                    let x = rng.vec(cols, -1.0, 1.0);
                    let xq = q8::quantize_with(isa, &x, 1);
                    let mut y = vec![f32::NAN; rows];
                    q8::matvec_q8_with(isa, &o.matrix(), &xq, &mut y);
                    let what = format!("matvec_q8 {layout:?} {isa} {rows}x{cols}");
                    if QUANTIZED.contains(&layout) {
                        check(&o, &x, &xq, 0, &y, &what);
                    } else {
                        // Float weights use the float path on the unquantized x.
                        let (want, scale) = reference(&o, &x);
                        for r in 0..rows {
                            assert!((y[r] as f64 - want[r]).abs() <= TOL * scale[r], "{what} row {r}");
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn matmul_q8_every_layout_isa_shape() {
    let mut rng = Rng::new(13);
    for layout in QUANTIZED {
        for isa in isas() {
            for rows in [1, 3, 17, 129] {
                for cols in [32, 64, 96, 576, 1536] {
                    for n in [1, 2, 5, 17] {
                        let o = Owned::random(layout, rows, cols, &mut rng);
                        let x = rng.vec(n * cols, -1.0, 1.0);
                        let xq = q8::quantize_with(isa, &x, n);
                        let mut y = vec![f32::NAN; n * rows];
                        q8::matmul_q8_with(isa, &o.matrix(), &xq, n, &mut y);
                        for t in 0..n {
                            let what = format!("matmul_q8 {layout:?} {isa} {rows}x{cols} n={n} token {t}");
                            check(&o, &x[t * cols..(t + 1) * cols], &xq, t, &y[t * rows..(t + 1) * rows], &what);
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn int8_extremes_do_not_saturate() {
    // Weights of -128 and 127 against activations of +-127 in every position: maddubs pairs stay in i16.
    let cols = 64;
    let q: Vec<i8> = (0..cols).map(|i| if i % 2 == 0 { -128 } else { 127 }).collect();
    let scales = [half::f16::from_f32(1.0).to_bits(); 2];
    let m = kernels_cpu::Matrix::new(1, cols, kernels_cpu::Weights::Int8 { q: &q, scales: &scales }).unwrap();
    let x: Vec<f32> = (0..cols).map(|i| if i % 4 < 2 { -127.0 } else { 127.0 }).collect();
    let want: f64 = q.iter().zip(&x).map(|(&a, &b)| a as f64 * b as f64).sum();
    for isa in isas() {
        let xq = q8::quantize_with(isa, &x, 1);
        let mut y = [0f32];
        q8::matvec_q8_with(isa, &m, &xq, &mut y);
        assert_eq!(y[0] as f64, want, "{isa}");
    }
}

/// A row's result must not depend on the kernel, the tile or the batch it is computed in (a server's batched
/// greedy output equals a lone session's): see [`assert_matmul_rows_equal_matvec`].
#[test]
fn matmul_q8_rows_equal_the_matvec_bit_for_bit() {
    let mut rng = Rng::new(14);
    for layout in QUANTIZED {
        for (rows, cols) in [(17, 96), (129, 576), (40, 1536)] {
            let o = Owned::random(layout, rows, cols, &mut rng);
            assert_matmul_rows_equal_matvec(&o.matrix(), &mut rng, &format!("{layout:?}"));
        }
    }
}
