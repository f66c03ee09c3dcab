// Writing the f16 KV cache (shaders/kv_f16.wgsl), a prelude of rope.wgsl with the interface of
// kv_store_f32.wgsl: a pair of values is one u32 (pack2x16float rounds to f16; values past f16's range, 65504,
// are not representable), half of a quad word.

fn kv_store(lane: u32, which: u32, e: u32, v: vec2<f32>) {
    let i = e / 4u;
    let w = pack2x16float(v);
    let low = (e & 2u) == 0u;
    if which == 1u {
        if low {
            kc[i].x = w;
        } else {
            kc[i].y = w;
        }
    } else if which == 2u {
        if low {
            vc[i].x = w;
        } else {
            vc[i].y = w;
        }
    }
}
