//! Attention against a direct f64 implementation, f32 and f16 KV caches, GQA, prefill and decode shapes.

mod common;
use common::*;
use half::f16;
use kernels_cpu::attention::{attention_window_with, attention_with, kv_store, KvElem};

#[allow(clippy::too_many_arguments)]
fn reference<E: KvElem>(
    q: &[f32],
    k: &[E],
    v: &[E],
    pos0: usize,
    n_q: usize,
    nh: usize,
    nkv: usize,
    hd: usize,
    scale: f32,
    window: Option<usize>,
) -> Vec<f64> {
    let mut out = vec![0f64; n_q * nh * hd];
    for i in 0..n_q {
        for h in 0..nh {
            let kh = h / (nh / nkv);
            let len = pos0 + i + 1;
            let first = window.map_or(0, |w| len.saturating_sub(w));
            let qr = &q[(i * nh + h) * hd..(i * nh + h + 1) * hd];
            // Positions before the window weigh nothing.
            let s: Vec<f64> = (0..len)
                .map(|j| match j < first {
                    true => f64::NEG_INFINITY,
                    false => {
                        scale as f64
                            * (0..hd).map(|d| qr[d] as f64 * k[(j * nkv + kh) * hd + d].to_f32() as f64).sum::<f64>()
                    }
                })
                .collect();
            let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
            let z: f64 = e.iter().sum();
            for d in 0..hd {
                out[(i * nh + h) * hd + d] =
                    (0..len).map(|j| e[j] / z * v[(j * nkv + kh) * hd + d].to_f32() as f64).sum();
            }
        }
    }
    out
}

fn run<E: KvElem>(seed: u64, window: Option<usize>) {
    let mut rng = Rng::new(seed);
    for isa in isas() {
        for (nh, nkv, hd) in [(9, 3, 64), (4, 4, 8), (2, 1, 33)] {
            for (pos0, n_q) in [(0, 1), (0, 5), (7, 1), (40, 3), (200, 1)] {
                let ctx = pos0 + n_q + 3;
                let kvw = nkv * hd;
                let mut k = vec![E::from_f32(0.0); ctx * kvw];
                let mut v = vec![E::from_f32(0.0); ctx * kvw];
                for p in 0..pos0 + n_q {
                    kv_store(&mut k, p, &rng.vec(kvw, -1.0, 1.0));
                    kv_store(&mut v, p, &rng.vec(kvw, -1.0, 1.0));
                }
                // Garbage past the causal horizon must not be read.
                for p in pos0 + n_q..ctx {
                    kv_store(&mut k, p, &vec![1e4; kvw]);
                    kv_store(&mut v, p, &vec![1e4; kvw]);
                }
                let q = rng.vec(n_q * nh * hd, -2.0, 2.0);
                let scale = 1.0 / (hd as f32).sqrt();
                let mut out = vec![f32::NAN; q.len()];
                match window {
                    None => attention_with(isa, &q, &k, &v, pos0, n_q, nh, nkv, hd, scale, &mut out),
                    w => attention_window_with(isa, &q, &k, &v, pos0, n_q, nh, nkv, hd, scale, w, &mut out),
                }
                let want = reference(&q, &k, &v, pos0, n_q, nh, nkv, hd, scale, window);
                for (i, (&g, &w)) in out.iter().zip(&want).enumerate() {
                    assert!(
                        (g as f64 - w).abs() <= 2e-5,
                        "{isa} nh {nh} nkv {nkv} hd {hd} pos0 {pos0} n_q {n_q} window {window:?} [{i}]: {g} vs {w}"
                    );
                }
            }
        }
    }
}

#[test]
fn attention_f32_cache() {
    run::<f32>(30, None);
}

#[test]
fn attention_sliding_window() {
    // Windows shorter than, equal to and longer than the positions attended.
    for window in [1, 4, 41, 500] {
        run::<f32>(32 + window as u64, Some(window));
        run::<f16>(33 + window as u64, Some(window));
    }
}

#[test]
fn attention_f16_cache() {
    run::<f16>(31, None);
}

#[test]
fn kv_store_rounds_to_f16() {
    let mut c = vec![f16::ZERO; 8];
    kv_store(&mut c, 1, &[1.0, 2.5, -3.25, 1e-3]);
    assert_eq!(
        c[4..].iter().map(|v| v.to_f32()).collect::<Vec<_>>(),
        vec![1.0, 2.5, -3.25, f16::from_f32(1e-3).to_f32()]
    );
}

#[test]
#[should_panic(expected = "past the cache")]
fn attention_rejects_short_cache() {
    let k = vec![0f32; 2 * 8];
    let mut out = vec![0f32; 8];
    attention_with(kernels_cpu::Isa::Portable, &[0.0; 8], &k, &k, 2, 1, 1, 1, 8, 1.0, &mut out);
}
