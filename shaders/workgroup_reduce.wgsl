// Reductions across a 64-thread workgroup, one value per thread, the result to every thread: the row sums and
// maxima of the layernorm, moe and lora kernels. All 64 threads must call them, in uniform control flow. A
// barrier opens each, so a previous call's result (every thread reads red[0]) is not overwritten before all
// have read it.

var<workgroup> red: array<f32, 64>;

fn row_sum(tid: u32, v: f32) -> f32 {
    workgroupBarrier();
    red[tid] = v;
    workgroupBarrier();
    for (var h = 32u; h > 0u; h >>= 1u) {
        if tid < h {
            red[tid] += red[tid + h];
        }
        workgroupBarrier();
    }
    return red[0];
}

fn row_max(tid: u32, v: f32) -> f32 {
    workgroupBarrier();
    red[tid] = v;
    workgroupBarrier();
    for (var h = 32u; h > 0u; h >>= 1u) {
        if tid < h {
            red[tid] = max(red[tid], red[tid + h]);
        }
        workgroupBarrier();
    }
    return red[0];
}
