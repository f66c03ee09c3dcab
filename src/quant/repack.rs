//! Lossless repacking of the GGUF block types whose values omex's layouts hold exactly: the quants and the
//! f16 parameters are copied; only their placement changes (ggml interleaves `[d, (m), quants]` per block,
//! omex keeps quants, scales and mins in three separate arrays).
//!
//! - Q8_0 `d * q` -> Int8 `d * q`: identical bits.
//! - Q4_1 `q * d + m` -> Int4 `d * q + m`: identical bits (same nibble order, same f32 operations).
//! - Q4_0 `(q - 8) * d` -> Int4 with `m = -8 d`: `d * q` and `-8 d` are exact in f32 and so is their sum, so
//!   every value is equal (a zero may come out as +0 where ggml gives -0). `-8 d` must fit an f16: when it
//!   does not, [`q4_0`] returns `None` and the caller requantizes.

use super::pack::Packed;
use crate::format::DType;
use half::f16;

fn blocks(bytes: &[u8], block: usize) -> Result<std::slice::ChunksExact<'_, u8>, String> {
    if !bytes.len().is_multiple_of(block) {
        return Err(format!("{} bytes are not a whole number of {block}-byte blocks", bytes.len()));
    }
    Ok(bytes.chunks_exact(block))
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

/// Q8_0 blocks (f16 d, 32 x i8) -> Int8.
pub fn q8_0(bytes: &[u8]) -> Result<Packed, String> {
    let it = blocks(bytes, 34)?;
    let n = it.len();
    let mut p = Packed {
        dtype: DType::Int8,
        data: Vec::with_capacity(n * 32),
        scales: Vec::with_capacity(n),
        mins: Vec::new(),
    };
    for b in it {
        p.scales.push(u16_at(b, 0));
        p.data.extend_from_slice(&b[2..34]);
    }
    Ok(p)
}

/// Q4_1 blocks (f16 d, f16 m, 16 bytes) -> Int4.
pub fn q4_1(bytes: &[u8]) -> Result<Packed, String> {
    let it = blocks(bytes, 20)?;
    let n = it.len();
    let mut p = Packed {
        dtype: DType::Int4,
        data: Vec::with_capacity(n * 16),
        scales: Vec::with_capacity(n),
        mins: Vec::with_capacity(n),
    };
    for b in it {
        p.scales.push(u16_at(b, 0));
        p.mins.push(u16_at(b, 2));
        p.data.extend_from_slice(&b[4..20]);
    }
    Ok(p)
}

/// Q4_0 blocks (f16 d, 16 bytes) -> Int4 with min `-8 d`; `Ok(None)` if some `-8 d` overflows f16.
pub fn q4_0(bytes: &[u8]) -> Result<Option<Packed>, String> {
    let it = blocks(bytes, 18)?;
    let n = it.len();
    let mut p = Packed {
        dtype: DType::Int4,
        data: Vec::with_capacity(n * 16),
        scales: Vec::with_capacity(n),
        mins: Vec::with_capacity(n),
    };
    for b in it {
        let d = f16::from_bits(u16_at(b, 0));
        let m = f16::from_f32(-8.0 * d.to_f32());
        if !m.is_finite() && d.is_finite() {
            return Ok(None);
        }
        p.scales.push(d.to_bits());
        p.mins.push(m.to_bits());
        p.data.extend_from_slice(&b[2..18]);
    }
    Ok(Some(p))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::{dequant::dequantize, GgmlType};

    fn lcg(seed: &mut u64) -> u8 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (*seed >> 56) as u8
    }

    /// Random blocks with finite, moderate f16 parameters.
    fn random_blocks(n: usize, block: usize, params: usize, seed: u64) -> Vec<u8> {
        let mut s = seed;
        let mut out = Vec::new();
        for _ in 0..n {
            for p in 0..params {
                let v = (lcg(&mut s) as f32 - 128.0) / 512.0 * if p == 0 { 1.0 } else { 4.0 };
                out.extend_from_slice(&f16::from_f32(v).to_bits().to_le_bytes());
            }
            for _ in 0..block - 2 * params {
                out.push(lcg(&mut s));
            }
        }
        out
    }

    fn check_exact(ty: GgmlType, bytes: &[u8], p: &Packed, rows: usize, cols: usize) {
        let mut want = vec![0f32; rows * cols];
        dequantize(ty, bytes, &mut want).unwrap();
        let got = p.dequantize(rows, cols).unwrap();
        for (i, (a, b)) in want.iter().zip(&got).enumerate() {
            assert!(a == b, "{ty} value {i}: ggml {a}, omex {b}");
            if ty != GgmlType::Q4_0 {
                assert_eq!(a.to_bits(), b.to_bits(), "{ty} value {i}");
            }
        }
    }

    #[test]
    fn repacks_are_exact() {
        let (rows, cols) = (3, 64);
        let n = rows * cols / 32;
        let b = random_blocks(n, 34, 1, 1);
        check_exact(GgmlType::Q8_0, &b, &q8_0(&b).unwrap(), rows, cols);
        let b = random_blocks(n, 20, 2, 2);
        check_exact(GgmlType::Q4_1, &b, &q4_1(&b).unwrap(), rows, cols);
        let b = random_blocks(n, 18, 1, 3);
        check_exact(GgmlType::Q4_0, &b, &q4_0(&b).unwrap().unwrap(), rows, cols);
        assert!(q8_0(&b[..33]).is_err());
    }

    #[test]
    fn q4_0_overflow_is_detected() {
        let mut b = vec![0u8; 18];
        b[..2].copy_from_slice(&f16::from_f32(10000.0).to_bits().to_le_bytes());
        assert_eq!(q4_0(&b).unwrap(), None);
    }
}
