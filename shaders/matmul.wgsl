// Prefill matmul, portable: Y[t, out + r] = sum_c W[r, c] X[t, c] for the st.n activation rows of X and up to
// three matrices of one weight region. Needs quant.wgsl before it.
//
// A workgroup computes a tile of 32 rows x 8 TN tokens; per step of 32 columns it dequantizes the 32 x 32
// weight block into shared memory once and reuses it for all the tile's tokens (and the activation block for
// all 32 rows); each of the 64 threads accumulates 4 rows x TN tokens. TN = 4 for long chunks, 1 for short ones
// (fewer padded tokens). (A 64 x 64 tile with 8 x 8 per thread measured 2.5x slower on an H100.)
//
// NORM: each token's row of X is RMS-normed: the tile holds x * norm[c], and the token's 1 / rms, which
// factors out of the sum, scales the result. Its sum of squares is gathered while the tiles load (each thread
// owns a (token, column % 32) slot of `ssq`), so the norm costs no pass of its own over X.
// MODE 0: store; MODE 1: add into Y (the residual add).

override LAYOUT: u32 = 0u;
override NORM: bool = false;
override MODE: u32 = 0u;
override TN: u32 = 4u;
// cols % 32 == 0: a 32-column step of a row is one whole quantization group, which a pair of threads
// dequantizes with a few word loads and one scale (and min) load, instead of element by element.
override GROUPED: bool = false;

struct Params {
    cols: u32,
    n_mats: u32,
    norm: u32,
    eps: f32,
    blocks1: u32,
    blocks2: u32,
    // Row stride of Y (values per token).
    y_stride: u32,
    _pad: u32,
    mats: array<vec4<u32>, 3>,
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

const T: u32 = 32u;
var<workgroup> ws: array<f32, 1056>; // 32 rows x 33 (padded against bank conflicts)
var<workgroup> xs: array<f32, 1056>; // up to 32 tokens x 33
var<workgroup> rs: array<f32, 32>;
var<workgroup> ssq: array<f32, 1024>; // up to 32 tokens x 32 column lanes

// Values 16 h .. 16 h + 15 (h = tid % 2) of the group at column c0 of row r into the weight tile, row
// tid / 2. Rows past the matrix load zeros.
fn load_group_half(mat: vec4<u32>, r: u32, c0: u32, tid: u32) {
    let h = tid % 2u;
    let at = (tid / 2u) * 33u + 16u * h;
    if r >= mat.x {
        for (var i = 0u; i < 16u; i++) {
            ws[at + i] = 0.0;
        }
        return;
    }
    let e = r * p.cols + c0 + 16u * h; // first element
    let g = e >> 5u;
    switch LAYOUT {
        case 0u: {
            for (var i = 0u; i < 16u; i++) {
                ws[at + i] = bitcast<f32>(w[mat.y + e + i]);
            }
        }
        case 1u: {
            for (var i = 0u; i < 8u; i++) {
                let pair = unpack2x16float(w[mat.y + (e >> 1u) + i]);
                ws[at + 2u * i] = pair.x;
                ws[at + 2u * i + 1u] = pair.y;
            }
        }
        case 2u: {
            let d = f16_at(mat.z, g);
            for (var i = 0u; i < 4u; i++) {
                let word = w[mat.y + (e >> 2u) + i];
                for (var b = 0u; b < 4u; b++) {
                    ws[at + 4u * i + b] = d * sbyte(word, b);
                }
            }
        }
        case 3u: {
            // Byte i of the group holds value i in its low nibble and value i + 16 in its high one.
            let d = f16_at(mat.z, g);
            let m = f16_at(mat.w, g);
            let shift = 4u * h;
            for (var i = 0u; i < 4u; i++) {
                let word = w[mat.y + g * 4u + i] >> shift;
                for (var b = 0u; b < 4u; b++) {
                    ws[at + 4u * i + b] = d * f32((word >> (8u * b)) & 15u) + m;
                }
            }
        }
        case 4u: {
            // Byte b of the group holds value 8 j + b in bits 2 j .. 2 j + 2: this half is j = 2 h, 2 h + 1.
            let d = f16_at(mat.z, g);
            let lo = w[mat.y + g * 2u];
            let hi = w[mat.y + g * 2u + 1u];
            for (var jj = 0u; jj < 2u; jj++) {
                let j = 2u * h + jj;
                for (var b = 0u; b < 8u; b++) {
                    let word = select(lo, hi, b >= 4u);
                    let code = (word >> (8u * (b & 3u) + 2u * j)) & 3u;
                    ws[at + 8u * jj + b] = d * (f32(code) - 1.0);
                }
            }
        }
        default: {
            // GGUF blocks: the 16 values decoded together (a block's scales and high bits are shared by them).
            let v = ggml16(LAYOUT, mat.y, e);
            for (var i = 0u; i < 16u; i++) {
                ws[at + i] = v[i];
            }
        }
    }
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    let n = st.n;
    let cols = p.cols;
    let tt_count = 8u * TN;
    let t0 = wg.x * tt_count;
    var mi = 0u;
    var first = wg.y;
    if wg.y >= p.blocks1 {
        mi = select(1u, 2u, wg.y >= p.blocks2);
        first = wg.y - select(p.blocks1, p.blocks2, wg.y >= p.blocks2);
    }
    let mat = p.mats[mi];
    let r0 = first * T;

    if NORM {
        // The slots this thread will own (the same e as the tile loads below).
        for (var e = tid; e < tt_count * T; e += 64u) {
            ssq[e] = 0.0;
        }
    }
    let tr = tid % 8u;
    let tt = tid / 8u;
    // Accumulators for rows tr + 8 i (acc_i), one vec4 lane per token tt + 8 j: named vectors rather than an
    // array indexed in loops, which a driver may leave in local memory.
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    for (var c0 = 0u; c0 < cols; c0 += T) {
        if GROUPED {
            load_group_half(mat, r0 + tid / 2u, c0, tid);
        } else {
            for (var e = tid; e < T * T; e += 64u) {
                let lr = e / T;
                let k = e % T;
                let r = r0 + lr;
                let c = c0 + k;
                var wv = 0.0;
                if r < mat.x && c < cols {
                    wv = dequant(LAYOUT, mat.y, mat.z, mat.w, r * cols + c);
                }
                ws[lr * 33u + k] = wv;
            }
        }
        for (var e = tid; e < tt_count * T; e += 64u) {
            let lt = e / T;
            let k = e % T;
            let tok = t0 + lt;
            let c = c0 + k;
            var xv = 0.0;
            if tok < n && c < cols {
                xv = x[tok * cols + c];
                if NORM {
                    ssq[e] += xv * xv;
                    xv *= bitcast<f32>(nw[p.norm + c]);
                }
            }
            xs[lt * 33u + k] = xv;
        }
        workgroupBarrier();
        for (var k = 0u; k < T; k++) {
            var bv = vec4<f32>(xs[tt * 33u + k], 0.0, 0.0, 0.0);
            if TN == 4u {
                bv = vec4<f32>(bv.x, xs[(tt + 8u) * 33u + k], xs[(tt + 16u) * 33u + k], xs[(tt + 24u) * 33u + k]);
            }
            acc0 += ws[tr * 33u + k] * bv;
            acc1 += ws[(tr + 8u) * 33u + k] * bv;
            acc2 += ws[(tr + 16u) * 33u + k] * bv;
            acc3 += ws[(tr + 24u) * 33u + k] * bv;
        }
        workgroupBarrier();
    }

    var scale = vec4<f32>(1.0);
    if NORM {
        if tid < tt_count {
            var ss = 0.0;
            for (var k = 0u; k < T; k++) {
                ss += ssq[tid * T + k];
            }
            rs[tid] = 1.0 / sqrt(ss / f32(cols) + p.eps);
        }
        workgroupBarrier();
        scale.x = rs[tt];
        if TN == 4u {
            scale = vec4<f32>(scale.x, rs[tt + 8u], rs[tt + 16u], rs[tt + 24u]);
        }
    }
    acc0 *= scale;
    acc1 *= scale;
    acc2 *= scale;
    acc3 *= scale;
    store_row(mi, r0 + tr, t0 + tt, acc0);
    store_row(mi, r0 + tr + 8u, t0 + tt, acc1);
    store_row(mi, r0 + tr + 16u, t0 + tt, acc2);
    store_row(mi, r0 + tr + 24u, t0 + tt, acc3);
}

// Row r of matrix mi for tokens tok + 8 j (lane j of v, j < TN): plus the bias, stored or added into y.
fn store_row(mi: u32, r: u32, tok: u32, v: vec4<f32>) {
    if r >= p.mats[mi].x {
        return;
    }
    let out = p.outs[mi];
    var bias = 0.0;
    if out.z == 1u {
        bias = bitcast<f32>(w[out.y + r]);
    }
    for (var j = 0u; j < TN; j++) {
        let t = tok + 8u * j;
        if t >= st.n {
            continue;
        }
        let at = t * p.y_stride + out.x + r;
        if MODE == 0u {
            y[at] = v[j] + bias;
        } else {
            y[at] += v[j] + bias;
        }
    }
}
