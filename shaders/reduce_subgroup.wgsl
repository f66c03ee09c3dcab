// Team sums with subgroup shuffles: a butterfly over aligned blocks of SG lanes (SG = the adapter's smallest
// subgroup size, so a block never straddles two subgroups), then shared memory across the blocks of a team.
// After `reduce`, sums[team * slots + k] is the sum of slot k of (acc, acc_up) over the team's TS lanes.
// For matvec_groups.wgsl; needs the SUBGROUP feature.

override SG: u32 = 32u;

var<workgroup> red: array<f32, 1024>;
var<workgroup> sums: array<f32, 256>;

fn reduce(acc: vec4<f32>, acc_up: vec4<f32>, tid: u32, lane: u32, team: u32, slots: u32) {
    let width = min(TS, SG);
    let blocks = TS / width;
    var v = acc;
    var u = acc_up;
    for (var o = width / 2u; o > 0u; o >>= 1u) {
        v += subgroupShuffleXor(v, o);
        if slots > 4u {
            u += subgroupShuffleXor(u, o);
        }
    }
    if lane % width == 0u {
        for (var k = 0u; k < 4u; k++) {
            red[(team * slots + k) * blocks + lane / width] = v[k];
            if slots > 4u {
                red[(team * slots + 4u + k) * blocks + lane / width] = u[k];
            }
        }
    }
    workgroupBarrier();
    if lane == 0u {
        for (var k = 0u; k < slots; k++) {
            var s = 0.0;
            for (var b = 0u; b < blocks; b++) {
                s += red[(team * slots + k) * blocks + b];
            }
            sums[team * slots + k] = s;
        }
    }
    workgroupBarrier();
}
