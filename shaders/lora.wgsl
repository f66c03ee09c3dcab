// LoRA applied unmerged: a linear op's output gains `s * B (A x̂)` for each active adapter of one of its
// matrices, A [rank, cols] and B [rows, rank] in f32, x̂ the op's input after its norm. Two kernels over the
// chunk's st.n token rows:
//   down: t[row, t_off + k] = sum_c A[k, c] x̂[row, c], one workgroup per (k, row), a shared-memory reduction
//         over c. With NORM (p.norm = 1), x̂ = x * r * w, r = 1 / sqrt(mean(x^2) + eps): the RMS norm the
//         product's prologue fuses, recomputed here (as shaders/norm.wgsl computes it) since the normed row
//         is never stored.
//   up:   y[row, y_off + i] += s * sum_k B[i, k] t[row, t_off + k], one thread per (i, row); s is
//         scales[p.scale_at], so that a set of adapters is switched by rewriting one small buffer.
// Portable: f32 only, no subgroups.

struct Params {
    // down: columns of A (values of x̂); up: rows of B (outputs).
    cols: u32,
    rank: u32,
    // Values per row of x (down) or y (up).
    stride: u32,
    // Values per row of t, and this adapter's first column there.
    t_stride: u32,
    t_off: u32,
    // down: whether x is RMS-normed on load, the norm weight's word offset in `nw`, and eps.
    norm: u32,
    w_off: u32,
    eps: f32,
    // up: the first output column of this matrix in y, and where its scale s is in `scales`.
    y_off: u32,
    scale_at: u32,
    _pad0: u32,
    _pad1: u32,
}

struct Step {
    n: u32,
    pos: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> st: Step;
// down
@group(0) @binding(2) var<storage, read> nw: array<f32>;
@group(0) @binding(3) var<storage, read> x: array<f32>;
@group(0) @binding(4) var<storage, read> a: array<f32>;
@group(0) @binding(5) var<storage, read_write> t_out: array<f32>;
// up
@group(0) @binding(6) var<storage, read> b: array<f32>;
@group(0) @binding(7) var<storage, read> t_in: array<f32>;
@group(0) @binding(8) var<storage, read_write> y: array<f32>;
@group(0) @binding(9) var<storage, read> scales: array<f32>;

@compute @workgroup_size(64)
fn down(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    let row = wg.y;
    if row >= st.n {
        return;
    }
    let k = wg.x;
    let xb = row * p.stride;
    var r = 1.0;
    if p.norm != 0u {
        var ss = 0.0;
        for (var c = tid; c < p.cols; c += 64u) {
            let v = x[xb + c];
            ss += v * v;
        }
        r = 1.0 / sqrt(row_sum(tid, ss) / f32(p.cols) + p.eps);
    }
    let ab = k * p.cols;
    var acc = 0.0;
    for (var c = tid; c < p.cols; c += 64u) {
        var v = x[xb + c];
        if p.norm != 0u {
            v *= nw[p.w_off + c];
        }
        acc += a[ab + c] * v;
    }
    let total = row_sum(tid, acc);
    if tid == 0u {
        t_out[row * p.t_stride + p.t_off + k] = total * r;
    }
}

@compute @workgroup_size(64)
fn up(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    let row = wg.y;
    let i = wg.x * 64u + tid;
    if row >= st.n || i >= p.cols {
        return;
    }
    let tb = row * p.t_stride + p.t_off;
    let bb = i * p.rank;
    var acc = 0.0;
    for (var k = 0u; k < p.rank; k++) {
        acc += b[bb + k] * t_in[tb + k];
    }
    let at = row * p.stride + p.y_off + i;
    y[at] += scales[p.scale_at] * acc;
}
