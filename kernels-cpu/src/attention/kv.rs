//! Element types of the KV cache: f32 and f16, with the two inner loops attention needs.

use crate::isa::Isa;
use half::f16;

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for half::f16 {}
}

/// An element type a KV cache may hold.
pub trait KvElem: sealed::Sealed + Copy + Send + Sync + 'static {
    /// Rounds an f32 to this type (f16: to nearest, ties to even).
    fn from_f32(v: f32) -> Self;
    /// Widens to f32 (exact).
    fn to_f32(self) -> f32;
    /// `q . k` with `q.len() == k.len()`.
    fn dot(isa: Isa, q: &[f32], k: &[Self]) -> f32;
    /// `out += a * v` with `out.len() == v.len()`.
    fn axpy(isa: Isa, a: f32, v: &[Self], out: &mut [f32]);
}

impl KvElem for f32 {
    fn from_f32(v: f32) -> Self {
        v
    }
    fn to_f32(self) -> f32 {
        self
    }
    fn dot(isa: Isa, q: &[f32], k: &[f32]) -> f32 {
        assert_eq!(q.len(), k.len());
        #[cfg(target_arch = "x86_64")]
        if isa.uses_avx2() {
            // SAFETY: `attention_with` ran `isa.check()`; `uses_avx2` implies AVX2/FMA/F16C; lengths equal.
            return unsafe { super::avx2::dot_f32(q, k) };
        }
        #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
        if isa.uses_simd128() {
            return super::simd128::dot(q, k);
        }
        let _ = isa;
        crate::matvec::portable::dot(q, k)
    }
    fn axpy(isa: Isa, a: f32, v: &[f32], out: &mut [f32]) {
        assert_eq!(v.len(), out.len());
        #[cfg(target_arch = "x86_64")]
        if isa.uses_avx2() {
            // SAFETY: as in `dot`.
            return unsafe { super::avx2::axpy_f32(a, v, out) };
        }
        #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
        if isa.uses_simd128() {
            return super::simd128::axpy(a, v, out);
        }
        let _ = isa;
        for (o, &x) in out.iter_mut().zip(v) {
            *o += a * x;
        }
    }
}

impl KvElem for f16 {
    fn from_f32(v: f32) -> Self {
        f16::from_f32(v)
    }
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    fn dot(isa: Isa, q: &[f32], k: &[f16]) -> f32 {
        assert_eq!(q.len(), k.len());
        #[cfg(target_arch = "x86_64")]
        if isa.uses_avx2() {
            // SAFETY: as for f32.
            return unsafe { super::avx2::dot_f16(q, k) };
        }
        #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
        if isa.uses_simd128() {
            return super::simd128::dot(q, k);
        }
        let _ = isa;
        let mut acc = [0f32; 8];
        let (qc, kc) = (q.chunks_exact(8), k.chunks_exact(8));
        let tail: f32 = qc.remainder().iter().zip(kc.remainder()).map(|(a, b)| a * b.to_f32()).sum();
        for (a, b) in qc.zip(kc) {
            for l in 0..8 {
                acc[l] += a[l] * b[l].to_f32();
            }
        }
        acc.iter().sum::<f32>() + tail
    }
    fn axpy(isa: Isa, a: f32, v: &[f16], out: &mut [f32]) {
        assert_eq!(v.len(), out.len());
        #[cfg(target_arch = "x86_64")]
        if isa.uses_avx2() {
            // SAFETY: as for f32.
            return unsafe { super::avx2::axpy_f16(a, v, out) };
        }
        #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
        if isa.uses_simd128() {
            return super::simd128::axpy(a, v, out);
        }
        let _ = isa;
        for (o, &x) in out.iter_mut().zip(v) {
            *o += a * x.to_f32();
        }
    }
}
