//! Element types of the KV cache: f32, f16 and q8_0 blocks, with the two inner loops attention needs.

use crate::isa::Isa;
use half::f16;

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for half::f16 {}
    impl Sealed for super::KvQ8 {}
}

/// An element type a KV cache may hold. An element holds [`KvElem::VALUES`] consecutive values of a row: one
/// for f32 and f16, a block of 32 for [`KvQ8`] (whose scale is shared by the block, so a row is stored and
/// read a block at a time).
pub trait KvElem: sealed::Sealed + Copy + Send + Sync + 'static {
    /// Values one element holds; a cache row (one head's `head_dim` values) is a whole number of elements.
    const VALUES: usize;
    /// The element holding zeros.
    const ZERO: Self;
    /// Rounds `row` (`out.len() * VALUES` values) into `out` (f16: to nearest, ties to even).
    fn store(row: &[f32], out: &mut [Self]);
    /// Widens `elems` into `out` (`elems.len() * VALUES` values); exact for f32 and f16.
    fn load(elems: &[Self], out: &mut [f32]);
    /// `q . k` with `q.len() == k.len() * VALUES`.
    fn dot(isa: Isa, q: &[f32], k: &[Self]) -> f32;
    /// `out += a * v` with `out.len() == v.len() * VALUES`.
    fn axpy(isa: Isa, a: f32, v: &[Self], out: &mut [f32]);
}

/// Values of one [`KvQ8`] block.
pub const KV_Q8_BLOCK: usize = 32;

/// 32 consecutive values of a cache row as int8 with one f16 scale: value `i` is `d * q[i]`, where `d =
/// max|x| / 127` and `q[i] = round(x[i] / d)` (ties to even, as the GPU's `round`). This is llama.cpp's
/// q8_0 block (34 bytes), a little over half the size of f16.
#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(C)]
pub struct KvQ8 {
    pub d: f16,
    pub q: [i8; KV_Q8_BLOCK],
}

impl KvQ8 {
    /// Quantizes 32 values.
    pub fn quantize(x: &[f32]) -> KvQ8 {
        assert_eq!(x.len(), KV_Q8_BLOCK, "KvQ8::quantize: a block is {KV_Q8_BLOCK} values");
        let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let mut q = [0i8; KV_Q8_BLOCK];
        for (o, &v) in q.iter_mut().zip(x) {
            *o = ((v * id).round_ties_even() as i32).clamp(-127, 127) as i8;
        }
        KvQ8 { d: f16::from_f32(d), q }
    }
}

/// f32 and f16, widened one value at a time (the AVX2 loops' tails).
#[cfg(target_arch = "x86_64")]
pub(crate) trait Scalar: Copy {
    fn widen(self) -> f32;
}

#[cfg(target_arch = "x86_64")]
impl Scalar for f32 {
    fn widen(self) -> f32 {
        self
    }
}

#[cfg(target_arch = "x86_64")]
impl Scalar for f16 {
    fn widen(self) -> f32 {
        self.to_f32()
    }
}

impl KvElem for f32 {
    const VALUES: usize = 1;
    const ZERO: Self = 0.0;
    fn store(row: &[f32], out: &mut [f32]) {
        out.copy_from_slice(row);
    }
    fn load(elems: &[f32], out: &mut [f32]) {
        out.copy_from_slice(elems);
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
    const VALUES: usize = 1;
    const ZERO: Self = f16::ZERO;
    fn store(row: &[f32], out: &mut [f16]) {
        assert_eq!(row.len(), out.len());
        for (o, &v) in out.iter_mut().zip(row) {
            *o = f16::from_f32(v);
        }
    }
    fn load(elems: &[f16], out: &mut [f32]) {
        assert_eq!(elems.len(), out.len());
        for (o, &v) in out.iter_mut().zip(elems) {
            *o = v.to_f32();
        }
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

impl KvElem for KvQ8 {
    const VALUES: usize = KV_Q8_BLOCK;
    const ZERO: Self = KvQ8 { d: f16::ZERO, q: [0; KV_Q8_BLOCK] };
    fn store(row: &[f32], out: &mut [KvQ8]) {
        assert_eq!(row.len(), out.len() * KV_Q8_BLOCK);
        for (o, x) in out.iter_mut().zip(row.chunks_exact(KV_Q8_BLOCK)) {
            *o = KvQ8::quantize(x);
        }
    }
    fn load(elems: &[KvQ8], out: &mut [f32]) {
        assert_eq!(out.len(), elems.len() * KV_Q8_BLOCK);
        for (b, o) in elems.iter().zip(out.chunks_exact_mut(KV_Q8_BLOCK)) {
            let d = b.d.to_f32();
            for (o, &q) in o.iter_mut().zip(&b.q) {
                *o = d * q as f32;
            }
        }
    }
    fn dot(isa: Isa, q: &[f32], k: &[KvQ8]) -> f32 {
        assert_eq!(q.len(), k.len() * KV_Q8_BLOCK);
        #[cfg(target_arch = "x86_64")]
        if isa.uses_avx2() {
            // SAFETY: as for f32.
            return unsafe { super::avx2::dot_q8(q, k) };
        }
        let _ = isa;
        // Each block's `q . k_int` in f32 lanes, then scaled by its d.
        let mut s = 0f32;
        for (b, x) in k.iter().zip(q.chunks_exact(KV_Q8_BLOCK)) {
            let mut acc = [0f32; 8];
            for (xs, qs) in x.chunks_exact(8).zip(b.q.chunks_exact(8)) {
                for l in 0..8 {
                    acc[l] += xs[l] * qs[l] as f32;
                }
            }
            s += b.d.to_f32() * acc.iter().sum::<f32>();
        }
        s
    }
    fn axpy(isa: Isa, a: f32, v: &[KvQ8], out: &mut [f32]) {
        assert_eq!(out.len(), v.len() * KV_Q8_BLOCK);
        #[cfg(target_arch = "x86_64")]
        if isa.uses_avx2() {
            // SAFETY: as for f32.
            return unsafe { super::avx2::axpy_q8(a, v, out) };
        }
        let _ = isa;
        for (b, o) in v.iter().zip(out.chunks_exact_mut(KV_Q8_BLOCK)) {
            let ad = a * b.d.to_f32();
            for (o, &q) in o.iter_mut().zip(&b.q) {
                *o += ad * q as f32;
            }
        }
    }
}
