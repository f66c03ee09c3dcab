// The KV cache in f16, a prelude of the kernels that write or read it (rope, attention), with the interface of
// shaders/kv_f32.wgsl: two f16 values packed in each u32, the first in the low half (the bytes of a
// little-endian f16 array), so no kernel needs the `f16` type (shader-f16). Writing rounds to f16
// (pack2x16float; values past f16's range, 65504, are not representable); reading widens exactly.

alias KvPair = u32;
alias KvQuad = vec2<u32>;

fn kv_pair(v: vec2<f32>) -> KvPair {
    return pack2x16float(v);
}

fn kv_quad(w: KvQuad) -> vec4<f32> {
    return vec4<f32>(unpack2x16float(w.x), unpack2x16float(w.y));
}
