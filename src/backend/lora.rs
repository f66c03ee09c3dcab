//! LoRA adapters as the engines apply them, unmerged: a targeted matrix `W` of a linear op computes
//! `W x + s * B (A x)` on the op's (normed) input `x`, where `s` is the adapter's scale times the user's.
//! Adapters are read once and stay resident ([`Adapter`], shared by `Arc`); an engine's active set is a list
//! of ([`Adapter`], user scale) pairs, so switching adapters between requests moves no weights.

use crate::error::{Error, Result};
use crate::format::adapter::{AdapterData, Values};
use kernels_cpu::{Matrix, Weights};
use std::collections::HashMap;
use std::sync::Arc;

/// One adapted matrix: `a` [rank, cols], `b` [rows, rank], both f16 or f32 as stored.
#[derive(Debug)]
pub struct LoraMat {
    pub rows: usize,
    pub cols: usize,
    pub rank: usize,
    /// The adapter's own scale (alpha / rank, or rsLoRA's alpha / sqrt(rank)).
    pub scale: f32,
    pub a: Values,
    pub b: Values,
}

fn matrix(rows: usize, cols: usize, v: &Values) -> Matrix<'_> {
    let w = match v {
        Values::F32(v) => Weights::F32(v),
        Values::F16(v) => Weights::F16(v),
    };
    Matrix::new(rows, cols, w).expect("adapter shapes were checked when it was read")
}

impl LoraMat {
    pub fn a(&self) -> Matrix<'_> {
        matrix(self.rank, self.cols, &self.a)
    }

    pub fn b(&self) -> Matrix<'_> {
        matrix(self.rows, self.rank, &self.b)
    }

    /// `scale * B A` as a dense `[rows, cols]` f32 matrix (for merging; `scale` is the whole factor, the
    /// adapter's own [`LoraMat::scale`] included).
    pub fn delta(&self, scale: f32) -> Vec<f32> {
        let (a, b) = (self.a.to_f32(), self.b.to_f32());
        let mut d = vec![0f32; self.rows * self.cols];
        for (r, drow) in d.chunks_exact_mut(self.cols).enumerate() {
            for k in 0..self.rank {
                let s = scale * b[r * self.rank + k];
                for (dv, av) in drow.iter_mut().zip(&a[k * self.cols..(k + 1) * self.cols]) {
                    *dv += s * av;
                }
            }
        }
        d
    }
}

/// An adapter read from `adapters/NAME/`, keyed by the base tensor each matrix changes.
#[derive(Debug)]
pub struct Adapter {
    pub name: String,
    pub mats: HashMap<String, Arc<LoraMat>>,
}

impl Adapter {
    pub fn from_data(data: AdapterData) -> Adapter {
        let mats = data
            .targets
            .into_iter()
            .map(|t| {
                let m = LoraMat {
                    rows: t.rows as usize,
                    cols: t.cols as usize,
                    rank: t.rank as usize,
                    scale: t.scale,
                    a: t.a,
                    b: t.b,
                };
                (t.weight, Arc::new(m))
            })
            .collect();
        Adapter { name: data.file.name, mats }
    }

    /// Bytes of its matrices.
    pub fn bytes(&self) -> usize {
        self.mats.values().map(|m| m.a.bytes().len() + m.b.bytes().len()).sum()
    }
}

/// An adapter in an engine's active set, with the user's scale (1 is the adapter as trained).
#[derive(Clone, Debug)]
pub struct ActiveAdapter {
    pub adapter: Arc<Adapter>,
    pub scale: f32,
}

impl PartialEq for ActiveAdapter {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.adapter, &other.adapter) && self.scale.to_bits() == other.scale.to_bits()
    }
}

/// The adapted matrices of one base tensor under an active set: (matrix, effective scale) per adapter that
/// targets it.
pub type MatLoras = Vec<(Arc<LoraMat>, f32)>;

/// For each base tensor of `names` (every matrix of the program's linear ops), the active adapters' matrices;
/// an adapter targeting a tensor that is not among them is refused (it would silently do nothing).
pub fn resolve(active: &[ActiveAdapter], names: &[&str]) -> Result<Vec<MatLoras>> {
    for a in active {
        if !a.scale.is_finite() {
            return Err(Error::Usage(format!("adapter {}: scale {} is not finite", a.adapter.name, a.scale)));
        }
        if let Some(t) = a.adapter.mats.keys().find(|t| !names.contains(&t.as_str())) {
            return Err(Error::Usage(format!(
                "adapter {} targets {t}, which is not a matrix of this model's linear ops",
                a.adapter.name
            )));
        }
    }
    Ok(names
        .iter()
        .map(|n| active.iter().filter_map(|a| a.adapter.mats.get(*n).map(|m| (m.clone(), m.scale * a.scale))).collect())
        .collect())
}

/// `out[row][col..col + m.rows] += s * B (A x_row)` for the `n` rows of `x`, whose outputs are `width` wide;
/// `t` and `y` are scratch.
#[allow(clippy::too_many_arguments)]
pub fn apply_cpu(
    m: &LoraMat,
    s: f32,
    x: &[f32],
    n: usize,
    col: usize,
    width: usize,
    t: &mut Vec<f32>,
    y: &mut Vec<f32>,
    out: &mut [f32],
) {
    t.resize(n * m.rank, 0.0);
    y.resize(n * m.rows, 0.0);
    if n == 1 {
        kernels_cpu::matvec(&m.a(), x, t);
        kernels_cpu::matvec(&m.b(), t, y);
    } else {
        kernels_cpu::matmul(&m.a(), x, n, t);
        kernels_cpu::matmul(&m.b(), t, n, y);
    }
    for (src, dst) in y.chunks_exact(m.rows).zip(out.chunks_exact_mut(width)) {
        for (d, v) in dst[col..col + m.rows].iter_mut().zip(src) {
            *d += s * v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rand(n: usize, seed: &mut u64) -> Vec<f32> {
        (0..n)
            .map(|_| {
                *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((*seed >> 33) as f32 / (1u64 << 31) as f32) - 0.5
            })
            .collect()
    }

    /// The kernels' product against a plain f64 loop, f16 and f32 storage, one row and several, odd sizes.
    #[test]
    fn apply_matches_f64_loops() {
        let mut seed = 7;
        for (rows, cols, rank, n, f16) in [(5, 7, 3, 1, false), (33, 70, 4, 3, true), (64, 96, 16, 1, true)] {
            let (a, b) = (rand(rank * cols, &mut seed), rand(rows * rank, &mut seed));
            let store = |v: &[f32]| match f16 {
                true => Values::F16(v.iter().map(|&x| half::f16::from_f32(x).to_bits()).collect()),
                false => Values::F32(v.to_vec()),
            };
            let m = LoraMat { rows, cols, rank, scale: 2.0, a: store(&a), b: store(&b) };
            let (a, b) = (m.a.to_f32(), m.b.to_f32());
            let x = rand(n * cols, &mut seed);
            let (width, col) = (rows + 5, 2);
            let base = rand(n * width, &mut seed);
            let mut out = base.clone();
            apply_cpu(&m, 0.75, &x, n, col, width, &mut Vec::new(), &mut Vec::new(), &mut out);
            let delta = m.delta(0.75);
            for i in 0..n {
                for r in 0..width {
                    let want = if (col..col + rows).contains(&r) {
                        let mut acc = 0f64;
                        for k in 0..rank {
                            let ax: f64 = (0..cols).map(|c| a[k * cols + c] as f64 * x[i * cols + c] as f64).sum();
                            acc += b[(r - col) * rank + k] as f64 * ax;
                        }
                        let via_delta: f64 =
                            (0..cols).map(|c| delta[(r - col) * cols + c] as f64 * x[i * cols + c] as f64).sum();
                        assert!((via_delta - 0.75 * acc).abs() < 1e-4, "delta disagrees at {r}");
                        base[i * width + r] as f64 + 0.75 * acc
                    } else {
                        base[i * width + r] as f64
                    };
                    let got = out[i * width + r] as f64;
                    assert!((got - want).abs() < 1e-4 * (1.0 + want.abs()), "row {i} out {r}: {got} vs {want}");
                }
            }
        }
    }

    #[test]
    fn resolve_refuses_unknown_targets_and_combines_scales() {
        let m = Arc::new(LoraMat {
            rows: 1,
            cols: 1,
            rank: 1,
            scale: 0.5,
            a: Values::F32(vec![1.0]),
            b: Values::F32(vec![1.0]),
        });
        let adapter = Arc::new(Adapter { name: "x".into(), mats: [("w1".to_string(), m)].into() });
        let active = vec![ActiveAdapter { adapter: adapter.clone(), scale: 3.0 }];
        let r = resolve(&active, &["w0", "w1"]).unwrap();
        assert!(r[0].is_empty());
        assert_eq!(r[1][0].1, 1.5);
        let e = resolve(&active, &["w0"]).unwrap_err().to_string();
        assert!(e.contains("targets w1"), "{e}");
        let bad = vec![ActiveAdapter { adapter, scale: f32::NAN }];
        assert!(resolve(&bad, &["w1"]).is_err());
    }
}
