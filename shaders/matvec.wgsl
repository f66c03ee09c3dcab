// Decode matvec, portable: y = W x for up to three matrices of one weight region at once (q/k/v, gate/up),
// one activation row. Needs quant.wgsl before it.
//
// A workgroup owns ROWS rows (of one matrix; in MODE 2 the same ROWS rows of matrices 0 and 1). The row is cut
// into units (one data word of a quantized layout, four values of f32/f16, sixteen values of a GGUF block); thread t takes units t, t + WG, ...,
// loads the unit's activations once and multiplies them with every row it owns, then the workgroup sums the
// threads' partials in shared memory.
//
// NORM: x is RMS-normed on load: the workgroup first computes r = 1 / sqrt(mean(x^2) + eps) over the row and
// uses x[c] * norm[c], scaling each sum by r (the norm and the matrix product fused). With LAYER it is a
// LayerNorm instead: mean m and r = 1 / sqrt(mean((x - m)^2) + eps) first, then (x[c] - m) * r * norm[c] +
// bias[c] on load (GPT-2's ln before each product).
// MODE 0: y[out + r] = sum (+ bias).  MODE 1: y[out + r] += sum (+ bias), the residual add.
// MODE 2: y[out + r] = silu(sum0) * sum1 (SwiGLU on the gate and up rows).

override LAYOUT: u32 = 0u;
override WG: u32 = 64u;
override ROWS: u32 = 4u;
override NORM: bool = false;
override LAYER: bool = false;
override MODE: u32 = 0u;

struct Params {
    cols: u32,
    n_mats: u32,
    // Word offset of the norm weight (f32) in `nw`.
    norm: u32,
    eps: f32,
    // Row blocks before matrix 1 and before matrix 2.
    blocks1: u32,
    blocks2: u32,
    // 1: read the activation row `st.n - 1` of x (the last token of a chunk) instead of row 0.
    x_last: u32,
    // LAYER: the word offset of the LayerNorm's f32 bias in `nw`.
    norm_bias: u32,
    // Per matrix: rows, and the word offsets of its data, scales and mins in `w`.
    mats: array<vec4<u32>, 3>,
    // Per matrix: offset of its first output in y, word offset of its f32 bias in `w`, whether it has one.
    outs: array<vec4<u32>, 3>,
}

struct Step {
    n: u32,
    pos: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> st: Step;
@group(0) @binding(2) var<storage, read> w: array<u32>;
@group(0) @binding(3) var<storage, read> nw: array<u32>;
@group(0) @binding(4) var<storage, read> x: array<f32>;
@group(0) @binding(5) var<storage, read_write> y: array<f32>;

const MAX_SLOTS: u32 = 16u;
var<workgroup> red: array<f32, 1024>;
var<workgroup> norm_scale: f32;
var<workgroup> norm_mean: f32;

fn xload(x0: u32, c: u32) -> f32 {
    var v = x[x0 + c];
    if NORM && LAYER {
        v = (v - norm_mean) * norm_scale * bitcast<f32>(nw[p.norm + c]) + bitcast<f32>(nw[p.norm_bias + c]);
    } else if NORM {
        v = v * bitcast<f32>(nw[p.norm + c]);
    }
    return v;
}

fn units_per_row(cols: u32) -> u32 {
    if is_ggml(LAYOUT) {
        return cols / 16u;
    }
    switch LAYOUT {
        case 2u: { return cols / 4u; }
        case 3u: { return cols / 8u; }
        case 4u: { return cols / 16u; }
        default: { return (cols + 3u) / 4u; }
    }
}

// The activations a unit multiplies, in the order `unit_dot` expects them.
fn gather(x0: u32, u: u32, cols: u32) -> array<f32, 16> {
    var xv: array<f32, 16>;
    if is_ggml(LAYOUT) {
        for (var i = 0u; i < 16u; i++) {
            xv[i] = xload(x0, 16u * u + i);
        }
        return xv;
    }
    switch LAYOUT {
        case 3u: {
            let b = (u >> 2u) * 32u + 4u * (u & 3u);
            for (var i = 0u; i < 4u; i++) {
                xv[i] = xload(x0, b + i);
                xv[4u + i] = xload(x0, b + 16u + i);
            }
        }
        case 4u: {
            let b = (u >> 1u) * 32u + 4u * (u & 1u);
            for (var j = 0u; j < 4u; j++) {
                for (var i = 0u; i < 4u; i++) {
                    xv[4u * j + i] = xload(x0, b + 8u * j + i);
                }
            }
        }
        default: {
            for (var i = 0u; i < 4u; i++) {
                let c = 4u * u + i;
                xv[i] = select(0.0, xload(x0, c), c < cols);
            }
        }
    }
    return xv;
}

// Row `r` of the matrix (q, s, m) times the unit's activations.
fn unit_dot(mat: vec4<u32>, r: u32, u: u32, cols: u32, xv: array<f32, 16>) -> f32 {
    let q = mat.y;
    let s = mat.z;
    let gpr = cols / 32u;
    var acc = 0.0;
    if is_ggml(LAYOUT) {
        let v = ggml16(LAYOUT, q, r * cols + 16u * u);
        for (var i = 0u; i < 16u; i++) {
            acc += v[i] * xv[i];
        }
        return acc;
    }
    switch LAYOUT {
        case 0u: {
            for (var i = 0u; i < 4u; i++) {
                let c = 4u * u + i;
                if c < cols {
                    acc += bitcast<f32>(w[q + r * cols + c]) * xv[i];
                }
            }
        }
        case 1u: {
            for (var i = 0u; i < 4u; i++) {
                let c = 4u * u + i;
                if c < cols {
                    acc += f16_at(q, r * cols + c) * xv[i];
                }
            }
        }
        case 2u: {
            let word = w[q + r * (cols / 4u) + u];
            for (var i = 0u; i < 4u; i++) {
                acc += sbyte(word, i) * xv[i];
            }
            acc *= f16_at(s, r * gpr + (u >> 3u));
        }
        case 3u: {
            let word = w[q + r * (cols / 8u) + u];
            let gi = r * gpr + (u >> 2u);
            var xs = 0.0;
            for (var i = 0u; i < 4u; i++) {
                acc += f32((word >> (8u * i)) & 15u) * xv[i] + f32((word >> (8u * i + 4u)) & 15u) * xv[4u + i];
                xs += xv[i] + xv[4u + i];
            }
            acc = f16_at(s, gi) * acc + f16_at(mat.w, gi) * xs;
        }
        case 4u: {
            let word = w[q + r * (cols / 16u) + u];
            for (var j = 0u; j < 4u; j++) {
                for (var i = 0u; i < 4u; i++) {
                    let code = (word >> (8u * i + 2u * j)) & 3u;
                    let v = xv[4u * j + i];
                    acc += select(select(0.0, -v, code == 0u), v, code == 2u);
                }
            }
            acc *= f16_at(s, r * gpr + (u >> 1u));
        }
        default: {}
    }
    return acc;
}

fn silu(v: f32) -> f32 {
    return v / (1.0 + exp(-v));
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) tid: u32) {
    let block = wg.x + wg.y * nwg.x;
    let cols = p.cols;
    let x0 = select(0u, (st.n - 1u) * cols, p.x_last == 1u);
    // Which matrix and rows this workgroup owns.
    var mi = 0u;
    var first = block;
    if MODE != 2u && block >= p.blocks1 {
        mi = select(1u, 2u, block >= p.blocks2);
        first = block - select(p.blocks1, p.blocks2, block >= p.blocks2);
    }
    let mat = p.mats[mi];
    let r0 = first * ROWS;
    let slots = select(ROWS, 2u * ROWS, MODE == 2u);

    if NORM {
        var mean = 0.0;
        if LAYER {
            var s = 0.0;
            for (var c = tid; c < cols; c += WG) {
                s += x[x0 + c];
            }
            mean = wg_sum(s, tid) / f32(cols);
        }
        var ss = 0.0;
        for (var c = tid; c < cols; c += WG) {
            let v = x[x0 + c] - mean;
            ss += v * v;
        }
        let total = wg_sum(ss, tid);
        if tid == 0u {
            norm_scale = 1.0 / sqrt(total / f32(cols) + p.eps);
            norm_mean = mean;
        }
        workgroupBarrier();
    }

    var acc: array<f32, MAX_SLOTS>;
    let units = units_per_row(cols);
    for (var u = tid; u < units; u += WG) {
        let xv = gather(x0, u, cols);
        for (var k = 0u; k < slots; k++) {
            let m = select(mat, p.mats[1], k >= ROWS);
            let r = r0 + (k % ROWS);
            if r < m.x {
                acc[k] += unit_dot(m, r, u, cols, xv);
            }
        }
    }
    for (var k = 0u; k < slots; k++) {
        red[k * WG + tid] = acc[k];
    }
    workgroupBarrier();
    for (var h = WG / 2u; h > 0u; h >>= 1u) {
        if tid < h {
            for (var k = 0u; k < slots; k++) {
                red[k * WG + tid] += red[k * WG + tid + h];
            }
        }
        workgroupBarrier();
    }
    if tid >= ROWS {
        return;
    }
    let r = r0 + tid;
    if r >= mat.x {
        return;
    }
    var v = red[tid * WG];
    if NORM && !LAYER {
        v *= norm_scale;
    }
    let out = p.outs[mi];
    if out.z == 1u {
        v += bitcast<f32>(w[out.y + r]);
    }
    if MODE == 0u {
        y[out.x + r] = v;
    } else if MODE == 1u {
        y[out.x + r] += v;
    } else {
        var up = red[(ROWS + tid) * WG];
        if NORM && !LAYER {
            up *= norm_scale;
        }
        let o1 = p.outs[1];
        if o1.z == 1u {
            up += bitcast<f32>(w[o1.y + r]);
        }
        y[out.x + r] = silu(v) * up;
    }
}
