// The KV cache in f32, a prelude of the kernels that write or read it (rope, attention): the kernel declares
// its caches as arrays of `KvPair` (two consecutive values of a row; rope writes pairs) or `KvQuad` (four; the
// attention kernels read quads) and converts with `kv_pair` and `kv_quad`. shaders/kv_f16.wgsl is the same
// interface over f16 values.

alias KvPair = vec2<f32>;
alias KvQuad = vec4<f32>;

fn kv_pair(v: vec2<f32>) -> KvPair {
    return v;
}

fn kv_quad(w: KvQuad) -> vec4<f32> {
    return w;
}
