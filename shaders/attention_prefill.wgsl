// Prefill attention, portable: causal GQA attention of st.n queries of one sequence (consecutive positions
// from row 0's, cache rows from its block table: pages.wgsl) over the KV cache, in tiles with an online softmax
// (flash attention).
//
// One workgroup of 64 threads per (block of BQ = 16 queries, query head). Thread (qi, s) = (tid % 16,
// tid / 16) holds its query and its output in registers and takes every S-th key (S = 4 lanes per query),
// so the longest chain of work (the last block's ~pos keys) is cut by four and no scores cross threads.
// The K and V rows of a tile of KT keys go to shared memory once for the block's 16 queries; a lane scores
// its KT / S keys of the tile, rescales its output once per tile and accumulates the probabilities times V.
// At the end the S lanes of a query merge their (max, sum, output) through shared memory.
// The caches hold the prelude's element type (kv_f32.wgsl, kv_f16.wgsl or kv_q8.wgsl), widened to f32 into the tile.
// Query i attends keys 0 ..= st.pos + i (with a window, p.window > 0, only the last `window` of them). Scores
// are `scale * q . k` in f32, as in kernels-cpu's attention.

struct Params {
    n_heads: u32,
    n_kv: u32,
    head_dim: u32,
    _pad0: u32,
    scale: f32,
    window: u32,
    _pad2: u32,
    _pad3: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> st: Step;
@group(0) @binding(2) var<storage, read> q: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> kc: array<KvWord>;
@group(0) @binding(4) var<storage, read> vc: array<KvWord>;
@group(0) @binding(5) var<storage, read_write> out: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read> seqmap: array<u32>;

// head_dim / 4, so the loops over a head unroll.
override HD4: u32 = 16u;
const BQ: u32 = 16u;
const S: u32 = 4u;
// The K tile and the V tile share 1024 vec4 (16 KiB, WebGPU's default limit): KT keys of HD4 each.
const TILE4: u32 = 512u;
const MAX_HD4: u32 = 64u;
const MAX_PER: u32 = 8u;
const NEG: f32 = -3.0e38;

var<workgroup> kv: array<vec4<f32>, 1024>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    let n = st.n;
    let pos0 = row_position(0u);
    let q0 = wg.x * BQ;
    let qh = wg.y;
    let qd4 = p.n_heads * HD4;
    let kvd4 = p.n_kv * HD4;
    let kvh = qh / (p.n_heads / p.n_kv);
    // Keys per tile, a multiple of S: 32 for a head dim of 64, 16 for 128.
    let kt = min(TILE4 / HD4, S * MAX_PER) / S * S;
    let per = kt / S;
    let qi = tid % BQ;
    let s = tid / BQ;
    let row = q0 + qi;
    let my_pos = pos0 + row;

    var qr: array<vec4<f32>, MAX_HD4>;
    var o: array<vec4<f32>, MAX_HD4>;
    for (var d = 0u; d < HD4; d++) {
        qr[d] = select(vec4<f32>(0.0), q[min(row, n - 1u) * qd4 + qh * HD4 + d], row < n);
        o[d] = vec4<f32>(0.0);
    }
    var m = NEG;
    var l = 0.0;
    // Keys up to the block's last query (exclusive bound), from the first its first query sees.
    let kend = pos0 + min(q0 + BQ, n);
    let first = pos0 + q0 + 1u;
    let kstart = select(0u, first - min(p.window, first), p.window > 0u);
    // The first key this lane's query sees.
    let my_first = select(0u, my_pos + 1u - min(p.window, my_pos + 1u), p.window > 0u);
    for (var k0 = kstart; k0 < kend; k0 += kt) {
        for (var e = tid; e < kt * HD4; e += 64u) {
            let key = k0 + e / HD4;
            let at = cache_row(0u, min(key, kend - 1u)) * kvd4 + kvh * HD4 + e % HD4;
            let live = key < kend;
            kv[e] = select(vec4<f32>(0.0), k_quad(at), live);
            kv[TILE4 + e] = select(vec4<f32>(0.0), v_quad(at), live);
        }
        workgroupBarrier();
        // This lane's keys of the tile: k0 + s + S j.
        var sc: array<f32, MAX_PER>;
        var mt = m;
        for (var j = 0u; j < per; j++) {
            let kk = s + S * j;
            var d4 = vec4<f32>(0.0);
            for (var d = 0u; d < HD4; d++) {
                d4 += qr[d] * kv[kk * HD4 + d];
            }
            let v = select(NEG, p.scale * (d4.x + d4.y + d4.z + d4.w), k0 + kk <= my_pos && k0 + kk >= my_first);
            sc[j] = v;
            mt = max(mt, v);
        }
        let alpha = exp(m - mt);
        l *= alpha;
        for (var d = 0u; d < HD4; d++) {
            o[d] *= alpha;
        }
        for (var j = 0u; j < per; j++) {
            // Masked keys weigh exactly 0 (exp(NEG - NEG) would be 1 while nothing is unmasked yet).
            let pj = select(0.0, exp(sc[j] - mt), sc[j] > NEG);
            l += pj;
            let kk = s + S * j;
            for (var d = 0u; d < HD4; d++) {
                o[d] += pj * kv[TILE4 + kk * HD4 + d];
            }
        }
        m = mt;
        workgroupBarrier();
    }

    // Merge the S lanes of each query into lane 0, one lane at a time and each output in two halves (so that a
    // head dim of 256 fits the tile memory): lane t writes (m, l) and half of its output to the tile memory,
    // lane 0 folds it in; m and l move on once both halves are folded.
    let half = (HD4 + 1u) / 2u;
    for (var t = 1u; t < S; t++) {
        var other = vec4<f32>(0.0);
        for (var c0 = 0u; c0 < HD4; c0 += half) {
            let c1 = min(c0 + half, HD4);
            if s == t {
                kv[BQ * half + qi] = vec4<f32>(m, l, 0.0, 0.0);
                for (var d = c0; d < c1; d++) {
                    kv[qi * half + d - c0] = o[d];
                }
            }
            workgroupBarrier();
            if s == 0u {
                other = kv[BQ * half + qi];
                let mm = max(m, other.x);
                let a = exp(m - mm);
                let b = exp(other.x - mm);
                for (var d = c0; d < c1; d++) {
                    o[d] = o[d] * a + kv[qi * half + d - c0] * b;
                }
            }
            workgroupBarrier();
        }
        if s == 0u {
            let mm = max(m, other.x);
            l = l * exp(m - mm) + other.y * exp(other.x - mm);
            m = mm;
        }
    }
    if s == 0u && row < n {
        for (var d = 0u; d < HD4; d++) {
            out[row * qd4 + qh * HD4 + d] = o[d] / l;
        }
    }
}
