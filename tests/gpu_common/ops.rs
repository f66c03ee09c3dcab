//! The op set behind one trait, implemented on the CPU (kernels-cpu, the twins) and on the GPU (the WGSL
//! kernels), so that one test body runs on both.
#![allow(dead_code)]

use super::*;
use half::f16;
use kernels_cpu::ops::{self, RopeStyle};
use kernels_cpu::{KvElem, KvQ8, Pages};
use omex::backend::gpu::ops::{
    attention, misc, moe, Heads, KvCache, Linear, Mat, MatmulKernel, MatvecKernel, Norm, Output, MATMUL_TOKENS,
    MATMUL_TOKENS_SHORT, MATVEC_TOKENS,
};
use omex::backend::gpu::weights::{GpuFile, GpuMatrix};
use omex::backend::gpu::{Dispatch, Region};
use omex::backend::{KvType, KV_BLOCK_TOKENS};
use omex::graph::Activation;
use omex::sampling::{Sampler, SamplerOptions};
use std::sync::Arc;

/// A fused matrix product: up to three matrices (same layout and cols) with optional biases, an optional RMS
/// norm on the input, `n` tokens of `x`, and `y0` the initial output (read by `Output::Add`).
pub struct LinearCase {
    pub mats: Vec<OwnedMatrix>,
    pub biases: Vec<Option<Vec<f32>>>,
    pub norm: Option<(Vec<f32>, f32)>,
    /// With a norm: its bias, which makes it a LayerNorm (the f32 decode matvecs only).
    pub ln_bias: Option<Vec<f32>>,
    pub output: Output,
    pub x: Vec<f32>,
    pub n: usize,
    pub y0: Vec<f32>,
    /// GPU: the decode matvec rather than the prefill matmul (needs n == 1).
    pub matvec: bool,
}

impl LinearCase {
    /// Values per token of y.
    pub fn width(&self) -> usize {
        match self.output {
            Output::SwiGlu => self.mats[0].rows,
            _ => self.mats.iter().map(|m| m.rows).sum(),
        }
    }
}

pub struct AttnCase {
    pub heads: Heads,
    pub q: Vec<f32>,
    pub k: Vec<f32>,
    pub v: Vec<f32>,
    pub pos0: usize,
    pub n: usize,
    pub scale: f32,
    /// Attend to the last `window` positions only.
    pub window: Option<u32>,
    /// The caches' element type (values given are representable in it).
    pub kv: KvType,
}

/// Decode attention as the engine runs it: the one token at `pos` arrives as its fused projection row
/// `q | k | v`; q and k are rotated, k and v stored into the caches at `pos` (the GPU's `rope` dispatch), then q
/// attends to cache rows `0..=pos` (the split kernel and its combine).
pub struct DecodeCase {
    pub heads: Heads,
    pub dims: usize,
    pub half: bool,
    pub inv_freq: Vec<f32>,
    pub qkv: Vec<f32>,
    /// The caches `[ctx, kv_dim]` before the step (row `pos` is overwritten).
    pub k: Vec<f32>,
    pub v: Vec<f32>,
    pub pos: usize,
    pub scale: f32,
    /// GPU: the workgroups per KV head of the split kernel.
    pub splits: u32,
    pub window: Option<u32>,
    /// The caches' element type (values given are representable in it).
    pub kv: KvType,
}

/// Several sequences' next tokens in one pass over a paged KV cache (the server's batched decode step): row
/// `r` holds its sequence's q|k|v at position `rows[r].1`, whose blocks are `rows[r].2`
/// (`backend::KV_BLOCK_TOKENS` positions each).
pub struct PagedCase {
    pub heads: Heads,
    pub dims: usize,
    pub half: bool,
    pub inv_freq: Vec<f32>,
    pub rows: Vec<(Vec<f32>, usize, Vec<u32>)>,
    /// The caches `[blocks * KV_BLOCK_TOKENS, kv_dim]` before the step.
    pub k: Vec<f32>,
    pub v: Vec<f32>,
    pub scale: f32,
    pub splits: u32,
    pub window: Option<u32>,
    /// The caches' element type (values given are representable in it).
    pub kv: KvType,
}

pub struct RopeCase {
    pub heads: Heads,
    pub dims: usize,
    pub half: bool,
    pub qkv: Vec<f32>,
    pub n: usize,
    pub pos0: usize,
    pub ctx: usize,
    pub inv_freq: Vec<f32>,
    /// The caches' element type (values given are representable in it).
    pub kv: KvType,
}

pub trait Ops {
    fn name(&self) -> &'static str;
    fn linear(&self, c: &LinearCase) -> Vec<f32>;
    fn rmsnorm(&self, x: &[f32], w: &[f32], eps: f32) -> Vec<f32>;
    /// RMS norm in place of `at`'s groups of each of the `n` token rows of `x` (gemma3's q/k head norms).
    fn rmsnorm_groups(&self, x: &[f32], w: &[f32], eps: f32, at: misc::NormGroups, n: usize) -> Vec<f32>;
    /// (rotated q `[n, q_dim]`, K cache, V cache `[ctx, kv_dim]`; rows outside `pos0..pos0 + n` are zero).
    fn rope_store(&self, c: &RopeCase) -> (Vec<f32>, Vec<f32>, Vec<f32>);
    /// GPU: the prefill kernel.
    fn attention(&self, c: &AttnCase) -> Vec<f32>;
    /// (attention output `[q_dim]`, K cache, V cache after the step).
    fn decode_attention(&self, c: &DecodeCase) -> (Vec<f32>, Vec<f32>, Vec<f32>);
    /// (output rows, K cache, V cache) of the batched paged step `c`.
    fn paged_decode(&self, c: &PagedCase) -> (Vec<f32>, Vec<f32>, Vec<f32>);
    fn silu_mul(&self, gate: &[f32], up: &[f32]) -> Vec<f32>;
    fn gelu_mul(&self, gate: &[f32], up: &[f32]) -> Vec<f32>;
    fn add(&self, a: &[f32], b: &[f32]) -> Vec<f32>;
    /// LayerNorm of each row of `cols` values of `x` (GPU: out of place, as before a product).
    fn layernorm(&self, x: &[f32], w: &[f32], bias: Option<&[f32]>, eps: f32) -> Vec<f32>;
    /// `act(x)` in place (a plain MLP's activation).
    fn activation(&self, x: &[f32], act: Activation) -> Vec<f32>;
    /// `x[t] += table[positions[t]]` over rows of `cols`; GPU: consecutive positions as one sequence's chunk,
    /// others through a paged seqmap.
    fn add_positions(&self, x: &[f32], table: &[f32], cols: usize, positions: &[u32]) -> Vec<f32>;
    fn embed(&self, e: &OwnedMatrix, ids: &[u32]) -> Vec<f32>;
    fn argmax(&self, x: &[f32]) -> u32;
    /// The tokens of draws `draw..draw + n` from `logits` (temperature > 0, no repetition penalty).
    fn sample(&self, logits: &[f32], opts: &SamplerOptions, draw: u32, n: usize) -> Vec<u32>;
    /// The matvec `c` (one token) with int8 activations, labelled by what ran it: kernels-cpu's q8 path as
    /// the CPU engine runs it, or each int8-activation matvec kernel the GPU adapter has.
    fn linear_q8(&self, c: &LinearCase) -> Vec<(String, Vec<f32>)>;
    /// RMS norm of each row of `w.len()` values of `x` into a buffer of its own (GPU: the LayerNorm kernel's
    /// RMS variant, a mixture of experts' input).
    fn rmsnorm_into(&self, x: &[f32], w: &[f32], eps: f32) -> Vec<f32>;
    /// Each row of `experts` router logits routed to `k` experts: each expert's weight, 0 for the rest.
    fn route(&self, logits: &[f32], experts: usize, k: usize) -> Vec<f32>;
    /// `x[t] += route[t, expert] * out[t]` for the rows whose weight is not 0.
    fn add_weighted(&self, x: &[f32], out: &[f32], route: &[f32], experts: usize, expert: usize) -> Vec<f32>;
}

pub struct Cpu;

fn silu(g: f32) -> f32 {
    g / (1.0 + (-g).exp())
}

impl Ops for Cpu {
    fn name(&self) -> &'static str {
        "cpu"
    }

    fn rmsnorm_into(&self, x: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
        self.rmsnorm(x, w, eps)
    }

    fn route(&self, logits: &[f32], experts: usize, k: usize) -> Vec<f32> {
        let mut out = logits.to_vec();
        out.chunks_exact_mut(experts).for_each(|row| ops::route(row, k));
        out
    }

    fn add_weighted(&self, x: &[f32], out: &[f32], route: &[f32], experts: usize, expert: usize) -> Vec<f32> {
        // As the CPU engine's run_experts adds an expert's rows back.
        let cols = x.len() / (route.len() / experts);
        let mut y = x.to_vec();
        for ((row, o), r) in y.chunks_exact_mut(cols).zip(out.chunks_exact(cols)).zip(route.chunks_exact(experts)) {
            if r[expert] != 0.0 {
                row.iter_mut().zip(o).for_each(|(v, &ov)| *v += r[expert] * ov);
            }
        }
        y
    }

    fn linear_q8(&self, c: &LinearCase) -> Vec<(String, Vec<f32>)> {
        assert_eq!(c.n, 1, "the q8 matvec takes one token");
        let h = match &c.norm {
            Some((w, eps)) => self.rmsnorm(&c.x, w, *eps),
            None => c.x.clone(),
        };
        let xq = kernels_cpu::quantize(&h, 1);
        let outs: Vec<Vec<f32>> = c
            .mats
            .iter()
            .zip(&c.biases)
            .map(|(m, b)| {
                let mut y = vec![0f32; m.rows];
                kernels_cpu::matvec_q8(&m.matrix(), &xq, &mut y);
                if let Some(b) = b {
                    ops::add_assign(&mut y, b);
                }
                y
            })
            .collect();
        vec![("kernels-cpu q8".to_string(), output_row(c, &outs))]
    }

    fn linear(&self, c: &LinearCase) -> Vec<f32> {
        let cols = c.mats[0].cols;
        let h = match (&c.norm, &c.ln_bias) {
            (Some((w, eps)), Some(b)) => self.layernorm(&c.x, w, Some(b), *eps),
            (Some((w, eps)), None) => self.rmsnorm(&c.x, w, *eps),
            (None, _) => c.x.clone(),
        };
        let outs: Vec<Vec<f32>> = c
            .mats
            .iter()
            .zip(&c.biases)
            .map(|(m, b)| {
                let mut y = vec![0f32; c.n * m.rows];
                kernels_cpu::matmul(&m.matrix(), &h[..c.n * cols], c.n, &mut y);
                if let Some(b) = b {
                    y.chunks_exact_mut(m.rows).for_each(|row| ops::add_assign(row, b));
                }
                y
            })
            .collect();
        let width = c.width();
        let mut y = c.y0.clone();
        for t in 0..c.n {
            let row = &mut y[t * width..(t + 1) * width];
            match c.output {
                Output::SwiGlu => {
                    let r = c.mats[0].rows;
                    let (g, u) = (&outs[0][t * r..(t + 1) * r], &outs[1][t * r..(t + 1) * r]);
                    ops::silu_mul(g, u, row);
                }
                _ => {
                    let mut at = 0;
                    for (m, o) in c.mats.iter().zip(&outs) {
                        let src = &o[t * m.rows..(t + 1) * m.rows];
                        let dst = &mut row[at..at + m.rows];
                        if c.output == Output::Add {
                            ops::add_assign(dst, src);
                        } else {
                            dst.copy_from_slice(src);
                        }
                        at += m.rows;
                    }
                }
            }
        }
        y
    }

    fn rmsnorm(&self, x: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
        let mut out = vec![0f32; x.len()];
        ops::rmsnorm(x, w, eps, &mut out);
        out
    }

    fn rmsnorm_groups(&self, x: &[f32], w: &[f32], eps: f32, at: misc::NormGroups, n: usize) -> Vec<f32> {
        let mut out = x.to_vec();
        let (cols, stride, offset) = (at.cols as usize, at.stride as usize, at.offset as usize);
        for row in out.chunks_exact_mut(stride).take(n) {
            for g in row[offset..offset + at.groups as usize * cols].chunks_exact_mut(cols) {
                let src = g.to_vec();
                ops::rmsnorm(&src, w, eps, g);
            }
        }
        out
    }

    fn rope_store(&self, c: &RopeCase) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        match c.kv {
            KvType::F32 => cpu_rope_store::<f32>(c),
            KvType::F16 => cpu_rope_store::<f16>(c),
            KvType::Q8 => cpu_rope_store::<KvQ8>(c),
        }
    }

    fn attention(&self, c: &AttnCase) -> Vec<f32> {
        match c.kv {
            KvType::F32 => cpu_attention::<f32>(c),
            KvType::F16 => cpu_attention::<f16>(c),
            KvType::Q8 => cpu_attention::<KvQ8>(c),
        }
    }

    /// The twin: rope (as [`Cpu::rope_store`] does), the store (rounding to the cache's type), then attention
    /// over the cache as the CPU engine holds it.
    fn decode_attention(&self, c: &DecodeCase) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        match c.kv {
            KvType::F32 => cpu_decode::<f32>(c),
            KvType::F16 => cpu_decode::<f16>(c),
            KvType::Q8 => cpu_decode::<KvQ8>(c),
        }
    }

    fn paged_decode(&self, c: &PagedCase) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        match c.kv {
            KvType::F32 => cpu_paged::<f32>(c),
            KvType::F16 => cpu_paged::<f16>(c),
            KvType::Q8 => cpu_paged::<KvQ8>(c),
        }
    }

    fn silu_mul(&self, gate: &[f32], up: &[f32]) -> Vec<f32> {
        let mut out = vec![0f32; gate.len()];
        ops::silu_mul(gate, up, &mut out);
        out
    }

    fn gelu_mul(&self, gate: &[f32], up: &[f32]) -> Vec<f32> {
        let mut out = gate.to_vec();
        ops::gelu(&mut out);
        out.iter_mut().zip(up).for_each(|(o, &u)| *o *= u);
        out
    }

    fn add(&self, a: &[f32], b: &[f32]) -> Vec<f32> {
        let mut out = vec![0f32; a.len()];
        ops::add(a, b, &mut out);
        out
    }

    fn layernorm(&self, x: &[f32], w: &[f32], bias: Option<&[f32]>, eps: f32) -> Vec<f32> {
        let mut out = vec![0f32; x.len()];
        ops::layernorm(x, w, bias, eps, &mut out);
        out
    }

    fn activation(&self, x: &[f32], act: Activation) -> Vec<f32> {
        let mut out = x.to_vec();
        match act {
            Activation::Silu => ops::silu(&mut out),
            Activation::Gelu => ops::gelu(&mut out),
        }
        out
    }

    fn add_positions(&self, x: &[f32], table: &[f32], cols: usize, positions: &[u32]) -> Vec<f32> {
        let mut out = x.to_vec();
        for (row, &p) in out.chunks_exact_mut(cols).zip(positions) {
            ops::add_assign(row, &table[p as usize * cols..(p as usize + 1) * cols]);
        }
        out
    }

    fn embed(&self, e: &OwnedMatrix, ids: &[u32]) -> Vec<f32> {
        let m = e.matrix();
        let mut out = vec![0f32; ids.len() * e.cols];
        for (row, &id) in out.chunks_exact_mut(e.cols).zip(ids) {
            m.dequant_row(id as usize, row);
        }
        out
    }

    fn argmax(&self, x: &[f32]) -> u32 {
        ops::argmax(x) as u32
    }

    /// The host's sampler (the CPU engine has no sampling of its own).
    fn sample(&self, logits: &[f32], opts: &SamplerOptions, draw: u32, n: usize) -> Vec<u32> {
        let mut s = Sampler::new(opts.clone());
        s.skip_draws(draw);
        (0..n).map(|_| s.sample(&mut logits.to_vec(), &[])).collect()
    }
}

pub struct Gpu(pub &'static GpuContext);

/// Packs sections into one weight-file-like buffer, each 256-aligned after a lead of 256 bytes.
struct FileBuilder(Vec<u8>);

impl FileBuilder {
    fn put(&mut self, b: &[u8]) -> (u64, u64) {
        self.0.resize(self.0.len().div_ceil(256) * 256, 0);
        let at = self.0.len() as u64;
        self.0.extend_from_slice(b);
        (at, b.len() as u64)
    }

    fn matrix(&mut self, m: &Matrix) -> [Option<(u64, u64)>; 3] {
        let c = bytemuck::cast_slice::<u16, u8>;
        match m.w {
            Weights::F32(v) => [Some(self.put(bytemuck::cast_slice(v))), None, None],
            Weights::F16(v) => [Some(self.put(c(v))), None, None],
            Weights::Int8 { q, scales } => [Some(self.put(bytemuck::cast_slice(q))), Some(self.put(c(scales))), None],
            Weights::Int4 { q, scales, mins } => {
                [Some(self.put(q)), Some(self.put(c(scales))), Some(self.put(c(mins)))]
            }
            Weights::Ternary { q, scales } => [Some(self.put(q)), Some(self.put(c(scales))), None],
            raw => [Some(self.put(raw.as_ggml().expect("the GGUF layouts remain").1)), None, None],
        }
    }
}

fn dtype(m: &Matrix) -> omex::format::DType {
    use omex::format::DType;
    match m.w {
        Weights::F32(_) => DType::F32,
        Weights::F16(_) => DType::F16,
        Weights::Int8 { .. } => DType::Int8,
        Weights::Int4 { .. } => DType::Int4,
        Weights::Ternary { .. } => DType::Ternary,
        Weights::Q4K(_) => DType::Q4K,
        Weights::Q5K(_) => DType::Q5K,
        Weights::Q6K(_) => DType::Q6K,
        Weights::Q5_0(_) => DType::Q5_0,
        Weights::Q5_1(_) => DType::Q5_1,
        Weights::Q8_0(_) => unreachable!("GGUF q8_0 is stored as int8"),
    }
}

impl Gpu {
    /// Rows of 7 values, gate and up side by side in one buffer as the fused projection writes them.
    fn glu(&self, gate: &[f32], up: &[f32], gelu: bool) -> Vec<f32> {
        let ctx = self.0;
        let len = 7.min(gate.len());
        let rows = gate.len() / len;
        let mut gu = Vec::new();
        for (g, u) in gate.chunks_exact(len).zip(up.chunks_exact(len)) {
            gu.extend_from_slice(g);
            gu.extend_from_slice(u);
        }
        let (gub, out) = (upload_f32(ctx, &gu), poisoned(ctx, gate.len()));
        let st = step(ctx, rows as u32, 0);
        let (len, stride) = (len as u32, 2 * len as u32);
        let act = if gelu { Activation::Gelu } else { Activation::Silu };
        let d = pollster::block_on(misc::glu(ctx, act, len, 0, stride, len, &st, &gub, &out)).unwrap();
        self.run(&[&d], rows as u32);
        self.read(&out, gate.len())
    }

    fn run(&self, dispatches: &[&Dispatch], n: u32) {
        let mut enc = self.0.encoder();
        {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor { label: None, timestamp_writes: None });
            for d in dispatches {
                let [x, y, z] = d.grid.groups(n);
                pass.set_pipeline(&d.pipeline.pipeline);
                pass.set_bind_group(0, &d.bind_group, &[]);
                pass.dispatch_workgroups(x, y, z);
            }
        }
        self.0.gpu.queue.submit([enc.finish()]);
    }

    fn read(&self, b: &GpuBuffer, count: usize) -> Vec<f32> {
        let v = pollster::block_on(self.0.read_f32(b, 0, count)).unwrap();
        self.0.gpu.check().unwrap();
        v
    }

    /// `count` values of a cache of `kv` elements, widened to f32 on the host (f16: with `half`).
    fn read_kv(&self, b: &GpuBuffer, kv: KvType, count: usize) -> Vec<f32> {
        match kv {
            KvType::F32 => self.read(b, count),
            KvType::F16 => {
                let words: Vec<u32> = self.read(b, count.div_ceil(2)).iter().map(|w| w.to_bits()).collect();
                let halves: &[u16] = bytemuck::cast_slice(&words);
                halves[..count].iter().map(|&h| f16::from_bits(h).to_f32()).collect()
            }
            KvType::Q8 => {
                let words: Vec<u32> = self.read(b, count / 32 * 9).iter().map(|w| w.to_bits()).collect();
                q8_gpu_values(&words)
            }
        }
    }
}

impl Ops for Gpu {
    fn name(&self) -> &'static str {
        "gpu"
    }

    fn linear_q8(&self, c: &LinearCase) -> Vec<(String, Vec<f32>)> {
        assert!(c.matvec && c.n == 1, "the q8 matvec takes one token");
        let ctx = self.0;
        let u = Uploaded::new(ctx, c);
        let l = u.linear(c);
        let mut kernels = vec![MatvecKernel::Int8];
        if ctx.gpu.tier.subgroups {
            kernels.push(MatvecKernel::Int8Subgroup);
        }
        kernels.push(MatvecKernel::Int8Auto);
        let mut results = Vec::new();
        for k in kernels {
            let y0: Vec<u32> =
                if c.output == Output::Add { bytemuck::cast_slice(&c.y0).to_vec() } else { vec![u32::MAX; c.y0.len()] };
            ctx.write(&u.y, 0, bytemuck::cast_slice(&y0));
            let d = pollster::block_on(l.matvec_with(ctx, k)).unwrap();
            let name = d.pipeline.kernel.name;
            assert!(name.starts_with("matvec_q8"), "{k:?} runs {name}, not an int8-activation kernel");
            self.run(&[&d], 1);
            results.push((format!("{k:?} ({name})"), self.read(&u.y, c.y0.len())));
        }
        results
    }

    fn linear(&self, c: &LinearCase) -> Vec<f32> {
        let ctx = self.0;
        let u = Uploaded::new(ctx, c);
        let (l, y) = (u.linear(c), &u.y);
        if c.output == Output::Add {
            ctx.write(y, 0, bytemuck::cast_slice(&c.y0));
        }
        let tile = if c.n <= 8 { MATMUL_TOKENS_SHORT } else { MATMUL_TOKENS };
        if !c.matvec {
            let d = pollster::block_on(l.matmul_with(ctx, tile, MatmulKernel::Tiled)).unwrap();
            self.run(&[&d], c.n as u32);
            let tiled = self.read(y, c.y0.len());
            // Where the adapter has tensor cores, the cooperative kernel too, from the same initial y: its f16
            // products must agree with the f32 kernel to f16 precision (the test body checks the tiled one).
            if ctx.gpu.tier.cooperative_matrix && c.mats[0].cols.is_multiple_of(32) && tile == MATMUL_TOKENS {
                ctx.write(y, 0, bytemuck::cast_slice(&c.y0));
                let d = pollster::block_on(l.matmul_with(ctx, tile, MatmulKernel::Cooperative)).unwrap();
                self.run(&[&d], c.n as u32);
                let coop = self.read(y, c.y0.len());
                let scale = 1.0 + tiled.iter().fold(0f32, |m, v| m.max(v.abs()));
                assert_close("cooperative matmul vs tiled", &coop, &tiled, 4e-3 * scale, 0.0);
            }
            // The batched decode matvec (rows as several sequences' next tokens, several tiles of them where
            // n > MATVEC_TOKENS), from the same initial y (poisoned where it stores): it must agree with the matmul.
            if c.output != Output::SwiGlu {
                let y0: Vec<u32> = match c.output {
                    Output::Add => bytemuck::cast_slice(&c.y0).to_vec(),
                    _ => vec![u32::MAX; c.y0.len()],
                };
                ctx.write(y, 0, bytemuck::cast_slice(&y0));
                let d = pollster::block_on(l.matvec_tokens(ctx)).unwrap();
                self.run(&[&d], c.n as u32);
                let got = self.read(y, c.y0.len());
                let scale = 1.0 + tiled.iter().fold(0f32, |m, v| m.max(v.abs()));
                let what = format!("batched matvec ({MATVEC_TOKENS} tokens a workgroup) vs matmul");
                assert_close(&what, &got, &tiled, 2e-5 * scale, 0.0);
            }
            return tiled;
        }
        // Every matvec kernel the shape and adapter allow, each from the same initial y; they must agree with
        // the generic one, and the automatic choice is returned for the test body to check.
        let mut kernels = vec![MatvecKernel::Generic];
        if c.mats[0].cols.is_multiple_of(32) {
            kernels.push(MatvecKernel::Groups);
            if ctx.gpu.tier.subgroups {
                kernels.push(MatvecKernel::GroupsSubgroup);
            }
        }
        kernels.push(MatvecKernel::Auto);
        let mut results: Vec<Vec<f32>> = Vec::new();
        for k in kernels {
            let y0: Vec<u32> =
                if c.output == Output::Add { bytemuck::cast_slice(&c.y0).to_vec() } else { vec![u32::MAX; c.y0.len()] };
            ctx.write(y, 0, bytemuck::cast_slice(&y0));
            let d = pollster::block_on(l.matvec_with(ctx, k)).unwrap();
            self.run(&[&d], 1);
            let got = self.read(y, c.y0.len());
            if let Some(first) = results.first() {
                let scale = 1.0 + first.iter().fold(0f32, |m, v| m.max(v.abs()));
                assert_close(&format!("matvec kernel {k:?} against the generic one"), &got, first, 2e-5 * scale, 0.0);
            }
            results.push(got);
        }
        results.pop().unwrap()
    }

    fn rmsnorm(&self, x: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
        let cols = w.len() as u32;
        self.rmsnorm_groups(x, w, eps, misc::NormGroups { cols, groups: 1, stride: cols, offset: 0 }, x.len() / w.len())
    }

    fn rmsnorm_groups(&self, x: &[f32], w: &[f32], eps: f32, at: misc::NormGroups, n: usize) -> Vec<f32> {
        let ctx = self.0;
        // The weight 256 bytes into its buffer, as a norm weight sits inside a layer file.
        let mut words = vec![f32::NAN; 64];
        words.extend_from_slice(w);
        let (xb, wb) = (upload_f32(ctx, x), upload_f32(ctx, &words));
        let region = Region::covering(&wb, &[(256, 4 * w.len() as u64)]);
        let st = step(ctx, n as u32, 0);
        let d = pollster::block_on(misc::rmsnorm(ctx, at, eps, &st, region, 256, &xb)).unwrap();
        self.run(&[&d], n as u32);
        self.read(&xb, x.len())
    }

    fn rope_store(&self, c: &RopeCase) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let ctx = self.0;
        let (qd, kvd) = (c.heads.q_dim() as usize, c.heads.kv_dim() as usize);
        let table = misc::cos_sin_table(&c.inv_freq, c.ctx);
        let table = upload_f32(ctx, bytemuck::cast_slice(&table));
        let qkv = upload_f32(ctx, &c.qkv);
        let q = poisoned(ctx, c.n * qd);
        let zeros = vec![0.0; c.ctx * kvd];
        let (kc, vc) = (upload_kv(ctx, c.kv, &zeros), upload_kv(ctx, c.kv, &zeros));
        let cache = KvCache { k: &kc, v: &vc, ty: c.kv };
        let (st, map) = (step(ctx, c.n as u32, c.pos0 as u32), upload_u32(ctx, &[0]));
        let d = misc::rope_store(ctx, c.heads, c.dims as u32, c.half, &st, &qkv, &table, &q, cache, &map);
        let d = pollster::block_on(d).unwrap();
        self.run(&[&d], c.n as u32);
        (self.read(&q, c.n * qd), self.read_kv(&kc, c.kv, c.ctx * kvd), self.read_kv(&vc, c.kv, c.ctx * kvd))
    }

    fn attention(&self, c: &AttnCase) -> Vec<f32> {
        let ctx = self.0;
        let (q, k, v) = (upload_f32(ctx, &c.q), upload_kv(ctx, c.kv, &c.k), upload_kv(ctx, c.kv, &c.v));
        let cache = KvCache { k: &k, v: &v, ty: c.kv };
        let out = poisoned(ctx, c.q.len());
        let (st, map) = (step(ctx, c.n as u32, c.pos0 as u32), upload_u32(ctx, &[0]));
        let d = attention::prefill(ctx, c.heads, c.scale, c.window, &st, &q, cache, &out, &map);
        let d = pollster::block_on(d).unwrap();
        self.run(&[&d], c.n as u32);
        self.read(&out, c.q.len())
    }

    fn decode_attention(&self, c: &DecodeCase) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let ctx = self.0;
        let h = c.heads;
        let table = misc::cos_sin_table(&c.inv_freq, c.pos + 1);
        let cos_sin = upload_f32(ctx, bytemuck::cast_slice(&table));
        let (qkv, k, v) = (upload_f32(ctx, &c.qkv), upload_kv(ctx, c.kv, &c.k), upload_kv(ctx, c.kv, &c.v));
        let cache = KvCache { k: &k, v: &v, ty: c.kv };
        let qd = h.q_dim() as usize;
        let (q, out, st) = (poisoned(ctx, qd), poisoned(ctx, qd), step(ctx, 1, c.pos as u32));
        let part = attention::partials(ctx, h, c.splits, 1).unwrap();
        let map = upload_u32(ctx, &[0]);
        let r = misc::rope_store(ctx, h, c.dims as u32, c.half, &st, &qkv, &cos_sin, &q, cache, &map);
        let r = pollster::block_on(r).unwrap();
        let d = attention::decode(ctx, h, c.splits, c.scale, c.window, &st, &q, cache, &part, &out, &map);
        let (a, b) = pollster::block_on(d).unwrap();
        self.run(&[&r, &a, &b], 1);
        (self.read(&out, qd), self.read_kv(&k, c.kv, c.k.len()), self.read_kv(&v, c.kv, c.v.len()))
    }

    fn paged_decode(&self, c: &PagedCase) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let ctx = self.0;
        let h = c.heads;
        let n = c.rows.len();
        let last = c.rows.iter().map(|r| r.1).max().unwrap();
        let table = misc::cos_sin_table(&c.inv_freq, last + 1);
        let cos_sin = upload_f32(ctx, bytemuck::cast_slice(&table));
        let qkv: Vec<f32> = c.rows.iter().flat_map(|r| r.0.iter().copied()).collect();
        let (qkv, k, v) = (upload_f32(ctx, &qkv), upload_kv(ctx, c.kv, &c.k), upload_kv(ctx, c.kv, &c.v));
        let cache = KvCache { k: &k, v: &v, ty: c.kv };
        let qd = h.q_dim() as usize;
        let (q, out) = (poisoned(ctx, n * qd), poisoned(ctx, n * qd));
        // The seqmap as the engine writes it: (position, where the row's block table starts) per row, then the
        // tables.
        let mut map = vec![0u32; 2 * n];
        for (r, (_, pos, blocks)) in c.rows.iter().enumerate() {
            map[2 * r] = *pos as u32;
            map[2 * r + 1] = map.len() as u32;
            map.extend_from_slice(&blocks[..(pos + 1).div_ceil(KV_BLOCK_TOKENS)]);
        }
        let (map, st) = (upload_u32(ctx, &map), upload_u32(ctx, &[n as u32, 0, 0, 1]));
        let part = attention::partials(ctx, h, c.splits, n as u32).unwrap();
        let r = misc::rope_store(ctx, h, c.dims as u32, c.half, &st, &qkv, &cos_sin, &q, cache, &map);
        let r = pollster::block_on(r).unwrap();
        let d = attention::decode(ctx, h, c.splits, c.scale, c.window, &st, &q, cache, &part, &out, &map);
        let (a, b) = pollster::block_on(d).unwrap();
        self.run(&[&r, &a, &b], n as u32);
        (self.read(&out, n * qd), self.read_kv(&k, c.kv, c.k.len()), self.read_kv(&v, c.kv, c.v.len()))
    }

    fn silu_mul(&self, gate: &[f32], up: &[f32]) -> Vec<f32> {
        self.glu(gate, up, false)
    }

    fn gelu_mul(&self, gate: &[f32], up: &[f32]) -> Vec<f32> {
        self.glu(gate, up, true)
    }

    fn add(&self, a: &[f32], b: &[f32]) -> Vec<f32> {
        // `out += b` in place, on a buffer that holds `a`.
        let ctx = self.0;
        let (bb, out) = (upload_f32(ctx, b), upload_f32(ctx, a));
        let st = step(ctx, 1, 0);
        let d = pollster::block_on(misc::add_assign(ctx, a.len() as u32, 1, &st, &bb, &out)).unwrap();
        self.run(&[&d], 1);
        self.read(&out, a.len())
    }
    fn rmsnorm_into(&self, x: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
        let ctx = self.0;
        let (cols, n) = (w.len(), x.len() / w.len());
        // The weight at an odd place of its buffer, as in a layer file.
        let mut words = vec![7f32; 3];
        words.extend_from_slice(w);
        let wb = upload_f32(ctx, &words);
        let (xb, out, st) = (upload_f32(ctx, x), poisoned(ctx, x.len()), step(ctx, n as u32, 0));
        let d = pollster::block_on(misc::rmsnorm_into(ctx, cols as u32, eps, &st, Region::whole(&wb), 12, &xb, &out));
        self.run(&[&d.unwrap()], n as u32);
        assert_eq!(self.read(&xb, x.len()), x, "rmsnorm_into wrote its input");
        self.read(&out, x.len())
    }

    fn route(&self, logits: &[f32], experts: usize, k: usize) -> Vec<f32> {
        let ctx = self.0;
        let n = logits.len() / experts;
        let (buf, st) = (upload_f32(ctx, logits), step(ctx, n as u32, 0));
        let d = pollster::block_on(moe::route(ctx, experts as u32, k as u32, &st, &buf)).unwrap();
        self.run(&[&d], n as u32);
        self.read(&buf, logits.len())
    }

    fn add_weighted(&self, x: &[f32], out: &[f32], route: &[f32], experts: usize, expert: usize) -> Vec<f32> {
        let ctx = self.0;
        let n = route.len() / experts;
        let cols = x.len() / n;
        let (xb, ob, rb, st) =
            (upload_f32(ctx, x), upload_f32(ctx, out), upload_f32(ctx, route), step(ctx, n as u32, 0));
        let e = expert as u32;
        let d = pollster::block_on(moe::add_weighted(ctx, cols as u32, experts as u32, e, &st, &rb, &ob, &xb)).unwrap();
        self.run(&[&d], n as u32);
        self.read(&xb, x.len())
    }

    fn layernorm(&self, x: &[f32], w: &[f32], bias: Option<&[f32]>, eps: f32) -> Vec<f32> {
        let ctx = self.0;
        let cols = w.len();
        let n = x.len() / cols;
        // Weight and bias at odd places of one buffer, as in a layer file.
        let mut words = vec![7f32; 5];
        let w_at = 4 * words.len() as u64;
        words.extend_from_slice(w);
        words.extend([9f32; 3]);
        let b_at = 4 * words.len() as u64;
        words.extend_from_slice(bias.unwrap_or(&[]));
        let wb = upload_f32(ctx, &words);
        let lw = misc::LayerNormWeights {
            weight: (Region::whole(&wb), w_at),
            bias: bias.map(|_| (Region::whole(&wb), b_at)),
            eps,
        };
        let (xb, out, st) = (upload_f32(ctx, x), poisoned(ctx, x.len()), step(ctx, n as u32, 0));
        let c = cols as u32;
        let d = pollster::block_on(misc::layernorm(ctx, c, c, c, &lw, &st, &xb, &out)).unwrap();
        self.run(&[&d], n as u32);
        let got = self.read(&out, x.len());
        // The input is left as it was.
        assert_eq!(self.read(&xb, x.len()), x, "layernorm wrote its input");
        got
    }

    fn activation(&self, x: &[f32], act: Activation) -> Vec<f32> {
        let ctx = self.0;
        let len = 7.min(x.len());
        let rows = x.len() / len;
        let (out, st) = (upload_f32(ctx, x), step(ctx, rows as u32, 0));
        let d = pollster::block_on(misc::activation(ctx, act, len as u32, 0, &st, &out)).unwrap();
        self.run(&[&d], rows as u32);
        self.read(&out, x.len())
    }

    fn add_positions(&self, x: &[f32], table: &[f32], cols: usize, positions: &[u32]) -> Vec<f32> {
        let ctx = self.0;
        let n = positions.len() as u32;
        let consecutive = positions.windows(2).all(|w| w[1] == w[0] + 1);
        let (st, map) = match consecutive {
            true => (step(ctx, n, positions[0]), upload_u32(ctx, &[0])),
            // Each row's position in the seqmap (its table offset is not read here).
            false => {
                let map: Vec<u32> = positions.iter().flat_map(|&p| [p, 0]).collect();
                (upload_u32(ctx, &[n, 0, 0, 1]), upload_u32(ctx, &map))
            }
        };
        let (tb, xb) = (upload_f32(ctx, table), upload_f32(ctx, x));
        let d = pollster::block_on(misc::add_positions(ctx, cols as u32, &st, &tb, &xb, &map)).unwrap();
        self.run(&[&d], n);
        self.read(&xb, x.len())
    }

    fn embed(&self, e: &OwnedMatrix, ids: &[u32]) -> Vec<f32> {
        let ctx = self.0;
        let m = GpuMatrix::upload(ctx, "embedding", &e.matrix(), 512).unwrap();
        let (idb, out) = (upload_u32(ctx, ids), poisoned(ctx, ids.len() * e.cols));
        let st = step(ctx, ids.len() as u32, 0);
        let d = pollster::block_on(misc::embed(ctx, &m, 1.0, &st, &idb, &out)).unwrap();
        self.run(&[&d], ids.len() as u32);
        self.read(&out, ids.len() * e.cols)
    }

    fn argmax(&self, x: &[f32]) -> u32 {
        let ctx = self.0;
        let (xb, ids, tokens) = (upload_f32(ctx, x), poisoned(ctx, 1), poisoned(ctx, 3));
        let st = step(ctx, 1, 0);
        let d = pollster::block_on(misc::argmax(ctx, x.len() as u32, 0, 2, &st, &xb, &ids, &tokens)).unwrap();
        self.run(&[&d], 1);
        let (id, tok) = (
            pollster::block_on(ctx.read_u32(&ids, 0, 1)).unwrap(),
            pollster::block_on(ctx.read_u32(&tokens, 0, 3)).unwrap(),
        );
        assert_eq!(id[0], tok[2], "argmax writes the same id to ids[0] and tokens[slot]");
        assert_eq!(&tok[..2], &[u32::MAX, u32::MAX], "argmax writes only its slot");
        id[0]
    }

    /// `n` chained steps in one pass, as the engine records them: the sample kernel then `advance`, so step k
    /// draws number `draw + k` into `tokens[slot + k]`. The row is row 1 of two, the other one all NaN.
    fn sample(&self, logits: &[f32], opts: &SamplerOptions, draw: u32, n: usize) -> Vec<u32> {
        let ctx = self.0;
        let vocab = logits.len() as u32;
        let rows: Vec<f32> = vec![f32::NAN; logits.len()].into_iter().chain(logits.iter().copied()).collect();
        let (xb, ids, tokens) = (upload_f32(ctx, &rows), poisoned(ctx, 1), poisoned(ctx, n + 1));
        let st = step(ctx, 1, 0);
        let params = misc::SampleParams::new(vocab, 1, 1, opts, draw);
        let d = pollster::block_on(misc::sample(ctx, &params, &st, &xb, &ids, &tokens)).unwrap();
        let adv = pollster::block_on(misc::advance(ctx, &st)).unwrap();
        let steps: Vec<&Dispatch> = (0..n).flat_map(|_| [&d, &adv]).collect();
        self.run(&steps, 1);
        let (id, tok) = (
            pollster::block_on(ctx.read_u32(&ids, 0, 1)).unwrap(),
            pollster::block_on(ctx.read_u32(&tokens, 0, n + 1)).unwrap(),
        );
        ctx.gpu.check().unwrap();
        assert_eq!(tok[0], u32::MAX, "sample writes only its slots");
        assert_eq!(id[0], tok[n], "sample writes the last id to ids[0] too");
        tok[1..].to_vec()
    }
}

/// The matvec outputs `outs` (one per matrix, biases added) written into `c.y0` as `c.output` says.
fn output_row(c: &LinearCase, outs: &[Vec<f32>]) -> Vec<f32> {
    let mut y = c.y0.clone();
    if c.output == Output::SwiGlu {
        ops::silu_mul(&outs[0], &outs[1], &mut y);
        return y;
    }
    let mut at = 0;
    for o in outs {
        let dst = &mut y[at..at + o.len()];
        if c.output == Output::Add {
            ops::add_assign(dst, o);
        } else {
            dst.copy_from_slice(o);
        }
        at += o.len();
    }
    y
}

/// A [`LinearCase`] on the GPU: its matrices, biases and norm weight packed into one weight file, x, y (the
/// caller fills it) and the step buffer.
struct Uploaded {
    file: Arc<GpuFile>,
    mats: Vec<GpuMatrix>,
    biases: Vec<Option<(u64, u64)>>,
    norm_at: Option<(u64, u64)>,
    ln_bias_at: Option<(u64, u64)>,
    x: GpuBuffer,
    y: GpuBuffer,
    step: GpuBuffer,
}

impl Uploaded {
    fn new(ctx: &GpuContext, c: &LinearCase) -> Uploaded {
        let mut file = FileBuilder(vec![0; 256]);
        let sections: Vec<_> = c.mats.iter().map(|m| file.matrix(&m.matrix())).collect();
        let biases = c.biases.iter().map(|b| b.as_ref().map(|b| file.put(bytemuck::cast_slice(b)))).collect();
        let norm_at = c.norm.as_ref().map(|(w, _)| file.put(bytemuck::cast_slice(w)));
        let ln_bias_at = c.ln_bias.as_ref().map(|b| file.put(bytemuck::cast_slice(b)));
        file.0.resize(file.0.len().div_ceil(256) * 256, 0);
        let file = Arc::new(GpuFile::upload(ctx, "test.bin", &file.0).unwrap());
        let mats = c
            .mats
            .iter()
            .zip(&sections)
            .enumerate()
            .map(|(i, (m, s))| GpuMatrix {
                name: format!("m{i}"),
                file: file.clone(),
                dtype: dtype(&m.matrix()),
                rows: m.rows as u32,
                cols: m.cols as u32,
                data: s[0].unwrap(),
                scales: s[1],
                mins: s[2],
            })
            .collect();
        let (x, y, step) = (upload_f32(ctx, &c.x), poisoned(ctx, c.y0.len()), step(ctx, c.n as u32, 0));
        Uploaded { file, mats, biases, norm_at, ln_bias_at, x, y, step }
    }

    fn linear(&self, c: &LinearCase) -> Linear<'_> {
        let mut out = 0;
        let mats = self
            .mats
            .iter()
            .zip(&self.biases)
            .map(|(m, &bias)| {
                let at = out;
                if c.output != Output::SwiGlu {
                    out += m.rows;
                }
                Mat { m, out: at, bias }
            })
            .collect();
        let norm = c.norm.as_ref().zip(self.norm_at).map(|((_, eps), at)| Norm {
            region: Region::covering(&self.file.buffer, &[at, self.ln_bias_at.unwrap_or(at)]),
            offset: at.0,
            eps: *eps,
            bias: self.ln_bias_at.map(|b| b.0),
        });
        Linear {
            mats,
            norm,
            output: c.output,
            step: &self.step,
            x: &self.x,
            y: &self.y,
            x_last: false,
            y_stride: c.width() as u32,
        }
    }
}

/// A cache of `E` elements holding `values` (rounded as the CPU engine's store rounds).
fn cpu_cache<E: KvElem>(values: &[f32]) -> Vec<E> {
    let mut cache = vec![E::ZERO; values.len() / E::VALUES];
    E::store(values, &mut cache);
    cache
}

fn widen<E: KvElem>(cache: &[E]) -> Vec<f32> {
    kernels_cpu::kv_load(cache)
}

fn cpu_rope_store<E: KvElem>(c: &RopeCase) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (qd, kvd, hd) = (c.heads.q_dim() as usize, c.heads.kv_dim() as usize, c.heads.head_dim as usize);
    let stride = qd + 2 * kvd;
    let style = if c.half { RopeStyle::Half } else { RopeStyle::Interleaved };
    let mut q = vec![0f32; c.n * qd];
    let (mut kc, mut vc) = (cpu_cache::<E>(&vec![0.0; c.ctx * kvd]), cpu_cache::<E>(&vec![0.0; c.ctx * kvd]));
    for t in 0..c.n {
        let row = &c.qkv[t * stride..(t + 1) * stride];
        let pos = c.pos0 + t;
        let qt = &mut q[t * qd..(t + 1) * qd];
        qt.copy_from_slice(&row[..qd]);
        let mut kt = row[qd..qd + kvd].to_vec();
        for head in qt.chunks_exact_mut(hd).chain(kt.chunks_exact_mut(hd)) {
            ops::rope(&mut head[..c.dims], 1, c.dims, pos, &c.inv_freq, style);
        }
        kernels_cpu::kv_store(&mut kc, pos, &kt);
        kernels_cpu::kv_store(&mut vc, pos, &row[qd + kvd..]);
    }
    (q, widen(&kc), widen(&vc))
}

fn cpu_attention<E: KvElem>(c: &AttnCase) -> Vec<f32> {
    let h = c.heads;
    let mut out = vec![0f32; c.n * h.q_dim() as usize];
    let (nh, nkv, hd) = (h.n_heads as usize, h.n_kv as usize, h.head_dim as usize);
    let window = c.window.map(|w| w as usize);
    let (k, v) = (cpu_cache::<E>(&c.k), cpu_cache::<E>(&c.v));
    kernels_cpu::attention_window(&c.q, &k, &v, c.pos0, c.n, nh, nkv, hd, c.scale, window, &mut out);
    out
}

fn cpu_decode<E: KvElem>(c: &DecodeCase) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let h = c.heads;
    let (qd, kvd, hd) = (h.q_dim() as usize, h.kv_dim() as usize, h.head_dim as usize);
    let style = if c.half { RopeStyle::Half } else { RopeStyle::Interleaved };
    let mut q = c.qkv[..qd].to_vec();
    let (mut kc, mut vc) = (cpu_cache::<E>(&c.k), cpu_cache::<E>(&c.v));
    let mut kt = c.qkv[qd..qd + kvd].to_vec();
    for head in q.chunks_exact_mut(hd).chain(kt.chunks_exact_mut(hd)) {
        ops::rope(&mut head[..c.dims], 1, c.dims, c.pos, &c.inv_freq, style);
    }
    kernels_cpu::kv_store(&mut kc, c.pos, &kt);
    kernels_cpu::kv_store(&mut vc, c.pos, &c.qkv[qd + kvd..]);
    let mut out = vec![0f32; qd];
    let (nh, nkv) = (h.n_heads as usize, h.n_kv as usize);
    let window = c.window.map(|w| w as usize);
    kernels_cpu::attention_window(&q, &kc, &vc, c.pos, 1, nh, nkv, hd, c.scale, window, &mut out);
    (out, widen(&kc), widen(&vc))
}

fn cpu_paged<E: KvElem>(c: &PagedCase) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let h = c.heads;
    let (qd, kvd, hd) = (h.q_dim() as usize, h.kv_dim() as usize, h.head_dim as usize);
    let style = if c.half { RopeStyle::Half } else { RopeStyle::Interleaved };
    let (mut kc, mut vc) = (cpu_cache::<E>(&c.k), cpu_cache::<E>(&c.v));
    let mut qs = Vec::new();
    for (qkv, pos, table) in &c.rows {
        let pages = Some(Pages { table, block_tokens: KV_BLOCK_TOKENS });
        let row = Pages::row(pages, *pos);
        let mut q = qkv[..qd].to_vec();
        let mut kt = qkv[qd..qd + kvd].to_vec();
        for head in q.chunks_exact_mut(hd).chain(kt.chunks_exact_mut(hd)) {
            ops::rope(&mut head[..c.dims], 1, c.dims, *pos, &c.inv_freq, style);
        }
        kernels_cpu::kv_store(&mut kc, row, &kt);
        kernels_cpu::kv_store(&mut vc, row, &qkv[qd + kvd..]);
        qs.push(q);
    }
    let mut out = vec![0f32; c.rows.len() * qd];
    let (nh, nkv) = (h.n_heads as usize, h.n_kv as usize);
    let window = c.window.map(|w| w as usize);
    for ((q, (_, pos, table)), o) in qs.iter().zip(&c.rows).zip(out.chunks_exact_mut(qd)) {
        let pages = Some(Pages { table, block_tokens: KV_BLOCK_TOKENS });
        let isa = kernels_cpu::isa::detect();
        kernels_cpu::attention::attention_paged_with(isa, q, &kc, &vc, pages, *pos, 1, nh, nkv, hd, c.scale, window, o);
    }
    (out, widen(&kc), widen(&vc))
}
