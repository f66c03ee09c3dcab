//! Prefill products on SmolLM2-135M's shapes with n = 64 and 512 tokens: GFLOP/s (shown as Gelem/s, one
//! element = one flop, 2 per multiply-add), 1 and 2 threads, float (`f32`) and q8 activations (`q8`,
//! quantization excluded).
//!
//! `cargo bench -p kernels-cpu --bench matmul [-- FILTER]`

#[path = "../tests/common/mod.rs"]
mod common;

use common::{Layout, Owned, Rng};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use kernels_cpu::{matmul, q8};
use std::hint::black_box;
use std::time::{Duration, Instant};

const SHAPES: [(usize, usize); 4] = [(576, 576), (1536, 576), (576, 1536), (192, 576)];

/// Runs `f` `iters` times inside `pool` (as the runtime does, one `install` around many calls), timed there.
fn timed(pool: &rayon::ThreadPool, iters: u64, mut f: impl FnMut() + Send) -> Duration {
    pool.install(|| {
        let t = Instant::now();
        for _ in 0..iters {
            f();
        }
        t.elapsed()
    })
}

fn bench(c: &mut Criterion) {
    let mut rng = Rng::new(8);
    let pools: Vec<_> =
        [1, 2].into_iter().map(|n| (n, rayon::ThreadPoolBuilder::new().num_threads(n).build().unwrap())).collect();
    let mut g = c.benchmark_group("matmul");
    g.warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_millis(1500)).sample_size(10);
    for layout in [Layout::Int4, Layout::Int8, Layout::F16, Layout::Ternary] {
        for (rows, cols) in SHAPES {
            let o = Owned::random(layout, rows, cols, &mut rng);
            let m = o.matrix();
            for n in [64, 512] {
                let x = rng.vec(n * cols, -1.0, 1.0);
                let xq = q8::quantize(&x, n);
                let mut y = vec![0f32; n * rows];
                g.throughput(Throughput::Elements((2 * rows * cols * n) as u64));
                for (threads, pool) in &pools {
                    let id =
                        |p: &str| BenchmarkId::new(format!("{layout:?}/{p}/n{n}/{threads}t"), format!("{rows}x{cols}"));
                    g.bench_function(id("f32"), |b| {
                        b.iter_custom(|it| timed(pool, it, || matmul::matmul(black_box(&m), black_box(&x), n, &mut y)))
                    });
                    if layout != Layout::F16 {
                        g.bench_function(id("q8"), |b| {
                            b.iter_custom(|it| {
                                timed(pool, it, || q8::matmul_q8(black_box(&m), black_box(&xq), n, &mut y))
                            })
                        });
                    }
                }
            }
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
