// RMS norm in place over groups of `cols` values: for each of the chunk's st.n tokens, groups g = 0..groups
// starting at `t * stride + offset + g * cols` of x. One workgroup per (group, token). The whole row of a
// buffer (groups 1) or each query or key head of the fused qkv rows (gemma3's q/k norms) are such groups.
// out = x / sqrt(mean(x^2) + eps) * weight, as kernels-cpu's rmsnorm. (A norm before a matrix product is fused
// into the product's kernel; this one serves the norms that are not.)

struct Params {
    cols: u32,
    groups: u32,
    stride: u32,
    offset: u32,
    // Word offset of the weight in its binding.
    w_off: u32,
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
@group(0) @binding(3) var<storage, read_write> x: array<f32>;

var<workgroup> red: array<f32, 64>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    let t = wg.y;
    if t >= st.n {
        return;
    }
    let base = t * p.stride + p.offset + wg.x * p.cols;
    var ss = 0.0;
    for (var c = tid; c < p.cols; c += 64u) {
        let v = x[base + c];
        ss += v * v;
    }
    red[tid] = ss;
    workgroupBarrier();
    for (var h = 32u; h > 0u; h >>= 1u) {
        if tid < h {
            red[tid] += red[tid + h];
        }
        workgroupBarrier();
    }
    let r = 1.0 / sqrt(red[0] / f32(p.cols) + p.eps);
    for (var c = tid; c < p.cols; c += 64u) {
        x[base + c] = x[base + c] * r * weight[p.w_off + c];
    }
}
