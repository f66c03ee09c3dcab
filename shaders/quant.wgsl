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

const L_F32: u32 = 0u;
const L_F16: u32 = 1u;
const L_INT8: u32 = 2u;
const L_INT4: u32 = 3u;
const L_TERNARY: u32 = 4u;

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
        default: {
            let byte = g * 8u + (k & 7u);
            let code = (w[q + (byte >> 2u)] >> (8u * (byte & 3u) + 2u * (k >> 3u))) & 3u;
            return f16_at(s, g) * (f32(code) - 1.0);
        }
    }
}
