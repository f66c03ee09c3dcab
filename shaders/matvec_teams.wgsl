// The frame both team matvecs share (matvec_groups.wgsl: f32 activations, matvec_q8.wgsl: int8 ones): their
// parameters and bindings (those of matvec.wgsl), which matrix and rows a workgroup owns, the RMS norm's
// 1 / rms, and the store of the team sums. Concatenated after the kernel, before its reduction.
//
// The workgroup's WG threads form WG / TS teams of TS lanes; a team owns ROWS rows (and ROWS up rows in
// MODE 2). MODE 0 stores y, 1 adds into it (the residual), 2 stores silu(gate) * up of two matrices.

override WG: u32 = 64u;
override TS: u32 = 64u;
override NORM: bool = false;
// A LayerNorm rather than an RMS norm (the f32 kernel only): see matvec.wgsl.
override LAYER: bool = false;
override MODE: u32 = 0u;

struct Params {
    cols: u32,
    n_mats: u32,
    norm: u32,
    eps: f32,
    blocks1: u32,
    blocks2: u32,
    x_last: u32,
    norm_bias: u32,
    mats: array<vec4<u32>, 3>,
    outs: array<vec4<u32>, 3>,
}

struct Step {
    n: u32,
    pos: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> st: Step;
@group(0) @binding(2) var<storage, read> w: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read> nw: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> y: array<f32>;

const ROWS: u32 = 4u;
var<workgroup> norm_scale: f32;
var<workgroup> norm_mean: f32;

fn word_at(i: u32) -> u32 {
    return w[i >> 2u][i & 3u];
}

// f16 number `i` of the array starting at word `base`.
fn half_at(base: u32, i: u32) -> f32 {
    let pair = unpack2x16float(word_at(base + (i >> 1u)));
    return select(pair.x, pair.y, (i & 1u) == 1u);
}

fn silu(v: f32) -> f32 {
    return v / (1.0 + exp(-v));
}

// Row block `block` of the dispatch: matrix `mi`, its block `first` (MODE 2 walks gate and up together).
struct RowBlock {
    mi: u32,
    first: u32,
}

fn row_block(block: u32) -> RowBlock {
    if MODE != 2u && block >= p.blocks1 {
        let second = block >= p.blocks2;
        return RowBlock(select(1u, 2u, second), block - select(p.blocks1, p.blocks2, second));
    }
    return RowBlock(0u, block);
}

// 1 / rms of the activation row starting at vec4 `x0` into `norm_scale`, for every thread; with LAYER, the
// row's mean into `norm_mean` and 1 / sqrt(variance + eps) into `norm_scale`.
fn gather_norm_scale(x0: u32, tid: u32) {
    var mean = 0.0;
    if LAYER {
        var s = 0.0;
        for (var c = tid; c < p.cols / 4u; c += WG) {
            s += dot(x[x0 + c], vec4<f32>(1.0));
        }
        mean = wg_sum(s, tid) / f32(p.cols);
    }
    var ss = 0.0;
    for (var c = tid; c < p.cols / 4u; c += WG) {
        let v = x[x0 + c] - mean;
        ss += dot(v, v);
    }
    let total = wg_sum(ss, tid);
    if tid == 0u {
        norm_scale = 1.0 / sqrt(total / f32(p.cols) + p.eps);
        norm_mean = mean;
    }
    workgroupBarrier();
}

// After `reduce`: thread t * ROWS + k writes row k of team t from sums[t * slots + k] (and its up row), times
// `scale`, plus the bias, as MODE says.
fn store_team_rows(tid: u32, b: RowBlock, slots: u32, scale: f32) {
    if tid >= (WG / TS) * ROWS {
        return;
    }
    let t = tid / ROWS;
    let k = tid % ROWS;
    let r = (b.first * (WG / TS) + t) * ROWS + k;
    if r >= p.mats[b.mi].x {
        return;
    }
    var v = sums[t * slots + k] * scale;
    let out = p.outs[b.mi];
    if out.z == 1u {
        v += bitcast<f32>(word_at(out.y + r));
    }
    if MODE == 0u {
        y[out.x + r] = v;
    } else if MODE == 1u {
        y[out.x + r] += v;
    } else {
        var up = sums[t * slots + ROWS + k] * scale;
        let o1 = p.outs[1];
        if o1.z == 1u {
            up += bitcast<f32>(word_at(o1.y + r));
        }
        y[out.x + r] = silu(v) * up;
    }
}
