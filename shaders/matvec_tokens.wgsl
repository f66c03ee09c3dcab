// Batched decode matvec: several sequences' next tokens at once (one activation row each), for up to three
// matrices of one weight region. Needs quant.wgsl and matvec.wgsl (parameters, bindings, units, `gather`)
// before it; MODE 0 or 1 (no SwiGLU).
//
// A workgroup owns ROWS rows of one matrix and TOK token rows (tokens wg.x * TOK ..): thread t takes units
// t, t + WG, ... of each row, dequantizes the unit of every row it owns once, and dots it with that unit of
// each token's activations. So the weights are read once per TOK tokens rather than once per token, and a
// step of a few rows still has as many workgroups as a decode matvec (the prefill matmul's 32-row tiles leave
// most of a large GPU idle at that size). Token rows past st.n are computed on the last one, never written.
//
// NORM: each token row is RMS-normed (its 1 / rms gathered first, all tokens' sums in one reduction).
// The row stride of y is `p.x_last` (values per token row), which the single-row matvec reads as a flag.

override TOK: u32 = 8u;

// ROWS * TOK partial sums per thread at most.
const TOKEN_SLOTS: u32 = 16u;
var<workgroup> red_tokens: array<f32, 1024>; // TOKEN_SLOTS x WG (64 at most)
var<workgroup> token_scale: array<f32, 16>;

// Values of a unit: 16 for the GGUF blocks and ternary, 8 for int4, 4 otherwise (the rest of `unit_w` is 0).
fn unit_len() -> u32 {
    if is_ggml(LAYOUT) || LAYOUT == 4u {
        return 16u;
    }
    return select(4u, 8u, LAYOUT == 3u);
}

// Unit `u` of row `r` of the matrix (rows, data, scales, mins as word offsets), dequantized in the order
// `gather` returns its activations.
fn unit_w(mat: vec4<u32>, r: u32, u: u32, cols: u32) -> array<f32, 16> {
    var o: array<f32, 16>;
    let q = mat.y;
    let s = mat.z;
    let gpr = cols / 32u;
    if is_ggml(LAYOUT) {
        return ggml16(LAYOUT, q, r * cols + 16u * u);
    }
    switch LAYOUT {
        case 0u: {
            for (var i = 0u; i < 4u; i++) {
                let c = 4u * u + i;
                o[i] = select(0.0, bitcast<f32>(w[q + r * cols + min(c, cols - 1u)]), c < cols);
            }
        }
        case 1u: {
            for (var i = 0u; i < 4u; i++) {
                let c = 4u * u + i;
                o[i] = select(0.0, f16_at(q, r * cols + min(c, cols - 1u)), c < cols);
            }
        }
        case 2u: {
            let word = w[q + r * (cols / 4u) + u];
            let d = f16_at(s, r * gpr + (u >> 3u));
            for (var i = 0u; i < 4u; i++) {
                o[i] = d * sbyte(word, i);
            }
        }
        case 3u: {
            let word = w[q + r * (cols / 8u) + u];
            let gi = r * gpr + (u >> 2u);
            let d = f16_at(s, gi);
            let m = f16_at(mat.w, gi);
            for (var i = 0u; i < 4u; i++) {
                o[i] = d * f32((word >> (8u * i)) & 15u) + m;
                o[4u + i] = d * f32((word >> (8u * i + 4u)) & 15u) + m;
            }
        }
        case 4u: {
            let word = w[q + r * (cols / 16u) + u];
            let d = f16_at(s, r * gpr + (u >> 1u));
            for (var j = 0u; j < 4u; j++) {
                for (var i = 0u; i < 4u; i++) {
                    let code = (word >> (8u * i + 2u * j)) & 3u;
                    o[4u * j + i] = d * select(select(0.0, -1.0, code == 0u), 1.0, code == 2u);
                }
            }
        }
        default: {}
    }
    return o;
}

@compute @workgroup_size(WG)
fn tokens(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    let cols = p.cols;
    let t0 = wg.x * TOK;
    let last = st.n - 1u;
    var mi = 0u;
    var first = wg.y;
    if wg.y >= p.blocks1 {
        mi = select(1u, 2u, wg.y >= p.blocks2);
        first = wg.y - select(p.blocks1, p.blocks2, wg.y >= p.blocks2);
    }
    let mat = p.mats[mi];
    let r0 = first * ROWS;

    if NORM {
        for (var t = 0u; t < TOK; t++) {
            let x0 = min(t0 + t, last) * cols;
            var ss = 0.0;
            for (var c = tid; c < cols; c += WG) {
                let v = x[x0 + c];
                ss += v * v;
            }
            red_tokens[t * WG + tid] = ss;
        }
        workgroupBarrier();
        for (var h = WG / 2u; h > 0u; h >>= 1u) {
            if tid < h {
                for (var t = 0u; t < TOK; t++) {
                    red_tokens[t * WG + tid] += red_tokens[t * WG + tid + h];
                }
            }
            workgroupBarrier();
        }
        if tid < TOK {
            token_scale[tid] = 1.0 / sqrt(red_tokens[tid * WG] / f32(cols) + p.eps);
        }
        workgroupBarrier();
    }

    var acc: array<f32, TOKEN_SLOTS>;
    let units = units_per_row(cols);
    let n = unit_len();
    for (var u = tid; u < units; u += WG) {
        var wv: array<array<f32, 16>, 4>;
        for (var k = 0u; k < ROWS; k++) {
            wv[k] = unit_w(mat, min(r0 + k, mat.x - 1u), u, cols);
        }
        for (var t = 0u; t < TOK; t++) {
            let xv = gather(min(t0 + t, last) * cols, u, cols);
            for (var k = 0u; k < ROWS; k++) {
                var d = 0.0;
                for (var i = 0u; i < n; i++) {
                    d += wv[k][i] * xv[i];
                }
                acc[k * TOK + t] += d;
            }
        }
    }
    let slots = ROWS * TOK;
    for (var s = 0u; s < slots; s++) {
        red_tokens[s * WG + tid] = acc[s];
    }
    workgroupBarrier();
    for (var h = WG / 2u; h > 0u; h >>= 1u) {
        if tid < h {
            for (var s = 0u; s < slots; s++) {
                red_tokens[s * WG + tid] += red_tokens[s * WG + tid + h];
            }
        }
        workgroupBarrier();
    }
    if tid >= slots {
        return;
    }
    let k = tid / TOK;
    let t = t0 + tid % TOK;
    let r = r0 + k;
    if r >= mat.x || t > last {
        return;
    }
    var v = red_tokens[tid * WG];
    if NORM {
        v *= token_scale[tid % TOK];
    }
    let out = p.outs[mi];
    if out.z == 1u {
        v += bitcast<f32>(w[out.y + r]);
    }
    let at = t * p.x_last + out.x + r;
    if MODE == 1u {
        y[at] += v;
    } else {
        y[at] = v;
    }
}
