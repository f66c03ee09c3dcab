//! AVX2 inner loops of attention over f32 and f16 (F16C) caches.

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
                s += q[i] * crate::attention::KvElem::to_f32(k[i]);
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
                out[i] += a * crate::attention::KvElem::to_f32(v[i]);
            }
        }
    };
}

kernels!(f32, load8_f32, dot_f32, axpy_f32);
kernels!(f16, load8_f16, dot_f16, axpy_f16);
