// RMS norm, one workgroup per row: out = x / sqrt(mean(x^2) + eps) * weight, as kernels-cpu's rmsnorm.
// (The engine fuses the norm into the following matvec / matmul; this standalone kernel serves the rest.)

struct Params {
    cols: u32,
    rows: u32,
    eps: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> weight: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

var<workgroup> red: array<f32, 64>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    let row = wg.x;
    let base = row * p.cols;
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
        out[base + c] = x[base + c] * r * weight[c];
    }
}
