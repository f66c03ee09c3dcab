//! The omex weight layouts from the converter's side: quantizers from f32 to every layout
//! ([`pack`]), the lossless repack of GGUF blocks whose layout omex shares ([`repack`]), and the
//! dequantization of GGUF/safetensors source types to f32 ([`dequant`]).
//!
//! The layouts themselves (group of 32, nibble and code order) are defined once in
//! `kernels_cpu::layout`; everything here produces exactly the section bytes that module reads.

pub mod dequant;
pub mod ggml;
pub mod pack;
pub mod repack;

pub use ggml::GgmlType;
pub use pack::{quantize, Packed};

/// The GGUF type whose blocks a GGUF block dtype keeps, byte for byte.
pub fn kept_ggml(dtype: crate::format::DType) -> Option<GgmlType> {
    use crate::format::DType;
    Some(match dtype {
        DType::Q4K => GgmlType::Q4_K,
        DType::Q5K => GgmlType::Q5_K,
        DType::Q6K => GgmlType::Q6_K,
        DType::Q5_0 => GgmlType::Q5_0,
        DType::Q5_1 => GgmlType::Q5_1,
        _ => return None,
    })
}

/// The GGUF block dtype that keeps `ty`'s blocks as they are, if omex has one.
pub fn keeping_dtype(ty: GgmlType) -> Option<crate::format::DType> {
    crate::format::DType::ALL.into_iter().find(|&d| kept_ggml(d) == Some(ty))
}

/// What `omex convert --quant` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    /// Keep the source layout: Q4_K, Q5_K, Q6_K, Q5_0 and Q5_1 blocks byte for byte, Q8_0 -> Int8 and
    /// Q4_0/Q4_1 -> Int4 losslessly, F32/F16 as they are; BF16 is widened to F32.
    Keep,
    F16,
    Int8,
    Int4,
    Ternary,
}

impl Target {
    pub const ALL: [Target; 5] = [Target::Keep, Target::F16, Target::Int8, Target::Int4, Target::Ternary];

    pub fn name(self) -> &'static str {
        match self {
            Target::Keep => "keep",
            Target::F16 => "f16",
            Target::Int8 => "int8",
            Target::Int4 => "int4",
            Target::Ternary => "ternary",
        }
    }

    /// How the values of this target are produced, for `metadata.json`.
    pub fn method(self) -> &'static str {
        match self {
            Target::Keep => "source layouts kept: Q8_0/Q4_0/Q4_1 repacked losslessly, others requantized",
            Target::F16 => "round to nearest f16",
            Target::Int8 => "absmax, groups of 32, f16 scale",
            Target::Int4 => "min-max, groups of 32, f16 scale and min",
            Target::Ternary => "absmean (BitNet b1.58), groups of 32, f16 scale",
        }
    }

    pub fn symmetric(self) -> bool {
        !matches!(self, Target::Int4)
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Target {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Target::ALL
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or_else(|| format!("unknown quantization {s:?} (expected keep, f16, int8, int4 or ternary)"))
    }
}
