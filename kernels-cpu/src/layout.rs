//! The omex weight layouts: the contract between the converter, the CPU kernels and the WGSL kernels.
//!
//! Every matrix is `[rows, cols]`, row-major (a row is one output feature, `cols` the input features), so a
//! matvec reads each row contiguously. Quantized layouts cut every row into groups of [`GROUP`] consecutive
//! values (so `cols % GROUP == 0`); each group has its own f16 scale (and, for int4, an f16 min). The packed
//! quants and the per-group parameters live in separate arrays, each 4-byte aligned, exactly as they sit in the
//! `.bin` file, so the same bytes are read here, bound to a GPU buffer, or streamed.
//!
//! | layout  | quants per group           | params per group      | value                      | bits/weight |
//! |---------|----------------------------|-----------------------|----------------------------|-------------|
//! | F32     | —                          | —                     | `w`                        | 32          |
//! | F16     | —                          | —                     | `w`                        | 16          |
//! | Int8    | 32 × i8                    | scale d (f16)         | `d * q`                    | 8.5         |
//! | Int4    | 16 bytes, 2 nibbles each   | scale d, min m (f16)  | `d * q + m`, q in 0..=15   | 5           |
//! | Ternary | 8 bytes, 4 two-bit codes   | scale d (f16)         | `d * (c - 1)`, c in 0..=2  | 2.5         |
//!
//! Int4 nibble order (GGUF's, kept so Q4_0/Q4_1 repack is a copy): in a group's 16 bytes, byte `i` holds value
//! `i` in its low nibble and value `i + 16` in its high nibble.
//!
//! Ternary code order: in a group's 8 bytes, byte `b` holds value `8 * j + b` in bits `2j..2j+2` (j = 0..4),
//! so shifting all 8 bytes right by `2j` and masking yields values `8j..8j+8` in order. Code 3 is invalid.
//!
//! All arithmetic of a dequantized value is done in f32 as written in the table (`d * q + m` is a
//! multiplication then an addition, each rounded), which is what makes a Q4_1 repack bit-exact.
//!
//! Raw GGUF blocks are read in place too, the whole matrix one byte array of blocks, row-major (each row
//! `cols / values` blocks, parameters inside each block; byte layouts and value formulas in [`crate::ggml`]):
//!
//! | layout | values per block | bytes per block | cols a multiple of | bits/weight |
//! |--------|------------------|-----------------|--------------------|-------------|
//! | Q4K    | 256              | 144             | 256                | 4.5         |
//! | Q5K    | 256              | 176             | 256                | 5.5         |
//! | Q6K    | 256              | 210             | 256                | 6.5625      |
//! | Q5_0   | 32               | 22              | 32                 | 5.5         |
//! | Q5_1   | 32               | 24              | 32                 | 6           |
//! | Q8_0   | 32               | 34              | 32                 | 8.5         |

use crate::ggml::{self, GgmlBlock};
use half::f16;

/// Values per quantization group, in every quantized layout.
pub const GROUP: usize = 32;

/// Packed bytes of one int4 group.
pub const INT4_GROUP_BYTES: usize = GROUP / 2;

/// Packed bytes of one ternary group.
pub const TERNARY_GROUP_BYTES: usize = GROUP / 4;

/// One weight matrix's data in an omex layout, borrowed (typically from a mmapped layer file).
///
/// f16 values are carried as their `u16` bit patterns so that the slices can be cast straight from file bytes.
#[derive(Clone, Copy, Debug)]
pub enum Weights<'a> {
    F32(&'a [f32]),
    F16(&'a [u16]),
    Int8 {
        q: &'a [i8],
        scales: &'a [u16],
    },
    Int4 {
        q: &'a [u8],
        scales: &'a [u16],
        mins: &'a [u16],
    },
    Ternary {
        q: &'a [u8],
        scales: &'a [u16],
    },
    /// Raw GGUF Q4_K blocks of the whole matrix.
    Q4K(&'a [u8]),
    /// Raw GGUF Q5_K blocks.
    Q5K(&'a [u8]),
    /// Raw GGUF Q6_K blocks.
    Q6K(&'a [u8]),
    /// Raw GGUF Q5_0 blocks.
    Q5_0(&'a [u8]),
    /// Raw GGUF Q5_1 blocks.
    Q5_1(&'a [u8]),
    /// Raw GGUF Q8_0 blocks (f16 d and 32 i8 together, unlike [`Weights::Int8`]'s separate arrays).
    Q8_0(&'a [u8]),
}

impl<'a> Weights<'a> {
    /// Raw GGUF blocks of `kind`.
    pub fn ggml(kind: GgmlBlock, bytes: &'a [u8]) -> Weights<'a> {
        match kind {
            GgmlBlock::Q4K => Weights::Q4K(bytes),
            GgmlBlock::Q5K => Weights::Q5K(bytes),
            GgmlBlock::Q6K => Weights::Q6K(bytes),
            GgmlBlock::Q5_0 => Weights::Q5_0(bytes),
            GgmlBlock::Q5_1 => Weights::Q5_1(bytes),
            GgmlBlock::Q8_0 => Weights::Q8_0(bytes),
        }
    }

    /// The block type and bytes of a raw GGUF layout; `None` for the omex layouts.
    pub fn as_ggml(&self) -> Option<(GgmlBlock, &'a [u8])> {
        Some(match *self {
            Weights::Q4K(b) => (GgmlBlock::Q4K, b),
            Weights::Q5K(b) => (GgmlBlock::Q5K, b),
            Weights::Q6K(b) => (GgmlBlock::Q6K, b),
            Weights::Q5_0(b) => (GgmlBlock::Q5_0, b),
            Weights::Q5_1(b) => (GgmlBlock::Q5_1, b),
            Weights::Q8_0(b) => (GgmlBlock::Q8_0, b),
            _ => return None,
        })
    }
}

/// A `[rows, cols]` row-major weight matrix.
#[derive(Clone, Copy, Debug)]
pub struct Matrix<'a> {
    pub rows: usize,
    pub cols: usize,
    pub w: Weights<'a>,
}

/// Why a [`Matrix`] cannot be built from the given slices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayoutError(pub String);

impl std::fmt::Display for LayoutError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for LayoutError {}

impl<'a> Matrix<'a> {
    /// Checks that every slice has exactly the length the layout needs for `[rows, cols]`.
    pub fn new(rows: usize, cols: usize, w: Weights<'a>) -> Result<Self, LayoutError> {
        let n = rows.checked_mul(cols).ok_or_else(|| LayoutError(format!("{rows} x {cols} overflows")))?;
        let groups = n / GROUP;
        if let Some((kind, bytes)) = w.as_ggml() {
            let bv = kind.block_values();
            if !cols.is_multiple_of(bv) {
                return Err(LayoutError(format!("{kind} matrix needs cols % {bv} == 0, got {cols}")));
            }
            let want = (n / bv)
                .checked_mul(kind.block_bytes())
                .ok_or_else(|| LayoutError(format!("{rows} x {cols} overflows")))?;
            if bytes.len() != want {
                return Err(LayoutError(format!(
                    "{kind} blocks: {} bytes, layout of {rows}x{cols} needs {want}",
                    bytes.len()
                )));
            }
            return Ok(Matrix { rows, cols, w });
        }
        let quantized = !matches!(w, Weights::F32(_) | Weights::F16(_));
        if quantized && !cols.is_multiple_of(GROUP) {
            return Err(LayoutError(format!("quantized matrix needs cols % {GROUP} == 0, got {cols}")));
        }
        let check = |what: &str, got: usize, want: usize| {
            if got == want {
                Ok(())
            } else {
                Err(LayoutError(format!("{what}: {got} elements, layout of {rows}x{cols} needs {want}")))
            }
        };
        match w {
            Weights::F32(v) => check("f32 values", v.len(), n)?,
            Weights::F16(v) => check("f16 values", v.len(), n)?,
            Weights::Int8 { q, scales } => {
                check("int8 quants", q.len(), n)?;
                check("int8 scales", scales.len(), groups)?;
            }
            Weights::Int4 { q, scales, mins } => {
                check("int4 quant bytes", q.len(), groups * INT4_GROUP_BYTES)?;
                check("int4 scales", scales.len(), groups)?;
                check("int4 mins", mins.len(), groups)?;
            }
            Weights::Ternary { q, scales } => {
                check("ternary quant bytes", q.len(), groups * TERNARY_GROUP_BYTES)?;
                check("ternary scales", scales.len(), groups)?;
            }
            _ => unreachable!("raw GGUF blocks are checked above"),
        }
        Ok(Matrix { rows, cols, w })
    }

    /// Checks the slice lengths of a `Matrix` built by hand (its fields are public), as [`Matrix::new`] does.
    pub fn validate(&self) -> Result<(), LayoutError> {
        Matrix::new(self.rows, self.cols, self.w).map(|_| ())
    }

    /// Quantization groups per row (`cols / GROUP`; 0 for F32/F16, which have none; for raw GGUF blocks, the
    /// groups of 32 the q8 activations are cut into, whatever the block size).
    pub fn groups_per_row(&self) -> usize {
        match self.w {
            Weights::F32(_) | Weights::F16(_) => 0,
            _ => self.cols / GROUP,
        }
    }

    /// Bytes of one row in this layout, quants and per-group parameters together.
    pub fn row_bytes(&self) -> usize {
        let g = self.cols / GROUP;
        match self.w {
            Weights::F32(_) => 4 * self.cols,
            Weights::F16(_) => 2 * self.cols,
            Weights::Int8 { .. } => self.cols + 2 * g,
            Weights::Int4 { .. } => g * (INT4_GROUP_BYTES + 4),
            Weights::Ternary { .. } => g * (TERNARY_GROUP_BYTES + 2),
            _ => self.w.as_ggml().map_or(0, |(kind, _)| kind.bytes_for(self.cols)),
        }
    }

    /// Bytes of the whole matrix in this layout (what a matvec must read).
    pub fn weight_bytes(&self) -> usize {
        self.rows * self.row_bytes()
    }

    /// Dequantizes row `r` into `out` (`out.len() == cols`). The scalar reference every kernel is tested against.
    pub fn dequant_row(&self, r: usize, out: &mut [f32]) {
        assert_eq!(out.len(), self.cols);
        let start = r * self.cols;
        match self.w {
            Weights::F32(v) => out.copy_from_slice(&v[start..start + self.cols]),
            Weights::F16(v) => {
                for (o, &h) in out.iter_mut().zip(&v[start..start + self.cols]) {
                    *o = f16::from_bits(h).to_f32();
                }
            }
            Weights::Int8 { q, scales } => {
                for (g, chunk) in out.chunks_exact_mut(GROUP).enumerate() {
                    let gi = start / GROUP + g;
                    let d = f16::from_bits(scales[gi]).to_f32();
                    for (k, o) in chunk.iter_mut().enumerate() {
                        *o = d * q[gi * GROUP + k] as f32;
                    }
                }
            }
            Weights::Int4 { q, scales, mins } => {
                for (g, chunk) in out.chunks_exact_mut(GROUP).enumerate() {
                    let gi = start / GROUP + g;
                    let d = f16::from_bits(scales[gi]).to_f32();
                    let m = f16::from_bits(mins[gi]).to_f32();
                    let bytes = &q[gi * INT4_GROUP_BYTES..(gi + 1) * INT4_GROUP_BYTES];
                    for (i, &b) in bytes.iter().enumerate() {
                        chunk[i] = d * (b & 0x0F) as f32 + m;
                        chunk[i + 16] = d * (b >> 4) as f32 + m;
                    }
                }
            }
            Weights::Ternary { q, scales } => {
                for (g, chunk) in out.chunks_exact_mut(GROUP).enumerate() {
                    let gi = start / GROUP + g;
                    let d = f16::from_bits(scales[gi]).to_f32();
                    let bytes = &q[gi * TERNARY_GROUP_BYTES..(gi + 1) * TERNARY_GROUP_BYTES];
                    for (b, &byte) in bytes.iter().enumerate() {
                        for j in 0..4 {
                            let code = (byte >> (2 * j)) & 3;
                            chunk[8 * j + b] = d * (code as f32 - 1.0);
                        }
                    }
                }
            }
            _ => {
                let (kind, bytes) = self.w.as_ggml().expect("every other layout is matched above");
                let rb = kind.bytes_for(self.cols);
                ggml::dequantize_row(kind, &bytes[r * rb..(r + 1) * rb], out);
            }
        }
    }
}

/// Packs one group of 32 ternary codes (each in 0..=2) into its 8 bytes.
pub fn pack_ternary_group(codes: &[u8; GROUP]) -> [u8; TERNARY_GROUP_BYTES] {
    let mut out = [0u8; TERNARY_GROUP_BYTES];
    for (i, &c) in codes.iter().enumerate() {
        debug_assert!(c <= 2, "ternary code {c} out of range");
        let (j, b) = (i / 8, i % 8);
        out[b] |= (c & 3) << (2 * j);
    }
    out
}

/// Packs one group of 32 int4 quants (each in 0..=15) into its 16 bytes.
pub fn pack_int4_group(quants: &[u8; GROUP]) -> [u8; INT4_GROUP_BYTES] {
    let mut out = [0u8; INT4_GROUP_BYTES];
    for i in 0..INT4_GROUP_BYTES {
        out[i] = (quants[i] & 0x0F) | (quants[i + 16] << 4);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ternary_pack_roundtrip() {
        let mut codes = [0u8; GROUP];
        for (i, c) in codes.iter_mut().enumerate() {
            *c = ((i * 7 + 3) % 3) as u8;
        }
        let q = pack_ternary_group(&codes);
        let scales = [f16::from_f32(0.5).to_bits()];
        let m = Matrix::new(1, GROUP, Weights::Ternary { q: &q, scales: &scales }).unwrap();
        let mut out = [0f32; GROUP];
        m.dequant_row(0, &mut out);
        for i in 0..GROUP {
            assert_eq!(out[i], 0.5 * (codes[i] as f32 - 1.0), "value {i}");
        }
    }

    #[test]
    fn int4_pack_roundtrip() {
        let mut quants = [0u8; GROUP];
        for (i, c) in quants.iter_mut().enumerate() {
            *c = ((i * 5 + 1) % 16) as u8;
        }
        let q = pack_int4_group(&quants);
        let (scales, mins) = ([f16::from_f32(0.25).to_bits()], [f16::from_f32(-1.0).to_bits()]);
        let m = Matrix::new(1, GROUP, Weights::Int4 { q: &q, scales: &scales, mins: &mins }).unwrap();
        let mut out = [0f32; GROUP];
        m.dequant_row(0, &mut out);
        for i in 0..GROUP {
            assert_eq!(out[i], 0.25 * quants[i] as f32 - 1.0, "value {i}");
        }
    }

    #[test]
    fn wrong_lengths_are_rejected() {
        let q = [0i8; 64];
        let scales = [0u16; 1];
        assert!(Matrix::new(1, 64, Weights::Int8 { q: &q, scales: &scales }).is_err());
        assert!(Matrix::new(1, 33, Weights::Int8 { q: &q[..33], scales: &scales }).is_err());
    }
}
