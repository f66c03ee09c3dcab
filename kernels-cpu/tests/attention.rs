//! Attention against a direct f64 implementation, f32, f16 and q8_0 KV caches, GQA, prefill and decode shapes.

mod common;
use common::*;
use half::f16;
use kernels_cpu::attention::{
    attention_paged_with, attention_window_with, attention_with, kv_load, kv_store, KvElem, KvQ8, Pages,
};

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
    // The cache's values as stored (rounded), which attention must reproduce to f32 accuracy.
    let (k, v) = (kv_load(k), kv_load(v));
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
                        scale as f64 * (0..hd).map(|d| qr[d] as f64 * k[(j * nkv + kh) * hd + d] as f64).sum::<f64>()
                    }
                })
                .collect();
            let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
            let z: f64 = e.iter().sum();
            for d in 0..hd {
                out[(i * nh + h) * hd + d] = (0..len).map(|j| e[j] / z * v[(j * nkv + kh) * hd + d] as f64).sum();
            }
        }
    }
    out
}

fn run<E: KvElem>(seed: u64, window: Option<usize>) {
    let mut rng = Rng::new(seed);
    for isa in isas() {
        for (nh, nkv, hd) in [(9, 3, 64usize), (4, 4, 8), (2, 1, 33), (4, 2, 32)] {
            if !hd.is_multiple_of(E::VALUES) {
                continue;
            }
            for (pos0, n_q) in [(0, 1), (0, 5), (7, 1), (40, 3), (200, 1)] {
                let ctx = pos0 + n_q + 3;
                let kvw = nkv * hd;
                let mut k = vec![E::ZERO; ctx * kvw / E::VALUES];
                let mut v = vec![E::ZERO; ctx * kvw / E::VALUES];
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
fn attention_q8_cache() {
    run::<KvQ8>(34, None);
    run::<KvQ8>(35, Some(4));
}

/// Quantizing a row to q8_0 against the f64 formula: per block of 32, `d = max|x| / 127` (stored f16) and
/// `q = round(x / d)`; every value comes back within half a step (`d / 2`, plus the f16 rounding of `d`).
#[test]
fn kv_store_quantizes_q8_blocks() {
    let mut rng = Rng::new(36);
    let mut row = rng.vec(96, -3.0, 3.0);
    row[32..64].fill(0.0); // an all-zero block: d = 0, every q 0
    row[70] = 50.0; // one large value dominates its block
    let mut c = vec![KvQ8::ZERO; 2 * 3];
    kv_store(&mut c, 1, &row);
    assert_eq!(c[..3], [KvQ8::ZERO; 3], "row 0 untouched");
    for (b, x) in c[3..].iter().zip(row.chunks_exact(32)) {
        let amax = x.iter().fold(0f64, |m, &v| m.max((v as f64).abs()));
        let d = amax / 127.0;
        assert_eq!(b.d, half::f16::from_f64(d), "scale");
        for (&q, &v) in b.q.iter().zip(x) {
            let want = if d == 0.0 { 0.0 } else { (v as f64 / d).round() };
            assert!((q as f64 - want).abs() <= 1.0 && q.unsigned_abs() <= 127, "{v}: q {q}, want {want}");
            let back = b.d.to_f64() * q as f64;
            assert!((back - v as f64).abs() <= d * 0.5 + amax * 1e-3 + 1e-7, "{v} came back as {back}");
        }
    }
    let back = kv_load(&c[3..]);
    assert_eq!(back[32..64], [0.0; 32]);
}

/// The q8 inner loops of every ISA agree with the scalar formula on the dequantized values.
#[test]
fn q8_dot_and_axpy_match_the_formula() {
    let mut rng = Rng::new(37);
    let mut k = vec![KvQ8::ZERO; 4];
    kv_store(&mut k, 0, &rng.vec(128, -2.0, 2.0));
    let kf = kv_load(&k);
    let q = rng.vec(128, -1.0, 1.0);
    let want: f64 = q.iter().zip(&kf).map(|(&a, &b)| a as f64 * b as f64).sum();
    for isa in isas() {
        let got = KvQ8::dot(isa, &q, &k);
        assert!((got as f64 - want).abs() <= 1e-4, "{isa} dot: {got} vs {want}");
        let mut out = q.clone();
        KvQ8::axpy(isa, 0.75, &k, &mut out);
        for (i, &o) in out.iter().enumerate() {
            let w = q[i] as f64 + 0.75 * kf[i] as f64;
            assert!((o as f64 - w).abs() <= 1e-5, "{isa} axpy [{i}]: {o} vs {w}");
        }
    }
}

/// A paged cache (positions scattered over blocks in a shuffled order, other blocks holding garbage) gives
/// exactly what the same rows in a contiguous cache give.
#[test]
fn attention_paged_equals_contiguous() {
    let mut rng = Rng::new(40);
    let (nh, nkv, hd, bt): (usize, usize, usize, usize) = (6, 2, 16, 4);
    let kvw = nkv * hd;
    for (pos0, n_q, window) in
        [(0usize, 1usize, None), (0, 9, None), (13, 1, None), (21, 6, Some(5)), (30, 2, Some(64))]
    {
        let len = pos0 + n_q;
        let blocks = len.div_ceil(bt);
        // Twice as many blocks as needed; the sequence takes every other one, backwards.
        let total = 2 * blocks + 1;
        let table: Vec<u32> = (0..blocks).map(|b| (2 * (blocks - 1 - b) + 1) as u32).collect();
        let (mut kc, mut vc) = (vec![0f32; len * kvw], vec![0f32; len * kvw]);
        let (mut kp, mut vp) = (vec![f32::NAN; total * bt * kvw], vec![f32::NAN; total * bt * kvw]);
        let pages = Pages { table: &table, block_tokens: bt };
        for p in 0..len {
            let (kr, vr) = (rng.vec(kvw, -1.0, 1.0), rng.vec(kvw, -1.0, 1.0));
            kv_store(&mut kc, p, &kr);
            kv_store(&mut vc, p, &vr);
            kv_store(&mut kp, Pages::row(Some(pages), p), &kr);
            kv_store(&mut vp, Pages::row(Some(pages), p), &vr);
        }
        let q = rng.vec(n_q * nh * hd, -2.0, 2.0);
        let isa = kernels_cpu::isa::detect();
        let (mut want, mut got) = (vec![0f32; q.len()], vec![0f32; q.len()]);
        attention_window_with(isa, &q, &kc, &vc, pos0, n_q, nh, nkv, hd, 0.25, window, &mut want);
        attention_paged_with(isa, &q, &kp, &vp, Some(pages), pos0, n_q, nh, nkv, hd, 0.25, window, &mut got);
        assert_eq!(got, want, "pos0 {pos0} n_q {n_q} window {window:?}");
    }
}

#[test]
#[should_panic(expected = "past the cache")]
fn attention_rejects_a_block_past_the_cache() {
    let k = vec![0f32; 4 * 8];
    let mut out = vec![0f32; 8];
    let pages = Pages { table: &[1], block_tokens: 4 };
    let isa = kernels_cpu::Isa::Portable;
    attention_paged_with(isa, &[0.0; 8], &k, &k, Some(pages), 2, 1, 1, 1, 8, 1.0, None, &mut out);
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
