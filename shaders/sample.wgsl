// Greedy sampling on the GPU and the decode loop's step counter.
// `argmax`: the index of the largest logit of row `row` (lowest index on ties, NaNs ignored, 0 when there is
// none, as kernels-cpu's argmax), by one workgroup of 256 threads. The id is written to `ids[0]`, where the next
// decode step's embedding gather reads it, and to `tokens[slot + st.k]`, the ids read back.
// `advance`: moves the step on by one token (pos + 1, k + 1), so that several decode steps can be recorded
// into one command buffer with no CPU round trip between them.

struct Params {
    vocab: u32,
    row: u32,
    slot: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read_write> ids: array<u32>;
@group(0) @binding(3) var<storage, read_write> tokens: array<u32>;
@group(0) @binding(4) var<storage, read> st: Step;
@group(0) @binding(5) var<storage, read_write> st_rw: Step;

struct Step {
    n: u32,
    pos: u32,
    k: u32,
}

const WG: u32 = 256u;
var<workgroup> best_v: array<f32, WG>;
var<workgroup> best_i: array<u32, WG>;

// Whether (v, i) beats (bv, bi): NaN never wins, a larger value wins, and a lower index wins a tie.
// `bi == 0xffffffff` marks "nothing yet".
fn beats(v: f32, i: u32, bv: f32, bi: u32) -> bool {
    if (bitcast<u32>(v) & 0x7fffffffu) > 0x7f800000u {
        return false;
    }
    if bi == 0xffffffffu {
        return true;
    }
    return v > bv || (v == bv && i < bi);
}

@compute @workgroup_size(256)
fn argmax(@builtin(local_invocation_index) tid: u32) {
    let base = p.row * p.vocab;
    var bv = 0.0;
    var bi = 0xffffffffu;
    for (var i = tid; i < p.vocab; i += WG) {
        let v = logits[base + i];
        if beats(v, i, bv, bi) {
            bv = v;
            bi = i;
        }
    }
    best_v[tid] = bv;
    best_i[tid] = bi;
    workgroupBarrier();
    for (var h = WG / 2u; h > 0u; h >>= 1u) {
        if tid < h && best_i[tid + h] != 0xffffffffu && beats(best_v[tid + h], best_i[tid + h], best_v[tid], best_i[tid]) {
            best_v[tid] = best_v[tid + h];
            best_i[tid] = best_i[tid + h];
        }
        workgroupBarrier();
    }
    if tid == 0u {
        let id = select(best_i[0], 0u, best_i[0] == 0xffffffffu);
        ids[0] = id;
        tokens[p.slot + st.k] = id;
    }
}

@compute @workgroup_size(1)
fn advance() {
    st_rw.pos += 1u;
    st_rw.k += 1u;
}
