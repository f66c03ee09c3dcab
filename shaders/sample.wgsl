// Sampling on the GPU and the decode loop's step counter. Each sampler writes its id to `ids[0]`, where the next
// decode step's embedding gather reads it, and to `tokens[slot + st.k]`, the ids read back.
// `argmax`: greedy; the index of the largest logit of row `row` (lowest index on ties, NaNs ignored, 0 when there
// is none, as kernels-cpu's argmax), by one workgroup of 256 threads.
// `sample`: one draw at a temperature with top-k, top-p and min-p, by one workgroup of 256 threads, with the
// threshold semantics of src/sampling/mod.rs (see `Sampler`), so that the host and the GPU pick the same token
// from the same logits and the same uniform. Weights are w = exp((l - max) / T) (1 at the max); NaNs are never
// kept; top-k keeps the logits >= the k-th largest (ties all kept); top-p keeps the logits >= the largest cut
// whose weight from the top reaches top_p of the top-k weight; min-p keeps w >= min_p; the draw walks the kept
// ids in id order and picks the first whose running weight exceeds u times the kept weight.
// `advance`: moves the step on by one token (pos + 1, k + 1), so that several decode steps can be recorded
// into one command buffer with no CPU round trip between them.
//
// The cuts are radix selects over an order-preserving u32 key of each logit, 4 bits a pass from the top: each
// thread sorts its logits' next digit into 16 buckets (counts for top-k, weights for top-p), the workgroup adds
// the histograms, and the bucket where the count or weight from the top reaches the goal fixes the digit. Eight
// passes find the exact cut, where bisecting a threshold would take a pass per bit. The draw needs no sort: each
// thread sums the kept weight of a contiguous chunk of ids, a prefix sum over the chunks finds the chunk that
// holds r, and that chunk's thread walks it.

struct Params {
    vocab: u32,
    row: u32,
    slot: u32,
    // The rest is `sample`'s: top_k 0, top_p 1 and min_p 0 are off.
    top_k: u32,
    temperature: f32,
    top_p: f32,
    min_p: f32,
    // Draw number of step k = 0; step k draws number draw + k.
    draw: u32,
    seed_lo: u32,
    seed_hi: u32,
    _pad0: u32,
    _pad1: u32,
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
const NONE: u32 = 0xffffffffu;

fn is_nan(v: f32) -> bool {
    return (bitcast<u32>(v) & 0x7fffffffu) > 0x7f800000u;
}

// ---- argmax ----

var<workgroup> best_v: array<f32, WG>;
var<workgroup> best_i: array<u32, WG>;

// Whether (v, i) beats (bv, bi): NaN never wins, a larger value wins, and a lower index wins a tie.
// `bi == NONE` marks "nothing yet".
fn beats(v: f32, i: u32, bv: f32, bi: u32) -> bool {
    if is_nan(v) {
        return false;
    }
    if bi == NONE {
        return true;
    }
    return v > bv || (v == bv && i < bi);
}

@compute @workgroup_size(256)
fn argmax(@builtin(local_invocation_index) tid: u32) {
    let base = p.row * p.vocab;
    var bv = 0.0;
    var bi = NONE;
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
        if tid < h && best_i[tid + h] != NONE && beats(best_v[tid + h], best_i[tid + h], best_v[tid], best_i[tid]) {
            best_v[tid] = best_v[tid + h];
            best_i[tid] = best_i[tid + h];
        }
        workgroupBarrier();
    }
    if tid == 0u {
        let id = select(best_i[0], 0u, best_i[0] == NONE);
        ids[0] = id;
        tokens[p.slot + st.k] = id;
    }
}

// ---- sample ----

// lowbias32 and the uniform of draw n: src/sampling/mod.rs's `uniform`, bit for bit.
fn lowbias32(x0: u32) -> u32 {
    var x = x0;
    x ^= x >> 16u;
    x *= 0x7feb352du;
    x ^= x >> 15u;
    x *= 0x846ca68bu;
    x ^= x >> 16u;
    return x;
}

fn uniform01(n: u32) -> f32 {
    let key = lowbias32(lowbias32(p.seed_lo ^ 0x9e3779b9u) ^ p.seed_hi);
    return f32(lowbias32(key ^ n) >> 8u) * (1.0 / 16777216.0);
}

// The order-preserving key of a logit that is not NaN: negatives have every bit flipped, the rest the sign bit
// set, and -0 counts as +0 (they compare equal). Never 0 (-inf is 0x007fffff), so 0 is below every key.
fn key_of(v: f32) -> u32 {
    let b = select(bitcast<u32>(v), 0u, v == 0.0);
    return select(b | 0x80000000u, ~b, (b & 0x80000000u) != 0u);
}

fn logit_of(key: u32) -> f32 {
    return bitcast<f32>(select(~key, key ^ 0x80000000u, (key & 0x80000000u) != 0u));
}

// The weight of logit v given the largest, m: exp((v - m) / T), 1 at the max (even an infinite one), 0 at -inf.
fn weight(v: f32, m: f32) -> f32 {
    if v == m {
        return 1.0;
    }
    if bitcast<u32>(v) == 0xff800000u {
        return 0.0;
    }
    return exp((v - m) / p.temperature);
}

// The weight of logit v if the cuts keep it (key >= cut, w >= min_p), else 0. NaNs are never kept.
fn kept_weight(v: f32, cut: u32, m: f32) -> f32 {
    if is_nan(v) || key_of(v) < cut {
        return 0.0;
    }
    let w = weight(v, m);
    return select(0.0, w, w >= p.min_p);
}

var<workgroup> top_key: atomic<u32>;
// Each thread's histogram of the current digit: private, so counting needs no atomics.
var<private> own: array<f32, 16>;
// The histograms of threads 0..127 once the upper half has been added in, bucket-major (bucket b of thread t at
// b * 128 + t), then 16 partial sums per bucket, then the workgroup's histogram.
var<workgroup> halves: array<f32, 2048>;
var<workgroup> parts: array<f32, WG>;
var<workgroup> hist: array<f32, 16>;
// The radix select's state: the key's digits so far, the count or weight above them, the weight to reach.
var<workgroup> sel_prefix: u32;
var<workgroup> sel_above: f32;
var<workgroup> sel_goal: f32;
// The draw: inclusive prefix sums of the chunks' kept weights, the id picked, and 1 + the last id of positive
// kept weight (0: none), the answer when rounding leaves r past every chunk.
var<workgroup> scan: array<f32, WG>;
var<workgroup> picked: atomic<u32>;
var<workgroup> last_kept: atomic<u32>;

// Adds the 256 threads' `own` histograms into `hist`. The upper half hands its histograms to the lower half;
// then 16 threads per bucket add 8 of the 128 each (neighbouring threads read neighbouring words); then one
// thread per bucket adds those 16.
fn add_histograms(tid: u32) {
    if tid >= 128u {
        for (var b = 0u; b < 16u; b++) {
            halves[b * 128u + tid - 128u] = own[b];
        }
    }
    workgroupBarrier();
    if tid < 128u {
        for (var b = 0u; b < 16u; b++) {
            halves[b * 128u + tid] += own[b];
        }
    }
    workgroupBarrier();
    let b = tid / 16u;
    let j = tid % 16u;
    var s = 0.0;
    for (var i = 0u; i < 8u; i++) {
        s += halves[b * 128u + j + 16u * i];
    }
    parts[tid] = s;
    workgroupBarrier();
    if tid < 16u {
        var t = 0.0;
        for (var i = 0u; i < 16u; i++) {
            t += parts[tid * 16u + i];
        }
        hist[tid] = t;
    }
    workgroupBarrier();
}

// The largest key c such that the keys >= c (among those >= `floor`) number at least `goal` (top-k: the key of
// the k-th largest logit), or, `weighted`, weigh at least `goal` times the weight of all of them (top-p). When the
// goal is out of reach (k above the number of logits, or rounding), the lowest digit is taken: everything stays.
// Counts are f32, exact below 2^24 (the launcher refuses larger vocabularies).
fn radix_select(tid: u32, goal: f32, weighted: bool, floor: u32, m: f32) -> u32 {
    let base = p.row * p.vocab;
    if tid == 0u {
        sel_prefix = 0u;
        sel_above = 0.0;
        sel_goal = goal;
    }
    workgroupBarrier();
    for (var level = 0u; level < 8u; level++) {
        let shift = 28u - 4u * level;
        // The digits above this one must match the prefix (none at the first level: a shift by 32 is not one).
        let mask = select(0xffffffffu << (shift + 4u), 0u, level == 0u);
        let prefix = sel_prefix;
        for (var b = 0u; b < 16u; b++) {
            own[b] = 0.0;
        }
        for (var i = tid; i < p.vocab; i += WG) {
            let v = logits[base + i];
            if is_nan(v) {
                continue;
            }
            let key = key_of(v);
            if key < floor || (key & mask) != prefix {
                continue;
            }
            let d = (key >> shift) & 15u;
            if weighted {
                own[d] += weight(v, m);
            } else {
                own[d] += 1.0;
            }
        }
        add_histograms(tid);
        if tid == 0u {
            if weighted && level == 0u {
                // The first level's buckets hold every candidate: the top-p goal is a share of their weight.
                var total = 0.0;
                for (var b = 0u; b < 16u; b++) {
                    total += hist[b];
                }
                sel_goal = goal * total;
            }
            var above = sel_above;
            var digit = 0u;
            for (var d = 15i; d >= 0i; d--) {
                if above + hist[d] >= sel_goal {
                    digit = u32(d);
                    break;
                }
                above += hist[d];
            }
            sel_prefix = prefix | (digit << shift);
            sel_above = above;
        }
        workgroupBarrier();
    }
    let cut = sel_prefix;
    // Nobody may start the next select (and reset the prefix) before everyone has read it.
    workgroupBarrier();
    return cut;
}

@compute @workgroup_size(256)
fn sample(@builtin(local_invocation_index) tid: u32) {
    let base = p.row * p.vocab;
    if tid == 0u {
        atomicStore(&top_key, 0u);
        atomicStore(&last_kept, 0u);
        atomicStore(&picked, NONE);
    }
    workgroupBarrier();
    var mk = 0u;
    for (var i = tid; i < p.vocab; i += WG) {
        let v = logits[base + i];
        if !is_nan(v) {
            mk = max(mk, key_of(v));
        }
    }
    atomicMax(&top_key, mk);
    workgroupBarrier();
    // Meaningless when every logit is NaN, but then nothing reads it.
    let m = logit_of(atomicLoad(&top_key));

    var cut_k = 0u;
    if p.top_k > 0u {
        cut_k = radix_select(tid, f32(p.top_k), false, 0u, m);
    }
    var cut = cut_k;
    if p.top_p < 1.0 {
        cut = max(cut, radix_select(tid, p.top_p, true, cut_k, m));
    }

    // The draw, in id order: thread t owns ids [t * chunk, (t + 1) * chunk).
    let chunk = (p.vocab + WG - 1u) / WG;
    let lo = min(tid * chunk, p.vocab);
    let hi = min(lo + chunk, p.vocab);
    var mass = 0.0;
    var last = 0u;
    for (var i = lo; i < hi; i++) {
        let w = kept_weight(logits[base + i], cut, m);
        mass += w;
        if w > 0.0 {
            last = i + 1u;
        }
    }
    scan[tid] = mass;
    workgroupBarrier();
    for (var off = 1u; off < WG; off <<= 1u) {
        let add = select(0.0, scan[max(tid, off) - off], tid >= off);
        workgroupBarrier();
        scan[tid] += add;
        workgroupBarrier();
    }
    let r = uniform01(p.draw + st.k) * scan[WG - 1u];
    let below = select(0.0, scan[max(tid, 1u) - 1u], tid > 0u);
    // The chunks' intervals [below, scan[tid]) tile [0, total), so one thread holds r; should rounding make two
    // overlap, the lower id wins.
    if mass > 0.0 && below <= r && r < scan[tid] {
        // The same additions as `mass`, so the walk ends at `mass` exactly; should rounding still leave it short
        // of r, the chunk's last kept id is taken.
        let rest = r - below;
        var acc = 0.0;
        var id = last - 1u;
        for (var i = lo; i < hi; i++) {
            acc += kept_weight(logits[base + i], cut, m);
            if acc > rest {
                id = i;
                break;
            }
        }
        atomicMin(&picked, id);
    }
    atomicMax(&last_kept, last);
    workgroupBarrier();
    if tid == 0u {
        var id = atomicLoad(&picked);
        if id == NONE {
            let l = atomicLoad(&last_kept);
            id = select(0u, l - 1u, l > 0u);
        }
        ids[0] = id;
        tokens[p.slot + st.k] = id;
    }
}

@compute @workgroup_size(1)
fn advance() {
    st_rw.pos += 1u;
    st_rw.k += 1u;
}
