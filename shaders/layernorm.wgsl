// LayerNorm of each of the chunk's st.n token rows of `cols` values, from x into y (GPT-2's norms before a
// product: the residual stream x must stay as it is): y = (x - mean) / sqrt(var + eps) * weight + bias, the
// variance over the row (divided by cols), as kernels-cpu's layernorm. One workgroup per token row; the
// weight and bias are f32 at word offsets of their bindings (HAS_BIAS 0: no bias). With RMS 1 it is the RMS
// norm instead (the mean taken as 0): y = x / sqrt(mean(x^2) + eps) * weight, for a norm whose output must go
// to a buffer of its own (a mixture of experts' input).

override HAS_BIAS: u32 = 1u;
override RMS: u32 = 0u;

struct Params {
    cols: u32,
    // Values per row of x and of y.
    x_stride: u32,
    y_stride: u32,
    // Word offsets of the weight and the bias in their bindings.
    w_off: u32,
    b_off: u32,
    eps: f32,
    _pad0: u32,
    _pad1: u32,
}

struct Step {
    n: u32,
    pos: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> st: Step;
@group(0) @binding(2) var<storage, read> weight: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read> x: array<f32>;
@group(0) @binding(5) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    let t = wg.y;
    // Uniform across the workgroup: every thread returns or none does (the barriers need all).
    if t >= st.n {
        return;
    }
    let xb = t * p.x_stride;
    var mean = 0.0;
    if RMS == 0u {
        var s = 0.0;
        for (var c = tid; c < p.cols; c += 64u) {
            s += x[xb + c];
        }
        mean = row_sum(tid, s) / f32(p.cols);
    }
    // The variance from the centred values (two passes), as the CPU computes it.
    var ss = 0.0;
    for (var c = tid; c < p.cols; c += 64u) {
        let d = x[xb + c] - mean;
        ss += d * d;
    }
    let r = 1.0 / sqrt(row_sum(tid, ss) / f32(p.cols) + p.eps);
    let yb = t * p.y_stride;
    for (var c = tid; c < p.cols; c += 64u) {
        var v = (x[xb + c] - mean) * r * weight[p.w_off + c];
        if HAS_BIAS != 0u {
            v += bias[p.b_off + c];
        }
        y[yb + c] = v;
    }
}
