//! Decode-time products on SmolLM2-135M's shapes: GB/s of weight bytes read (decimal), 1 and 2 threads,
//! float activations (`f32`) and q8 activations (`q8`, quantization excluded; `quantize` measures it).
//!
//! `cargo bench -p kernels-cpu --bench matvec [-- FILTER]`

#[path = "../tests/common/mod.rs"]
mod common;

use common::{Layout, Owned, Rng};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use kernels_cpu::{matvec, q8, GgmlBlock};
use std::hint::black_box;
use std::time::{Duration, Instant};

const SHAPES: [(usize, usize); 4] = [(576, 576), (1536, 576), (576, 1536), (192, 576)];
const LM_HEAD: (usize, usize) = (49152, 576);

fn pools() -> Vec<(usize, rayon::ThreadPool)> {
    [1, 2].into_iter().map(|n| (n, rayon::ThreadPoolBuilder::new().num_threads(n).build().unwrap())).collect()
}

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
    let mut rng = Rng::new(7);
    let pools = pools();
    let mut g = c.benchmark_group("matvec");
    g.warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_millis(1200)).sample_size(20);
    let mut cases: Vec<(Layout, (usize, usize))> = Vec::new();
    for layout in [Layout::Int4, Layout::Int8, Layout::F16, Layout::Ternary] {
        cases.extend(SHAPES.iter().map(|&s| (layout, s)));
    }
    cases.push((Layout::Int8, LM_HEAD));
    // Raw GGUF blocks; k-quants need cols % 256 == 0, which of these shapes only 576 x 1536 has.
    for kind in [GgmlBlock::Q5_0, GgmlBlock::Q8_0] {
        cases.extend(SHAPES.iter().map(|&s| (Layout::Ggml(kind), s)));
    }
    for kind in [GgmlBlock::Q4K, GgmlBlock::Q5K, GgmlBlock::Q6K] {
        cases.push((Layout::Ggml(kind), (576, 1536)));
    }
    for (layout, (rows, cols)) in cases {
        let o = Owned::random(layout, rows, cols, &mut rng);
        let m = o.matrix();
        let x = rng.vec(cols, -1.0, 1.0);
        let xq = q8::quantize(&x, 1);
        let mut y = vec![0f32; rows];
        g.throughput(Throughput::BytesDecimal(m.weight_bytes() as u64));
        for (threads, pool) in &pools {
            let id = |path: &str| BenchmarkId::new(format!("{layout:?}/{path}/{threads}t"), format!("{rows}x{cols}"));
            g.bench_function(id("f32"), |b| {
                b.iter_custom(|it| timed(pool, it, || matvec::matvec(black_box(&m), black_box(&x), &mut y)))
            });
            if layout != Layout::F16 {
                g.bench_function(id("q8"), |b| {
                    b.iter_custom(|it| timed(pool, it, || q8::matvec_q8(black_box(&m), black_box(&xq), &mut y)))
                });
            }
        }
    }
    g.finish();

    let mut g = c.benchmark_group("quantize");
    g.warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_millis(800));
    let mut buf = q8::Q8Activations::new();
    for cols in [576, 1536] {
        let x = rng.vec(cols, -1.0, 1.0);
        g.throughput(Throughput::Elements(cols as u64));
        g.bench_function(BenchmarkId::from_parameter(cols), |b| b.iter(|| buf.quantize_into(black_box(&x), 1)));
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
