// Team sums through shared memory (portable): after `reduce`, sums[team * slots + k] is the sum of slot k of
// (acc, acc_up) over the team's TS lanes. For matvec_groups.wgsl.

var<workgroup> red: array<f32, 1024>; // slots x WG
var<workgroup> sums: array<f32, 256>;

fn reduce(acc: vec4<f32>, acc_up: vec4<f32>, tid: u32, lane: u32, team: u32, slots: u32) {
    for (var k = 0u; k < 4u; k++) {
        red[k * WG + tid] = acc[k];
        if slots > 4u {
            red[(4u + k) * WG + tid] = acc_up[k];
        }
    }
    workgroupBarrier();
    for (var h = TS / 2u; h > 0u; h >>= 1u) {
        if lane < h {
            for (var k = 0u; k < slots; k++) {
                red[k * WG + tid] += red[k * WG + tid + h];
            }
        }
        workgroupBarrier();
    }
    if lane == 0u {
        for (var k = 0u; k < slots; k++) {
            sums[team * slots + k] = red[k * WG + tid];
        }
    }
    workgroupBarrier();
}
