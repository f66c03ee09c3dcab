// The omex weight layouts (kernels-cpu/src/layout.rs), read straight from a weight file's bytes.
//
// Prepended to every kernel that reads weights. Such a kernel declares `w: array<u32>`: a region of a
// `weights/*.bin` file bound as it is on disk; a matrix is given by the word offsets of its sections in that
// region (`q` the data, `s` the f16 scales, `m` the f16 mins). Element `e = row * cols + col`.
//
// | LAYOUT | data                         | value                          |
// |--------|------------------------------|--------------------------------|
// | 0 f32  | one word per value           | w                              |
// | 1 f16  | two values per word, low first | w                            |
// | 2 int8 | 4 i8 per word, groups of 32  | d * q                          |
// | 3 int4 | a group's 16 bytes: byte i holds value i (low nibble) and i + 16 (high) | d * q + m |
// | 4 tern | a group's 8 bytes: byte b holds value 8j + b in bits 2j..2j+2 | d * (c - 1) |
// | 5..9   | GGUF Q4_K, Q5_K, Q6_K, Q5_0, Q5_1 blocks as the GGUF holds them, data section only (`ggml16`) |

const L_F32: u32 = 0u;
const L_F16: u32 = 1u;
const L_INT8: u32 = 2u;
const L_INT4: u32 = 3u;
const L_TERNARY: u32 = 4u;
const L_Q4K: u32 = 5u;
const L_Q5K: u32 = 6u;
const L_Q6K: u32 = 7u;
const L_Q5_0: u32 = 8u;
const L_Q5_1: u32 = 9u;

// Whether `lay` is one of the raw GGUF block layouts.
fn is_ggml(lay: u32) -> bool {
    return lay >= L_Q4K;
}

// Value `i` of an array of f16 starting at word `base`.
fn f16_at(base: u32, i: u32) -> f32 {
    let pair = unpack2x16float(w[base + (i >> 1u)]);
    return select(pair.x, pair.y, (i & 1u) == 1u);
}

// Byte `k` (0..3) of `word` as a signed integer.
fn sbyte(word: u32, k: u32) -> f32 {
    return f32(bitcast<i32>(word << (24u - 8u * k)) >> 24u);
}

// Element `e` of a matrix in `layout`, dequantized exactly as `Matrix::dequant_row` does.
fn dequant(lay: u32, q: u32, s: u32, m: u32, e: u32) -> f32 {
    let g = e >> 5u;
    let k = e & 31u;
    switch lay {
        case 0u: {
            return bitcast<f32>(w[q + e]);
        }
        case 1u: {
            return f16_at(q, e);
        }
        case 2u: {
            return f16_at(s, g) * sbyte(w[q + (e >> 2u)], e & 3u);
        }
        case 3u: {
            let byte = g * 16u + (k & 15u);
            let shift = 8u * (byte & 3u) + select(0u, 4u, k >= 16u);
            let v = (w[q + (byte >> 2u)] >> shift) & 15u;
            return f16_at(s, g) * f32(v) + f16_at(m, g);
        }
        case 4u: {
            let byte = g * 8u + (k & 7u);
            let code = (w[q + (byte >> 2u)] >> (8u * (byte & 3u) + 2u * (k >> 3u))) & 3u;
            return f16_at(s, g) * (f32(code) - 1.0);
        }
        default: {
            return ggml16(lay, q, e & ~15u)[e & 15u];
        }
    }
}

// GGUF blocks. A matrix in one of them is a run of whole blocks (rows are whole blocks too), so element `e`
// lies in block `e / values-per-block` wherever its row starts. Q6_K (210 bytes) and Q5_0 (22 bytes) blocks
// are only 2-byte aligned: fields are read by byte address `b` (counted from the start of `w`).

// The four bytes at byte address `b` (any alignment), little-endian.
fn word_at(b: u32) -> u32 {
    let i = b >> 2u;
    let sh = 8u * (b & 3u);
    if sh == 0u {
        return w[i];
    }
    return (w[i] >> sh) | (w[i + 1u] << (32u - sh));
}

// The f16 at the 2-aligned byte address `b`.
fn half_at(b: u32) -> f32 {
    let pair = unpack2x16float(w[b >> 2u]);
    return select(pair.x, pair.y, (b & 2u) == 2u);
}

// Sub-block j's 6-bit scale (x) and min (y) from a Q4_K/Q5_K block's 12 scale bytes at word `s0`: bytes 0..4
// hold scales 0..3 and bytes 4..8 mins 0..3 in their low 6 bits; bytes 8..12 hold the low 4 bits of scales
// 4..7 (low nibble) and mins 4..7 (high nibble), whose top 2 bits are the top 2 bits of bytes 0..8.
fn k_scale_min(s0: u32, j: u32) -> vec2<u32> {
    let a = w[s0];
    let b = w[s0 + 1u];
    if j < 4u {
        return vec2<u32>((a >> (8u * j)) & 63u, (b >> (8u * j)) & 63u);
    }
    let sh = 8u * (j - 4u);
    let c = (w[s0 + 2u] >> sh) & 255u;
    return vec2<u32>((c & 15u) | ((((a >> sh) >> 6u) & 3u) << 4u), (c >> 4u) | ((((b >> sh) >> 6u) & 3u) << 4u));
}

// Values e0 .. e0 + 15 (e0 % 16 == 0) of a matrix in GGUF layout `lay` whose blocks start at word `q`,
// dequantized as kernels-cpu's `ggml::dequantize_row` does.
fn ggml16(lay: u32, q: u32, e0: u32) -> array<f32, 16> {
    var o: array<f32, 16>;
    switch lay {
        case 5u, 6u: {
            // Q4_K (144 bytes): d, dmin, 12 scale bytes, 128 nibble bytes (sub-blocks 2i and 2i + 1 share
            // bytes 32i..32i+32, low and high nibbles). Q5_K (176): the same with 32 fifth-bit bytes (bit j of
            // byte l for value l of sub-block j) before the nibbles.
            let five = lay == L_Q5K;
            let blk = e0 >> 8u;
            let v = e0 & 255u;
            let j = v >> 5u;
            let l0 = v & 31u; // 0 or 16
            let b0 = q + blk * select(36u, 44u, five); // the block's first word
            let dm = unpack2x16float(w[b0]);
            let sm = k_scale_min(b0 + 1u, j);
            let d1 = dm.x * f32(sm.x);
            let m1 = dm.y * f32(sm.y);
            let qs = b0 + select(4u, 12u, five) + 8u * (j >> 1u) + (l0 >> 2u);
            let shift = 4u * (j & 1u);
            for (var i = 0u; i < 4u; i++) {
                let word = w[qs + i] >> shift;
                var hw = 0u;
                if five {
                    hw = w[b0 + 4u + (l0 >> 2u) + i] >> j;
                }
                for (var k = 0u; k < 4u; k++) {
                    let hi = select(0u, ((hw >> (8u * k)) & 1u) << 4u, five);
                    o[4u * i + k] = d1 * f32(((word >> (8u * k)) & 15u) | hi) - m1;
                }
            }
        }
        case 7u: {
            // Q6_K (210 bytes): 128 low-nibble bytes, 64 high-2-bit bytes, 16 i8 scales (one per 16 values),
            // d. Value 128h + 32k + l: low nibble of byte 64h + 32(k % 2) + l shifted by 4(k / 2), top bits of
            // byte 128 + 32h + l shifted by 2k; minus 32.
            let blk = e0 >> 8u;
            let v = e0 & 255u;
            let hh = v >> 7u;
            let k = (v >> 5u) & 3u;
            let l0 = v & 31u;
            let b0 = 4u * q + blk * 210u; // byte address of the block
            let d = half_at(b0 + 208u) * f32(bitcast<i32>(word_at(b0 + 192u + (v >> 4u)) << 24u) >> 24u);
            let lo = b0 + 64u * hh + 32u * (k & 1u) + l0;
            let hb = b0 + 128u + 32u * hh + l0;
            for (var i = 0u; i < 4u; i++) {
                let lw = word_at(lo + 4u * i) >> (4u * (k >> 1u));
                let hw = word_at(hb + 4u * i) >> (2u * k);
                for (var kk = 0u; kk < 4u; kk++) {
                    let qv = ((lw >> (8u * kk)) & 15u) | (((hw >> (8u * kk)) & 3u) << 4u);
                    o[4u * i + kk] = d * f32(i32(qv) - 32);
                }
            }
        }
        default: {
            // Q5_0 (22 bytes): d, 4 bytes of fifth bits (bit l for value l), 16 bytes whose low nibbles are
            // values 0..15 and high nibbles 16..31; value (q - 16) d. Q5_1 (24 bytes): d, m, then the same;
            // value q d + m.
            let one = lay == L_Q5_1;
            let blk = e0 >> 5u;
            let l0 = e0 & 31u;
            let b0 = 4u * q + blk * select(22u, 24u, one);
            let d = half_at(b0);
            let m = half_at(b0 + 2u);
            let at = b0 + select(2u, 4u, one);
            let qh = word_at(at) >> l0;
            for (var i = 0u; i < 4u; i++) {
                let word = word_at(at + 4u + 4u * i) >> select(0u, 4u, l0 == 16u);
                for (var k = 0u; k < 4u; k++) {
                    let l = 4u * i + k;
                    let qv = ((word >> (8u * k)) & 15u) | (((qh >> l) & 1u) << 4u);
                    o[l] = select(d * f32(i32(qv) - 16), d * f32(qv) + m, one);
                }
            }
        }
    }
    return o;
}
