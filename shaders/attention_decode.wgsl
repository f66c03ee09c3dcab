// Decode attention over the KV cache, split along the cache (flash-decoding), portable.
//
// Each of the st.n token rows is one sequence's query (a decode batch; its position and cache rows from
// pages.wgsl). `partial`: one workgroup per (KV head, split, row). The split's keys (positions `s * chunk ..`,
// at most up to the query's position) are walked in tiles of 64, one key per thread; the query heads that share
// the KV head (GQA) are done together so each K and V row is read once for all of them. Each head keeps a
// running max and sum (online softmax) and its output in registers, and writes (o, max, sum) for its split.
// `combine`: one workgroup per (query head, row) merges the partials of the splits that held keys into the attention
// output.
//
// The caches hold the prelude's element type (kv_f32.wgsl, kv_f16.wgsl or kv_q8.wgsl), widened to f32 as they are read.
// Scores are `scale * q . k` in f32, as in kernels-cpu's attention. With a window (p.window > 0) the keys are
// the last `window` positions only, and the splits share those.

struct Params {
    n_heads: u32,
    n_kv: u32,
    head_dim: u32,
    splits: u32,
    scale: f32,
    window: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> st: Step;
@group(0) @binding(2) var<storage, read> q: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> kc: array<KvWord>;
@group(0) @binding(4) var<storage, read> vc: array<KvWord>;
@group(0) @binding(5) var<storage, read_write> part: array<f32>;
@group(0) @binding(8) var<storage, read> seqmap: array<u32>;

// head_dim / 4 (the partial kernel's loops over a head unroll with it known).
override HD4: u32 = 16u;
const TILE: u32 = 64u;
const NEG: f32 = -3.0e38;
// Query heads per KV head x head dim / 4, at most.
const MAX_Q4: u32 = 256u;

var<workgroup> qs: array<vec4<f32>, MAX_Q4>;
var<workgroup> sc: array<f32, 1024>; // rep x TILE scores, then probabilities
var<workgroup> alpha: array<f32, 16>;
var<workgroup> run_m: array<f32, 16>;
var<workgroup> run_l: array<f32, 16>;
// The cache rows of the tile's keys.
var<workgroup> rows: array<u32, 64>;

// The first key the query at `pos` attends.
fn first_key(pos: u32) -> u32 {
    return select(0u, pos + 1u - min(p.window, pos + 1u), p.window > 0u);
}

// Keys per split: the keys spread over the splits, in whole tiles.
fn chunk_len(len: u32) -> u32 {
    let c = (len + p.splits - 1u) / p.splits;
    return max(TILE, (c + TILE - 1u) / TILE * TILE);
}

@compute @workgroup_size(64)
fn partial(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    let kvh = wg.x;
    let s = wg.y;
    let t = wg.z;
    let pos = row_position(t);
    let hd4 = HD4;
    let rep = p.n_heads / p.n_kv;
    let kvd4 = p.n_kv * hd4;
    let first = first_key(pos);
    let len = pos + 1u;
    let chunk = chunk_len(len - first);
    let start = first + s * chunk;
    let end = min(start + chunk, len);
    let width = rep * hd4;
    for (var e = tid; e < width; e += TILE) {
        qs[e] = q[t * p.n_heads * hd4 + kvh * width + e];
    }
    if tid < rep {
        run_m[tid] = NEG;
        run_l[tid] = 0.0;
    }
    // This thread's outputs: vec4 number tid + 64 k of the rep x hd / 4 outputs.
    var o: array<vec4<f32>, 4>;
    workgroupBarrier();
    for (var t0 = start; t0 < end; t0 += TILE) {
        let kp = t0 + tid;
        rows[tid] = cache_row(t, min(kp, end - 1u));
        let kb = rows[tid] * kvd4 + kvh * hd4;
        for (var r = 0u; r < rep; r++) {
            var v = NEG;
            if kp < end {
                var d = vec4<f32>(0.0);
                for (var i = 0u; i < hd4; i++) {
                    d += qs[r * hd4 + i] * k_quad(kb + i);
                }
                v = p.scale * (d.x + d.y + d.z + d.w);
            }
            sc[r * TILE + tid] = v;
        }
        workgroupBarrier();
        if tid < rep {
            var mt = run_m[tid];
            for (var j = 0u; j < TILE; j++) {
                mt = max(mt, sc[tid * TILE + j]);
            }
            var sum = 0.0;
            for (var j = 0u; j < TILE; j++) {
                let e = exp(sc[tid * TILE + j] - mt);
                sc[tid * TILE + j] = e;
                sum += e;
            }
            let a = exp(run_m[tid] - mt);
            alpha[tid] = a;
            run_l[tid] = run_l[tid] * a + sum;
            run_m[tid] = mt;
        }
        workgroupBarrier();
        // A whole tile every time (keys past `end` weigh 0 and read the last key again), so the loop has a
        // constant trip count, unrolls, and keeps the V loads in flight together.
        for (var k = 0u; k < 4u; k++) {
            let e = tid + k * TILE;
            if e < width {
                let r = e / hd4;
                let d = e % hd4;
                var acc = o[k] * alpha[r];
                for (var j = 0u; j < TILE; j++) {
                    acc += sc[r * TILE + j] * v_quad(rows[j] * kvd4 + kvh * hd4 + d);
                }
                o[k] = acc;
            }
        }
        workgroupBarrier();
    }
    // part: [rows, splits, n_heads, hd + 2] = (o, max, sum)
    let hd = p.head_dim;
    let row = hd + 2u;
    let at = t * p.splits * p.n_heads * row;
    for (var k = 0u; k < 4u; k++) {
        let e = tid + k * TILE;
        if e < width {
            let qh = kvh * rep + e / hd4;
            let b = at + (s * p.n_heads + qh) * row + 4u * (e % hd4);
            part[b] = o[k].x;
            part[b + 1u] = o[k].y;
            part[b + 2u] = o[k].z;
            part[b + 3u] = o[k].w;
        }
    }
    if tid < rep {
        let base = at + (s * p.n_heads + kvh * rep + tid) * row + hd;
        part[base] = run_m[tid];
        part[base + 1u] = run_l[tid];
    }
}

@group(0) @binding(6) var<storage, read_write> out: array<f32>;
@group(0) @binding(7) var<storage, read> part_in: array<f32>;

@compute @workgroup_size(64)
fn combine(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    let qh = wg.x;
    let t = wg.y;
    let pos = row_position(t);
    let hd = p.head_dim;
    let row = hd + 2u;
    let at = t * p.splits * p.n_heads * row;
    // Only the splits that held keys (the others wrote max -inf, sum 0).
    let keys = pos + 1u - first_key(pos);
    let chunk = chunk_len(keys);
    let used = min(p.splits, (keys + chunk - 1u) / chunk);
    var m = NEG;
    for (var s = 0u; s < used; s++) {
        m = max(m, part_in[at + (s * p.n_heads + qh) * row + hd]);
    }
    var l = 0.0;
    for (var s = 0u; s < used; s++) {
        let b = at + (s * p.n_heads + qh) * row + hd;
        l += exp(part_in[b] - m) * part_in[b + 1u];
    }
    for (var d = tid; d < hd; d += 64u) {
        var acc = 0.0;
        for (var s = 0u; s < used; s++) {
            let b = at + (s * p.n_heads + qh) * row;
            acc += exp(part_in[b + hd] - m) * part_in[b + d];
        }
        out[(t * p.n_heads + qh) * hd + d] = acc / l;
    }
}
