//! Data type codes of the tensor record header: the seed's codes 0-4, omex's TERNARY, and GGUF's own quantized
//! blocks kept byte for byte (Q4_K, Q5_K, Q6_K, Q5_0, Q5_1), which the kernels read as they are.

use serde::{Deserialize, Serialize};

/// The `dtype` field of a record header. The numbering is part of the file format: never renumber.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    /// 32-bit IEEE float.
    F32 = 0,
    /// 16-bit IEEE float.
    F16 = 1,
    /// bfloat16 (accepted in records; the converter widens it to f32 since no kernel reads it).
    Bf16 = 2,
    /// 8-bit symmetric, groups of 32 with an f16 scale.
    Int8 = 3,
    /// 4-bit with an f16 scale and an f16 min per group of 32.
    Int4 = 4,
    /// {-1, 0, +1} in 2-bit codes, groups of 32 with an f16 absmean scale.
    Ternary = 5,
    /// GGUF Q4_K blocks (256 values in 144 bytes: f16 d and dmin, 12 bytes of 6-bit sub-block scales and
    /// mins, 128 bytes of nibbles), kept as they are in the GGUF file, in the data section alone.
    #[serde(rename = "q4_k")]
    Q4K = 6,
    /// GGUF Q5_K blocks (256 values in 176 bytes), kept as they are.
    #[serde(rename = "q5_k")]
    Q5K = 7,
    /// GGUF Q6_K blocks (256 values in 210 bytes), kept as they are.
    #[serde(rename = "q6_k")]
    Q6K = 8,
    /// GGUF Q5_0 blocks (32 values in 22 bytes: f16 d, 4 bytes of high bits, 16 of nibbles), kept as they are.
    #[serde(rename = "q5_0")]
    Q5_0 = 9,
    /// GGUF Q5_1 blocks (32 values in 24 bytes: f16 d and m, high bits, nibbles), kept as they are.
    #[serde(rename = "q5_1")]
    Q5_1 = 10,
}

impl DType {
    pub const ALL: [DType; 11] = [
        DType::F32,
        DType::F16,
        DType::Bf16,
        DType::Int8,
        DType::Int4,
        DType::Ternary,
        DType::Q4K,
        DType::Q5K,
        DType::Q6K,
        DType::Q5_0,
        DType::Q5_1,
    ];

    pub fn from_code(code: u32) -> Option<DType> {
        DType::ALL.into_iter().find(|d| *d as u32 == code)
    }

    pub fn code(self) -> u32 {
        self as u32
    }

    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::Bf16 => "bf16",
            DType::Int8 => "int8",
            DType::Int4 => "int4",
            DType::Ternary => "ternary",
            DType::Q4K => "q4_k",
            DType::Q5K => "q5_k",
            DType::Q6K => "q6_k",
            DType::Q5_0 => "q5_0",
            DType::Q5_1 => "q5_1",
        }
    }

    /// omex's own grouped layouts (quants and f16 parameters in separate sections, groups of 32).
    pub fn is_quantized(self) -> bool {
        matches!(self, DType::Int8 | DType::Int4 | DType::Ternary)
    }

    /// A GGUF block layout kept as it is: (values, bytes) of one block; `None` for every other dtype.
    pub fn ggml_block(self) -> Option<(u32, u64)> {
        match self {
            DType::Q4K => Some((256, 144)),
            DType::Q5K => Some((256, 176)),
            DType::Q6K => Some((256, 210)),
            DType::Q5_0 => Some((32, 22)),
            DType::Q5_1 => Some((32, 24)),
            _ => None,
        }
    }

    /// The values a group or block holds, which the last dimension must be a multiple of; 0 for floats.
    pub fn group_size(self) -> u32 {
        match self.ggml_block() {
            Some((values, _)) => values,
            None if self.is_quantized() => kernels_cpu::GROUP as u32,
            None => 0,
        }
    }

    /// Bytes of the data section for `numel` values (grouped: packed quants only, `numel % 32 == 0`; GGUF
    /// blocks: whole blocks, `numel` a multiple of the block).
    pub fn data_bytes(self, numel: u64) -> u64 {
        match self {
            DType::F32 => numel * 4,
            DType::F16 | DType::Bf16 => numel * 2,
            DType::Int8 => numel,
            DType::Int4 => numel / 2,
            DType::Ternary => numel / 4,
            _ => {
                let (values, bytes) = self.ggml_block().expect("a GGUF block dtype");
                numel / values as u64 * bytes
            }
        }
    }

    /// The parameter sections a record of this dtype carries, in file order.
    pub fn param_sections(self) -> &'static [SectionKind] {
        match self {
            DType::Int8 | DType::Ternary => &[SectionKind::Scales],
            DType::Int4 => &[SectionKind::Scales, SectionKind::Mins],
            _ => &[],
        }
    }

    /// Average storage bits per weight, parameters included (groups of 32, f16 parameters).
    pub fn bits_per_weight(self) -> f64 {
        if let Some((values, bytes)) = self.ggml_block() {
            return bytes as f64 * 8.0 / values as f64;
        }
        let group = kernels_cpu::GROUP as f64;
        let params = self.param_sections().len() as f64 * 16.0 / group;
        self.data_bytes(kernels_cpu::GROUP as u64) as f64 * 8.0 / group + params
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for DType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        DType::ALL.into_iter().find(|d| d.name() == s).ok_or_else(|| format!("unknown dtype {s:?}"))
    }
}

/// What a section of a record holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SectionKind {
    Data = 0,
    Scales = 1,
    Mins = 2,
}

impl SectionKind {
    pub fn from_code(code: u32) -> Option<SectionKind> {
        [SectionKind::Data, SectionKind::Scales, SectionKind::Mins].into_iter().find(|k| *k as u32 == code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_the_seed_numbering() {
        assert_eq!(DType::F32.code(), 0);
        assert_eq!(DType::F16.code(), 1);
        assert_eq!(DType::Bf16.code(), 2);
        assert_eq!(DType::Int8.code(), 3);
        assert_eq!(DType::Int4.code(), 4);
        assert_eq!(DType::Ternary.code(), 5);
        assert_eq!(DType::Q4K.code(), 6);
        assert_eq!(DType::Q5_1.code(), 10);
        assert_eq!(DType::from_code(11), None);
        for d in DType::ALL {
            assert_eq!(DType::from_code(d.code()), Some(d));
            assert_eq!(d.name().parse::<DType>(), Ok(d));
            assert_eq!(serde_json::to_string(&d).unwrap(), format!("\"{}\"", d.name()));
        }
    }

    #[test]
    fn bits_per_weight() {
        assert_eq!(DType::Int8.bits_per_weight(), 8.5);
        assert_eq!(DType::Int4.bits_per_weight(), 5.0);
        assert_eq!(DType::Ternary.bits_per_weight(), 2.5);
        assert_eq!(DType::F16.bits_per_weight(), 16.0);
        assert_eq!(DType::Q4K.bits_per_weight(), 4.5);
        assert_eq!(DType::Q6K.bits_per_weight(), 6.5625);
        assert_eq!(DType::Q5_0.bits_per_weight(), 5.5);
    }
}
