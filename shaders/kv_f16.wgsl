// The KV cache in f16, a prelude of the kernels that write or read it (rope, attention), with the interface of
// shaders/kv_f32.wgsl: a word is a quad of f16 values packed two in each u32, the first in the low half (the
// bytes of a little-endian f16 array), so no kernel needs the `f16` type (shader-f16). Reading widens exactly.

alias KvWord = vec2<u32>;

fn kv_widen(w: vec2<u32>) -> vec4<f32> {
    return vec4<f32>(unpack2x16float(w.x), unpack2x16float(w.y));
}

fn k_quad(i: u32) -> vec4<f32> {
    return kv_widen(kc[i]);
}

fn v_quad(i: u32) -> vec4<f32> {
    return kv_widen(vc[i]);
}
