//! Data type codes of the tensor record header (the seed's codes 0-4, and omex's TERNARY).

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
}

impl DType {
    pub const ALL: [DType; 6] = [DType::F32, DType::F16, DType::Bf16, DType::Int8, DType::Int4, DType::Ternary];

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
        }
    }

    pub fn is_quantized(self) -> bool {
        matches!(self, DType::Int8 | DType::Int4 | DType::Ternary)
    }

    /// Bytes of the data section for `numel` values (quantized: packed quants only, `numel % 32 == 0`).
    pub fn data_bytes(self, numel: u64) -> u64 {
        match self {
            DType::F32 => numel * 4,
            DType::F16 | DType::Bf16 => numel * 2,
            DType::Int8 => numel,
            DType::Int4 => numel / 2,
            DType::Ternary => numel / 4,
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
        assert_eq!(DType::from_code(6), None);
    }

    #[test]
    fn bits_per_weight() {
        assert_eq!(DType::Int8.bits_per_weight(), 8.5);
        assert_eq!(DType::Int4.bits_per_weight(), 5.0);
        assert_eq!(DType::Ternary.bits_per_weight(), 2.5);
        assert_eq!(DType::F16.bits_per_weight(), 16.0);
    }
}
