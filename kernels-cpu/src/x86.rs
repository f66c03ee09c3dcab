//! AVX2 building blocks shared by the kernels: horizontal sums, f16 scale loads, int4/ternary unpacking and a
//! vectorised `exp`. Every function here requires AVX2, FMA and F16C; callers guarantee that by being
//! `#[target_feature]` functions themselves, entered only after [`crate::isa::Isa::check`].

use std::arch::x86_64::*;

/// Sum of the 8 lanes (fixed order: halves, then pairs, then the last two).
///
/// # Safety
/// The CPU must support AVX2.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// Loads `n <= 8` f16 bit patterns from `p` as 8 f32 lanes, zero past `n`.
///
/// A short load is assembled in general registers, not through a stack copy: a copy becomes a `memcpy` call
/// and its narrow stores then stall the wide reload (no store forwarding), which cost more than the group
/// loop itself on 576-wide rows.
///
/// # Safety
/// AVX2/F16C, and `p` valid for `n` reads.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub unsafe fn load_f16x8(p: *const u16, n: usize) -> __m256 {
    if n >= 8 {
        _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
    } else {
        let (mut lo, mut hi) = (0u64, 0u64);
        for k in 0..n {
            let v = std::ptr::read(p.add(k)) as u64;
            if k < 4 {
                lo |= v << (16 * k);
            } else {
                hi |= v << (16 * (k - 4));
            }
        }
        _mm256_cvtph_ps(_mm_set_epi64x(hi as i64, lo as i64))
    }
}

/// Lane masks for [`load_f32x8`]: 8 words from `MASKS[8 - n..]` enable the first `n` lanes.
static MASKS: [i32; 16] = [-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0];

/// Loads `n <= 8` f32 from `p`, zero past `n` (a masked load: masked-off lanes are never read).
///
/// # Safety
/// AVX2, and `p` valid for `n` reads.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub unsafe fn load_f32x8(p: *const f32, n: usize) -> __m256 {
    if n >= 8 {
        _mm256_loadu_ps(p)
    } else {
        let mask = _mm256_loadu_si256(MASKS.as_ptr().add(8 - n) as *const __m256i);
        _mm256_maskload_ps(p, mask)
    }
}

/// One int4 group's 16 bytes as 32 unsigned bytes 0..=15 in value order (low nibbles are values 0..16, high
/// nibbles values 16..32, which is exactly the lower and upper 128-bit half).
///
/// # Safety
/// AVX2, and `p` valid for 16 reads.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub unsafe fn unpack_int4(p: *const u8) -> __m256i {
    let b = _mm_loadu_si128(p as *const __m128i);
    let both = _mm256_set_m128i(_mm_srli_epi16(b, 4), b);
    _mm256_and_si256(both, _mm256_set1_epi8(0x0F))
}

/// One ternary group's 8 bytes as 32 signed bytes in {-1, 0, 1} in value order.
///
/// Lane `j` (64 bits) gets the 8 bytes shifted right by `2j`; masking each byte to 2 bits leaves value
/// `8j + b` in byte `b` of lane `j` (a shift below 8 moves no foreign bit into a byte's low 2 bits).
///
/// # Safety
/// AVX2, and `p` valid for 8 reads.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub unsafe fn unpack_ternary(p: *const u8) -> __m256i {
    let v = _mm256_set1_epi64x(std::ptr::read_unaligned(p as *const i64));
    let codes = _mm256_and_si256(_mm256_srlv_epi64(v, _mm256_set_epi64x(6, 4, 2, 0)), _mm256_set1_epi8(3));
    _mm256_sub_epi8(codes, _mm256_set1_epi8(1))
}

/// `exp(x)` for 8 lanes, relative error below 2e-7 on `[-87.3, 88.3]`; inputs are clamped to that range (so
/// `exp(-inf)` gives about 1.2e-38, not 0). NaN propagates.
///
/// Range reduction `x = n ln2 + r` with `ln2` split in two, `|r| <= ln2/2`, then a degree-7 Taylor polynomial
/// (truncation error below 6e-9) and `2^n` built in the exponent field.
///
/// # Safety
/// AVX2 and FMA.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub unsafe fn exp_ps(x: __m256) -> __m256 {
    // Operands in this order so that a NaN `x` (the second operand) is what min/max return.
    let x = _mm256_min_ps(_mm256_set1_ps(88.3), x);
    let x = _mm256_max_ps(_mm256_set1_ps(-87.3), x);
    let n = _mm256_round_ps(
        _mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)),
        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC,
    );
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_145_75), x);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.428_606_8e-6), r);
    let mut p = _mm256_set1_ps(1.0 / 5040.0);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0 / 720.0));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0 / 120.0));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0 / 24.0));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0 / 6.0));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0));
    let pow2 = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    _mm256_mul_ps(p, _mm256_castsi256_ps(pow2))
}
