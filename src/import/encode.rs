//! Encoding one source tensor into the omex layout the kernels read, for a `--quant` target.

use crate::format::DType;
use crate::quant::{dequant, pack, repack, GgmlType, Packed, Target};

/// Encodes one source tensor (`bytes` of ggml type `ty`, shape outermost first) into an omex layout for
/// `target`. Returns the packed sections and, where the target could not be honoured exactly, a note.
///
/// 1-D tensors (norm weights, biases) are always F32. Matrices: see [`Target`]; `keep` copies Q4_K, Q5_K,
/// Q6_K, Q5_0, Q5_1, F32 and F16 byte for byte and repacks Q8_0, Q4_0 and Q4_1 losslessly; every other case
/// dequantizes to f32 and quantizes to the target.
/// A quantized target needs `cols % 32 == 0`; a matrix that does not have it is stored as F16 with a note.
pub fn encode(
    ty: GgmlType,
    bytes: &[u8],
    shape: &[u32],
    target: Target,
) -> std::result::Result<(Packed, Option<String>), String> {
    let numel: u64 = shape.iter().map(|&d| d as u64).product();
    if ty.bytes_for(numel) != Some(bytes.len() as u64) {
        return Err(format!("{} bytes of {ty} do not hold a {shape:?} tensor", bytes.len()));
    }
    let dequantized = || -> std::result::Result<Vec<f32>, String> {
        let mut v = vec![0f32; numel as usize];
        dequant::dequantize(ty, bytes, &mut v)?;
        Ok(v)
    };
    let copy = |dtype| Ok((Packed::new(dtype, bytes.to_vec()), None));
    if shape.len() < 2 {
        return match ty {
            GgmlType::F32 => copy(DType::F32),
            _ => Ok((pack::quantize(&dequantized()?, DType::F32)?, None)),
        };
    }
    let mut note = None;
    let mut want = match (target, ty) {
        (Target::Keep, GgmlType::Q8_0) => return Ok((repack::q8_0(bytes)?, None)),
        (Target::Keep, GgmlType::Q4_1) => return Ok((repack::q4_1(bytes)?, None)),
        (Target::Keep, GgmlType::Q4_0) => match repack::q4_0(bytes)? {
            Some(p) => return Ok((p, None)),
            None => {
                note = Some("a Q4_0 scale times -8 overflows f16: dequantized and requantized to int4 instead of repacked".into());
                DType::Int4
            }
        },
        (Target::Keep | Target::F16, GgmlType::F16) => return copy(DType::F16),
        (Target::Keep, GgmlType::F32) => return copy(DType::F32),
        (Target::Keep, GgmlType::BF16) => DType::F32,
        (Target::Keep, GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::Q6_K | GgmlType::Q5_0 | GgmlType::Q5_1) => {
            // Blocks never straddle rows when the row is a whole number of blocks; else requantize.
            let cols = *shape.last().expect("2-D") as usize;
            if cols.is_multiple_of(ty.block_values()) {
                return copy(crate::quant::keeping_dtype(ty).expect("a kept GGUF type"));
            }
            note = Some(format!("{cols} columns are not a whole number of {ty} blocks: requantized to int8"));
            DType::Int8
        }
        (Target::Keep, other) => return Err(format!("ggml type {other} is not supported (omex converts F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K)")),
        (Target::F16, _) => DType::F16,
        (Target::Int8, _) => DType::Int8,
        (Target::Int4, _) => DType::Int4,
        (Target::Ternary, _) => DType::Ternary,
    };
    let cols = *shape.last().expect("2-D") as usize;
    if want.is_quantized() && !cols.is_multiple_of(kernels_cpu::GROUP) {
        note = Some(format!(
            "{cols} columns are not a multiple of {}: stored as f16 instead of {want}",
            kernels_cpu::GROUP
        ));
        want = DType::F16;
    }
    if !dequant::supported(ty) {
        return Err(format!("omex cannot dequantize ggml type {ty}"));
    }
    Ok((pack::quantize(&dequantized()?, want)?, note))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_policy() {
        let q8 = vec![0u8; 34 * 2];
        let (p, _) = encode(GgmlType::Q8_0, &q8, &[2, 32], Target::Keep).unwrap();
        assert_eq!(p.dtype, DType::Int8);
        let (p, _) = encode(GgmlType::Q8_0, &q8, &[2, 32], Target::Ternary).unwrap();
        assert_eq!(p.dtype, DType::Ternary);
        let f = vec![0u8; 4 * 3 * 40];
        let (p, note) = encode(GgmlType::F32, &f, &[3, 40], Target::Int4).unwrap();
        assert_eq!(p.dtype, DType::F16);
        assert!(note.is_some());
        let q4k = vec![0u8; 144 * 2];
        let (p, note) = encode(GgmlType::Q4_K, &q4k, &[2, 256], Target::Keep).unwrap();
        assert_eq!((p.dtype, p.data.as_slice(), note), (DType::Q4K, q4k.as_slice(), None));
        let (p, _) = encode(GgmlType::Q4_K, &q4k, &[2, 256], Target::Int4).unwrap();
        assert_eq!(p.dtype, DType::Int4);
        let (p, _) = encode(GgmlType::F16, &f[..80], &[40], Target::Keep).unwrap();
        assert_eq!(p.dtype, DType::F32);
        assert!(encode(GgmlType::IQ2_XS, &[0; 74], &[1, 256], Target::Keep).is_err());
        // A Q4_0 scale whose -8x overflows f16 is requantized, with a note.
        let mut q4 = vec![0x88u8; 18];
        q4[..2].copy_from_slice(&half::f16::from_f32(10000.0).to_bits().to_le_bytes());
        let (p, note) = encode(GgmlType::Q4_0, &q4, &[1, 32], Target::Keep).unwrap();
        assert_eq!(p.dtype, DType::Int4);
        assert!(note.unwrap().contains("overflows"));
        assert_eq!(p.dequantize(1, 32).unwrap(), vec![0.0; 32]);
        assert!(encode(GgmlType::F32, &f[..8], &[3, 40], Target::Keep).is_err());
    }
}
