// The KV cache in q8_0, a prelude of the kernels that write or read it (rope, attention), with the interface of
// shaders/kv_f32.wgsl. A row is blocks of 32 consecutive values (a head's dim is a whole number of them); a
// block is 9 words: 8 of four int8 each (value 4j + b in byte b of word j, two's complement) and the scale `d`
// as an f16 in the low half of the 9th, so every load is an aligned u32. Value = d * int8, as kernels-cpu's
// `KvQ8` (whose f16 scale and 32 int8 are the same numbers, 34 bytes to our 36).

alias KvWord = u32;

// Words per block of 32 values.
const KV_Q8_WORDS: u32 = 9u;

// The four int8 of `w`, sign-extended, times the block's scale word.
fn kv_q8_widen(w: u32, scale: u32) -> vec4<f32> {
    let b = bitcast<vec4<i32>>(vec4<u32>(w << 24u, w << 16u, w << 8u, w)) >> vec4<u32>(24u);
    return vec4<f32>(b) * unpack2x16float(scale).x;
}

fn k_quad(i: u32) -> vec4<f32> {
    let block = i / 8u * KV_Q8_WORDS;
    return kv_q8_widen(kc[block + i % 8u], kc[block + 8u]);
}

fn v_quad(i: u32) -> vec4<f32> {
    let block = i / 8u * KV_Q8_WORDS;
    return kv_q8_widen(vc[block + i % 8u], vc[block + 8u]);
}
