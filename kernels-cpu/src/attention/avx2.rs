//! AVX2 inner loops of attention over f32, f16 (F16C) and q8_0 caches.

use super::kv::{KvQ8, Scalar, KV_Q8_BLOCK};
use crate::x86::hsum;
use half::f16;
use std::arch::x86_64::*;

/// 8 f32 at `p`.
///
/// # Safety
/// AVX2; 8 values readable at `p`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn load8_f32(p: *const f32) -> __m256 {
    _mm256_loadu_ps(p)
}

/// 8 f16 at `p`, widened.
///
/// # Safety
/// F16C; 8 values readable at `p`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn load8_f16(p: *const f16) -> __m256 {
    _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
}

macro_rules! kernels {
    ($ty:ty, $load:ident, $dot:ident, $axpy:ident) => {
        /// `q . k` over the common length.
        ///
        /// # Safety
        /// AVX2/FMA/F16C.
        #[target_feature(enable = "avx2,fma,f16c")]
        pub unsafe fn $dot(q: &[f32], k: &[$ty]) -> f32 {
            let n = q.len().min(k.len());
            let (qp, kp) = (q.as_ptr(), k.as_ptr());
            let (mut a0, mut a1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
            let mut c = 0;
            while c + 16 <= n {
                a0 = _mm256_fmadd_ps(_mm256_loadu_ps(qp.add(c)), $load(kp.add(c)), a0);
                a1 = _mm256_fmadd_ps(_mm256_loadu_ps(qp.add(c + 8)), $load(kp.add(c + 8)), a1);
                c += 16;
            }
            if c + 8 <= n {
                a0 = _mm256_fmadd_ps(_mm256_loadu_ps(qp.add(c)), $load(kp.add(c)), a0);
                c += 8;
            }
            let mut s = hsum(_mm256_add_ps(a0, a1));
            for i in c..n {
                s += q[i] * k[i].widen();
            }
            s
        }

        /// `out += a * v` over the common length.
        ///
        /// # Safety
        /// AVX2/FMA/F16C.
        #[target_feature(enable = "avx2,fma,f16c")]
        pub unsafe fn $axpy(a: f32, v: &[$ty], out: &mut [f32]) {
            let n = v.len().min(out.len());
            let av = _mm256_set1_ps(a);
            let mut c = 0;
            while c + 8 <= n {
                let p = out.as_mut_ptr().add(c);
                _mm256_storeu_ps(p, _mm256_fmadd_ps(av, $load(v.as_ptr().add(c)), _mm256_loadu_ps(p)));
                c += 8;
            }
            for i in c..n {
                out[i] += a * v[i].widen();
            }
        }
    };
}

kernels!(f32, load8_f32, dot_f32, axpy_f32);
kernels!(f16, load8_f16, dot_f16, axpy_f16);

/// The 32 int8 of a q8 block widened to four f32 vectors.
///
/// # Safety
/// AVX2.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn widen_q8(b: &KvQ8) -> [__m256; 4] {
    let p = b.q.as_ptr() as *const __m128i;
    let (lo, hi) = (_mm_loadu_si128(p), _mm_loadu_si128(p.add(1)));
    let w = |x: __m128i| _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(x));
    [w(lo), w(_mm_srli_si128(lo, 8)), w(hi), w(_mm_srli_si128(hi, 8))]
}

/// `q . k` over a q8 cache row, `q.len() == k.len() * 32`.
///
/// # Safety
/// AVX2/FMA/F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q8(q: &[f32], k: &[KvQ8]) -> f32 {
    assert_eq!(q.len(), k.len() * KV_Q8_BLOCK);
    let mut total = _mm256_setzero_ps();
    for (i, b) in k.iter().enumerate() {
        let x = q.as_ptr().add(i * KV_Q8_BLOCK);
        let v = widen_q8(b);
        let mut acc = _mm256_mul_ps(_mm256_loadu_ps(x), v[0]);
        for j in 1..4 {
            acc = _mm256_fmadd_ps(_mm256_loadu_ps(x.add(8 * j)), v[j], acc);
        }
        total = _mm256_fmadd_ps(_mm256_set1_ps(b.d.to_f32()), acc, total);
    }
    hsum(total)
}

/// `out += a * v` over a q8 cache row, `out.len() == v.len() * 32`.
///
/// # Safety
/// AVX2/FMA/F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn axpy_q8(a: f32, v: &[KvQ8], out: &mut [f32]) {
    assert_eq!(out.len(), v.len() * KV_Q8_BLOCK);
    for (i, b) in v.iter().enumerate() {
        let ad = _mm256_set1_ps(a * b.d.to_f32());
        let w = widen_q8(b);
        let o = out.as_mut_ptr().add(i * KV_Q8_BLOCK);
        for j in 0..4 {
            _mm256_storeu_ps(o.add(8 * j), _mm256_fmadd_ps(ad, w[j], _mm256_loadu_ps(o.add(8 * j))));
        }
    }
}
