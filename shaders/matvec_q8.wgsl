// Decode matvec with int8 activations, the twin of kernels-cpu's q8 path (kernels-cpu/src/q8/): y = W x for up
// to three matrices of one weight region with int8, int4 or ternary weights and `cols % 32 == 0`. Shares
// matvec_teams.wgsl (parameters, bindings, MODEs, row blocks, the store) and the reductions (reduce_shared.wgsl
// or reduce_subgroup.wgsl) with matvec_groups.wgsl, concatenated after it.
//
// The workgroup first quantizes x into workgroup memory, CHUNK groups of 32 at a time, one group per thread,
// by kernels-cpu's rule: `d = amax / 127`, `q = round_ties_even(x * (1 / d))` clamped to -128..=127, and the
// group's `sum(q)`. Both divisions are done in integer arithmetic (`div127`, `recip`) because WGSL's `/` may
// be 2.5 ulp off: the quants then equal the CPU's bit for bit. With NORM, x is first normed as kernels-cpu's
// rmsnorm does, `(x * r) * w`, so nothing is rescaled after the sums.
//
// Then lane l of a team takes groups l, l + TS, ... of the chunk and dots them with its 4 rows (8 with
// MODE 2) by `dot4I8Packed` (exact integer sums), scaled per group in f32:
//   int8:    d_w d_x sum(q_w q_x)
//   int4:    d_w d_x sum(q_w q_x) + m_w (d_x sum(q_x))
//   ternary: d_w d_x (sum(c q_x) - sum(q_x)), codes c = 0, 1, 2

override LAYOUT: u32 = 2u;

// Groups of x quantized per pass (4096 columns, 5 KiB).
const CHUNK: u32 = 128u;

// Group s of the chunk: its quants (values 0..15, then 16..31, 4 per word, value 0 in the low byte), d, sum(q).
var<workgroup> xq: array<vec4<u32>, 256>;
var<workgroup> xd: array<f32, CHUNK>;
var<workgroup> xn: array<i32, CHUNK>;

// `a / 127` rounded to nearest, as the CPU's f32 division gives it, for `a >= 0`; 0 below 2^-119, where the
// CPU's scale would be subnormal. With a's 24-bit mantissa m, a / 127 = (m << s) / 127 * 2^(e - 150 - s),
// s chosen for a 24-bit quotient; 127 is odd, so there are no ties.
fn div127(a: f32) -> f32 {
    let e = bitcast<u32>(a) >> 23u;
    if e < 8u {
        return 0.0;
    }
    let m = (bitcast<u32>(a) & 0x7fffffu) | 0x800000u;
    let s = select(7u, 6u, (m << 7u) / 127u >= 0x1000000u);
    let n = m << s;
    var q = n / 127u + select(0u, 1u, 2u * (n % 127u) > 127u);
    var eb = e - s;
    if q == 0x1000000u {
        q = 0x800000u;
        eb += 1u;
    }
    return bitcast<f32>((eb << 23u) | (q & 0x7fffffu));
}

// `1 / d` rounded to nearest, as the CPU's f32 division gives it, for a normal `d > 0` below 2^125: 2^47
// divided by d's 24-bit mantissa m, a byte of quotient at a time (remainders stay below m < 2^24). Unless m
// is a power of two (exact), 2^47 / m lies in (2^23, 2^24) and is never halfway.
fn recip(d: f32) -> f32 {
    let e = bitcast<u32>(d) >> 23u;
    let m = (bitcast<u32>(d) & 0x7fffffu) | 0x800000u;
    if m == 0x800000u {
        return bitcast<f32>((254u - e) << 23u);
    }
    var q = 0u;
    var r = 0x800000u;
    for (var k = 0u; k < 3u; k++) {
        r <<= 8u;
        q = (q << 8u) | (r / m);
        r %= m;
    }
    q += select(0u, 1u, 2u * r > m);
    var eb = 253u - e;
    if q == 0x1000000u {
        q = 0x800000u;
        eb += 1u;
    }
    return bitcast<f32>((eb << 23u) | (q & 0x7fffffu));
}

// Quantizes group `g` of the row starting at vec4 `x0` into slot `s` of the workgroup tables.
fn quantize(x0: u32, g: u32, s: u32) {
    var v: array<vec4<f32>, 8>;
    var amax = 0.0;
    for (var k = 0u; k < 8u; k++) {
        var t = x[x0 + g * 8u + k];
        if NORM {
            t = t * norm_scale * nw[(p.norm >> 2u) + g * 8u + k];
        }
        v[k] = t;
        let a = abs(t);
        amax = max(amax, max(max(a.x, a.y), max(a.z, a.w)));
    }
    let d = div127(amax);
    let id = select(0.0, recip(d), d != 0.0);
    var sum = 0i;
    for (var h = 0u; h < 2u; h++) {
        var words: vec4<u32>;
        for (var j = 0u; j < 4u; j++) {
            let q = clamp(vec4<i32>(round(v[4u * h + j] * id)), vec4<i32>(-128), vec4<i32>(127));
            sum += q.x + q.y + q.z + q.w;
            words[j] = pack4xI8(q);
        }
        xq[2u * s + h] = words;
    }
    xd[s] = d;
    xn[s] = sum;
}

// The 2-bit codes `j` (0..3) of each byte of a ternary word, as 4 bytes.
fn codes(word: u32, j: u32) -> u32 {
    return (word >> (2u * j)) & 0x03030303u;
}

// sum(q_w q_x) over group `gi` of a matrix whose data starts at vec4 `q4`; `a`, `b`: the group's quants (values
// 0..15, 16..31), `n` their sum.
fn idot(q4: u32, gi: u32, a: vec4<u32>, b: vec4<u32>, n: i32) -> i32 {
    switch LAYOUT {
        case 2u: {
            let lo = w[q4 + 2u * gi];
            let hi = w[q4 + 2u * gi + 1u];
            return dot4I8Packed(lo.x, a.x) + dot4I8Packed(lo.y, a.y) + dot4I8Packed(lo.z, a.z)
                + dot4I8Packed(lo.w, a.w) + dot4I8Packed(hi.x, b.x) + dot4I8Packed(hi.y, b.y)
                + dot4I8Packed(hi.z, b.z) + dot4I8Packed(hi.w, b.w);
        }
        case 3u: {
            // Word j: values 4j..4j+3 in the low nibbles, 16+4j.. in the high ones (0..15: positive as i8).
            let v = w[q4 + gi];
            let lo = v & vec4<u32>(0x0f0f0f0fu);
            let hi = (v >> vec4<u32>(4u)) & vec4<u32>(0x0f0f0f0fu);
            return dot4I8Packed(lo.x, a.x) + dot4I8Packed(lo.y, a.y) + dot4I8Packed(lo.z, a.z)
                + dot4I8Packed(lo.w, a.w) + dot4I8Packed(hi.x, b.x) + dot4I8Packed(hi.y, b.y)
                + dot4I8Packed(hi.z, b.z) + dot4I8Packed(hi.w, b.w);
        }
        default: {
            // Byte k of word i holds value 8j + 4i + k in bits 2j..2j+2: activation word 2j + i.
            let v = w[q4 + (gi >> 1u)];
            let pair = select(v.xy, v.zw, (gi & 1u) == 1u);
            return dot4I8Packed(codes(pair.x, 0u), a.x) + dot4I8Packed(codes(pair.y, 0u), a.y)
                + dot4I8Packed(codes(pair.x, 1u), a.z) + dot4I8Packed(codes(pair.y, 1u), a.w)
                + dot4I8Packed(codes(pair.x, 2u), b.x) + dot4I8Packed(codes(pair.y, 2u), b.y)
                + dot4I8Packed(codes(pair.x, 3u), b.z) + dot4I8Packed(codes(pair.y, 3u), b.w) - n;
        }
    }
}

// Group `g` of row `r` of matrix `m` (rows, data, scales, mins as word offsets) against the quantized group
// (`a`, `b` its quants, `dx` its scale, `n` the sum of its quants).
fn group_dot(m: vec4<u32>, r: u32, g: u32, gpr: u32, a: vec4<u32>, b: vec4<u32>, dx: f32, n: i32) -> f32 {
    let gi = r * gpr + g;
    var v = half_at(m.z, gi) * dx * f32(idot(m.y >> 2u, gi, a, b, n));
    if LAYOUT == 3u {
        v += half_at(m.w, gi) * (dx * f32(n));
    }
    return v;
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
    for (var c0 = 0u; c0 < gpr; c0 += CHUNK) {
        let n = min(CHUNK, gpr - c0);
        // The previous chunk is read (and norm_scale written) before the tables are filled again.
        workgroupBarrier();
        for (var s = tid; s < n; s += WG) {
            quantize(x0, c0 + s, s);
        }
        workgroupBarrier();
        for (var s = lane; s < n; s += TS) {
            let a = xq[2u * s];
            let b = xq[2u * s + 1u];
            let dx = xd[s];
            let qn = xn[s];
            let g = c0 + s;
            acc += vec4<f32>(group_dot(mat, rows.x, g, gpr, a, b, dx, qn),
                             group_dot(mat, rows.y, g, gpr, a, b, dx, qn),
                             group_dot(mat, rows.z, g, gpr, a, b, dx, qn),
                             group_dot(mat, rows.w, g, gpr, a, b, dx, qn));
            if MODE == 2u {
                let up = p.mats[1];
                acc_up += vec4<f32>(group_dot(up, rows.x, g, gpr, a, b, dx, qn),
                                    group_dot(up, rows.y, g, gpr, a, b, dx, qn),
                                    group_dot(up, rows.z, g, gpr, a, b, dx, qn),
                                    group_dot(up, rows.w, g, gpr, a, b, dx, qn));
            }
        }
    }
    reduce(acc, acc_up, tid, lane, team, slots);

    store_team_rows(tid, rb, slots, 1.0);
}
