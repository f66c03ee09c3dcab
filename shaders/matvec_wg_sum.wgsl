// The workgroup sum the matvec kernels' norm prologues use (matvec.wgsl, matvec_teams.wgsl): `v` summed over
// the WG threads, the result to every thread, through the kernel's own `red` (at least WG values). All
// threads call it in uniform control flow; it ends with a barrier, so `red` is free again when it returns.

fn wg_sum(v: f32, tid: u32) -> f32 {
    red[tid] = v;
    workgroupBarrier();
    for (var h = WG / 2u; h > 0u; h >>= 1u) {
        if tid < h {
            red[tid] += red[tid + h];
        }
        workgroupBarrier();
    }
    let total = red[0];
    workgroupBarrier();
    return total;
}

