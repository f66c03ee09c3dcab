// The KV cache in f32, a prelude of the kernels that write or read it (rope, attention). The kernel declares
// its caches `kc` and `vc` as `array<KvWord>`, and reads them a quad (four consecutive values of a row, a row
// being a whole number of quads) at a time with `k_quad(i)` / `v_quad(i)`: quad `i` holds values `4i..4i + 3`.
// These functions name the kernel's `kc` and `vc`, declared after the prelude. shaders/kv_f16.wgsl and
// kv_q8.wgsl are the same interface over f16 values and q8_0 blocks; kv_store_*.wgsl writes.

alias KvWord = vec4<f32>;

fn k_quad(i: u32) -> vec4<f32> {
    return kc[i];
}

fn v_quad(i: u32) -> vec4<f32> {
    return vc[i];
}
