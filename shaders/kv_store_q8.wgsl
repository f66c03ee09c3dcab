// Writing the q8_0 KV cache (shaders/kv_q8.wgsl), a prelude of rope.wgsl with the interface of
// kv_store_f32.wgsl. A block of 32 values is the pairs of 16 consecutive lanes (rope's workgroup of 64 is 4
// blocks, and the q, k and v parts of a row start on block bounds, the head dim being a multiple of 32), so
// the block's max |x| is a reduction over those lanes in workgroup memory. Then, as kernels-cpu's
// `KvQ8::quantize`: d = max / 127, q = round(x / d) (ties to even), the scale stored rounded to f16. Even lanes
// join their two bytes with the next lane's into one word; each block's first lane writes the scale.

var<workgroup> kv_amax: array<f32, 64>;
var<workgroup> kv_bytes: array<u32, 64>;

fn kv_store(lane: u32, which: u32, e: u32, v: vec2<f32>) {
    kv_amax[lane] = max(abs(v.x), abs(v.y));
    workgroupBarrier();
    for (var s = 8u; s > 0u; s >>= 1u) {
        if lane % 16u < s {
            kv_amax[lane] = max(kv_amax[lane], kv_amax[lane + s]);
        }
        workgroupBarrier();
    }
    let d = kv_amax[lane & ~15u] / 127.0;
    let id = select(0.0, 1.0 / d, d != 0.0);
    let q = vec2<i32>(clamp(round(v * id), vec2<f32>(-127.0), vec2<f32>(127.0)));
    kv_bytes[lane] = (u32(q.x) & 0xffu) | ((u32(q.y) & 0xffu) << 8u);
    workgroupBarrier();
    if which == 0u || lane % 2u != 0u {
        return;
    }
    let block = e / 32u * KV_Q8_WORDS;
    let word = kv_bytes[lane] | (kv_bytes[lane + 1u] << 16u);
    let scale = pack2x16float(vec2<f32>(d, 0.0));
    if which == 1u {
        kc[block + e % 32u / 4u] = word;
        if lane % 16u == 0u {
            kc[block + 8u] = scale;
        }
    } else {
        vc[block + e % 32u / 4u] = word;
        if lane % 16u == 0u {
            vc[block + 8u] = scale;
        }
    }
}
