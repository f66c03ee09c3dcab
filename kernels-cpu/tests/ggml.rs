//! Raw GGUF blocks: dequantization bit for bit against gguf-py (the fixture of scripts/make_ggml_fixture.py),
//! then every product (float and q8, matvec and matmul, every ISA of this CPU) against f64 references built on
//! that dequantization, and the layout checks of `Matrix::new`.

mod common;
use common::{assert_matmul_rows_equal_matvec, isas, random_blocks, Rng};
use half::f16;
use kernels_cpu::ggml::{self, GgmlBlock};
use kernels_cpu::q8::{self, Q8Activations};
use kernels_cpu::{matmul, matvec, Matrix, Weights, GROUP};

const TOL: f64 = 1e-5;

/// The fixture's `bytes` (hex) and `f32_bits` of type `name`, read without a JSON crate: the file is one line
/// of `{"NAME":{"n":N,"bytes":"HEX","f32_bits":[B,...]},...}`.
fn fixture(name: &str) -> (Vec<u8>, Vec<u32>) {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/data/ggml/dequant_reference.json");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let at = text.find(&format!("\"{name}\":{{")).unwrap_or_else(|| panic!("{name} not in the fixture"));
    let rest = &text[at..];
    let field = |key: &str, end: char| {
        let start = rest.find(key).unwrap() + key.len();
        &rest[start..start + rest[start..].find(end).unwrap()]
    };
    let hex = field("\"bytes\":\"", '"');
    let bytes = (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect();
    let bits = field("\"f32_bits\":[", ']').split(',').map(|v| v.trim().parse().unwrap()).collect();
    (bytes, bits)
}

#[test]
fn dequantize_row_matches_gguf_py_bit_for_bit() {
    for kind in GgmlBlock::ALL {
        let (bytes, bits) = fixture(kind.name());
        let mut out = vec![f32::NAN; bits.len()];
        ggml::dequantize_row(kind, &bytes, &mut out);
        for (i, (v, &b)) in out.iter().zip(&bits).enumerate() {
            assert_eq!(v.to_bits(), b, "{kind} value {i}: {v} vs gguf-py {}", f32::from_bits(b));
        }
        // The same blocks as a matrix of one block per row, through `Matrix::dequant_row`.
        let bv = kind.block_values();
        let m = Matrix::new(bits.len() / bv, bv, Weights::ggml(kind, &bytes)).unwrap();
        let mut row = vec![0f32; bv];
        for r in 0..m.rows {
            m.dequant_row(r, &mut row);
            assert!(row.iter().zip(&bits[r * bv..]).all(|(v, &b)| v.to_bits() == b), "{kind} row {r}");
        }
    }
}

#[test]
fn matmul_dequantization_is_exact_on_every_isa() {
    // Token t of x is the one-hot e_t, so y[t, r] = W[r, t] exactly: this reads the (vectorised) dequantization
    // the float kernels run on, for every column.
    for kind in GgmlBlock::ALL {
        let (bytes, bits) = fixture(kind.name());
        let cols = if kind.block_values() == 256 { 256 } else { 96 };
        let rows = bits.len() / cols;
        let m = Matrix::new(rows, cols, Weights::ggml(kind, &bytes)).unwrap();
        let mut x = vec![0f32; cols * cols];
        for t in 0..cols {
            x[t * cols + t] = 1.0;
        }
        for isa in isas() {
            let mut y = vec![f32::NAN; cols * rows];
            matmul::matmul_with(isa, &m, &x, cols, &mut y);
            for t in 0..cols {
                for r in 0..rows {
                    let want = f32::from_bits(bits[r * cols + t]);
                    assert_eq!(y[t * rows + r], want, "{kind} {isa} W[{r}, {t}]");
                }
            }
        }
    }
}

/// `|b|` of every group of 32 of row `r` (`w = a q + b`): the min term the q8 kernels may add separately,
/// whose size (not only `|w|`) sets their rounding. Read straight from the block bytes.
fn min_terms(kind: GgmlBlock, bytes: &[u8], cols: usize, r: usize) -> Vec<f64> {
    let row = &bytes[r * kind.bytes_for(cols)..];
    let h = |at: usize| f16::from_bits(u16::from_le_bytes([row[at], row[at + 1]])).to_f32() as f64;
    (0..cols / GROUP)
        .map(|g| match kind {
            GgmlBlock::Q5_1 => h(g * 24 + 2).abs(),
            // The AVX2 kernel reads Q5_0's `d (q - 16)` as `d q - 16 d`.
            GgmlBlock::Q5_0 => 16.0 * h(g * 22).abs(),
            GgmlBlock::Q4K | GgmlBlock::Q5K => {
                let (blk, j) = ((g / 8) * kind.block_bytes(), g % 8);
                let s = &row[blk + 4..blk + 16];
                let mn = if j < 4 { s[j + 4] & 63 } else { (s[j + 4] >> 4) | ((s[j] >> 6) << 4) };
                (h(blk + 2) * mn as f64).abs()
            }
            _ => 0.0,
        })
        .collect()
}

struct Case {
    kind: GgmlBlock,
    rows: usize,
    cols: usize,
    bytes: Vec<u8>,
}

impl Case {
    fn new(kind: GgmlBlock, rows: usize, cols: usize, rng: &mut Rng) -> Case {
        Case { kind, rows, cols, bytes: random_blocks(kind, rows, cols, rng) }
    }

    fn matrix(&self) -> Matrix<'_> {
        Matrix::new(self.rows, self.cols, Weights::ggml(self.kind, &self.bytes)).unwrap()
    }

    /// Dequantized rows, by the scalar `dequantize_row` (checked bit-exact above).
    fn dense(&self) -> Vec<f32> {
        let mut w = vec![0f32; self.rows * self.cols];
        ggml::dequantize_row(self.kind, &self.bytes, &mut w);
        w
    }

    /// `(W x, sum |w| |x|, sum (|w| + 2 |b|) |x|)` per row in f64.
    fn reference(&self, w: &[f32], x: &[f32]) -> Vec<(f64, f64, f64)> {
        (0..self.rows)
            .map(|r| {
                let b = min_terms(self.kind, &self.bytes, self.cols, r);
                let mut acc = (0f64, 0f64, 0f64);
                for (c, (&wv, &xv)) in w[r * self.cols..(r + 1) * self.cols].iter().zip(x).enumerate() {
                    acc.0 += wv as f64 * xv as f64;
                    acc.1 += (wv as f64).abs() * (xv as f64).abs();
                    acc.2 += ((wv as f64).abs() + 2.0 * b[c / GROUP]) * (xv as f64).abs();
                }
                acc
            })
            .collect()
    }
}

fn shapes(kind: GgmlBlock) -> Vec<(usize, usize)> {
    let mut s = vec![(1, 256), (3, 512), (5, 256), (17, 768), (130, 512)];
    if kind.block_values() == 32 {
        s.extend([(3, 32), (6, 96), (9, 288), (4, 544)]);
    }
    s
}

#[test]
fn float_matvec_and_matmul_match_dequantized_reference() {
    let mut rng = Rng::new(21);
    for kind in GgmlBlock::ALL {
        for (rows, cols) in shapes(kind) {
            let case = Case::new(kind, rows, cols, &mut rng);
            let (m, w) = (case.matrix(), case.dense());
            for isa in isas() {
                for n in [1, 2, 5, 17] {
                    let x = rng.vec(n * cols, -1.0, 1.0);
                    let mut y = vec![f32::NAN; n * rows];
                    if n == 1 {
                        matvec::matvec_with(isa, &m, &x, &mut y);
                    } else {
                        matmul::matmul_with(isa, &m, &x, n, &mut y);
                    }
                    for t in 0..n {
                        let want = case.reference(&w, &x[t * cols..(t + 1) * cols]);
                        for (r, &(v, s, _)) in want.iter().enumerate() {
                            let g = y[t * rows + r] as f64;
                            let what = format!("{kind} {isa} {rows}x{cols} n={n} token {t} row {r}");
                            assert!((g - v).abs() <= TOL * s + 1e-30, "{what}: {g} vs {v}");
                        }
                    }
                }
            }
        }
    }
}

/// `x^ = d q` of activation row `t`.
fn dequantized(xq: &Q8Activations, t: usize) -> Vec<f32> {
    let cols = xq.cols();
    let gpr = cols / GROUP;
    (0..cols).map(|c| xq.scales()[t * gpr + c / GROUP] * xq.quants()[t * cols + c] as f32).collect()
}

#[test]
fn q8_matvec_and_matmul_match_dequantized_reference() {
    let mut rng = Rng::new(22);
    for kind in GgmlBlock::ALL {
        for (rows, cols) in shapes(kind) {
            let case = Case::new(kind, rows, cols, &mut rng);
            let (m, w) = (case.matrix(), case.dense());
            for isa in isas() {
                for n in [1, 2, 3, 5, 17] {
                    let x = rng.vec(n * cols, -1.0, 1.0);
                    let xq = q8::quantize_with(isa, &x, n);
                    let mut y = vec![f32::NAN; n * rows];
                    if n == 1 {
                        q8::matvec_q8_with(isa, &m, &xq, &mut y);
                    } else {
                        q8::matmul_q8_with(isa, &m, &xq, n, &mut y);
                    }
                    for t in 0..n {
                        let xt = &x[t * cols..(t + 1) * cols];
                        let exact = case.reference(&w, &dequantized(&xq, t));
                        let truth = case.reference(&w, xt);
                        let gpr = cols / GROUP;
                        for r in 0..rows {
                            let g = y[t * rows + r] as f64;
                            let what = format!("{kind} {isa} {rows}x{cols} n={n} token {t} row {r}");
                            // Against W x^: only f32 rounding on top of exact integer dots.
                            let (v, _, s) = exact[r];
                            assert!((g - v).abs() <= TOL * s + 1e-30, "{what}: {g} vs W x^ = {v}");
                            // Against W x: the quantization bound sum_g d_g / 2 sum |w|.
                            let bound: f64 = (0..cols)
                                .map(|c| xq.scales()[t * gpr + c / GROUP] as f64 / 2.0 * (w[r * cols + c] as f64).abs())
                                .sum();
                            let b = bound * (1.0 + TOL) + TOL * truth[r].2 + 1e-30;
                            assert!((g - truth[r].0).abs() <= b, "{what}: {g} vs W x = {}, bound {b:e}", truth[r].0);
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn q8_extremes_do_not_saturate() {
    // Q8_0 quants of -128 and 127 and Q6_K scales of -128 against activations of +-127: every i16 pair and
    // i32 sum must stay exact.
    let mut b = vec![0u8; 2 * ggml::Q8_0_BYTES];
    for (k, blk) in b.chunks_exact_mut(ggml::Q8_0_BYTES).enumerate() {
        blk[..2].copy_from_slice(&f16::from_f32(1.0 + k as f32).to_bits().to_le_bytes());
        for (i, q) in blk[2..].iter_mut().enumerate() {
            *q = if i % 2 == 0 { 0x80 } else { 127 };
        }
    }
    let mut b6 = vec![0u8; ggml::Q6_K_BYTES];
    b6[..128].fill(0xFF); // low nibbles 15
    b6[128..192].fill(0xFF); // high bits 3: q = 63 - 32 = 31
    b6[192..208].fill(0x80); // sc = -128
    b6[208..210].copy_from_slice(&f16::from_f32(1.0).to_bits().to_le_bytes());
    for (kind, bytes, cols) in [(GgmlBlock::Q8_0, &b, 64), (GgmlBlock::Q6K, &b6, 256)] {
        let m = Matrix::new(1, cols, Weights::ggml(kind, bytes)).unwrap();
        let mut w = vec![0f32; cols];
        m.dequant_row(0, &mut w);
        let x: Vec<f32> = (0..cols).map(|i| if i % 4 < 2 { -127.0 } else { 127.0 }).collect();
        let want: f64 = w.iter().zip(&x).map(|(&a, &b)| a as f64 * b as f64).sum();
        for isa in isas() {
            let xq = q8::quantize_with(isa, &x, 1);
            let mut y = [0f32];
            q8::matvec_q8_with(isa, &m, &xq, &mut y);
            assert_eq!(y[0] as f64, want, "{kind} {isa}");
        }
    }
}

#[test]
#[cfg_attr(target_arch = "wasm32", ignore = "wasm32 without atomics cannot start thread pools")]
fn results_do_not_depend_on_thread_count() {
    let mut rng = Rng::new(23);
    for kind in [GgmlBlock::Q4K, GgmlBlock::Q6K, GgmlBlock::Q5_0] {
        let case = Case::new(kind, 1030, 512, &mut rng);
        let m = case.matrix();
        let n = 37;
        let x = rng.vec(n * 512, -1.0, 1.0);
        let xq = q8::quantize(&x, n);
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| {
                let mut outs = vec![vec![0f32; 1030]; 2];
                let mut mm = vec![vec![0f32; n * 1030]; 2];
                matvec::matvec(&m, &x[..512], &mut outs[0]);
                q8::matvec_q8(&m, &q8::quantize(&x[..512], 1), &mut outs[1]);
                matmul::matmul(&m, &x, n, &mut mm[0]);
                q8::matmul_q8(&m, &xq, n, &mut mm[1]);
                (outs, mm)
            })
        };
        assert_eq!(run(1), run(2), "{kind}");
    }
}

#[test]
fn layout_checks_block_sizes_and_widths() {
    let sizes = [
        (GgmlBlock::Q4K, 256, 144),
        (GgmlBlock::Q5K, 256, 176),
        (GgmlBlock::Q6K, 256, 210),
        (GgmlBlock::Q5_0, 32, 22),
        (GgmlBlock::Q5_1, 32, 24),
        (GgmlBlock::Q8_0, 32, 34),
    ];
    for (kind, bv, bb) in sizes {
        assert_eq!((kind.block_values(), kind.block_bytes()), (bv, bb), "{kind}");
        let (rows, cols) = (3, 2 * bv);
        let good = vec![0u8; rows * cols / bv * bb];
        let m = Matrix::new(rows, cols, Weights::ggml(kind, &good)).unwrap();
        assert_eq!(m.row_bytes(), 2 * bb);
        assert_eq!(m.weight_bytes(), good.len());
        for len in [good.len() - 1, good.len() + 1, good.len() - bb, 0] {
            let bytes = vec![0u8; len];
            let e = Matrix::new(rows, cols, Weights::ggml(kind, &bytes)).err();
            let e = e.unwrap_or_else(|| panic!("{kind}: {len} bytes accepted"));
            assert!(e.0.contains(kind.name()) && e.0.contains("bytes"), "{e}");
        }
        // A width that is not whole blocks, with the byte length it would need if it were.
        let bad_cols: usize = if bv == 256 { 288 } else { 48 };
        let bytes = vec![0u8; bad_cols.div_ceil(bv) * bb];
        let e = Matrix::new(1, bad_cols, Weights::ggml(kind, &bytes)).unwrap_err();
        assert!(e.0.contains(&format!("cols % {bv}")), "{e}");
    }
    // K-quants need 256-wide rows even where 32 would do for the others.
    assert!(Matrix::new(1, 32, Weights::Q4K(&[0u8; 18])).is_err());
    assert!(Matrix::new(8, 32, Weights::Q4K(&[0u8; 144])).is_err());
}

#[test]
#[should_panic(expected = "invalid matrix")]
fn q8_rejects_hand_built_matrix() {
    let bytes = [0u8; 100];
    let m = Matrix { rows: 1, cols: 256, w: Weights::Q6K(&bytes) };
    q8::matvec_q8(&m, &q8::quantize(&[0.0; 256], 1), &mut [0.0; 1]);
}

/// As for omex's layouts (tests/q8.rs): every ISA's q8 matmul row equals the AVX2 matvec of that row bit for
/// bit, for tiles of a few tokens and of many (the AVX-512 panels), so batching never changes a result.
#[test]
fn q8_matmul_rows_equal_the_matvec_bit_for_bit() {
    let mut rng = Rng::new(24);
    for kind in GgmlBlock::ALL {
        for (rows, cols) in [(17, 256), (130, 768), (33, 1536)] {
            let case = Case::new(kind, rows, cols, &mut rng);
            assert_matmul_rows_equal_matvec(&case.matrix(), &mut rng, &kind.to_string());
        }
    }
}
