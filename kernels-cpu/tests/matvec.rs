//! Float-activation matvec and matmul, every layout x every ISA of this CPU x odd shapes, against the f64
//! reference built on `Matrix::dequant_row`.

mod common;
use common::*;
use kernels_cpu::{matmul, matvec};

/// f32 accumulation over at most a few hundred partial sums: relative to sum |w x|.
const TOL: f64 = 1e-5;

const ROWS: [usize; 4] = [1, 3, 17, 129];
const COLS: [usize; 5] = [32, 64, 96, 576, 1536];
/// Float layouts take any width.
const FLOAT_COLS: [usize; 4] = [1, 7, 33, 100];

fn cols_for(layout: Layout) -> Vec<usize> {
    let mut c = COLS.to_vec();
    if matches!(layout, Layout::F32 | Layout::F16) {
        c.extend(FLOAT_COLS);
    }
    c
}

fn check(y: &[f32], want: &[f64], scale: &[f64], what: &str) {
    for (r, ((&g, &w), &s)) in y.iter().zip(want).zip(scale).enumerate() {
        let err = (g as f64 - w).abs();
        assert!(err <= TOL * s + 1e-30, "{what}: row {r}: got {g}, want {w}, err {err:e} > {:e}", TOL * s);
    }
}

#[test]
fn matvec_every_layout_isa_shape() {
    let mut rng = Rng::new(1);
    for layout in LAYOUTS {
        for isa in isas() {
            for rows in ROWS {
                for cols in cols_for(layout) {
                    let o = Owned::random(layout, rows, cols, &mut rng);
                    let x = rng.vec(cols, -1.0, 1.0);
                    let mut y = vec![f32::NAN; rows];
                    matvec::matvec_with(isa, &o.matrix(), &x, &mut y);
                    let (want, scale) = reference(&o, &x);
                    check(&y, &want, &scale, &format!("matvec {layout:?} {isa} {rows}x{cols}"));
                }
            }
        }
    }
}

#[test]
fn matmul_every_layout_isa_shape() {
    let mut rng = Rng::new(2);
    for layout in LAYOUTS {
        for isa in isas() {
            for rows in ROWS {
                for cols in cols_for(layout) {
                    for n in [1, 2, 5, 17] {
                        let o = Owned::random(layout, rows, cols, &mut rng);
                        let x = rng.vec(n * cols, -1.0, 1.0);
                        let mut y = vec![f32::NAN; n * rows];
                        matmul::matmul_with(isa, &o.matrix(), &x, n, &mut y);
                        for t in 0..n {
                            let (want, scale) = reference(&o, &x[t * cols..(t + 1) * cols]);
                            let what = format!("matmul {layout:?} {isa} {rows}x{cols} n={n} token {t}");
                            check(&y[t * rows..(t + 1) * rows], &want, &scale, &what);
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn ternary_skips_and_signs() {
    // All-(-1), all-0 and all-(+1) groups: the result is -d sum(x), 0 and d sum(x).
    use kernels_cpu::layout::pack_ternary_group;
    let cols = 96;
    let mut q = Vec::new();
    for c in [0u8, 1, 2] {
        q.extend_from_slice(&pack_ternary_group(&[c; 32]));
    }
    let scales = [half::f16::from_f32(0.5).to_bits(); 3];
    let m = kernels_cpu::Matrix::new(1, cols, kernels_cpu::Weights::Ternary { q: &q, scales: &scales }).unwrap();
    let x: Vec<f32> = (0..cols).map(|i| i as f32).collect();
    let s = |a: usize| (a..a + 32).map(|i| i as f32).sum::<f32>();
    for isa in isas() {
        let mut y = [0f32];
        matvec::matvec_with(isa, &m, &x, &mut y);
        assert_eq!(y[0], 0.5 * (s(64) - s(0)), "{isa}");
    }
}

#[test]
#[should_panic(expected = "x has")]
fn matvec_rejects_wrong_x() {
    let mut rng = Rng::new(3);
    let o = Owned::random(Layout::Int4, 4, 64, &mut rng);
    matvec::matvec(&o.matrix(), &[0.0; 32], &mut [0.0; 4]);
}

#[test]
#[should_panic(expected = "invalid matrix")]
fn matvec_rejects_hand_built_matrix() {
    let q = [0i8; 32];
    let scales = [0u16; 2];
    let m = kernels_cpu::Matrix { rows: 1, cols: 32, w: kernels_cpu::Weights::Int8 { q: &q, scales: &scales } };
    matvec::matvec(&m, &[0.0; 32], &mut [0.0; 1]);
}
