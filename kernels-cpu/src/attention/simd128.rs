//! SIMD128 inner loops of attention over an f32 or f16 KV cache: `q . k` and `out += a v`, four lanes at a
//! time, f16 rows widened exactly by [`crate::wasm::load_f16x4`] (the portable loop widens one value at a time
//! in software, which made attention a third of a wasm decode step).

use crate::wasm::{hsum_f32, load_f16x4};
use core::arch::wasm32::*;
use half::f16;

/// Loads four values of `p[k..]` as f32.
pub trait Lanes: Copy {
    /// # Safety
    /// `p` valid for 4 reads.
    unsafe fn load4(p: *const Self) -> v128;
    fn widen(self) -> f32;
}

impl Lanes for f32 {
    #[inline(always)]
    unsafe fn load4(p: *const f32) -> v128 {
        v128_load(p as *const v128)
    }
    fn widen(self) -> f32 {
        self
    }
}

impl Lanes for f16 {
    #[inline(always)]
    unsafe fn load4(p: *const f16) -> v128 {
        load_f16x4(p as *const u16)
    }
    fn widen(self) -> f32 {
        self.to_f32()
    }
}

/// `q . k`; `q.len() == k.len()`.
pub fn dot<E: Lanes>(q: &[f32], k: &[E]) -> f32 {
    assert_eq!(q.len(), k.len());
    let n = q.len() / 8 * 8;
    let (mut a0, mut a1) = (f32x4_splat(0.0), f32x4_splat(0.0));
    let mut i = 0;
    while i < n {
        // SAFETY: `i + 8 <= n <= len` for both slices.
        unsafe {
            let (qp, kp) = (q.as_ptr().add(i), k.as_ptr().add(i));
            a0 = f32x4_add(a0, f32x4_mul(v128_load(qp as *const v128), E::load4(kp)));
            a1 = f32x4_add(a1, f32x4_mul(v128_load(qp.add(4) as *const v128), E::load4(kp.add(4))));
        }
        i += 8;
    }
    let tail: f32 = q[n..].iter().zip(&k[n..]).map(|(a, b)| a * b.widen()).sum();
    hsum_f32(f32x4_add(a0, a1)) + tail
}

/// `out += a * v`; `out.len() == v.len()`.
pub fn axpy<E: Lanes>(a: f32, v: &[E], out: &mut [f32]) {
    assert_eq!(v.len(), out.len());
    let n = v.len() / 4 * 4;
    let av = f32x4_splat(a);
    let mut i = 0;
    while i < n {
        // SAFETY: `i + 4 <= n <= len` for both slices.
        unsafe {
            let op = out.as_mut_ptr().add(i) as *mut v128;
            v128_store(op, f32x4_add(v128_load(op), f32x4_mul(av, E::load4(v.as_ptr().add(i)))));
        }
        i += 4;
    }
    for (o, x) in out[n..].iter_mut().zip(&v[n..]) {
        *o += a * x.widen();
    }
}
