//! GPU kernels and the GPU decode step: GB/s of weights streamed (matvec, whole decode steps), GFLOP/s of the
//! prefill matmul (shown as Gelem/s, one element = one flop), time per token of the decode step, and the floor
//! the machinery sets (an empty submission waited for, an empty dispatch, a streaming add).
//!
//! `cargo bench --bench gpu_kernels [-- FILTER]`; on lavapipe use a filter and expect software speeds.
//! Each kernel sample records `REPS` launches into one command buffer and waits once, so submit overhead is
//! amortised (the times criterion prints are for the `REPS` launches); the decode-step benches include
//! everything a token costs (one submit, and the readback of the logits or, chained, of the token ids).
//!
//! Measured on an H100 (Vulkan, wgpu 30, 2026-11-22), per launch: empty submit + wait 46 us; a dependent
//! empty dispatch ~20 us; add over 16M floats ~1.0 TB/s; matvec 4096x4096 generic / groups / groups+subgroups:
//! f32 100 / 59 / 60 us, f16 102 / 40 / 38 us, int8 90 / 37 / 37 us, int4 690 / 37 / 38 us, ternary 80 / 41 /
//! 41 us; matmul 4096x4096 x 128 tokens ~0.3 TFLOP/s (portable tiles, per-value dequant: far from the chip); decode attention over 4096 positions (32 heads, 8 KV
//! heads, head dim 128) 131 us with 32 splits. Decode step, int4: SmolLM2-135M shape 3.9 ms/token (212
//! dispatches: the per-dispatch floor dominates), a 1B shape with 8 layers 1.57 ms/token (~200 GiB/s).

#[path = "../tests/common/tiny_model.rs"]
mod tiny_model;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use half::f16;
use kernels_cpu::layout::{pack_int4_group, pack_ternary_group};
use kernels_cpu::{Matrix, Weights, GROUP};
use omex::backend::gpu::buffers::{GpuBuffer, Purpose};
use omex::backend::gpu::ops::{attention, kv, misc, Heads, KvCache, Linear, Mat, MatvecKernel, Output, MATMUL_TOKENS};
use omex::backend::gpu::weights::GpuMatrix;
use omex::backend::gpu::{DeviceOptions, Dispatch, GpuContext, GpuEngine, GpuOptions};
use omex::backend::{Engine, KvType, Logits};
use omex::format::{DType, ModelDir};
use omex::graph::Transformer;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tiny_model::{write_tiny_model, TinySpec};

const REPS: u32 = 20;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u32 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) as u32
    }
    fn f32(&mut self) -> f32 {
        self.next() as f32 / (1u64 << 31) as f32 - 1.0
    }
}

/// Random weights of a layout, owned.
struct Data {
    f: Vec<f32>,
    h: Vec<u16>,
    i: Vec<i8>,
    q: Vec<u8>,
    s: Vec<u16>,
    m: Vec<u16>,
}

fn data(dtype: DType, n: usize, rng: &mut Rng) -> Data {
    let g = n / GROUP;
    let hb = |rng: &mut Rng, k: usize, lo: f32| {
        (0..k).map(|_| f16::from_f32(lo + 0.01 * rng.f32().abs()).to_bits()).collect()
    };
    let mut d = Data { f: vec![], h: vec![], i: vec![], q: vec![], s: vec![], m: vec![] };
    match dtype {
        DType::F32 => d.f = (0..n).map(|_| rng.f32()).collect(),
        DType::F16 => d.h = (0..n).map(|_| f16::from_f32(rng.f32()).to_bits()).collect(),
        DType::Int8 => d.i = (0..n).map(|_| rng.next() as i8).collect(),
        DType::Int4 => {
            for _ in 0..g {
                d.q.extend(pack_int4_group(&std::array::from_fn(|_| (rng.next() % 16) as u8)));
            }
            d.m = hb(rng, g, -0.1);
        }
        _ => {
            for _ in 0..g {
                d.q.extend(pack_ternary_group(&std::array::from_fn(|_| (rng.next() % 3) as u8)));
            }
        }
    }
    if dtype.is_quantized() {
        d.s = hb(rng, g, 0.001);
    }
    d
}

fn matrix(dtype: DType, rows: usize, cols: usize, d: &Data) -> Matrix<'_> {
    let w = match dtype {
        DType::F32 => Weights::F32(&d.f),
        DType::F16 => Weights::F16(&d.h),
        DType::Int8 => Weights::Int8 { q: &d.i, scales: &d.s },
        DType::Int4 => Weights::Int4 { q: &d.q, scales: &d.s, mins: &d.m },
        _ => Weights::Ternary { q: &d.q, scales: &d.s },
    };
    Matrix::new(rows, cols, w).unwrap()
}

fn storage(ctx: &GpuContext, values: &[f32]) -> GpuBuffer {
    let usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC;
    ctx.pool.init("bench", bytemuck::cast_slice(values), usage, Purpose::Activations).unwrap()
}

/// Time of `iters` samples of `REPS` launches of `list` (for `n` tokens), each sample one submit and wait.
fn timed(ctx: &GpuContext, list: &[Dispatch], n: u32, iters: u64) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let mut enc = ctx.encoder();
        for _ in 0..REPS {
            ctx.record(&mut enc, &[list], n);
        }
        let t = Instant::now();
        ctx.gpu.queue.submit([enc.finish()]);
        ctx.gpu.device.poll(wgpu::PollType::wait_indefinitely()).unwrap();
        total += t.elapsed();
    }
    total
}

/// What the machinery costs: an empty submission waited for, an empty dispatch, and a streaming kernel's
/// bandwidth (the ceiling the matvecs compare with).
fn floor(c: &mut Criterion) {
    let ctx = match GpuContext::open_blocking(&DeviceOptions::default()) {
        Ok(c) => c,
        Err(e) => return eprintln!("no GPU: {e}"),
    };
    let mut g = c.benchmark_group("gpu floor");
    g.warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(1)).sample_size(10);
    g.bench_function("empty submit + wait", |b| {
        b.iter_custom(|iters| {
            let t = Instant::now();
            for _ in 0..iters {
                ctx.gpu.queue.submit([ctx.encoder().finish()]);
                ctx.gpu.device.poll(wgpu::PollType::wait_indefinitely()).unwrap();
            }
            t.elapsed()
        })
    });
    let st = storage(&ctx, &[0.0; 4]);
    let adv = pollster::block_on(misc::advance(&ctx, &st)).unwrap();
    g.throughput(Throughput::Elements(REPS as u64));
    g.bench_function("empty dispatch x20", |b| {
        b.iter_custom(|iters| timed(&ctx, std::slice::from_ref(&adv), 1, iters))
    });
    // 200 launches in one pass: each on its own buffer (no barriers between them), and all on one buffer
    // (a barrier before each): the difference is what a dependency costs.
    let bufs: Vec<GpuBuffer> = (0..200).map(|_| storage(&ctx, &[0.0; 4])).collect();
    let independent: Vec<Dispatch> = bufs.iter().map(|b| pollster::block_on(misc::advance(&ctx, b)).unwrap()).collect();
    let dependent: Vec<Dispatch> = (0..200).map(|_| pollster::block_on(misc::advance(&ctx, &st)).unwrap()).collect();
    g.throughput(Throughput::Elements(200));
    for (name, list) in
        [("200 independent dispatches, one pass", &independent), ("200 dependent dispatches, one pass", &dependent)]
    {
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let mut enc = ctx.encoder();
                    ctx.record(&mut enc, &[list], 1);
                    let t = Instant::now();
                    ctx.gpu.queue.submit([enc.finish()]);
                    ctx.gpu.device.poll(wgpu::PollType::wait_indefinitely()).unwrap();
                    total += t.elapsed();
                }
                total
            })
        });
    }
    let n = 1usize << 24;
    let a = storage(&ctx, &vec![1.0; n]);
    let out = storage(&ctx, &vec![0.0; n]);
    let add = pollster::block_on(misc::add_assign(&ctx, 4096, (n / 4096) as u32, &st, &a, &out)).unwrap();
    // The copy engine's ceiling: a buffer-to-buffer copy of 64 MiB (read + write counted).
    g.throughput(Throughput::Bytes(2 * 4 * n as u64 * REPS as u64));
    g.bench_function("copy 64 MiB x20", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let mut enc = ctx.encoder();
                for _ in 0..REPS {
                    enc.copy_buffer_to_buffer(a.raw(), 0, out.raw(), 0, 4 * n as u64);
                }
                let t = Instant::now();
                ctx.gpu.queue.submit([enc.finish()]);
                ctx.gpu.device.poll(wgpu::PollType::wait_indefinitely()).unwrap();
                total += t.elapsed();
            }
            total
        })
    });
    g.throughput(Throughput::Bytes(3 * 4 * n as u64 * REPS as u64));
    g.bench_function("add 16M floats x20", |b| {
        b.iter_custom(|iters| timed(&ctx, std::slice::from_ref(&add), 1, iters))
    });
    g.finish();
}

fn kernels(c: &mut Criterion) {
    let ctx = match GpuContext::open_blocking(&DeviceOptions::default()) {
        Ok(c) => c,
        Err(e) => return eprintln!("no GPU: {e}"),
    };
    eprintln!("GPU: {}", ctx.gpu.describe());
    let mut rng = Rng(1);
    let (rows, cols) = (4096usize, 4096usize);
    let x = storage(&ctx, &(0..cols * 128).map(|_| rng.f32()).collect::<Vec<_>>());
    let y = storage(&ctx, &vec![0.0; rows * 128]);
    let st = storage(&ctx, &[0.0; 4]);
    let mut g = c.benchmark_group("gpu");
    g.warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(1)).sample_size(10);
    for dtype in [DType::F32, DType::F16, DType::Int8, DType::Int4, DType::Ternary] {
        let d = data(dtype, rows * cols, &mut rng);
        let m = matrix(dtype, rows, cols, &d);
        let gm = GpuMatrix::upload(&ctx, "bench", &m, 0).unwrap();
        let mats = vec![Mat { m: &gm, out: 0, bias: None }];
        let l = Linear {
            mats,
            norm: None,
            output: Output::Store,
            step: &st,
            x: &x,
            y: &y,
            x_last: false,
            y_stride: rows as u32,
        };
        g.throughput(Throughput::Bytes(m.weight_bytes() as u64 * REPS as u64));
        let mut kernels = vec![MatvecKernel::Generic, MatvecKernel::Groups];
        if ctx.gpu.tier.subgroups {
            kernels.push(MatvecKernel::GroupsSubgroup);
        }
        for k in kernels {
            let mv = pollster::block_on(l.matvec_with(&ctx, k)).unwrap();
            g.bench_function(BenchmarkId::new(format!("matvec {dtype} {k:?}"), format!("{rows}x{cols}")), |b| {
                b.iter_custom(|iters| timed(&ctx, std::slice::from_ref(&mv), 1, iters))
            });
        }
        let n = 128u32;
        ctx.write(&st, 0, bytemuck::cast_slice(&[n, 0, 0, 0]));
        let mm = pollster::block_on(l.matmul(&ctx, MATMUL_TOKENS)).unwrap();
        g.throughput(Throughput::Elements(2 * (rows * cols) as u64 * n as u64 * REPS as u64));
        g.bench_function(BenchmarkId::new(format!("matmul {dtype}"), format!("{rows}x{cols} n={n}")), |b| {
            b.iter_custom(|iters| timed(&ctx, std::slice::from_ref(&mm), n, iters))
        });
        ctx.write(&st, 0, bytemuck::cast_slice(&[1u32, 0, 0, 0]));
    }
    // Decode attention over a 4096-token cache, Llama-8B heads, in f32, f16 and q8 (the bytes of K and V read).
    let h = Heads { n_heads: 32, n_kv: 8, head_dim: 128 };
    let ctx_len = 4096u32;
    let q = storage(&ctx, &vec![0.1; h.q_dim() as usize]);
    let kv: Vec<f32> = (0..(ctx_len * h.kv_dim()) as usize).map(|_| rng.f32()).collect();
    let halves: Vec<u16> = kv.iter().map(|&v| f16::from_f32(v).to_bits()).collect();
    let out = storage(&ctx, &vec![0.0; h.q_dim() as usize]);
    ctx.write(&st, 0, bytemuck::cast_slice(&[1u32, ctx_len - 1, 0, 0]));
    // q8_0 blocks as the GPU holds them: 8 words of four int8, then the f16 scale.
    let q8: Vec<u32> = kv
        .chunks_exact(32)
        .map(kernels_cpu::KvQ8::quantize)
        .flat_map(|b| {
            let words =
                b.q.chunks_exact(4).map(|q| u32::from_le_bytes([q[0] as u8, q[1] as u8, q[2] as u8, q[3] as u8]));
            words.chain([b.d.to_bits() as u32]).collect::<Vec<_>>()
        })
        .collect();
    for ty in [KvType::F32, KvType::F16, KvType::Q8] {
        let (kc, vc) = match ty {
            KvType::F32 => (storage(&ctx, &kv), storage(&ctx, &kv)),
            KvType::F16 => {
                let words: &[f32] = bytemuck::cast_slice(&halves);
                (storage(&ctx, words), storage(&ctx, words))
            }
            KvType::Q8 => {
                let words: &[f32] = bytemuck::cast_slice(&q8);
                (storage(&ctx, words), storage(&ctx, words))
            }
        };
        let cache = KvCache { k: &kc, v: &vc, ty };
        for splits in [8u32, 32, 64] {
            let part = attention::partials(&ctx, h, splits, 1).unwrap();
            let map = storage(&ctx, &[0.0]); // an unpaged step never reads it
            let d = attention::decode(&ctx, h, splits, 0.1, None, &st, &q, cache, &part, &out, &map);
            let (p, cmb) = pollster::block_on(d).unwrap();
            let list = [p, cmb];
            let bytes = 2 * ctx_len as u64 * kv::row_bytes(ty, h.kv_dim());
            g.throughput(Throughput::Bytes(bytes * REPS as u64));
            let name = format!("ctx {ctx_len} splits {splits} {ty:?}");
            g.bench_function(BenchmarkId::new("attention decode", name), |b| {
                b.iter_custom(|iters| timed(&ctx, &list, 1, iters))
            });
        }
    }
    g.finish();
}

/// The int8-activation matvecs (shaders/matvec_q8.wgsl) on the 4096x4096 matrices of `kernels`, to compare
/// with its f32-activation `Groups` lines.
fn kernels_q8(c: &mut Criterion) {
    let ctx = match GpuContext::open_blocking(&DeviceOptions::default()) {
        Ok(c) => c,
        Err(e) => return eprintln!("no GPU: {e}"),
    };
    let mut rng = Rng(1);
    let (rows, cols) = (4096usize, 4096usize);
    let x = storage(&ctx, &(0..cols).map(|_| rng.f32()).collect::<Vec<_>>());
    let y = storage(&ctx, &vec![0.0; rows]);
    let st = storage(&ctx, &[0.0; 4]);
    ctx.write(&st, 0, bytemuck::cast_slice(&[1u32, 0, 0, 0]));
    let mut g = c.benchmark_group("gpu");
    g.warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(1)).sample_size(10);
    for dtype in [DType::Int8, DType::Int4, DType::Ternary] {
        let d = data(dtype, rows * cols, &mut rng);
        let m = matrix(dtype, rows, cols, &d);
        let gm = GpuMatrix::upload(&ctx, "bench", &m, 0).unwrap();
        let mats = vec![Mat { m: &gm, out: 0, bias: None }];
        let (step, x, y) = (&st, &x, &y);
        let l = Linear { mats, norm: None, output: Output::Store, step, x, y, x_last: false, y_stride: rows as u32 };
        g.throughput(Throughput::Bytes(m.weight_bytes() as u64 * REPS as u64));
        let mut kernels = vec![MatvecKernel::Int8];
        if ctx.gpu.tier.subgroups {
            kernels.push(MatvecKernel::Int8Subgroup);
        }
        for k in kernels {
            let mv = pollster::block_on(l.matvec_with(&ctx, k)).unwrap();
            g.bench_function(BenchmarkId::new(format!("matvec {dtype} {k:?}"), format!("{rows}x{cols}")), |b| {
                b.iter_custom(|iters| timed(&ctx, std::slice::from_ref(&mv), 1, iters))
            });
        }
    }
    g.finish();
}

/// Decode steps of synthetic int4 models: SmolLM2-135M's shapes and a 1B-class shape (8 of its layers).
fn decode(c: &mut Criterion) {
    let ctx = match GpuContext::open_blocking(&DeviceOptions::default()) {
        Ok(c) => Arc::new(c),
        Err(e) => return eprintln!("no GPU: {e}"),
    };
    let smol = TinySpec {
        vocab: 49152,
        hidden: 576,
        intermediate: 1536,
        n_heads: 9,
        n_kv_heads: 3,
        head_dim: 64,
        layers: 30,
        context: 2048,
        tied: true,
        embed: DType::Int8,
        attn: DType::Int4,
        ffn: DType::Int4,
        head: DType::Int4,
        ..TinySpec::small()
    };
    let big = TinySpec {
        vocab: 32000,
        hidden: 2048,
        intermediate: 8192,
        n_heads: 32,
        n_kv_heads: 8,
        head_dim: 64,
        layers: 8,
        tied: false,
        ..smol.clone()
    };
    let mut g = c.benchmark_group("gpu decode");
    g.warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2)).sample_size(10);
    for (name, spec) in [("smollm2-135m-shape int4", smol), ("1b-shape int4 (8 layers)", big)] {
        let dir = std::env::temp_dir().join(format!("omex-bench-{}", name.split(' ').next().unwrap()));
        let cfg: Transformer = write_tiny_model(&dir, &spec, 5);
        let model = ModelDir::open(&dir).unwrap();
        let bytes: u64 = model
            .index
            .tensors
            .iter()
            .filter(|t| t.name != cfg.token_embedding || cfg.tied_embeddings)
            .map(|t| t.payload_bytes())
            .sum();
        let mut e =
            GpuEngine::load_blocking(ctx.clone(), &model, &cfg, GpuOptions::new(spec.context as usize)).unwrap();
        e.forward(&[1; 16], 0, Logits::None).unwrap();
        g.throughput(Throughput::Bytes(bytes));
        g.bench_function(BenchmarkId::new(name, "forward + logits readback"), |b| {
            b.iter_custom(|iters| {
                let t = Instant::now();
                for i in 0..iters {
                    e.forward(&[7], 16 + (i as usize % 64), Logits::Last).unwrap();
                }
                t.elapsed()
            })
        });
        const STEPS: u64 = 64;
        g.throughput(Throughput::Bytes(bytes * STEPS));
        g.bench_function(BenchmarkId::new(name, "64 chained steps"), |b| {
            b.iter_custom(|iters| {
                let t = Instant::now();
                for _ in 0..iters {
                    pollster::block_on(e.decode_greedy(7, 16, STEPS as usize)).unwrap();
                }
                t.elapsed()
            })
        });
        let _ = std::fs::remove_dir_all(&dir);
    }
    g.finish();
}

criterion_group!(benches, floor, kernels, kernels_q8, decode);
criterion_main!(benches);
