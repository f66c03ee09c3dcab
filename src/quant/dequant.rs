//! Dequantization of source tensor types to f32, block by block, with ggml's arithmetic (each product and
//! sum rounded to f32 in the order ggml's reference `dequantize_row_*` writes it), so the values are the
//! ones llama.cpp computes.

use super::ggml::{GgmlType, QK_K};
use half::f16;
use rayon::prelude::*;

fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]])).to_f32()
}

/// Whether [`dequantize`] handles this type.
pub fn supported(ty: GgmlType) -> bool {
    block_fn(ty).is_some()
}

/// Dequantizes `bytes` (a whole number of blocks of `ty`) into `out`, one value per element.
pub fn dequantize(ty: GgmlType, bytes: &[u8], out: &mut [f32]) -> Result<(), String> {
    let f = block_fn(ty).ok_or_else(|| format!("omex cannot dequantize ggml type {ty}"))?;
    let (bv, bb) = ty.block();
    let want = ty.bytes_for(out.len() as u64);
    if want != Some(bytes.len() as u64) {
        return Err(format!("{} bytes of {ty} do not hold {} values", bytes.len(), out.len()));
    }
    // Chunks of whole blocks, big enough to amortize rayon's scheduling.
    let blocks_per_chunk = (16384 / bv).max(1);
    out.par_chunks_mut(bv * blocks_per_chunk).zip(bytes.par_chunks(bb * blocks_per_chunk)).for_each(|(o, b)| {
        for (ob, bb_) in o.chunks_exact_mut(bv).zip(b.chunks_exact(bb)) {
            f(bb_, ob);
        }
    });
    Ok(())
}

type BlockFn = fn(&[u8], &mut [f32]);

fn block_fn(ty: GgmlType) -> Option<BlockFn> {
    Some(match ty {
        GgmlType::F32 => |b, o| o[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        GgmlType::F16 => |b, o| o[0] = f16_at(b, 0),
        GgmlType::BF16 => |b, o| o[0] = f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16),
        GgmlType::Q8_0 => q8_0,
        GgmlType::Q4_0 => q4_0,
        GgmlType::Q4_1 => q4_1,
        GgmlType::Q5_0 => q5_0,
        GgmlType::Q5_1 => q5_1,
        GgmlType::Q4_K => q4_k,
        GgmlType::Q5_K => q5_k,
        GgmlType::Q6_K => q6_k,
        _ => return None,
    })
}

/// Q8_0: f16 d, 32 x i8; w = d * q.
fn q8_0(b: &[u8], o: &mut [f32]) {
    let d = f16_at(b, 0);
    for (j, v) in o.iter_mut().enumerate() {
        *v = (b[2 + j] as i8) as f32 * d;
    }
}

/// Q4_0: f16 d, 16 bytes (value j low nibble, j + 16 high); w = (q - 8) * d.
fn q4_0(b: &[u8], o: &mut [f32]) {
    let d = f16_at(b, 0);
    for j in 0..16 {
        o[j] = ((b[2 + j] & 0x0F) as i32 - 8) as f32 * d;
        o[j + 16] = ((b[2 + j] >> 4) as i32 - 8) as f32 * d;
    }
}

/// Q4_1: f16 d, f16 m, 16 bytes; w = q * d + m.
fn q4_1(b: &[u8], o: &mut [f32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    for j in 0..16 {
        o[j] = (b[4 + j] & 0x0F) as f32 * d + m;
        o[j + 16] = (b[4 + j] >> 4) as f32 * d + m;
    }
}

/// The fifth bits of Q5_0/Q5_1: bit j of the u32 `qh` belongs to value j.
fn q5_high(qh: u32, j: usize) -> (u8, u8) {
    ((((qh >> j) << 4) & 0x10) as u8, ((qh >> (j + 12)) & 0x10) as u8)
}

/// Q5_0: f16 d, u32 qh, 16 bytes; w = (q - 16) * d.
fn q5_0(b: &[u8], o: &mut [f32]) {
    let d = f16_at(b, 0);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    for j in 0..16 {
        let (h0, h1) = q5_high(qh, j);
        o[j] = (((b[6 + j] & 0x0F) | h0) as i32 - 16) as f32 * d;
        o[j + 16] = (((b[6 + j] >> 4) | h1) as i32 - 16) as f32 * d;
    }
}

/// Q5_1: f16 d, f16 m, u32 qh, 16 bytes; w = q * d + m.
fn q5_1(b: &[u8], o: &mut [f32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    for j in 0..16 {
        let (h0, h1) = q5_high(qh, j);
        o[j] = ((b[8 + j] & 0x0F) | h0) as f32 * d + m;
        o[j + 16] = ((b[8 + j] >> 4) | h1) as f32 * d + m;
    }
}

/// The 6-bit scale and min of sub-block `j` (0..8) of a Q4_K/Q5_K block's 12 packed scale bytes.
fn k_scale_min(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

/// Q4_K: f16 d, f16 dmin, 12 scale bytes, 128 quant bytes; 8 sub-blocks of 32 with 6-bit scale and min:
/// w = (d * sc) * q - dmin * m. Sub-blocks 2i and 2i+1 share bytes 32i..32i+32 (low, high nibbles).
fn q4_k(b: &[u8], o: &mut [f32]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let (scales, qs) = (&b[4..16], &b[16..144]);
    for j in 0..8 {
        let (sc, m) = k_scale_min(j, scales);
        let (d1, m1) = (d * sc as f32, dmin * m as f32);
        let q = &qs[(j / 2) * 32..(j / 2) * 32 + 32];
        let shift = 4 * (j % 2);
        for l in 0..32 {
            o[32 * j + l] = d1 * ((q[l] >> shift) & 0x0F) as f32 - m1;
        }
    }
}

/// Q5_K: as Q4_K with a fifth bit per value from 32 `qh` bytes (bit j of byte l for value l of sub-block j).
fn q5_k(b: &[u8], o: &mut [f32]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let (scales, qh, qs) = (&b[4..16], &b[16..48], &b[48..176]);
    for j in 0..8 {
        let (sc, m) = k_scale_min(j, scales);
        let (d1, m1) = (d * sc as f32, dmin * m as f32);
        let q = &qs[(j / 2) * 32..(j / 2) * 32 + 32];
        let shift = 4 * (j % 2);
        for l in 0..32 {
            let hi = ((qh[l] >> j) & 1) << 4;
            o[32 * j + l] = d1 * (((q[l] >> shift) & 0x0F) | hi) as f32 - m1;
        }
    }
}

/// Q6_K: 128 low-nibble bytes, 64 high-bit bytes, 16 i8 scales, f16 d; 16 sub-blocks of 16:
/// w = (d * sc) * (q - 32).
fn q6_k(b: &[u8], o: &mut [f32]) {
    let (ql, qh, sc) = (&b[0..128], &b[128..192], &b[192..208]);
    let d = f16_at(b, 208);
    for (v, out) in o.iter_mut().enumerate().take(QK_K) {
        let (half, r) = (v / 128, v % 128);
        let (k, l) = (r / 32, r % 32);
        let lo = ql[half * 64 + l + 32 * (k % 2)] >> (4 * (k / 2)) & 0x0F;
        let hi = (qh[half * 32 + l] >> (2 * k)) & 3;
        let q = (lo | (hi << 4)) as i32 - 32;
        *out = d * (sc[v / 16] as i8) as f32 * q as f32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q8_0_and_q4_1_by_hand() {
        let mut b = vec![0u8; 34];
        b[..2].copy_from_slice(&f16::from_f32(0.5).to_bits().to_le_bytes());
        for j in 0..32 {
            b[2 + j] = (j as i8 - 16) as u8;
        }
        let mut o = [0f32; 32];
        dequantize(GgmlType::Q8_0, &b, &mut o).unwrap();
        assert_eq!(o[0], -8.0);
        assert_eq!(o[31], 7.5);

        let mut b = vec![0u8; 20];
        b[..2].copy_from_slice(&f16::from_f32(0.25).to_bits().to_le_bytes());
        b[2..4].copy_from_slice(&f16::from_f32(-1.0).to_bits().to_le_bytes());
        b[4] = 0xA3; // value 0 = 3, value 16 = 10
        dequantize(GgmlType::Q4_1, &b, &mut o).unwrap();
        assert_eq!(o[0], -0.25);
        assert_eq!(o[16], 1.5);
        assert_eq!(o[1], -1.0);
    }

    #[test]
    fn bf16_and_sizes() {
        let b = [0x80, 0x3F, 0x00, 0xC0];
        let mut o = [0f32; 2];
        dequantize(GgmlType::BF16, &b, &mut o).unwrap();
        assert_eq!(o, [1.0, -2.0]);
        assert!(dequantize(GgmlType::BF16, &b[..3], &mut o).is_err());
        assert!(dequantize(GgmlType::IQ2_XS, &[0; 74], &mut [0f32; 256]).is_err());
    }

    #[test]
    fn k_scales_unpack() {
        // Sub-block 5: low 4 bits from byte 9, high 2 bits from the top of byte 1; min likewise from 9 and 5.
        let mut q = [0u8; 12];
        q[9] = 0x7A;
        q[1] = 0b1100_0000;
        q[5] = 0b0100_0000;
        assert_eq!(k_scale_min(5, &q), (0x0A | (3 << 4), 0x07 | (1 << 4)));
        q[2] = 0xFF;
        q[6] = 0x81;
        assert_eq!(k_scale_min(2, &q), (63, 1));
    }
}
