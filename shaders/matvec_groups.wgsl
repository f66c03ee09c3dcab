// Decode matvec over whole groups with vec4 loads: y = W x for up to three matrices of one weight region, for
// `cols % 32 == 0` (every quantized layout, GGUF blocks through matvec_ggml.wgsl; f32/f16 with such shapes).
// Needs matvec_ggml.wgsl, matvec_teams.wgsl (parameters, bindings and MODEs of matvec.wgsl, row blocks, the
// norm, the store) and a reduction (reduce_shared.wgsl, portable, or reduce_subgroup.wgsl) after it.
//
// The workgroup's WG threads form WG / TS teams of TS lanes; a team owns 4 rows (accumulated in a vec4, and
// a second vec4 for the up rows of MODE 2: no private arrays indexed at run time). Lane l takes groups
// l, l + TS, ... of the row: it loads the group's 32 activations once (8 vec4, times the norm weight if NORM)
// and dots them with that group of each of its rows (one vec4 of int4 data, two of int8, ...), so activation
// loads are shared by ROWS rows. TS is about the groups per row, so short rows (small models) still keep every
// lane busy. Everything is read as vec4: the weight file's sections are 256-byte aligned. With LAYER, x is
// LayerNormed on load instead, as in matvec.wgsl.

override LAYOUT: u32 = 0u;

fn sbytes(word: u32) -> vec4<f32> {
    let v = vec4<i32>(bitcast<i32>(word << 24u), bitcast<i32>(word << 16u), bitcast<i32>(word << 8u), bitcast<i32>(word));
    return vec4<f32>(v >> vec4<u32>(24u));
}

fn nibbles(word: u32) -> vec4<f32> {
    return vec4<f32>(vec4<u32>(word, word >> 8u, word >> 16u, word >> 24u) & vec4<u32>(15u));
}

// Group `g` of row `r` of matrix `m` (rows, data, scales, mins as word offsets) times the activations `xg`
// (`xs` their sum, for int4's min term).
fn group_dot(m: vec4<u32>, r: u32, g: u32, gpr: u32, xg: array<vec4<f32>, 8>, xs: f32) -> f32 {
    let gi = r * gpr + g;
    if is_ggml_layout(LAYOUT) {
        return ggml_group_dot(m.y, gi, xg, xs);
    }
    let q4 = m.y >> 2u;
    var a = 0.0;
    switch LAYOUT {
        case 0u: {
            for (var k = 0u; k < 8u; k++) {
                a += dot(bitcast<vec4<f32>>(w[q4 + gi * 8u + k]), xg[k]);
            }
        }
        case 1u: {
            for (var k = 0u; k < 4u; k++) {
                let v = w[q4 + gi * 4u + k];
                a += dot(vec4<f32>(unpack2x16float(v.x), unpack2x16float(v.y)), xg[2u * k]);
                a += dot(vec4<f32>(unpack2x16float(v.z), unpack2x16float(v.w)), xg[2u * k + 1u]);
            }
        }
        case 2u: {
            for (var h = 0u; h < 2u; h++) {
                let v = w[q4 + gi * 2u + h];
                a += dot(sbytes(v.x), xg[4u * h]) + dot(sbytes(v.y), xg[4u * h + 1u]);
                a += dot(sbytes(v.z), xg[4u * h + 2u]) + dot(sbytes(v.w), xg[4u * h + 3u]);
            }
            a *= half_at(m.z, gi);
        }
        case 3u: {
            let v = w[q4 + gi];
            for (var j = 0u; j < 4u; j++) {
                a += dot(nibbles(v[j]), xg[j]) + dot(nibbles(v[j] >> 4u), xg[4u + j]);
            }
            a = half_at(m.z, gi) * a + half_at(m.w, gi) * xs;
        }
        default: {
            let v = w[q4 + (gi >> 1u)];
            let pair = select(v.xy, v.zw, (gi & 1u) == 1u);
            for (var i = 0u; i < 2u; i++) {
                let word = pair[i];
                for (var j = 0u; j < 4u; j++) {
                    let s = 2u * j;
                    let codes = vec4<u32>(word >> s, word >> (8u + s), word >> (16u + s), word >> (24u + s)) & vec4<u32>(3u);
                    a += dot(vec4<f32>(codes) - 1.0, xg[2u * j + i]);
                }
            }
            a *= half_at(m.z, gi);
        }
    }
    return a;
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) tid: u32) {
    let block = wg.x + wg.y * nwg.x;
    let cols = p.cols;
    let x0 = select(0u, (st.n - 1u) * cols, p.x_last == 1u) / 4u;
    let rb = row_block(block);
    let mat = p.mats[rb.mi];
    let team = tid / TS;
    let lane = tid % TS;
    let r0 = (rb.first * (WG / TS) + team) * ROWS;
    let slots = select(ROWS, 2u * ROWS, MODE == 2u);

    if NORM {
        gather_norm_scale(x0, tid);
    }

    var acc = vec4<f32>(0.0);
    var acc_up = vec4<f32>(0.0);
    let gpr = cols / 32u;
    // Rows past the matrix are computed on its last row and never written.
    let last = mat.x - 1u;
    let rows = vec4<u32>(min(r0, last), min(r0 + 1u, last), min(r0 + 2u, last), min(r0 + 3u, last));
    for (var g = lane; g < gpr; g += TS) {
        var xg: array<vec4<f32>, 8>;
        var s4 = vec4<f32>(0.0);
        for (var k = 0u; k < 8u; k++) {
            var v = x[x0 + g * 8u + k];
            if NORM && LAYER {
                v = (v - norm_mean) * norm_scale * nw[(p.norm >> 2u) + g * 8u + k] + nw[(p.norm_bias >> 2u) + g * 8u + k];
            } else if NORM {
                v *= nw[(p.norm >> 2u) + g * 8u + k];
            }
            xg[k] = v;
            s4 += v;
        }
        let xs = dot(s4, vec4<f32>(1.0));
        acc += vec4<f32>(group_dot(mat, rows.x, g, gpr, xg, xs), group_dot(mat, rows.y, g, gpr, xg, xs),
                         group_dot(mat, rows.z, g, gpr, xg, xs), group_dot(mat, rows.w, g, gpr, xg, xs));
        if MODE == 2u {
            let up = p.mats[1];
            acc_up += vec4<f32>(group_dot(up, rows.x, g, gpr, xg, xs), group_dot(up, rows.y, g, gpr, xg, xs),
                                group_dot(up, rows.z, g, gpr, xg, xs), group_dot(up, rows.w, g, gpr, xg, xs));
        }
    }
    reduce(acc, acc_up, tid, lane, team, slots);

    store_team_rows(tid, rb, slots, select(1.0, norm_scale, NORM && !LAYER));
}
