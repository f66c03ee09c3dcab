//! Quick timing loop for profiling one kernel: `cargo run -p kernels-cpu --release --example kbench --
//! <matvec|matvec_q8|matmul|matmul_q8> <int4|int8|f16|ternary|f32|q4k|q5k|q6k|q5_0|q5_1|q8_0> ROWS COLS [N] [THREADS] [SECONDS]`.
//! Prints GB/s of weights (matvec) or GFLOP/s (matmul).

#[path = "../tests/common/mod.rs"]
mod common;

use common::{Layout, Owned, Rng};
use kernels_cpu::{matmul, matvec, q8, GgmlBlock};
use std::time::Instant;

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let kind = a.get(1).map_or("matvec_q8", |s| s.as_str()).to_string();
    let layout = match a.get(2).map_or("int4", |s| s.as_str()) {
        "int8" => Layout::Int8,
        "f16" => Layout::F16,
        "f32" => Layout::F32,
        "ternary" => Layout::Ternary,
        "q4k" => Layout::Ggml(GgmlBlock::Q4K),
        "q5k" => Layout::Ggml(GgmlBlock::Q5K),
        "q6k" => Layout::Ggml(GgmlBlock::Q6K),
        "q5_0" => Layout::Ggml(GgmlBlock::Q5_0),
        "q5_1" => Layout::Ggml(GgmlBlock::Q5_1),
        "q8_0" => Layout::Ggml(GgmlBlock::Q8_0),
        _ => Layout::Int4,
    };
    let num = |i: usize, d: usize| a.get(i).map_or(d, |s| s.parse().unwrap());
    let (rows, cols, n, threads) = (num(3, 576), num(4, 576), num(5, 1), num(6, 1));
    let secs: f64 = a.get(7).map_or(2.0, |s| s.parse().unwrap());
    let mut rng = Rng::new(5);
    let o = Owned::random(layout, rows, cols, &mut rng);
    let m = o.matrix();
    let x = rng.vec(n * cols, -1.0, 1.0);
    let xq = q8::quantize(&x, n);
    let xq1 = q8::quantize(&x[..cols], 1);
    let mut y = vec![0f32; n * rows];
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
    let (iters, dt) = pool.install(|| {
        let mut run = || match kind.as_str() {
            "matvec" => matvec::matvec(&m, &x[..cols], &mut y[..rows]),
            "matvec_q8" => q8::matvec_q8(&m, &xq1, &mut y[..rows]),
            "matmul" => matmul::matmul(&m, &x, n, &mut y),
            _ => q8::matmul_q8(&m, &xq, n, &mut y),
        };
        run();
        let t = Instant::now();
        let mut iters = 0u64;
        while t.elapsed().as_secs_f64() < secs {
            for _ in 0..10 {
                run();
            }
            iters += 10;
        }
        (iters, t.elapsed().as_secs_f64())
    });
    let per = dt / iters as f64;
    if kind.starts_with("matvec") {
        println!(
            "{kind} {layout:?} {rows}x{cols} {threads}t: {:.2} us, {:.2} GB/s",
            per * 1e6,
            m.weight_bytes() as f64 / per / 1e9
        );
    } else {
        let gf = 2.0 * (rows * cols * n) as f64 / per / 1e9;
        println!("{kind} {layout:?} {rows}x{cols} n={n} {threads}t: {:.2} us, {gf:.2} GFLOP/s", per * 1e6);
    }
}
