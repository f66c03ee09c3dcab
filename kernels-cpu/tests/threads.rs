//! Results do not depend on the thread count: a 1-thread and a 2-thread pool give bit-identical outputs.

mod common;
use common::*;
use kernels_cpu::{attention, matmul, matvec, q8};

fn pool(n: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new().num_threads(n).build().unwrap()
}

#[test]
fn one_and_two_threads_agree() {
    let mut rng = Rng::new(40);
    let (p1, p2) = (pool(1), pool(2));
    for isa in isas() {
        for layout in LAYOUTS {
            // Big enough that both pools cut it into several tasks.
            let (rows, cols, n) = (1030, 576, 37);
            let o = Owned::random(layout, rows, cols, &mut rng);
            let m = o.matrix();
            let x = rng.vec(n * cols, -1.0, 1.0);
            let xq = q8::quantize_with(isa, &x, n);
            let x1 = q8::quantize_with(isa, &x[..cols], 1);
            let run = |p: &rayon::ThreadPool| {
                p.install(|| {
                    let mut a = vec![0f32; rows];
                    matvec::matvec_with(isa, &m, &x[..cols], &mut a);
                    let mut b = vec![0f32; n * rows];
                    matmul::matmul_with(isa, &m, &x, n, &mut b);
                    let mut c = vec![0f32; rows];
                    q8::matvec_q8_with(isa, &m, &x1, &mut c);
                    let mut d = vec![0f32; n * rows];
                    q8::matmul_q8_with(isa, &m, &xq, n, &mut d);
                    (a, b, c, d)
                })
            };
            let (r1, r2) = (run(&p1), run(&p2));
            assert!(r1 == r2, "{isa} {layout:?}: thread count changed the result");
        }
        let (nh, nkv, hd, pos0, n_q) = (9, 3, 64, 300, 20);
        let k = rng.vec((pos0 + n_q) * nkv * hd, -1.0, 1.0);
        let v = rng.vec((pos0 + n_q) * nkv * hd, -1.0, 1.0);
        let q = rng.vec(n_q * nh * hd, -1.0, 1.0);
        let att = |p: &rayon::ThreadPool| {
            let mut out = vec![0f32; q.len()];
            p.install(|| attention::attention_with(isa, &q, &k, &v, pos0, n_q, nh, nkv, hd, 0.125, &mut out));
            out
        };
        assert!(att(&p1) == att(&p2), "{isa}: attention depends on the thread count");
    }
}
