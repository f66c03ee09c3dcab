// Prefill attention, portable: causal GQA attention of st.n queries (positions st.pos + i) over the KV cache,
// in tiles with an online softmax (flash attention).
//
// One workgroup per (tile of 8 queries, query head). Per tile of 8 keys the K and V rows go to shared memory
// once for the 8 queries; thread (i, j) scores query i against key j, thread j = 0 of each query row updates
// that row's running max and sum, and each thread accumulates head_dim / 8 output values of its query row.
// Query i attends keys 0 ..= st.pos + i.

struct Params {
    n_heads: u32,
    n_kv: u32,
    head_dim: u32,
    _pad0: u32,
    scale: f32,
    _pad1: u32,
    _pad2: u32,
    _pad3: u32,
}

struct Step {
    n: u32,
    pos: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> st: Step;
@group(0) @binding(2) var<storage, read> q: array<f32>;
@group(0) @binding(3) var<storage, read> kc: array<f32>;
@group(0) @binding(4) var<storage, read> vc: array<f32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;

const B: u32 = 8u;
const MAX_HD: u32 = 128u;
const NEG: f32 = -3.0e38;

var<workgroup> qs: array<f32, 1024>; // B x MAX_HD
var<workgroup> ks: array<f32, 1024>;
var<workgroup> vs: array<f32, 1024>;
var<workgroup> pr: array<f32, 64>; // B x B scores, then probabilities
var<workgroup> alpha: array<f32, 8>;
var<workgroup> run_m: array<f32, 8>;
var<workgroup> run_l: array<f32, 8>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    let n = st.n;
    let pos0 = st.pos;
    let q0 = wg.x * B;
    let qh = wg.y;
    let hd = p.head_dim;
    let qd = p.n_heads * hd;
    let kvd = p.n_kv * hd;
    let kvh = qh / (p.n_heads / p.n_kv);
    let qi = tid / B;
    let sub = tid % B;
    for (var e = tid; e < B * hd; e += 64u) {
        let row = q0 + e / hd;
        qs[e] = select(0.0, q[row * qd + qh * hd + e % hd], row < n);
    }
    if tid < B {
        run_m[tid] = NEG;
        run_l[tid] = 0.0;
    }
    var o: array<f32, 16>;
    // Keys up to the tile's last query (exclusive bound).
    let kend = pos0 + min(q0 + B, n);
    let my_pos = pos0 + q0 + qi;
    for (var k0 = 0u; k0 < kend; k0 += B) {
        for (var e = tid; e < B * hd; e += 64u) {
            let key = k0 + e / hd;
            var kv = 0.0;
            var vv = 0.0;
            if key < kend {
                let at = key * kvd + kvh * hd + e % hd;
                kv = kc[at];
                vv = vc[at];
            }
            ks[e] = kv;
            vs[e] = vv;
        }
        workgroupBarrier();
        let key = k0 + sub;
        var s = NEG;
        if key <= my_pos && key < kend {
            var d = 0.0;
            for (var i = 0u; i < hd; i++) {
                d += qs[qi * hd + i] * ks[sub * hd + i];
            }
            s = p.scale * d;
        }
        pr[tid] = s;
        workgroupBarrier();
        if sub == 0u {
            var mt = run_m[qi];
            for (var j = 0u; j < B; j++) {
                mt = max(mt, pr[qi * B + j]);
            }
            var sum = 0.0;
            for (var j = 0u; j < B; j++) {
                let e = exp(pr[qi * B + j] - mt);
                pr[qi * B + j] = e;
                sum += e;
            }
            let a = exp(run_m[qi] - mt);
            alpha[qi] = a;
            run_l[qi] = run_l[qi] * a + sum;
            run_m[qi] = mt;
        }
        workgroupBarrier();
        for (var k = 0u; k < 16u; k++) {
            let d = sub + k * B;
            if d < hd {
                var acc = o[k] * alpha[qi];
                for (var j = 0u; j < B; j++) {
                    acc += pr[qi * B + j] * vs[j * hd + d];
                }
                o[k] = acc;
            }
        }
        workgroupBarrier();
    }
    let row = q0 + qi;
    if row >= n {
        return;
    }
    let l = run_l[qi];
    for (var k = 0u; k < 16u; k++) {
        let d = sub + k * B;
        if d < hd {
            out[row * qd + qh * hd + d] = o[k] / l;
        }
    }
}
