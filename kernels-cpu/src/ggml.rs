//! GGUF's raw quantized blocks, read in place: the block geometry of the types a Q4_K_M file holds and their
//! scalar dequantization, bit-exact with gguf-py's `gguf.quants.dequantize` (the reference; checked against
//! `tests/data/ggml/dequant_reference.json`).
//!
//! A block is self-contained (its f16 parameters sit inside it), so a matrix of these types is one byte array,
//! row-major, each row `cols / block_values` blocks. Byte layouts (all multi-byte fields little-endian):
//!
//! | type | values | bytes | fields, in order                                                  | value                  |
//! |------|--------|-------|-------------------------------------------------------------------|------------------------|
//! | Q8_0 | 32     | 34    | d f16, 32 x i8 q                                                  | `q * d`                |
//! | Q5_0 | 32     | 22    | d f16, qh u32, 16 nibble bytes                                    | `(q - 16) * d`         |
//! | Q5_1 | 32     | 24    | d f16, m f16, qh u32, 16 nibble bytes                             | `q * d + m`            |
//! | Q4_K | 256    | 144   | d f16, dmin f16, 12 scale bytes, 128 nibble bytes                 | `(d sc) * q - dmin mn` |
//! | Q5_K | 256    | 176   | d f16, dmin f16, 12 scale bytes, 32 qh bytes, 128 nibble bytes    | `(d sc) * q - dmin mn` |
//! | Q6_K | 256    | 210   | 128 nibble bytes ql, 64 bytes qh (2 bits each), 16 x i8 sc, d f16 | `(d sc) * (q - 32)`    |
//!
//! - Q5_0/Q5_1: nibble byte `i` holds value `i` (low) and `i + 16` (high); bit `v` of `qh` is value `v`'s
//!   fifth bit.
//! - Q4_K/Q5_K: 8 sub-blocks of 32, each with a 6-bit scale `sc` and min `mn` packed in the 12 scale bytes
//!   (see [`k_scales`]); nibble bytes `32i..32i+32` hold sub-block `2i` (low) and `2i + 1` (high). Q5_K's fifth
//!   bit of value `l` of sub-block `j` is bit `j` of `qh[l]`.
//! - Q6_K: 16 sub-blocks of 16, each with an i8 scale. Value `v = 128 h + 32 k + l` (`h` in 0..2, `k` in 0..4,
//!   `l` in 0..32) takes nibble `k / 2` of `ql[64 h + 32 (k % 2) + l]` and bits `2k..2k+2` of `qh[32 h + l]`.
//!
//! Every product and sum is an f32 operation in the order of the value column (`(d sc) * q - dmin mn` is
//! `d * sc`, `dmin * mn`, then a product and a difference), which is what makes the results bit-exact.

use half::f16;

/// Values per block of Q8_0, Q5_0 and Q5_1.
pub const QK: usize = 32;
/// Values per block of the k-quants (Q4_K, Q5_K, Q6_K).
pub const QK_K: usize = 256;
pub const Q8_0_BYTES: usize = 34;
pub const Q5_0_BYTES: usize = 22;
pub const Q5_1_BYTES: usize = 24;
pub const Q4_K_BYTES: usize = 144;
pub const Q5_K_BYTES: usize = 176;
pub const Q6_K_BYTES: usize = 210;

/// A GGUF block type the kernels read raw.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)]
pub enum GgmlBlock {
    Q4K,
    Q5K,
    Q6K,
    Q5_0,
    Q5_1,
    Q8_0,
}

impl GgmlBlock {
    /// Every type, k-quants first.
    pub const ALL: [GgmlBlock; 6] =
        [GgmlBlock::Q4K, GgmlBlock::Q5K, GgmlBlock::Q6K, GgmlBlock::Q5_0, GgmlBlock::Q5_1, GgmlBlock::Q8_0];

    /// ggml's name of the type (`Q4_K`, `Q5_0`...).
    pub fn name(self) -> &'static str {
        match self {
            GgmlBlock::Q4K => "Q4_K",
            GgmlBlock::Q5K => "Q5_K",
            GgmlBlock::Q6K => "Q6_K",
            GgmlBlock::Q5_0 => "Q5_0",
            GgmlBlock::Q5_1 => "Q5_1",
            GgmlBlock::Q8_0 => "Q8_0",
        }
    }

    /// Values per block (32 or 256).
    pub fn block_values(self) -> usize {
        match self {
            GgmlBlock::Q4K | GgmlBlock::Q5K | GgmlBlock::Q6K => QK_K,
            GgmlBlock::Q5_0 | GgmlBlock::Q5_1 | GgmlBlock::Q8_0 => QK,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            GgmlBlock::Q4K => Q4_K_BYTES,
            GgmlBlock::Q5K => Q5_K_BYTES,
            GgmlBlock::Q6K => Q6_K_BYTES,
            GgmlBlock::Q5_0 => Q5_0_BYTES,
            GgmlBlock::Q5_1 => Q5_1_BYTES,
            GgmlBlock::Q8_0 => Q8_0_BYTES,
        }
    }

    /// Bytes of `values` values (a whole number of blocks; checked by `Matrix::new`, not here).
    pub fn bytes_for(self, values: usize) -> usize {
        values / self.block_values() * self.block_bytes()
    }
}

impl std::fmt::Display for GgmlBlock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The f16 at byte `at` of `b`, as f32.
#[inline(always)]
pub(crate) fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]])).to_f32()
}

/// The eight 6-bit scales and eight 6-bit mins of a Q4_K/Q5_K block's 12 scale bytes, one per byte of each
/// `u64` (sub-block `j` in byte `j`). Bytes 0..4 hold scales 0..4 and bytes 4..8 mins 0..4 in their low 6 bits;
/// bytes 8..12 hold the low 4 bits of scales 4..8 (low nibble) and mins 4..8 (high nibble), whose top 2 bits
/// are the top 2 bits of bytes 0..4 (scales) and 4..8 (mins).
#[inline(always)]
pub fn k_scales(s: &[u8]) -> (u64, u64) {
    let word = |i: usize| u32::from_le_bytes([s[i], s[i + 1], s[i + 2], s[i + 3]]);
    let (a, b, c) = (word(0), word(4), word(8));
    // Per byte, `(x >> 6) << 4` is `(x & 0xC0) >> 2`: a whole-word shift moves no bit across a byte here.
    let sc_hi = (c & 0x0F0F_0F0F) | ((a >> 2) & 0x3030_3030);
    let mn_hi = ((c >> 4) & 0x0F0F_0F0F) | ((b >> 2) & 0x3030_3030);
    let sc = (a & 0x3F3F_3F3F) as u64 | (sc_hi as u64) << 32;
    let mn = (b & 0x3F3F_3F3F) as u64 | (mn_hi as u64) << 32;
    (sc, mn)
}

/// Dequantizes `bytes` (whole blocks of `kind`) into `out`, one value per element, bit-exact with gguf-py.
///
/// # Panics
/// If `out.len()` is not a whole number of blocks or `bytes` is not exactly their size.
pub fn dequantize_row(kind: GgmlBlock, bytes: &[u8], out: &mut [f32]) {
    let (bv, bb) = (kind.block_values(), kind.block_bytes());
    assert!(out.len().is_multiple_of(bv), "{kind}: {} values are not whole blocks of {bv}", out.len());
    assert_eq!(bytes.len(), out.len() / bv * bb, "{kind}: {} bytes do not hold {} values", bytes.len(), out.len());
    dequantize_blocks(kind, bytes, out)
}

/// [`dequantize_row`] without the checks, inlined so that a `#[target_feature]` caller vectorises it with its
/// own instruction set (LLVM never fuses the separately rounded products and sums, so the values stay exact).
#[inline(always)]
pub(crate) fn dequantize_blocks(kind: GgmlBlock, bytes: &[u8], out: &mut [f32]) {
    let (bv, bb) = (kind.block_values(), kind.block_bytes());
    let blocks = out.chunks_exact_mut(bv).zip(bytes.chunks_exact(bb));
    match kind {
        GgmlBlock::Q8_0 => blocks.for_each(|(o, b)| q8_0(b, o)),
        GgmlBlock::Q5_0 => blocks.for_each(|(o, b)| q5_0(b, o)),
        GgmlBlock::Q5_1 => blocks.for_each(|(o, b)| q5_1(b, o)),
        GgmlBlock::Q4K => blocks.for_each(|(o, b)| q4_k(b, o)),
        GgmlBlock::Q5K => blocks.for_each(|(o, b)| q5_k(b, o)),
        GgmlBlock::Q6K => blocks.for_each(|(o, b)| q6_k(b, o)),
    }
}

#[inline(always)]
fn q8_0(b: &[u8], o: &mut [f32]) {
    let d = f16_at(b, 0);
    for (v, &q) in o[..QK].iter_mut().zip(&b[2..2 + QK]) {
        *v = (q as i8) as f32 * d;
    }
}

/// The 32 five-bit quants of a Q5_0/Q5_1 block (`qh` at byte `at`, nibbles right after it).
#[inline(always)]
fn q5_quants(b: &[u8], at: usize) -> [u8; QK] {
    let qh = u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
    let qs = &b[at + 4..at + 4 + QK / 2];
    let mut q = [0u8; QK];
    for i in 0..QK / 2 {
        q[i] = (qs[i] & 0x0F) | (((qh >> i) & 1) << 4) as u8;
        q[i + 16] = (qs[i] >> 4) | (((qh >> (i + 16)) & 1) << 4) as u8;
    }
    q
}

#[inline(always)]
fn q5_0(b: &[u8], o: &mut [f32]) {
    let d = f16_at(b, 0);
    for (v, &q) in o[..QK].iter_mut().zip(&q5_quants(b, 2)) {
        *v = (q as i32 - 16) as f32 * d;
    }
}

#[inline(always)]
fn q5_1(b: &[u8], o: &mut [f32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    for (v, &q) in o[..QK].iter_mut().zip(&q5_quants(b, 4)) {
        *v = q as f32 * d + m;
    }
}

/// Q4_K and Q5_K (`qh` is Q5_K's 32 fifth-bit bytes, `None` for Q4_K).
#[inline(always)]
fn k_quant(b: &[u8], qh: Option<&[u8]>, qs: &[u8], o: &mut [f32]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let (sc, mn) = k_scales(&b[4..16]);
    for j in 0..8 {
        let d1 = d * ((sc >> (8 * j)) & 0xFF) as f32;
        let m1 = dmin * ((mn >> (8 * j)) & 0xFF) as f32;
        let q = &qs[32 * (j / 2)..32 * (j / 2) + 32];
        let shift = 4 * (j % 2);
        let out = &mut o[32 * j..32 * j + 32];
        for l in 0..32 {
            let hi = qh.map_or(0, |h| ((h[l] >> j) & 1) << 4);
            out[l] = d1 * (((q[l] >> shift) & 0x0F) | hi) as f32 - m1;
        }
    }
}

#[inline(always)]
fn q4_k(b: &[u8], o: &mut [f32]) {
    k_quant(b, None, &b[16..144], o)
}

#[inline(always)]
fn q5_k(b: &[u8], o: &mut [f32]) {
    k_quant(b, Some(&b[16..48]), &b[48..176], o)
}

#[inline(always)]
fn q6_k(b: &[u8], o: &mut [f32]) {
    let (ql, qh, sc) = (&b[0..128], &b[128..192], &b[192..208]);
    let d = f16_at(b, 208);
    for h in 0..2 {
        for k in 0..4 {
            let lo = &ql[64 * h + 32 * (k % 2)..64 * h + 32 * (k % 2) + 32];
            let hi = &qh[32 * h..32 * h + 32];
            let v0 = 128 * h + 32 * k;
            let (d_a, d_b) = (d * (sc[v0 / 16] as i8) as f32, d * (sc[v0 / 16 + 1] as i8) as f32);
            for l in 0..32 {
                let q = (((lo[l] >> (4 * (k / 2))) & 0x0F) | (((hi[l] >> (2 * k)) & 3) << 4)) as i32 - 32;
                o[v0 + l] = if l < 16 { d_a } else { d_b } * q as f32;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn k_scales_match_the_byte_rule() {
        let s: [u8; 12] = [0xC1, 0x42, 0x83, 0x04, 0xFF, 0x3E, 0x80, 0x7F, 0x9A, 0x0F, 0xF0, 0x5C];
        let (sc, mn) = k_scales(&s);
        for j in 0..8 {
            let (want_sc, want_mn) = if j < 4 {
                (s[j] & 63, s[j + 4] & 63)
            } else {
                ((s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4), (s[j + 4] >> 4) | ((s[j] >> 6) << 4))
            };
            assert_eq!(((sc >> (8 * j)) & 0xFF) as u8, want_sc, "scale {j}");
            assert_eq!(((mn >> (8 * j)) & 0xFF) as u8, want_mn, "min {j}");
        }
    }

    #[test]
    fn q8_0_by_hand() {
        let mut b = [0u8; Q8_0_BYTES];
        b[..2].copy_from_slice(&f16::from_f32(0.5).to_bits().to_le_bytes());
        for j in 0..32 {
            b[2 + j] = (j as i8 - 16) as u8;
        }
        let mut o = [0f32; 32];
        dequantize_row(GgmlBlock::Q8_0, &b, &mut o);
        for (j, &v) in o.iter().enumerate() {
            assert_eq!(v, (j as f32 - 16.0) * 0.5);
        }
    }
}
