//! WebAssembly SIMD128 building blocks shared by the kernels: exact f16 -> f32 widening (wasm has no f16
//! conversion instruction, and the `half` crate's software one costs a call and branches per value),
//! horizontal sums, and the per-group reduction of four integer partial sums.
//!
//! Compiled only with `-C target-feature=+simd128` (see `.cargo/config.toml`); wasm has no run-time feature
//! detection, a module either validates with SIMD or does not load, so the feature is fixed at build time.

use core::arch::wasm32::*;

/// `2^112`: moves an f16 exponent (bias 15) placed in an f32's exponent field to the f32 bias (127).
const F16_REBIAS: f32 = 5.192_297e33;

/// Widens four f16 bit patterns (in the low 16 bits of each 32-bit lane) to f32, exactly, subnormals, infinities
/// and NaNs included.
///
/// The magnitude bits shifted up by 13 are the f32 whose exponent is the f16's exponent under the f32 bias,
/// with the mantissa in place; multiplying by `2^112` rebiases it (exact: a power of two, and wasm never
/// flushes subnormals, so f16 subnormals come out right too). Exponent 31 (infinity, NaN) is set explicitly.
#[inline]
pub fn f16x4_to_f32(h: v128) -> v128 {
    let sign = i32x4_shl(v128_and(h, i32x4_splat(0x8000)), 16);
    let em = v128_and(h, i32x4_splat(0x7FFF));
    let bits = i32x4_shl(em, 13);
    let finite = f32x4_mul(bits, f32x4_splat(F16_REBIAS));
    let special = v128_or(bits, i32x4_splat(0x7F80_0000));
    let r = v128_bitselect(special, finite, i32x4_ge(em, i32x4_splat(0x7C00)));
    v128_or(r, sign)
}

/// Loads four consecutive f16 bit patterns and widens them (see [`f16x4_to_f32`]).
///
/// # Safety
/// `p` valid for 4 reads.
#[inline]
pub unsafe fn load_f16x4(p: *const u16) -> v128 {
    f16x4_to_f32(u32x4_load_extend_u16x4(p))
}

/// Sum of the four f32 lanes: `(l0 + l2) + (l1 + l3)`.
#[inline]
pub fn hsum_f32(v: v128) -> f32 {
    let s = f32x4_add(v, i32x4_shuffle::<2, 3, 0, 1>(v, v));
    f32x4_extract_lane::<0>(s) + f32x4_extract_lane::<1>(s)
}

/// Sum of the four i32 lanes.
#[inline]
pub fn hsum_i32(v: v128) -> i32 {
    let s = i32x4_add(v, i32x4_shuffle::<2, 3, 0, 1>(v, v));
    i32x4_extract_lane::<0>(s).wrapping_add(i32x4_extract_lane::<1>(s))
}

/// Lane `k` of the result is the sum of the four lanes of `v[k]`.
#[inline]
pub fn reduce4_i32(v: [v128; 4]) -> v128 {
    let t0 = i32x4_add(i32x4_shuffle::<0, 4, 1, 5>(v[0], v[1]), i32x4_shuffle::<2, 6, 3, 7>(v[0], v[1]));
    let t1 = i32x4_add(i32x4_shuffle::<0, 4, 1, 5>(v[2], v[3]), i32x4_shuffle::<2, 6, 3, 7>(v[2], v[3]));
    i32x4_add(i32x4_shuffle::<0, 1, 4, 5>(t0, t1), i32x4_shuffle::<2, 3, 6, 7>(t0, t1))
}

/// Lane `k` of the result is the sum of the four f32 lanes of `v[k]` (`(l0 + l2) + (l1 + l3)`).
#[inline]
pub fn reduce4_f32(v: [v128; 4]) -> v128 {
    let t0 = f32x4_add(i32x4_shuffle::<0, 4, 1, 5>(v[0], v[1]), i32x4_shuffle::<2, 6, 3, 7>(v[0], v[1]));
    let t1 = f32x4_add(i32x4_shuffle::<0, 4, 1, 5>(v[2], v[3]), i32x4_shuffle::<2, 6, 3, 7>(v[2], v[3]));
    f32x4_add(i32x4_shuffle::<0, 1, 4, 5>(t0, t1), i32x4_shuffle::<2, 3, 6, 7>(t0, t1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::f16;

    #[test]
    fn f16_widening_is_exact_for_every_bit_pattern() {
        for base in (0..=u16::MAX as u32).step_by(4) {
            let lanes = [base, base + 1, base + 2, base + 3];
            let v = u32x4(lanes[0], lanes[1], lanes[2], lanes[3]);
            let got = f16x4_to_f32(v);
            let got = [
                f32x4_extract_lane::<0>(got),
                f32x4_extract_lane::<1>(got),
                f32x4_extract_lane::<2>(got),
                f32x4_extract_lane::<3>(got),
            ];
            for (k, &g) in got.iter().enumerate() {
                let want = f16::from_bits(lanes[k] as u16).to_f32();
                if want.is_nan() {
                    assert!(g.is_nan(), "{:#06x}: {g} is not NaN", lanes[k]);
                } else {
                    assert_eq!(g.to_bits(), want.to_bits(), "{:#06x}: {g} vs {want}", lanes[k]);
                }
            }
        }
    }

    #[test]
    fn reductions() {
        let v = [i32x4(1, 2, 3, 4), i32x4(10, 20, 30, 40), i32x4(-1, -1, -1, -1), i32x4(0, 0, 0, 7)];
        let r = reduce4_i32(v);
        assert_eq!(
            [
                i32x4_extract_lane::<0>(r),
                i32x4_extract_lane::<1>(r),
                i32x4_extract_lane::<2>(r),
                i32x4_extract_lane::<3>(r)
            ],
            [10, 100, -4, 7]
        );
        assert_eq!(hsum_i32(v[1]), 100);
        assert_eq!(hsum_f32(f32x4(1.0, 2.0, 3.0, 4.5)), 10.5);
        let f = reduce4_f32([
            f32x4(1.0, 2.0, 3.0, 4.0),
            f32x4(0.5, 0.0, 0.0, 0.0),
            f32x4(-1.0, 1.0, -1.0, 1.0),
            f32x4(0.0, 0.0, 0.0, 8.0),
        ]);
        assert_eq!(
            [
                f32x4_extract_lane::<0>(f),
                f32x4_extract_lane::<1>(f),
                f32x4_extract_lane::<2>(f),
                f32x4_extract_lane::<3>(f)
            ],
            [10.0, 0.5, 0.0, 8.0]
        );
    }
}
