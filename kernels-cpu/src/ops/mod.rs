//! The element-wise and reduction ops of the op set, float32. Each has a `*_with(isa, ..)` form; AVX2 variants
//! exist for the ones that run over long vectors (norms, activations, softmax, add, argmax); `rope` is
//! portable only (it touches one head row per call and is dominated by its sin/cos).
//!
//! Formulas (the GPU kernels follow the same):
//! - `rmsnorm`: `out = x / sqrt(mean(x^2) + eps) * weight`
//! - `layernorm`: `out = (x - mean) / sqrt(mean((x - mean)^2) + eps) * weight (+ bias)`
//! - `silu_mul`: `out = gate / (1 + exp(-gate)) * up`; `silu`: `x / (1 + exp(-x))` in place
//! - `gelu`: the tanh form, `x / (1 + exp(-2 u))` with `u = sqrt(2/pi) (x + 0.044715 x^3)`
//!   (equal to `0.5 x (1 + tanh(u))`)
//! - `softmax`: `exp(x - max) / sum`, in place
//! - `argmax`: lowest index of the largest non-NaN value (0 if there is none)
//! - `route`: a mixture of experts' routing of one token (softmax, top k, renormalised; see [`route`])
//!
//! Norms take `x` of one or more rows: `x.len()` a multiple of `weight.len()`, each row normalised alone.

#[cfg(target_arch = "x86_64")]
mod avx2;
mod moe;
mod portable;
mod rope;

pub use moe::route;
pub use rope::{rope, rope_with, RopeStyle};

use crate::isa::{self, Isa};

macro_rules! dispatch {
    ($isa:expr, $f:ident ( $($a:expr),* )) => {{
        let isa: Isa = $isa;
        isa.check();
        #[cfg(target_arch = "x86_64")]
        if isa.uses_avx2() {
            // SAFETY: `isa.check()` passed and `uses_avx2` implies AVX2/FMA/F16C; the public wrapper checked
            // every slice length the kernel relies on.
            return unsafe { avx2::$f($($a),*) };
        }
        portable::$f($($a),*)
    }};
}

fn check_norm(x: &[f32], weight: &[f32], out: &[f32], what: &str) {
    assert!(!weight.is_empty(), "{what}: empty weight");
    assert_eq!(x.len() % weight.len(), 0, "{what}: x has {} values, not rows of {}", x.len(), weight.len());
    assert_eq!(out.len(), x.len(), "{what}: out has {} values, x has {}", out.len(), x.len());
}

/// RMS norm of each row of `x` (rows of `weight.len()`), into `out`.
pub fn rmsnorm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    rmsnorm_with(isa::detect(), x, weight, eps, out)
}

/// [`rmsnorm`] with an explicit ISA.
pub fn rmsnorm_with(isa: Isa, x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    check_norm(x, weight, out, "rmsnorm");
    dispatch!(isa, rmsnorm(x, weight, eps, out))
}

/// Layer norm of each row of `x` (rows of `weight.len()`), optional bias, into `out`.
pub fn layernorm(x: &[f32], weight: &[f32], bias: Option<&[f32]>, eps: f32, out: &mut [f32]) {
    layernorm_with(isa::detect(), x, weight, bias, eps, out)
}

/// [`layernorm`] with an explicit ISA.
pub fn layernorm_with(isa: Isa, x: &[f32], weight: &[f32], bias: Option<&[f32]>, eps: f32, out: &mut [f32]) {
    check_norm(x, weight, out, "layernorm");
    if let Some(b) = bias {
        assert_eq!(b.len(), weight.len(), "layernorm: bias has {} values, weight {}", b.len(), weight.len());
    }
    dispatch!(isa, layernorm(x, weight, bias, eps, out))
}

/// SwiGLU: `out = silu(gate) * up`.
pub fn silu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
    silu_mul_with(isa::detect(), gate, up, out)
}

/// [`silu_mul`] with an explicit ISA.
pub fn silu_mul_with(isa: Isa, gate: &[f32], up: &[f32], out: &mut [f32]) {
    assert!(gate.len() == up.len() && out.len() == gate.len(), "silu_mul: lengths differ");
    dispatch!(isa, silu_mul(gate, up, out))
}

/// SiLU in place (a plain MLP's activation; gated MLPs use [`silu_mul`]). Portable only: no model in use
/// runs it over long vectors.
pub fn silu(x: &mut [f32]) {
    portable::silu(x)
}

/// GELU (tanh form), in place.
pub fn gelu(x: &mut [f32]) {
    gelu_with(isa::detect(), x)
}

/// [`gelu`] with an explicit ISA.
pub fn gelu_with(isa: Isa, x: &mut [f32]) {
    dispatch!(isa, gelu(x))
}

/// `out = a + b`.
pub fn add(a: &[f32], b: &[f32], out: &mut [f32]) {
    add_with(isa::detect(), a, b, out)
}

/// [`add`] with an explicit ISA.
pub fn add_with(isa: Isa, a: &[f32], b: &[f32], out: &mut [f32]) {
    assert!(a.len() == b.len() && out.len() == a.len(), "add: lengths differ");
    dispatch!(isa, add(a, b, out))
}

/// `a += b` (the residual add).
pub fn add_assign(a: &mut [f32], b: &[f32]) {
    add_assign_with(isa::detect(), a, b)
}

/// [`add_assign`] with an explicit ISA.
pub fn add_assign_with(isa: Isa, a: &mut [f32], b: &[f32]) {
    assert_eq!(a.len(), b.len(), "add_assign: lengths differ");
    dispatch!(isa, add_assign(a, b))
}

/// Softmax in place, with the maximum subtracted first. An empty slice is left alone.
pub fn softmax(x: &mut [f32]) {
    softmax_with(isa::detect(), x)
}

/// [`softmax`] with an explicit ISA.
pub fn softmax_with(isa: Isa, x: &mut [f32]) {
    if x.is_empty() {
        return;
    }
    dispatch!(isa, softmax(x))
}

/// Index of the largest value, lowest index on ties, NaNs ignored; 0 for an empty or all-NaN slice.
pub fn argmax(x: &[f32]) -> usize {
    argmax_with(isa::detect(), x)
}

/// [`argmax`] with an explicit ISA.
pub fn argmax_with(isa: Isa, x: &[f32]) -> usize {
    dispatch!(isa, argmax(x))
}
