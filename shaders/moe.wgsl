// A mixture of experts: the routing of each token and the weighted add of one expert's output, as kernels-cpu's
// ops::route and the CPU engine's run_experts.
// `route_top_k`: one workgroup per token row t < st.n of `logits` (`experts` values a row), in place: a softmax
// over the row (maximum subtracted first), the `top_k` largest probabilities (ties to the lower id) divided by
// their sum, every other expert 0.
// `add_weighted`: x[t, c] += w * out[t, c] with w = route[t, expert], for the rows whose w is not 0 (an expert a
// token was not routed to adds nothing, not even a NaN of its own).
// `gate`: the workgroup counts of each gated dispatch (`slots` of them, launched indirectly from `args`): its
// grid for the chunk's st.n rows when some row has a weight for its expert, else none, so an expert no token was
// routed to reads none of its weights. `args` holds the counts (3 words a slot), then per slot [expert, kind,
// a, b, c, 0, 0, 0], its grid as context.rs's `Grid::words` encodes it.

struct Params {
    experts: u32,
    top_k: u32,
    // add_weighted: values per row of x and out, and the expert whose weight applies.
    cols: u32,
    expert: u32,
}

struct Step {
    n: u32,
    pos: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> st: Step;
@group(0) @binding(2) var<storage, read_write> logits: array<f32>;
@group(0) @binding(3) var<storage, read> route: array<f32>;
@group(0) @binding(4) var<storage, read> out: array<f32>;
@group(0) @binding(5) var<storage, read_write> x: array<f32>;
@group(0) @binding(6) var<storage, read_write> args: array<u32>;

// The most experts a row may have (the Rust side refuses more).
const MAX_EXPERTS: u32 = 256u;

var<workgroup> probs: array<f32, MAX_EXPERTS>;
var<workgroup> chosen: array<u32, MAX_EXPERTS>;
// Beside workgroup_reduce.wgsl's `red`: the experts' ids in the top-k reduction.
var<workgroup> red_i: array<u32, 64>;
var<workgroup> kept: f32;

@compute @workgroup_size(64)
fn route_top_k(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    let t = wg.y;
    // Uniform across the workgroup: every thread returns or none does (the barriers need all).
    if t >= st.n {
        return;
    }
    let base = t * p.experts;
    var m = logits[base];
    for (var e = tid; e < p.experts; e += 64u) {
        m = max(m, logits[base + e]);
    }
    let mx = row_max(tid, m);
    var s = 0.0;
    for (var e = tid; e < p.experts; e += 64u) {
        let v = exp(logits[base + e] - mx);
        probs[e] = v;
        chosen[e] = 0u;
        s += v;
    }
    let sum = row_sum(tid, s);
    for (var e = tid; e < p.experts; e += 64u) {
        probs[e] = probs[e] / sum;
    }
    if tid == 0u {
        kept = 0.0;
    }
    for (var j = 0u; j < p.top_k; j++) {
        workgroupBarrier();
        // Each thread's best unchosen expert (its lowest id on ties: ids rise along its stride), then the
        // workgroup's: the larger probability, the lower id on ties. Probabilities are >= 0, so -1 is "none".
        var bv = -1.0;
        var bi = 0xffffffffu;
        for (var e = tid; e < p.experts; e += 64u) {
            if chosen[e] == 0u && probs[e] > bv {
                bv = probs[e];
                bi = e;
            }
        }
        red[tid] = bv;
        red_i[tid] = bi;
        workgroupBarrier();
        for (var h = 32u; h > 0u; h >>= 1u) {
            if tid < h {
                let ov = red[tid + h];
                let oi = red_i[tid + h];
                if ov > red[tid] || (ov == red[tid] && oi < red_i[tid]) {
                    red[tid] = ov;
                    red_i[tid] = oi;
                }
            }
            workgroupBarrier();
        }
        if tid == 0u {
            chosen[red_i[0]] = 1u;
            kept += probs[red_i[0]];
        }
    }
    workgroupBarrier();
    // The largest probability is always chosen and > 0, so `kept` is too.
    for (var e = tid; e < p.experts; e += 64u) {
        logits[base + e] = select(0.0, probs[e] / kept, chosen[e] != 0u);
    }
}

@compute @workgroup_size(64)
fn add_weighted(@builtin(global_invocation_id) gid: vec3<u32>) {
    let c = gid.x;
    let t = gid.y;
    if c < p.cols && t < st.n {
        let w = route[t * p.experts + p.expert];
        if w != 0.0 {
            let i = t * p.cols + c;
            x[i] += w * out[i];
        }
    }
}

@compute @workgroup_size(64)
fn gate(@builtin(global_invocation_id) gid: vec3<u32>) {
    // p.cols: the slots.
    let slot = gid.x;
    if slot >= p.cols {
        return;
    }
    let g = 3u * p.cols + slot * 8u;
    let expert = args[g];
    var on = false;
    for (var t = 0u; t < st.n; t++) {
        if route[t * p.experts + expert] != 0.0 {
            on = true;
            break;
        }
    }
    let a = args[g + 2u];
    let b = args[g + 3u];
    var counts = vec3<u32>(0u, 0u, 0u);
    if on {
        switch args[g + 1u] {
            case 0u: { counts = vec3<u32>(a, b, args[g + 4u]); }
            case 1u: { counts = vec3<u32>((st.n + a - 1u) / a, b, 1u); }
            case 2u: { counts = vec3<u32>(a, st.n, 1u); }
            default: { counts = vec3<u32>(a, b, st.n); }
        }
    }
    args[slot * 3u] = counts.x;
    args[slot * 3u + 1u] = counts.y;
    args[slot * 3u + 2u] = counts.z;
}
