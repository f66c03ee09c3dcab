// Writing the f32 KV cache (shaders/kv_f32.wgsl), a prelude of rope.wgsl. Every thread of the workgroup calls
// `kv_store` once, in uniform control flow (the q8 store, kv_store_q8.wgsl, reduces over the workgroup), with
// its pair of values `v` and where they go: `which` 0 (nowhere: the thread wrote a query pair or is past the
// row), 1 (the K cache) or 2 (V); `e` the index of the pair's first value in the cache (even). `lane` is the
// thread's local index.

fn kv_store(lane: u32, which: u32, e: u32, v: vec2<f32>) {
    let i = e / 4u;
    let low = (e & 2u) == 0u;
    if which == 1u {
        if low {
            kc[i].x = v.x;
            kc[i].y = v.y;
        } else {
            kc[i].z = v.x;
            kc[i].w = v.y;
        }
    } else if which == 2u {
        if low {
            vc[i].x = v.x;
            vc[i].y = v.y;
        } else {
            vc[i].z = v.x;
            vc[i].w = v.y;
        }
    }
}
