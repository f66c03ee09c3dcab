//! Test helpers: a seeded PRNG, random matrices in every layout (owning their storage), and f64 references
//! built only on `Matrix::dequant_row`.
#![allow(dead_code)]

use half::f16;
use kernels_cpu::layout::{pack_int4_group, pack_ternary_group, INT4_GROUP_BYTES, TERNARY_GROUP_BYTES};
use kernels_cpu::{GgmlBlock, Matrix, Weights, GROUP};

/// SplitMix64.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
    /// Uniform in [lo, hi).
    pub fn range(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.unit()
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
    /// Raw GGUF blocks.
    Ggml(GgmlBlock),
}

pub const LAYOUTS: [Layout; 5] = [Layout::F32, Layout::F16, Layout::Int8, Layout::Int4, Layout::Ternary];
pub const QUANTIZED: [Layout; 3] = [Layout::Int8, Layout::Int4, Layout::Ternary];

/// A matrix owning its storage.
pub struct Owned {
    pub layout: Layout,
    pub rows: usize,
    pub cols: usize,
    f: Vec<f32>,
    h: Vec<u16>,
    i8q: Vec<i8>,
    q: Vec<u8>,
    scales: Vec<u16>,
    mins: Vec<u16>,
}

fn h(v: f32) -> u16 {
    f16::from_f32(v).to_bits()
}

impl Owned {
    pub fn random(layout: Layout, rows: usize, cols: usize, rng: &mut Rng) -> Owned {
        let n = rows * cols;
        let groups = n / GROUP;
        let mut o =
            Owned { layout, rows, cols, f: vec![], h: vec![], i8q: vec![], q: vec![], scales: vec![], mins: vec![] };
        match layout {
            Layout::F32 => o.f = rng.vec(n, -1.0, 1.0),
            Layout::F16 => o.h = (0..n).map(|_| h(rng.range(-1.0, 1.0))).collect(),
            Layout::Int8 => {
                // -128 is rare but legal in the layout; keep some to exercise it.
                o.i8q =
                    (0..n).map(|_| if rng.below(64) == 0 { -128 } else { rng.below(255) as i32 - 127 } as i8).collect();
                o.scales = (0..groups).map(|_| h(rng.range(0.001, 0.02))).collect();
            }
            Layout::Int4 => {
                for _ in 0..groups {
                    let mut qs = [0u8; GROUP];
                    for v in qs.iter_mut() {
                        *v = rng.below(16) as u8;
                    }
                    o.q.extend_from_slice(&pack_int4_group(&qs));
                }
                o.scales = (0..groups).map(|_| h(rng.range(0.005, 0.1))).collect();
                o.mins = (0..groups).map(|_| h(rng.range(-0.8, 0.1))).collect();
            }
            Layout::Ternary => {
                for _ in 0..groups {
                    let mut cs = [0u8; GROUP];
                    for v in cs.iter_mut() {
                        *v = rng.below(3) as u8;
                    }
                    o.q.extend_from_slice(&pack_ternary_group(&cs));
                }
                o.scales = (0..groups).map(|_| h(rng.range(0.01, 0.5))).collect();
            }
            Layout::Ggml(kind) => {
                o.q = random_blocks(kind, rows, cols, rng);
                return o;
            }
        }
        assert_eq!(
            o.q.len(),
            groups
                * if layout == Layout::Int4 {
                    INT4_GROUP_BYTES
                } else if layout == Layout::Ternary {
                    TERNARY_GROUP_BYTES
                } else {
                    0
                }
        );
        o
    }

    pub fn matrix(&self) -> Matrix<'_> {
        let w = match self.layout {
            Layout::F32 => Weights::F32(&self.f),
            Layout::F16 => Weights::F16(&self.h),
            Layout::Int8 => Weights::Int8 { q: &self.i8q, scales: &self.scales },
            Layout::Int4 => Weights::Int4 { q: &self.q, scales: &self.scales, mins: &self.mins },
            Layout::Ternary => Weights::Ternary { q: &self.q, scales: &self.scales },
            Layout::Ggml(kind) => Weights::ggml(kind, &self.q),
        };
        Matrix::new(self.rows, self.cols, w).unwrap()
    }

    /// `|w|` as the rounding-error scale of the kernel's own decomposition: for int4 the kernel computes
    /// `d * sum(q x) + m * sum(x)`, so its rounding scales with `(|d q| + |m|) |x|`, not `|w x|`.
    pub fn err_weight_row(&self, r: usize) -> Vec<f64> {
        let m = self.matrix();
        let mut w = vec![0f32; self.cols];
        m.dequant_row(r, &mut w);
        match self.layout {
            Layout::Int4 => {
                let gpr = self.cols / GROUP;
                w.iter()
                    .enumerate()
                    .map(|(c, &v)| {
                        let m = f16::from_bits(self.mins[r * gpr + c / GROUP]).to_f32() as f64;
                        (v as f64 - m).abs() + m.abs()
                    })
                    .collect()
            }
            _ => w.iter().map(|v| v.abs() as f64).collect(),
        }
    }
}

/// `(sum_c W[r,c] x[c], sum_c errw[r,c] |x[c]|)` in f64, from `dequant_row`.
pub fn reference(o: &Owned, x: &[f32]) -> (Vec<f64>, Vec<f64>) {
    let m = o.matrix();
    let mut w = vec![0f32; o.cols];
    let mut y = Vec::new();
    let mut s = Vec::new();
    for r in 0..o.rows {
        m.dequant_row(r, &mut w);
        y.push(w.iter().zip(x).map(|(&a, &b)| a as f64 * b as f64).sum());
        s.push(o.err_weight_row(r).iter().zip(x).map(|(a, &b)| a * (b as f64).abs()).sum());
    }
    (y, s)
}

pub fn isas() -> Vec<kernels_cpu::Isa> {
    kernels_cpu::isa::available()
}

/// Random blocks of `kind` for `[rows, cols]`: random bytes, with every f16 parameter set to a moderate finite
/// value (random bytes there could be NaN or huge).
pub fn random_blocks(kind: GgmlBlock, rows: usize, cols: usize, rng: &mut Rng) -> Vec<u8> {
    let n_blocks = rows * cols / kind.block_values();
    let params: &[usize] = match kind {
        GgmlBlock::Q8_0 | GgmlBlock::Q5_0 => &[0],
        GgmlBlock::Q5_1 | GgmlBlock::Q4K | GgmlBlock::Q5K => &[0, 2],
        GgmlBlock::Q6K => &[208],
    };
    let mut out = Vec::with_capacity(n_blocks * kind.block_bytes());
    for _ in 0..n_blocks {
        let at = out.len();
        out.extend((0..kind.block_bytes()).map(|_| rng.below(256) as u8));
        for &p in params {
            let v = f16::from_f32(rng.range(-0.05, 0.05)).to_bits().to_le_bytes();
            out[at + p..at + p + 2].copy_from_slice(&v);
        }
    }
    out
}

/// Checks that every x86 ISA's q8 matmul of `m` over random activations equals, bit for bit, the AVX2 matvec of
/// each activation row alone, for tiles of a few tokens (the per-row kernels) and of many (the AVX-512 panels):
/// a row's result must not depend on the kernel, the tile or the batch it ran in. No-op without AVX2.
pub fn assert_matmul_rows_equal_matvec(m: &Matrix, rng: &mut Rng, what: &str) {
    use kernels_cpu::{q8, Isa};
    let Some(&base) = isas().iter().find(|i| **i == Isa::Avx2) else { return };
    let (rows, cols) = (m.rows, m.cols);
    for n in [5, 12, 40] {
        let x = rng.vec(n * cols, -1.0, 1.0);
        let xq = q8::quantize_with(base, &x, n);
        let mut want = vec![0f32; n * rows];
        for t in 0..n {
            let one = q8::quantize_with(base, &x[t * cols..(t + 1) * cols], 1);
            q8::matvec_q8_with(base, m, &one, &mut want[t * rows..(t + 1) * rows]);
        }
        for isa in isas().into_iter().filter(|i| matches!(i, Isa::Avx2 | Isa::Avx512 | Isa::Avx512Vnni)) {
            let mut y = vec![f32::NAN; n * rows];
            q8::matmul_q8_with(isa, m, &xq, n, &mut y);
            for (k, (a, b)) in y.iter().zip(&want).enumerate() {
                assert_eq!(a.to_bits(), b.to_bits(), "{what} {isa} {rows}x{cols} n={n} [{k}]: {a} vs {b}");
            }
        }
    }
}
