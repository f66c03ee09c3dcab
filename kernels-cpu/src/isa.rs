//! Which instruction set the kernels use: detected once at run time, overridable by `OMEX_CPU_ISA`, and
//! forceable per call (every kernel has a `*_with(isa, ..)` form) so that tests can run each variant.
//!
//! Kernels written here: `Portable` (plain Rust, any target) and `Avx2` (AVX2 + FMA + F16C, x86-64).
//! `Avx512Vnni` runs 512-bit `vpdpbusd` kernels for the q8 products over raw GGUF blocks and the AVX2 kernels
//! for the rest; `Avx512` runs the AVX2 kernels. `Neon` is detected on aarch64 and runs NEON q8 kernels (integer-dot matvec/matmul); its other kernels
//! are the portable ones. `Simd128` is WebAssembly's 128-bit SIMD: wasm cannot detect features at run time,
//! so it is available exactly when the crate was compiled with `-C target-feature=+simd128` (the workspace's
//! `.cargo/config.toml` sets it for wasm32 targets).
//! AMX is never selected: detection alone is not enough for it (it needs an OS permission request), and this
//! crate does not use it.

use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

/// An instruction-set level, from least to most capable on its architecture.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Isa {
    /// Plain Rust; runs everywhere.
    Portable,
    /// x86-64 with AVX2, FMA and F16C.
    Avx2,
    /// x86-64 with AVX-512 F/BW/VL/DQ (runs the AVX2 kernels).
    Avx512,
    /// AVX-512 with VNNI (runs the AVX2 kernels).
    Avx512Vnni,
    /// aarch64 Advanced SIMD (NEON q8 kernels; portable elsewhere).
    Neon,
    /// WebAssembly SIMD128 (q8 products, the float matvec, f16 KV attention; portable elsewhere).
    Simd128,
}

/// Every level, in the order `available()` lists them.
pub const ALL: [Isa; 6] = [Isa::Portable, Isa::Avx2, Isa::Avx512, Isa::Avx512Vnni, Isa::Neon, Isa::Simd128];

/// Why an ISA choice was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IsaError(pub String);

impl fmt::Display for IsaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for IsaError {}

impl Isa {
    /// The name `OMEX_CPU_ISA` accepts for this level.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
            Isa::Avx512Vnni => "avx512vnni",
            Isa::Neon => "neon",
            Isa::Simd128 => "simd128",
        }
    }

    /// Whether this CPU can run this level (checked at run time, cached by std).
    pub fn is_supported(self) -> bool {
        match self {
            Isa::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c")
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => {
                Isa::Avx2.is_supported()
                    && is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vl")
                    && is_x86_feature_detected!("avx512dq")
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => Isa::Avx512.is_supported() && is_x86_feature_detected!("avx512vnni"),
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => std::arch::is_aarch64_feature_detected!("neon"),
            Isa::Simd128 => cfg!(all(target_arch = "wasm32", target_feature = "simd128")),
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    /// Whether the AVX2 kernels may run under this level (true for every x86 level above portable).
    pub(crate) fn uses_avx2(self) -> bool {
        cfg!(target_arch = "x86_64") && matches!(self, Isa::Avx2 | Isa::Avx512 | Isa::Avx512Vnni)
    }

    /// Whether the SIMD128 kernels may run under this level (only when they were compiled in).
    #[cfg_attr(not(all(target_arch = "wasm32", target_feature = "simd128")), allow(dead_code))]
    pub(crate) fn uses_simd128(self) -> bool {
        cfg!(all(target_arch = "wasm32", target_feature = "simd128")) && self == Isa::Simd128
    }

    /// Panics with a clear message if this CPU cannot run `self`: the guard every public `*_with` entry runs
    /// before it may enter a `#[target_feature]` kernel.
    pub(crate) fn check(self) {
        assert!(self.is_supported(), "kernels-cpu: ISA `{}` is not supported by this CPU", self.name());
    }
}

impl fmt::Display for Isa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Isa {
    type Err = IsaError;
    fn from_str(s: &str) -> Result<Self, IsaError> {
        let s = s.trim().to_ascii_lowercase();
        ALL.into_iter().find(|i| i.name() == s).ok_or_else(|| {
            let names: Vec<_> = ALL.iter().map(|i| i.name()).collect();
            IsaError(format!("OMEX_CPU_ISA={s:?} is not an ISA name; use one of {}", names.join(", ")))
        })
    }
}

/// The levels this CPU supports, least capable first (always starts with `Portable`).
pub fn available() -> Vec<Isa> {
    ALL.into_iter().filter(|i| i.is_supported()).collect()
}

/// The most capable level of this CPU, by feature detection alone (ignores `OMEX_CPU_ISA`).
pub fn best_supported() -> Isa {
    [Isa::Avx512Vnni, Isa::Avx512, Isa::Avx2, Isa::Neon, Isa::Simd128]
        .into_iter()
        .find(|i| i.is_supported())
        .unwrap_or(Isa::Portable)
}

/// Parses an `OMEX_CPU_ISA` value and checks that this CPU supports it.
pub fn parse_choice(value: &str) -> Result<Isa, IsaError> {
    let isa: Isa = value.parse()?;
    if isa.is_supported() {
        Ok(isa)
    } else {
        let have: Vec<_> = available().iter().map(|i| i.name()).collect();
        Err(IsaError(format!(
            "OMEX_CPU_ISA={} is not supported by this CPU; it supports {}",
            isa.name(),
            have.join(", ")
        )))
    }
}

/// The level to use: `OMEX_CPU_ISA` when set (and supported), else [`best_supported`]. Not cached.
pub fn try_detect() -> Result<Isa, IsaError> {
    match std::env::var("OMEX_CPU_ISA") {
        Ok(v) if !v.trim().is_empty() => parse_choice(&v),
        _ => Ok(best_supported()),
    }
}

/// The level every convenience kernel uses, decided once per process.
///
/// # Panics
/// If `OMEX_CPU_ISA` names an unknown level or one this CPU lacks (call [`try_detect`] first to report that
/// as an error instead).
pub fn detect() -> Isa {
    static CHOICE: OnceLock<Result<Isa, IsaError>> = OnceLock::new();
    match CHOICE.get_or_init(try_detect) {
        Ok(isa) => *isa,
        Err(e) => panic!("kernels-cpu: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_roundtrip() {
        for isa in ALL {
            assert_eq!(isa.name().parse::<Isa>().unwrap(), isa);
        }
        assert!("sse9".parse::<Isa>().is_err());
    }

    #[test]
    fn portable_always_available() {
        assert_eq!(available()[0], Isa::Portable);
        assert!(parse_choice("portable").is_ok());
        assert!(available().contains(&best_supported()));
    }

    /// The wasm kernel tests are only worth running with the SIMD128 kernels in them: fail, rather than test
    /// the portable kernels alone, when the build lost `+simd128` (e.g. a RUSTFLAGS that replaced the config's).
    #[test]
    #[cfg(target_arch = "wasm32")]
    fn simd128_is_compiled_in_on_wasm() {
        assert!(
            available().contains(&Isa::Simd128),
            "built for wasm32 without -C target-feature=+simd128: see .cargo/config.toml"
        );
        assert_eq!(best_supported(), Isa::Simd128);
    }

    #[test]
    fn unsupported_choice_is_refused() {
        for isa in ALL.into_iter().filter(|i| !i.is_supported()) {
            let e = parse_choice(isa.name()).unwrap_err();
            assert!(e.0.contains("not supported"), "{e}");
        }
    }
}
