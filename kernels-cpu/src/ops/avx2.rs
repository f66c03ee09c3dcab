//! AVX2 ops: 8 lanes at a time with a scalar tail written as in `portable`.

use super::portable;
use crate::x86::{exp_ps, hsum};
use std::arch::x86_64::*;

/// # Safety
/// AVX2/FMA; lengths checked by the caller (`out.len() == x.len()`, rows of `weight.len()`).
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn rmsnorm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let dim = weight.len();
    for (xr, or) in x.chunks_exact(dim).zip(out.chunks_exact_mut(dim)) {
        let (mut a0, mut a1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let mut c = 0;
        while c + 16 <= dim {
            let (v0, v1) = (_mm256_loadu_ps(xr.as_ptr().add(c)), _mm256_loadu_ps(xr.as_ptr().add(c + 8)));
            a0 = _mm256_fmadd_ps(v0, v0, a0);
            a1 = _mm256_fmadd_ps(v1, v1, a1);
            c += 16;
        }
        let mut ss = hsum(_mm256_add_ps(a0, a1));
        for &v in &xr[c..] {
            ss += v * v;
        }
        let r = 1.0 / (ss / dim as f32 + eps).sqrt();
        scale_mul(xr, _mm256_set1_ps(r), weight, or);
    }
}

/// `out = x * r * w`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn scale_mul(x: &[f32], r: __m256, w: &[f32], out: &mut [f32]) {
    let n = x.len();
    let mut c = 0;
    while c + 8 <= n {
        let v = _mm256_mul_ps(_mm256_loadu_ps(x.as_ptr().add(c)), r);
        _mm256_storeu_ps(out.as_mut_ptr().add(c), _mm256_mul_ps(v, _mm256_loadu_ps(w.as_ptr().add(c))));
        c += 8;
    }
    let rs = _mm256_cvtss_f32(r);
    for k in c..n {
        out[k] = x[k] * rs * w[k];
    }
}

/// # Safety
/// As [`rmsnorm`], and `bias.len() == weight.len()` when present.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn layernorm(x: &[f32], weight: &[f32], bias: Option<&[f32]>, eps: f32, out: &mut [f32]) {
    let dim = weight.len();
    for (xr, or) in x.chunks_exact(dim).zip(out.chunks_exact_mut(dim)) {
        let mut a = _mm256_setzero_ps();
        let mut c = 0;
        while c + 8 <= dim {
            a = _mm256_add_ps(a, _mm256_loadu_ps(xr.as_ptr().add(c)));
            c += 8;
        }
        let mut s = hsum(a);
        for &v in &xr[c..] {
            s += v;
        }
        let mean = s / dim as f32;
        let mv = _mm256_set1_ps(mean);
        let mut a = _mm256_setzero_ps();
        let mut c = 0;
        while c + 8 <= dim {
            let d = _mm256_sub_ps(_mm256_loadu_ps(xr.as_ptr().add(c)), mv);
            a = _mm256_fmadd_ps(d, d, a);
            c += 8;
        }
        let mut var = hsum(a);
        for &v in &xr[c..] {
            var += (v - mean) * (v - mean);
        }
        let r = 1.0 / (var / dim as f32 + eps).sqrt();
        let rv = _mm256_set1_ps(r);
        let mut c = 0;
        while c + 8 <= dim {
            let d = _mm256_sub_ps(_mm256_loadu_ps(xr.as_ptr().add(c)), mv);
            let mut o = _mm256_mul_ps(_mm256_mul_ps(d, rv), _mm256_loadu_ps(weight.as_ptr().add(c)));
            if let Some(b) = bias {
                o = _mm256_add_ps(o, _mm256_loadu_ps(b.as_ptr().add(c)));
            }
            _mm256_storeu_ps(or.as_mut_ptr().add(c), o);
            c += 8;
        }
        for k in c..dim {
            or[k] = (xr[k] - mean) * r * weight[k] + bias.map_or(0.0, |b| b[k]);
        }
    }
}

/// `x / (1 + exp(-k x))` for 8 lanes.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn sigmoid_mul(x: __m256, kx: __m256) -> __m256 {
    let e = exp_ps(_mm256_sub_ps(_mm256_setzero_ps(), kx));
    _mm256_div_ps(x, _mm256_add_ps(_mm256_set1_ps(1.0), e))
}

/// # Safety
/// AVX2/FMA; all three slices equally long.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn silu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
    let n = gate.len();
    assert!(up.len() == n && out.len() == n);
    let mut c = 0;
    while c + 8 <= n {
        let g = _mm256_loadu_ps(gate.as_ptr().add(c));
        let s = sigmoid_mul(g, g);
        _mm256_storeu_ps(out.as_mut_ptr().add(c), _mm256_mul_ps(s, _mm256_loadu_ps(up.as_ptr().add(c))));
        c += 8;
    }
    portable::silu_mul(&gate[c..], &up[c..], &mut out[c..]);
}

/// # Safety
/// AVX2/FMA.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn gelu(x: &mut [f32]) {
    let n = x.len();
    let (c2, k3) = (_mm256_set1_ps(2.0 * 0.797_884_6), _mm256_set1_ps(0.044715));
    let mut c = 0;
    while c + 8 <= n {
        let p = x.as_mut_ptr().add(c);
        let v = _mm256_loadu_ps(p);
        let v3 = _mm256_mul_ps(_mm256_mul_ps(v, v), v);
        let u2 = _mm256_mul_ps(c2, _mm256_fmadd_ps(k3, v3, v));
        _mm256_storeu_ps(p, sigmoid_mul(v, u2));
        c += 8;
    }
    portable::gelu(&mut x[c..]);
}

/// # Safety
/// AVX2; all three slices equally long.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn add(a: &[f32], b: &[f32], out: &mut [f32]) {
    let n = a.len();
    assert!(b.len() == n && out.len() == n);
    let mut c = 0;
    while c + 8 <= n {
        let s = _mm256_add_ps(_mm256_loadu_ps(a.as_ptr().add(c)), _mm256_loadu_ps(b.as_ptr().add(c)));
        _mm256_storeu_ps(out.as_mut_ptr().add(c), s);
        c += 8;
    }
    portable::add(&a[c..], &b[c..], &mut out[c..]);
}

/// # Safety
/// AVX2; equal lengths.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn add_assign(a: &mut [f32], b: &[f32]) {
    let n = a.len();
    assert_eq!(b.len(), n);
    let mut c = 0;
    while c + 8 <= n {
        let p = a.as_mut_ptr().add(c);
        _mm256_storeu_ps(p, _mm256_add_ps(_mm256_loadu_ps(p), _mm256_loadu_ps(b.as_ptr().add(c))));
        c += 8;
    }
    portable::add_assign(&mut a[c..], &b[c..]);
}

/// Largest lane, NaN lanes of `v` ignored (max_ps returns its second operand when either is NaN).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn max_of(x: &[f32]) -> f32 {
    let mut m = _mm256_set1_ps(f32::NEG_INFINITY);
    let mut c = 0;
    while c + 8 <= x.len() {
        m = _mm256_max_ps(_mm256_loadu_ps(x.as_ptr().add(c)), m);
        c += 8;
    }
    let mut lanes = [0f32; 8];
    _mm256_storeu_ps(lanes.as_mut_ptr(), m);
    lanes.iter().chain(&x[c..]).fold(f32::NEG_INFINITY, |a, &b| if b > a { b } else { a })
}

/// # Safety
/// AVX2/FMA; `x` not empty.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn softmax(x: &mut [f32]) {
    let n = x.len();
    let max = max_of(x);
    let mv = _mm256_set1_ps(max);
    let mut acc = _mm256_setzero_ps();
    let mut c = 0;
    while c + 8 <= n {
        let p = x.as_mut_ptr().add(c);
        let e = exp_ps(_mm256_sub_ps(_mm256_loadu_ps(p), mv));
        _mm256_storeu_ps(p, e);
        acc = _mm256_add_ps(acc, e);
        c += 8;
    }
    let mut sum = hsum(acc);
    for v in &mut x[c..] {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    let iv = _mm256_set1_ps(inv);
    let mut c = 0;
    while c + 8 <= n {
        let p = x.as_mut_ptr().add(c);
        _mm256_storeu_ps(p, _mm256_mul_ps(_mm256_loadu_ps(p), iv));
        c += 8;
    }
    for v in &mut x[c..] {
        *v *= inv;
    }
}

/// # Safety
/// AVX2.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn argmax(x: &[f32]) -> usize {
    let max = max_of(x);
    if max == f32::NEG_INFINITY {
        // Only -inf and NaN: the portable rule (first non-NaN) is cheap enough here.
        return portable::argmax(x);
    }
    let mv = _mm256_set1_ps(max);
    let mut c = 0;
    while c + 8 <= x.len() {
        let eq = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(x.as_ptr().add(c)), mv, _CMP_EQ_OQ));
        if eq != 0 {
            return c + eq.trailing_zeros() as usize;
        }
        c += 8;
    }
    c + x[c..].iter().position(|&v| v == max).unwrap_or(0)
}
