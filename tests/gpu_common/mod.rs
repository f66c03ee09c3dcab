//! Helpers of the GPU tests: a seeded PRNG, random matrices in every layout (owning their storage), the shared
//! GPU context (lavapipe on CI), and buffers poisoned so that an element a kernel fails to write shows up.
#![allow(dead_code)]

pub mod ops;
pub mod sample_ref;

use half::f16;
use kernels_cpu::ggml::GgmlBlock;
use kernels_cpu::layout::{pack_int4_group, pack_ternary_group};
use kernels_cpu::{KvQ8, Matrix, Weights, GROUP};
use omex::backend::gpu::buffers::{GpuBuffer, Purpose};
use omex::backend::gpu::{DeviceOptions, GpuContext, GpuEngine};
use omex::backend::{Engine, KvType, Logits};
use std::sync::{Arc, OnceLock};

/// SplitMix64.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [lo, hi).
    pub fn range(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
    pub fn vec(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n).map(|_| self.range(lo, hi)).collect()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    F32,
    F16,
    Int8,
    Int4,
    Ternary,
    /// Raw GGUF blocks, as `--quant keep` stores them.
    Ggml(GgmlBlock),
}

pub const LAYOUTS: [Layout; 5] = [Layout::F32, Layout::F16, Layout::Int8, Layout::Int4, Layout::Ternary];

/// The GGUF block layouts the GPU reads directly (q8_0 is stored as int8).
pub const GGUF_LAYOUTS: [Layout; 5] = [
    Layout::Ggml(GgmlBlock::Q4K),
    Layout::Ggml(GgmlBlock::Q5K),
    Layout::Ggml(GgmlBlock::Q6K),
    Layout::Ggml(GgmlBlock::Q5_0),
    Layout::Ggml(GgmlBlock::Q5_1),
];

impl Layout {
    pub fn quantized(self) -> bool {
        !matches!(self, Layout::F32 | Layout::F16)
    }

    /// Values per block of a GGUF layout (a row holds whole blocks).
    pub fn block_values(self) -> Option<usize> {
        match self {
            Layout::Ggml(k) => Some(k.block_values()),
            _ => None,
        }
    }
}

/// Random whole blocks of `kind` for `values` values: random quant and scale bytes, with the f16 block
/// scales (and mins) set to small finite values so that the dequantized weights stay near [-1, 1].
pub fn random_ggml(kind: GgmlBlock, values: usize, rng: &mut Rng) -> Vec<u8> {
    let bytes = kind.bytes_for(values);
    let mut b: Vec<u8> = (0..bytes).map(|_| rng.below(256) as u8).collect();
    for block in b.chunks_exact_mut(kind.block_bytes()) {
        let mut set = |at: usize, v: f32| block[at..at + 2].copy_from_slice(&h(v).to_le_bytes());
        match kind {
            GgmlBlock::Q4K | GgmlBlock::Q5K => {
                set(0, rng.range(0.0005, 0.002));
                set(2, rng.range(0.0005, 0.002));
            }
            GgmlBlock::Q6K => set(208, rng.range(0.0002, 0.001)),
            GgmlBlock::Q5_0 | GgmlBlock::Q8_0 => set(0, rng.range(0.01, 0.05)),
            GgmlBlock::Q5_1 => {
                set(0, rng.range(0.01, 0.05));
                set(2, rng.range(-0.5, 0.0));
            }
        }
    }
    b
}

fn h(v: f32) -> u16 {
    f16::from_f32(v).to_bits()
}

/// A matrix owning its storage; [`OwnedMatrix::matrix`] borrows it as kernels-cpu's `Matrix`.
pub struct OwnedMatrix {
    pub rows: usize,
    pub cols: usize,
    layout: Layout,
    f: Vec<f32>,
    h: Vec<u16>,
    i: Vec<i8>,
    q: Vec<u8>,
    scales: Vec<u16>,
    mins: Vec<u16>,
}

impl OwnedMatrix {
    pub fn random(layout: Layout, rows: usize, cols: usize, rng: &mut Rng) -> OwnedMatrix {
        let n = rows * cols;
        let groups = n / GROUP;
        let mut m = OwnedMatrix {
            rows,
            cols,
            layout,
            f: vec![],
            h: vec![],
            i: vec![],
            q: vec![],
            scales: vec![],
            mins: vec![],
        };
        let scales = |rng: &mut Rng| (0..groups).map(|_| h(rng.range(0.002, 0.03))).collect::<Vec<_>>();
        match layout {
            Layout::F32 => m.f = rng.vec(n, -1.0, 1.0),
            Layout::F16 => m.h = (0..n).map(|_| h(rng.range(-1.0, 1.0))).collect(),
            Layout::Int8 => {
                m.i = (0..n).map(|_| (rng.below(256) as i32 - 128) as i8).collect();
                m.scales = scales(rng);
            }
            Layout::Int4 => {
                for _ in 0..groups {
                    let g: [u8; GROUP] = std::array::from_fn(|_| rng.below(16) as u8);
                    m.q.extend_from_slice(&pack_int4_group(&g));
                }
                m.scales = scales(rng);
                m.mins = (0..groups).map(|_| h(rng.range(-0.2, 0.0))).collect();
            }
            Layout::Ternary => {
                for _ in 0..groups {
                    let g: [u8; GROUP] = std::array::from_fn(|_| rng.below(3) as u8);
                    m.q.extend_from_slice(&pack_ternary_group(&g));
                }
                m.scales = scales(rng);
            }
            Layout::Ggml(kind) => m.q = random_ggml(kind, n, rng),
        }
        m
    }

    pub fn matrix(&self) -> Matrix<'_> {
        let w = match self.layout {
            Layout::F32 => Weights::F32(&self.f),
            Layout::F16 => Weights::F16(&self.h),
            Layout::Int8 => Weights::Int8 { q: &self.i, scales: &self.scales },
            Layout::Int4 => Weights::Int4 { q: &self.q, scales: &self.scales, mins: &self.mins },
            Layout::Ternary => Weights::Ternary { q: &self.q, scales: &self.scales },
            Layout::Ggml(kind) => Weights::ggml(kind, &self.q),
        };
        Matrix::new(self.rows, self.cols, w).expect("random matrix has the right lengths")
    }

    /// All rows dequantized, `[rows, cols]`.
    pub fn dense(&self) -> Vec<f32> {
        let m = self.matrix();
        let mut out = vec![0f32; self.rows * self.cols];
        for (r, row) in out.chunks_exact_mut(self.cols).enumerate() {
            m.dequant_row(r, row);
        }
        out
    }
}

/// The GPU of this test process, opened once; `None` (and a note on stderr) when no adapter exists, which
/// fails the test instead under CI (`CI` set), where lavapipe is installed.
pub fn gpu_arc() -> Option<Arc<GpuContext>> {
    static CTX: OnceLock<Option<Arc<GpuContext>>> = OnceLock::new();
    CTX.get_or_init(|| match GpuContext::open_blocking(&DeviceOptions::default()) {
        Ok(c) => {
            eprintln!("GPU tests on {} ({:?})", c.gpu.describe(), c.gpu.info.device_type);
            Some(Arc::new(c))
        }
        Err(e) => {
            if std::env::var_os("CI").is_some() {
                panic!("CI has no GPU adapter: {e}");
            }
            eprintln!("skipping GPU tests: {e}");
            None
        }
    })
    .clone()
}

/// [`gpu_arc`], borrowed for the whole test process.
pub fn gpu() -> Option<&'static GpuContext> {
    static REF: OnceLock<Option<Arc<GpuContext>>> = OnceLock::new();
    REF.get_or_init(gpu_arc).as_deref()
}

/// A storage buffer holding `data`.
pub fn upload_f32(ctx: &GpuContext, data: &[f32]) -> GpuBuffer {
    ctx.pool.init("test input", bytemuck::cast_slice(data), storage(), Purpose::Activations).unwrap()
}

pub fn upload_u32(ctx: &GpuContext, data: &[u32]) -> GpuBuffer {
    ctx.pool.init("test input", bytemuck::cast_slice(data), storage(), Purpose::Activations).unwrap()
}

fn storage() -> wgpu::BufferUsages {
    wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST
}

/// `values` as a KV cache of `kv` elements holds them: f32 unchanged, f16 rounded to nearest, ties to even,
/// q8 quantized per block of 32 (kernels-cpu's `KvQ8`; NaNs become 0).
pub fn kv_round(kv: KvType, values: &[f32]) -> Vec<f32> {
    match kv {
        KvType::F32 => values.to_vec(),
        KvType::F16 => values.iter().map(|&v| f16::from_f32(v).to_f32()).collect(),
        KvType::Q8 => kernels_cpu::kv_load(&q8_blocks(values)),
    }
}

/// `values` (a whole number of blocks of 32) as q8_0 blocks.
pub fn q8_blocks(values: &[f32]) -> Vec<KvQ8> {
    values.chunks_exact(32).map(KvQ8::quantize).collect()
}

/// q8 blocks as the GPU cache holds them: per block 8 words of four int8 (value 4j + b in byte b of word j),
/// then the f16 scale in the low half of a 9th.
pub fn q8_gpu_words(blocks: &[KvQ8]) -> Vec<u32> {
    let mut words = Vec::with_capacity(blocks.len() * 9);
    for b in blocks {
        words.extend(b.q.chunks_exact(4).map(|q| u32::from_le_bytes([q[0] as u8, q[1] as u8, q[2] as u8, q[3] as u8])));
        words.push(b.d.to_bits() as u32);
    }
    words
}

/// The values of a GPU q8 cache's words (see [`q8_gpu_words`]).
pub fn q8_gpu_values(words: &[u32]) -> Vec<f32> {
    let mut out = Vec::with_capacity(words.len() / 9 * 32);
    for block in words.chunks_exact(9) {
        let d = f16::from_bits(block[8] as u16).to_f32();
        out.extend(block[..8].iter().flat_map(|w| w.to_le_bytes()).map(|q| d * q as i8 as f32));
    }
    out
}

/// A KV cache buffer holding `values` as `kv` elements (f16: two to a word, the first in the low half).
pub fn upload_kv(ctx: &GpuContext, kv: KvType, values: &[f32]) -> GpuBuffer {
    match kv {
        KvType::F32 => upload_f32(ctx, values),
        KvType::F16 => {
            let mut halves: Vec<u16> = values.iter().map(|&v| f16::from_f32(v).to_bits()).collect();
            halves.resize(values.len().next_multiple_of(2).max(2), 0);
            ctx.pool.init("test cache", bytemuck::cast_slice(&halves), storage(), Purpose::Activations).unwrap()
        }
        KvType::Q8 => upload_u32(ctx, &q8_gpu_words(&q8_blocks(values))),
    }
}

/// An output buffer of `n` words, every one 0xFFFFFFFF (a NaN as f32), so unwritten elements fail the test.
pub fn poisoned(ctx: &GpuContext, n: usize) -> GpuBuffer {
    upload_u32(ctx, &vec![u32::MAX; n.max(1)])
}

/// The step buffer: `n` tokens from position `pos`.
pub fn step(ctx: &GpuContext, n: u32, pos: u32) -> GpuBuffer {
    upload_u32(ctx, &[n, pos, 0, 0])
}

/// Asserts `|got - want| <= atol + rtol * |want|` elementwise, naming the first bad index.
pub fn assert_close(what: &str, got: &[f32], want: &[f32], atol: f32, rtol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= atol + rtol * w.abs(), "{what}: element {i} of {}: got {g}, want {w}", got.len());
    }
}

/// `||got - want|| / ||want||` in f64.
pub fn rel_err(got: &[f32], want: &[f32]) -> f64 {
    let num: f64 = got.iter().zip(want).map(|(&g, &w)| (g as f64 - w as f64).powi(2)).sum();
    let den: f64 = want.iter().map(|&w| (w as f64).powi(2)).sum();
    (num / den.max(1e-30)).sqrt()
}

/// Prompt logits (all rows), then `steps` greedy decode steps; returns every logits row and the tokens.
pub fn prompt_then_greedy(engine: &mut GpuEngine, prompt: &[u32], steps: usize) -> (Vec<f32>, Vec<u32>) {
    let mut logits = engine.forward(prompt, 0, Logits::All).unwrap();
    let vocab = logits.len() / prompt.len();
    let mut tokens = vec![kernels_cpu::ops::argmax(&logits[logits.len() - vocab..]) as u32];
    for s in 0..steps {
        let row = engine.forward(&tokens[s..s + 1], prompt.len() + s, Logits::Last).unwrap();
        tokens.push(kernels_cpu::ops::argmax(&row) as u32);
        logits.extend(row);
    }
    (logits, tokens)
}
