//! Quantizers from f32 to the omex layouts (see `kernels_cpu::layout` for the byte order of each):
//!
//! - `F16`: round to nearest even.
//! - `Int8`: per group of 32, `d = absmax / 127` (stored as f16), `q = clamp(round(w / d), -127, 127)`.
//! - `Int4`: per group, min-max asymmetric: `m = min` (f16), `d = (max - m) / 15` (f16),
//!   `q = clamp(round((w - m) / d), 0, 15)`.
//! - `Ternary`: BitNet b1.58 absmean: `d = mean |w|` (f16), `q = clamp(round(w / d), -1, 1)`, code `q + 1`.
//!
//! Parameters are rounded to f16 so that no value is clipped: an int4 min rounds down, a scale rounds up when
//! rounding to nearest would make `d * 127` (`m + 15 d`) fall short of the extreme value. Divisions use the
//! stored f16 scale, so the rounding matches what the kernels multiply back; every int8/int4 error is at most
//! half a step of the stored scale.
//! A group whose scale is 0 (all zeros) stores q = 0 (int4: every value is the min).

use crate::format::{DType, SectionKind};
use half::f16;
use kernels_cpu::layout::{self, Matrix, Weights, GROUP, INT4_GROUP_BYTES, TERNARY_GROUP_BYTES};
use rayon::prelude::*;

/// One tensor in an omex layout: the bytes of each section the dtype needs (scales and mins are f16 bits).
#[derive(Clone, Debug, PartialEq)]
pub struct Packed {
    pub dtype: DType,
    pub data: Vec<u8>,
    pub scales: Vec<u16>,
    pub mins: Vec<u16>,
}

impl Packed {
    pub fn new(dtype: DType, data: Vec<u8>) -> Packed {
        Packed { dtype, data, scales: Vec::new(), mins: Vec::new() }
    }

    /// The sections as `LayerFileWriter::write_tensor` takes them (little-endian bytes).
    pub fn sections(&self) -> Vec<(SectionKind, &[u8])> {
        let mut v = vec![(SectionKind::Data, self.data.as_slice())];
        for kind in self.dtype.param_sections() {
            let s: &[u16] = if *kind == SectionKind::Mins { &self.mins } else { &self.scales };
            v.push((*kind, bytemuck::cast_slice(s)));
        }
        v
    }

    /// Bytes of all sections.
    pub fn bytes(&self) -> u64 {
        (self.data.len() + 2 * (self.scales.len() + self.mins.len())) as u64
    }

    /// How many stored numbers are NaN or infinite: float values, and the f16 scales and mins of quantized
    /// layouts (a quantized value is finite exactly when its parameters are).
    pub fn non_finite(&self) -> usize {
        if let Some(ty) = super::kept_ggml(self.dtype) {
            let n = self.data.len() / ty.block_bytes() * ty.block_values();
            let mut values = vec![0f32; n];
            return match super::dequant::dequantize(ty, &self.data, &mut values) {
                Ok(()) => values.iter().filter(|v| !v.is_finite()).count(),
                Err(_) => n,
            };
        }
        let f16s = |v: &[u16]| v.iter().filter(|&&b| !half::f16::from_bits(b).is_finite()).count();
        let params = f16s(&self.scales) + f16s(&self.mins);
        params
            + match self.dtype {
                DType::F32 => self
                    .data
                    .chunks_exact(4)
                    .filter(|b| !f32::from_le_bytes([b[0], b[1], b[2], b[3]]).is_finite())
                    .count(),
                DType::F16 => {
                    self.data.chunks_exact(2).filter(|b| !half::f16::from_le_bytes([b[0], b[1]]).is_finite()).count()
                }
                DType::Bf16 => {
                    self.data.chunks_exact(2).filter(|b| !half::bf16::from_le_bytes([b[0], b[1]]).is_finite()).count()
                }
                _ => 0,
            }
    }

    /// Dequantizes the tensor as a `[rows, cols]` matrix with the kernels' scalar reference
    /// (`Matrix::dequant_row`): what the runtime will compute from these bytes.
    pub fn dequantize(&self, rows: usize, cols: usize) -> Result<Vec<f32>, String> {
        if let Some(ty) = super::kept_ggml(self.dtype) {
            let mut out = vec![0f32; rows * cols];
            super::dequant::dequantize(ty, &self.data, &mut out)?;
            return Ok(out);
        }
        let f32s: Vec<f32>;
        let u16s: Vec<u16>;
        let i8s: Vec<i8>;
        let w = match self.dtype {
            DType::F32 => {
                f32s = self.data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
                Weights::F32(&f32s)
            }
            DType::F16 => {
                u16s = self.data.chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]])).collect();
                Weights::F16(&u16s)
            }
            DType::Int8 => {
                i8s = self.data.iter().map(|&b| b as i8).collect();
                Weights::Int8 { q: &i8s, scales: &self.scales }
            }
            DType::Int4 => Weights::Int4 { q: &self.data, scales: &self.scales, mins: &self.mins },
            DType::Ternary => Weights::Ternary { q: &self.data, scales: &self.scales },
            DType::Bf16 => return Err("bf16 is not a kernel layout".into()),
            _ => unreachable!("GGUF block dtypes returned above"),
        };
        let m = Matrix::new(rows, cols, w).map_err(|e| e.to_string())?;
        let mut out = vec![0f32; rows * cols];
        for (r, row) in out.chunks_exact_mut(cols.max(1)).enumerate() {
            m.dequant_row(r, row);
        }
        Ok(out)
    }
}

/// An f16 that saturates at ±65504 instead of becoming infinite.
fn f16_sat(x: f32) -> f16 {
    let h = f16::from_f32(x);
    if h.is_infinite() {
        if x > 0.0 {
            f16::MAX
        } else {
            f16::MIN
        }
    } else {
        h
    }
}

/// Quantizes `values` (a `[.., cols]` tensor flattened, `cols % 32 == 0` for the quantized dtypes) into `dtype`.
pub fn quantize(values: &[f32], dtype: DType) -> Result<Packed, String> {
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(format!("value {i} is {} (not finite); omex does not quantize NaN or infinity", values[i]));
    }
    if dtype.is_quantized() && !values.len().is_multiple_of(GROUP) {
        return Err(format!("{} values are not a whole number of groups of {GROUP}", values.len()));
    }
    Ok(match dtype {
        DType::F32 => Packed::new(dtype, values.iter().flat_map(|v| v.to_le_bytes()).collect()),
        DType::F16 => {
            if let Some(v) = values.iter().find(|v| v.abs() > f16::MAX.to_f32()) {
                return Err(format!("value {v} is out of the f16 range"));
            }
            Packed::new(dtype, values.par_iter().flat_map_iter(|&v| f16::from_f32(v).to_bits().to_le_bytes()).collect())
        }
        DType::Int8 => {
            let groups: Vec<(u16, [i8; GROUP])> = values.par_chunks_exact(GROUP).map(int8_group).collect();
            Packed {
                dtype,
                data: groups.iter().flat_map(|(_, q)| q.iter().map(|&v| v as u8)).collect(),
                scales: groups.iter().map(|(d, _)| *d).collect(),
                mins: Vec::new(),
            }
        }
        DType::Int4 => {
            let groups: Vec<(u16, u16, [u8; INT4_GROUP_BYTES])> =
                values.par_chunks_exact(GROUP).map(int4_group).collect();
            Packed {
                dtype,
                data: groups.iter().flat_map(|g| g.2).collect(),
                scales: groups.iter().map(|g| g.0).collect(),
                mins: groups.iter().map(|g| g.1).collect(),
            }
        }
        DType::Ternary => {
            let groups: Vec<(u16, [u8; TERNARY_GROUP_BYTES])> =
                values.par_chunks_exact(GROUP).map(ternary_group).collect();
            Packed {
                dtype,
                data: groups.iter().flat_map(|g| g.1).collect(),
                scales: groups.iter().map(|g| g.0).collect(),
                mins: Vec::new(),
            }
        }
        DType::Bf16 => return Err("bf16 is not a target layout (omex widens bf16 to f32)".into()),
        DType::Q4K | DType::Q5K | DType::Q6K | DType::Q5_0 | DType::Q5_1 => {
            return Err(format!("omex does not quantize to {dtype}: GGUF blocks are only kept as they are"))
        }
    })
}

/// The f16 after `h` (towards +infinity), for a finite non-negative `h` below f16::MAX.
fn f16_next_up(h: f16) -> f16 {
    if h >= f16::MAX {
        h
    } else {
        f16::from_bits(h.to_bits() + 1)
    }
}

/// The f16 nearest to `x`, rounded down where needed so that it is `<= x` (saturating at -65504).
fn f16_floor(x: f32) -> f16 {
    let h = f16_sat(x);
    if h.to_f32() <= x || h <= f16::MIN {
        return h;
    }
    // One step towards -infinity: down in magnitude for positives, up for negatives.
    if h.to_f32() > 0.0 {
        f16::from_bits(h.to_bits() - 1)
    } else if h.to_bits() == 0 {
        f16::from_bits(0x8001)
    } else {
        f16::from_bits(h.to_bits() + 1)
    }
}

/// A scale `d` in f16 with `d * steps >= span`: rounding it down would push the extreme values past the
/// last quant and clip them (which matters for tiny, subnormal scales).
fn f16_scale(span: f32, steps: f32) -> f16 {
    let d = f16_sat(span / steps);
    if d.to_f32() * steps < span {
        f16_next_up(d)
    } else {
        d
    }
}

fn int8_group(w: &[f32]) -> (u16, [i8; GROUP]) {
    let absmax = w.iter().fold(0f32, |a, v| a.max(v.abs()));
    let d = f16_scale(absmax, 127.0);
    let df = d.to_f32();
    let mut q = [0i8; GROUP];
    if df > 0.0 {
        for (o, v) in q.iter_mut().zip(w) {
            *o = (v / df).round().clamp(-127.0, 127.0) as i8;
        }
    }
    (d.to_bits(), q)
}

fn int4_group(w: &[f32]) -> (u16, u16, [u8; INT4_GROUP_BYTES]) {
    let (mn, mx) = w.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
    let m = f16_floor(mn);
    let mf = m.to_f32();
    let d = f16_scale((mx - mf).max(0.0), 15.0);
    let df = d.to_f32();
    let mut q = [0u8; GROUP];
    if df > 0.0 {
        for (o, v) in q.iter_mut().zip(w) {
            *o = ((v - mf) / df).round().clamp(0.0, 15.0) as u8;
        }
    }
    (d.to_bits(), m.to_bits(), layout::pack_int4_group(&q))
}

fn ternary_group(w: &[f32]) -> (u16, [u8; TERNARY_GROUP_BYTES]) {
    let mean = w.iter().map(|v| v.abs() as f64).sum::<f64>() / GROUP as f64;
    let d = f16_sat(mean as f32);
    let df = d.to_f32();
    let mut codes = [1u8; GROUP];
    if df > 0.0 {
        for (o, v) in codes.iter_mut().zip(w) {
            *o = ((v / df).round().clamp(-1.0, 1.0) + 1.0) as u8;
        }
    }
    (d.to_bits(), layout::pack_ternary_group(&codes))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator (xorshift64*), so failures reproduce.
    fn random(n: usize, seed: u64, scale: f32) -> Vec<f32> {
        let mut s = seed.max(1);
        (0..n)
            .map(|_| {
                s ^= s >> 12;
                s ^= s << 25;
                s ^= s >> 27;
                let u = (s.wrapping_mul(0x2545F4914F6CDD1D) >> 40) as f32 / (1u64 << 24) as f32;
                (2.0 * u - 1.0) * scale
            })
            .collect()
    }

    fn group_scales(p: &Packed, g: usize) -> (f32, f32) {
        let d = f16::from_bits(p.scales[g]).to_f32();
        let m = p.mins.get(g).map(|&m| f16::from_bits(m).to_f32()).unwrap_or(0.0);
        (d, m)
    }

    #[test]
    fn int8_error_is_at_most_half_a_step() {
        for (seed, scale) in [(1, 1.0), (2, 0.02), (3, 300.0), (10, 1e-4)] {
            let (rows, cols) = (7, 96);
            let w = random(rows * cols, seed, scale);
            let p = quantize(&w, DType::Int8).unwrap();
            let back = p.dequantize(rows, cols).unwrap();
            for (i, (a, b)) in w.iter().zip(&back).enumerate() {
                let (d, _) = group_scales(&p, i / GROUP);
                assert!(127.0 * d >= w[i / GROUP * GROUP..][..GROUP].iter().fold(0f32, |m, v| m.max(v.abs())));
                assert!((a - b).abs() <= 0.5 * d * (1.0 + 1e-5), "value {i}: {a} vs {b}, step {d}");
            }
        }
    }

    #[test]
    fn int4_error_is_at_most_half_a_step() {
        for (seed, scale) in [(4, 1.0), (5, 0.05), (6, 40.0), (11, 3e-4)] {
            let (rows, cols) = (5, 64);
            let w = random(rows * cols, seed, scale);
            let p = quantize(&w, DType::Int4).unwrap();
            let back = p.dequantize(rows, cols).unwrap();
            for (g, (wg, bg)) in w.chunks(GROUP).zip(back.chunks(GROUP)).enumerate() {
                let (d, m) = group_scales(&p, g);
                let mn = wg.iter().cloned().fold(f32::INFINITY, f32::min);
                let mx = wg.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                assert!(
                    m <= mn && m + 15.0 * d >= mx,
                    "group {g}: [{m}, {}] does not cover [{mn}, {mx}]",
                    m + 15.0 * d
                );
                let bound = 0.5 * d * (1.0 + 1e-5);
                for (a, b) in wg.iter().zip(bg) {
                    assert!((a - b).abs() <= bound, "group {g}: {a} vs {b}, bound {bound}");
                }
            }
        }
    }

    #[test]
    fn ternary_matches_absmean_definition() {
        let (rows, cols) = (3, 128);
        let w = random(rows * cols, 7, 0.1);
        let p = quantize(&w, DType::Ternary).unwrap();
        let back = p.dequantize(rows, cols).unwrap();
        for (g, (wg, bg)) in w.chunks(GROUP).zip(back.chunks(GROUP)).enumerate() {
            let mean = wg.iter().map(|v| v.abs()).sum::<f32>() / GROUP as f32;
            let (d, _) = group_scales(&p, g);
            assert!((d - mean).abs() <= mean * 1e-3, "group {g}: scale {d}, absmean {mean}");
            for (a, b) in wg.iter().zip(bg) {
                let q = if a.abs() < 0.5 * d { 0.0 } else { a.signum() };
                // Values exactly at the rounding boundary may go either way.
                if (a.abs() - 0.5 * d).abs() > 1e-6 {
                    assert_eq!(*b, q * d, "group {g}: {a} -> {b}, scale {d}");
                }
                assert!((a - b).abs() <= (0.5 * d).max(a.abs() - d) + 1e-6);
            }
        }
    }

    #[test]
    fn f16_rounding_helpers() {
        for x in [1.0f32, 1.0001, -1.0001, 3e-6, -3e-6, 0.0, -0.0, 1e-9, -1e-9, 65504.0, -65504.0] {
            let f = f16_floor(x).to_f32();
            assert!(f <= x, "floor {x} = {f}");
            assert!(x - f <= x.abs() * 2f32.powi(-10) + 2f32.powi(-24), "floor {x} = {f}");
        }
        for (span, steps) in [(3e-4f32, 127.0f32), (1.0, 15.0), (0.3, 127.0), (0.0, 15.0)] {
            let d = f16_scale(span, steps).to_f32();
            assert!(
                d * steps >= span && d <= span / steps * (1.0 + 2f32.powi(-10)) + 2f32.powi(-24),
                "{span}/{steps}: {d}"
            );
        }
    }

    #[test]
    fn zero_groups_and_f16() {
        let w = vec![0f32; 64];
        for dt in [DType::Int8, DType::Int4, DType::Ternary, DType::F16, DType::F32] {
            let p = quantize(&w, dt).unwrap();
            assert_eq!(p.dequantize(2, 32).unwrap(), w, "{dt}");
        }
        let w = random(64, 9, 3.0);
        let back = quantize(&w, DType::F16).unwrap().dequantize(1, 64).unwrap();
        for (a, b) in w.iter().zip(&back) {
            assert_eq!(*b, f16::from_f32(*a).to_f32());
        }
        assert!(quantize(&[f32::NAN; 32], DType::Int8).is_err());
        assert!(quantize(&[1e6; 32], DType::F16).is_err());
        assert!(quantize(&[1.0; 31], DType::Int4).is_err());
    }
}
