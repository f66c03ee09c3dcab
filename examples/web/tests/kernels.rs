//! GPU kernels in the browser: a few of the op tests run in headless Chromium over WebGPU (the portable
//! kernel variants, as the page uses them) against their kernels-cpu twins, compiled to wasm alongside.
//! Run by scripts/browser-test.sh through wasm-bindgen-test-runner:
//!
//! ```sh
//! CHROMEDRIVER=/usr/bin/chromedriver CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner \
//!     cargo test --release --target wasm32-unknown-unknown -p omex-web --test kernels
//! ```
#![cfg(target_arch = "wasm32")]

use half::f16;
use kernels_cpu::{Matrix, Weights, GROUP};
use omex::backend::gpu::buffers::{GpuBuffer, Purpose};
use omex::backend::gpu::ops::misc::{self, Heads};
use omex::backend::gpu::ops::{attention, KvCache, Linear, Mat, MatvecKernel, Output};
use omex::backend::gpu::weights::GpuMatrix;
use omex::backend::gpu::{DeviceOptions, GpuContext, Region};
use omex::backend::KvType;
use std::rc::Rc;
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

/// SplitMix64, so every run draws the same cases.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn range(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32)
    }
    fn vec(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n).map(|_| self.range(lo, hi)).collect()
    }
    fn f16s(&mut self, n: usize, lo: f32, hi: f32) -> Vec<u16> {
        (0..n).map(|_| f16::from_f32(self.range(lo, hi)).to_bits()).collect()
    }
}

/// The browser's adapter, opened with the portable kernels only (as the page opens it).
async fn gpu() -> Rc<GpuContext> {
    thread_local! {
        static CTX: std::cell::RefCell<Option<Rc<GpuContext>>> = const { std::cell::RefCell::new(None) };
    }
    if let Some(c) = CTX.with(|c| c.borrow().clone()) {
        return c;
    }
    let ctx = GpuContext::open(&DeviceOptions { portable: true }).await.expect("WebGPU adapter");
    console_log!("kernels on {} ({:?})", ctx.gpu.describe(), ctx.gpu.info.device_type);
    let ctx = Rc::new(ctx);
    CTX.with(|c| *c.borrow_mut() = Some(ctx.clone()));
    ctx
}

fn upload(ctx: &GpuContext, words: &[u32]) -> GpuBuffer {
    let usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST;
    ctx.pool.init("test", bytemuck::cast_slice(words), usage, Purpose::Activations).unwrap()
}

fn upload_f32(ctx: &GpuContext, v: &[f32]) -> GpuBuffer {
    upload(ctx, bytemuck::cast_slice(v))
}

/// An output buffer of NaNs (0xFFFFFFFF words): an element the kernel fails to write fails the test.
fn poisoned(ctx: &GpuContext, n: usize) -> GpuBuffer {
    upload(ctx, &vec![u32::MAX; n.max(1)])
}

fn step(ctx: &GpuContext, n: u32, pos: u32) -> GpuBuffer {
    upload(ctx, &[n, pos, 0, 0])
}

fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(1f32, |m, w| m.max(w.abs()));
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= tol * scale, "{what}: element {i}: gpu {g}, cpu {w}");
    }
}

#[wasm_bindgen_test]
async fn rmsnorm_matches_kernels_cpu() {
    let ctx = gpu().await;
    let mut rng = Rng(0x5eed_0101);
    for (rows, cols) in [(1usize, 576usize), (3, 100), (2, 1537)] {
        let (x, w) = (rng.vec(rows * cols, -2.0, 2.0), rng.vec(cols, 0.5, 1.5));
        let (xb, wb, st) = (upload_f32(&ctx, &x), upload_f32(&ctx, &w), step(&ctx, rows as u32, 0));
        let at = misc::NormGroups { cols: cols as u32, groups: 1, stride: cols as u32, offset: 0 };
        let d = misc::rmsnorm(&ctx, at, 1e-5, &st, Region::whole(&wb), 0, &xb).await.unwrap();
        ctx.run(&[d], rows as u32);
        let got = ctx.read_f32(&xb, 0, x.len()).await.unwrap();
        let mut want = vec![0f32; x.len()];
        for (xr, yr) in x.chunks_exact(cols).zip(want.chunks_exact_mut(cols)) {
            kernels_cpu::ops::rmsnorm(xr, &w, 1e-5, yr);
        }
        assert_close(&format!("rmsnorm {rows}x{cols}"), &got, &want, 1e-5);
    }
    ctx.gpu.check().unwrap();
}

#[wasm_bindgen_test]
async fn matvec_int4_matches_kernels_cpu() {
    let ctx = gpu().await;
    let mut rng = Rng(0x5eed_0102);
    for (rows, cols) in [(67usize, 576usize), (5, 32), (130, 1536)] {
        let groups = rows * cols / GROUP;
        let q: Vec<u8> = (0..groups * GROUP / 2).map(|_| rng.next_u64() as u8).collect();
        let (scales, mins) = (rng.f16s(groups, 0.002, 0.03), rng.f16s(groups, -0.2, 0.0));
        let m = Matrix::new(rows, cols, Weights::Int4 { q: &q, scales: &scales, mins: &mins }).unwrap();
        let x = rng.vec(cols, -1.0, 1.0);
        let mut want = vec![0f32; rows];
        kernels_cpu::matvec(&m, &x, &mut want);

        let gm = GpuMatrix::upload(&ctx, "int4", &m, 256).unwrap();
        let (xb, y, st) = (upload_f32(&ctx, &x), poisoned(&ctx, rows), step(&ctx, 1, 0));
        let mats = vec![Mat { m: &gm, out: 0, bias: None }];
        let l = Linear {
            mats,
            norm: None,
            output: Output::Store,
            step: &st,
            x: &xb,
            y: &y,
            x_last: false,
            y_stride: rows as u32,
        };
        for kernel in [MatvecKernel::Generic, MatvecKernel::Groups, MatvecKernel::Auto] {
            ctx.write(&y, 0, bytemuck::cast_slice(&vec![u32::MAX; rows]));
            let d = l.matvec_with(&ctx, kernel).await.unwrap();
            ctx.run(&[d], 1);
            let got = ctx.read_f32(&y, 0, rows).await.unwrap();
            assert_close(&format!("int4 matvec {rows}x{cols} ({kernel:?})"), &got, &want, 2e-5);
        }
    }
    ctx.gpu.check().unwrap();
}

#[wasm_bindgen_test]
async fn decode_attention_matches_kernels_cpu() {
    let ctx = gpu().await;
    let mut rng = Rng(0x5eed_0103);
    let shapes = [
        Heads { n_heads: 9, n_kv: 3, head_dim: 64 }, // SmolLM2-135M's
        Heads { n_heads: 6, n_kv: 2, head_dim: 16 },
        Heads { n_heads: 8, n_kv: 1, head_dim: 40 },
    ];
    for h in shapes {
        for (pos, splits) in [(0usize, 1u32), (70, 4), (129, 3)] {
            let (qd, kvd) = (h.q_dim() as usize, h.kv_dim() as usize);
            let ctx_len = pos + 1;
            let q = rng.vec(qd, -1.0, 1.0);
            let (k, v) = (rng.vec(ctx_len * kvd, -1.0, 1.0), rng.vec(ctx_len * kvd, -1.0, 1.0));
            let scale = 1.0 / (h.head_dim as f32).sqrt();
            let mut want = vec![0f32; qd];
            let (nh, nkv, hd) = (h.n_heads as usize, h.n_kv as usize, h.head_dim as usize);
            kernels_cpu::attention::<f32>(&q, &k, &v, pos, 1, nh, nkv, hd, scale, &mut want);

            let (qb, kb, vb) = (upload_f32(&ctx, &q), upload_f32(&ctx, &k), upload_f32(&ctx, &v));
            let (out, st) = (poisoned(&ctx, qd), step(&ctx, 1, pos as u32));
            let part = attention::partials(&ctx, h, splits, 1).unwrap();
            // The step says unpaged (one sequence, cache row = position), so the seqmap is not read.
            let map = upload(&ctx, &[0]);
            let cache = KvCache { k: &kb, v: &vb, ty: KvType::F32 };
            let (a, b) =
                attention::decode(&ctx, h, splits, scale, None, &st, &qb, cache, &part, &out, &map).await.unwrap();
            ctx.run(&[a, b], 1);
            let got = ctx.read_f32(&out, 0, qd).await.unwrap();
            assert_close(&format!("decode attention {h:?} pos={pos} splits={splits}"), &got, &want, 1e-5);
        }
    }
    ctx.gpu.check().unwrap();
}
