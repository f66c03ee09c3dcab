// The group matvec's dot product for GGUF blocks (layouts 5..9 of quant.wgsl, kept as the GGUF holds them):
// group `gi` (32 values, counted from the matrix's first value) of a matrix whose blocks start at word `q`,
// times the group's activations `xg` (8 vec4) whose sum is `xs`. Included by matvec_groups.wgsl's kernels
// (its `w: array<vec4<u32>>` and `word_at`), and decoded as kernels-cpu's `ggml::dequantize_row` does.
//
// Q4_K and Q5_K blocks are 144 and 176 bytes, so every field sits on a word and the nibbles are read as vec4;
// Q6_K (210 bytes) and Q5_0 (22) are only 2-byte aligned: their fields are read by byte address through
// `words8`, which shifts two neighbouring words together.

fn is_ggml_layout(lay: u32) -> bool {
    return lay >= 5u;
}

// Bit 0 of each byte of `word`, as four values.
fn byte_bits(word: u32) -> vec4<f32> {
    return vec4<f32>(vec4<u32>(word, word >> 8u, word >> 16u, word >> 24u) & vec4<u32>(1u));
}

// Bits s .. s + 3 of `word`, as four values.
fn bits4(word: u32, s: u32) -> vec4<f32> {
    return vec4<f32>((vec4<u32>(word) >> vec4<u32>(s, s + 1u, s + 2u, s + 3u)) & vec4<u32>(1u));
}

// The four bytes at byte address `b` (2-aligned at least), little-endian.
fn bytes4(b: u32) -> u32 {
    let i = b >> 2u;
    if (b & 3u) == 0u {
        return word_at(i);
    }
    return (word_at(i) >> 16u) | (word_at(i + 1u) << 16u);
}

// The f16 at the 2-aligned byte address `b`.
fn half_byte(b: u32) -> f32 {
    let pair = unpack2x16float(word_at(b >> 2u));
    return select(pair.x, pair.y, (b & 2u) == 2u);
}

// Sub-block j's 6-bit scale (x) and min (y) of a Q4_K/Q5_K block whose 12 scale bytes start at word `s0`.
fn k_scale_min(s0: u32, j: u32) -> vec2<u32> {
    let a = word_at(s0);
    let b = word_at(s0 + 1u);
    if j < 4u {
        return vec2<u32>((a >> (8u * j)) & 63u, (b >> (8u * j)) & 63u);
    }
    let sh = 8u * (j - 4u);
    let c = (word_at(s0 + 2u) >> sh) & 255u;
    return vec2<u32>((c & 15u) | ((((a >> sh) >> 6u) & 3u) << 4u), (c >> 4u) | ((((b >> sh) >> 6u) & 3u) << 4u));
}

fn ggml_group_dot(q: u32, gi: u32, xg: array<vec4<f32>, 8>, xs: f32) -> f32 {
    var a = 0.0;
    switch LAYOUT {
        case 5u, 6u: {
            // Q4_K: d, dmin, 12 scale bytes, 128 nibble bytes (sub-blocks 2i and 2i + 1 share bytes 32i ..
            // 32i + 32, low and high nibbles). Q5_K: the same with 32 fifth-bit bytes (bit j of byte l for value
            // l of sub-block j) before the nibbles. Value d * scale * q - dmin * min.
            let five = LAYOUT == 6u;
            let j = gi & 7u;
            let b0 = q + (gi >> 3u) * select(36u, 44u, five);
            let dm = unpack2x16float(word_at(b0));
            let sm = k_scale_min(b0 + 1u, j);
            let qs = (b0 + select(4u, 12u, five) + 8u * (j >> 1u)) >> 2u;
            let sh = vec4<u32>(4u * (j & 1u));
            let lo = w[qs] >> sh;
            let hi = w[qs + 1u] >> sh;
            var h0 = vec4<u32>(0u);
            var h1 = vec4<u32>(0u);
            if five {
                h0 = w[(b0 + 4u) >> 2u] >> vec4<u32>(j);
                h1 = w[(b0 + 8u) >> 2u] >> vec4<u32>(j);
            }
            for (var k = 0u; k < 4u; k++) {
                a += dot(nibbles(lo[k]) + 16.0 * byte_bits(h0[k]), xg[k]);
                a += dot(nibbles(hi[k]) + 16.0 * byte_bits(h1[k]), xg[4u + k]);
            }
            return dm.x * f32(sm.x) * a - dm.y * f32(sm.y) * xs;
        }
        case 7u: {
            // Q6_K: 128 low-nibble bytes, 64 high-2-bit bytes, 16 i8 scales (one per 16 values), d. Value
            // 128h + 32k + l: low nibble of byte 64h + 32(k % 2) + l shifted by 4(k / 2), top bits of byte
            // 128 + 32h + l shifted by 2k; minus 32.
            let t = gi & 7u;
            let hh = t >> 2u;
            let k = t & 3u;
            let b0 = 4u * q + (gi >> 3u) * 210u;
            let lo = b0 + 64u * hh + 32u * (k & 1u);
            let hb = b0 + 128u + 32u * hh;
            let lsh = 4u * (k >> 1u);
            let hsh = 2u * k;
            var part = vec2<f32>(0.0);
            for (var i = 0u; i < 8u; i++) {
                let lw = bytes4(lo + 4u * i) >> lsh;
                let hw = bytes4(hb + 4u * i) >> hsh;
                let qv = vec4<u32>(lw, lw >> 8u, lw >> 16u, lw >> 24u) & vec4<u32>(15u);
                let qh = (vec4<u32>(hw, hw >> 8u, hw >> 16u, hw >> 24u) & vec4<u32>(3u)) << vec4<u32>(4u);
                part[i >> 2u] += dot(vec4<f32>(qv | qh) - 32.0, xg[i]);
            }
            let sc = bytes4(b0 + 192u + 2u * t);
            let s0 = f32(bitcast<i32>(sc << 24u) >> 24u);
            let s1 = f32(bitcast<i32>(sc << 16u) >> 24u);
            return half_byte(b0 + 208u) * (s0 * part.x + s1 * part.y);
        }
        default: {
            // Q5_0 (22 bytes): d, 4 bytes of fifth bits (bit l for value l), 16 bytes whose low nibbles are
            // values 0..15 and high nibbles 16..31; value (q - 16) d. Q5_1 (24 bytes): d, m, then the same;
            // value q d + m.
            let one = LAYOUT == 9u;
            let b0 = 4u * q + gi * select(22u, 24u, one);
            let at = b0 + select(2u, 4u, one);
            let qh = bytes4(at);
            for (var k = 0u; k < 4u; k++) {
                let word = bytes4(at + 4u + 4u * k);
                a += dot(nibbles(word) + 16.0 * bits4(qh, 4u * k), xg[k]);
                a += dot(nibbles(word >> 4u) + 16.0 * bits4(qh, 16u + 4u * k), xg[4u + k]);
            }
            let d = half_byte(b0);
            if one {
                return d * a + half_byte(b0 + 2u) * xs;
            }
            return d * (a - 16.0 * xs);
        }
    }
}
