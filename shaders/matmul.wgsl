// Prefill matmul, portable: Y[t, out + r] = sum_c W[r, c] X[t, c] for the st.n activation rows of X and up to
// three matrices of one weight region. Needs quant.wgsl before it.
//
// A workgroup computes a tile of 32 rows x 8 TN tokens; per step of 32 columns it dequantizes the 32 x 32
// weight block into shared memory once and reuses it for all the tile's tokens (and the activation block for
// all 32 rows); each of the 64 threads accumulates 4 rows x TN tokens. TN = 4 for long chunks, 1 for short ones
// (fewer padded tokens). (A 64 x 64 tile with 8 x 8 per thread measured 2.5x slower on an H100.)
//
// NORM: each token's row of X is RMS-normed on load (x * r * norm[c], r per token, as the CPU twin rounds it).
// MODE 0: store; MODE 1: add into Y (the residual add).

override LAYOUT: u32 = 0u;
override NORM: bool = false;
override MODE: u32 = 0u;
override TN: u32 = 4u;

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
var<workgroup> part: array<f32, 64>;

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
        // Two threads per token.
        let tok = t0 + tid / 2u;
        var ss = 0.0;
        if tid / 2u < tt_count && tok < n {
            for (var c = tid % 2u; c < cols; c += 2u) {
                let v = x[tok * cols + c];
                ss += v * v;
            }
        }
        part[tid] = ss;
        workgroupBarrier();
        if tid < tt_count {
            rs[tid] = 1.0 / sqrt((part[2u * tid] + part[2u * tid + 1u]) / f32(cols) + p.eps);
        }
        workgroupBarrier();
    }

    let tr = tid % 8u;
    let tt = tid / 8u;
    var acc: array<f32, 16>;
    for (var c0 = 0u; c0 < cols; c0 += T) {
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
        for (var e = tid; e < tt_count * T; e += 64u) {
            let lt = e / T;
            let k = e % T;
            let tok = t0 + lt;
            let c = c0 + k;
            var xv = 0.0;
            if tok < n && c < cols {
                xv = x[tok * cols + c];
                if NORM {
                    xv = xv * rs[lt] * bitcast<f32>(nw[p.norm + c]);
                }
            }
            xs[lt * 33u + k] = xv;
        }
        workgroupBarrier();
        for (var k = 0u; k < T; k++) {
            var a: array<f32, 4>;
            var b: array<f32, 4>;
            for (var i = 0u; i < 4u; i++) {
                a[i] = ws[(tr + 8u * i) * 33u + k];
            }
            for (var j = 0u; j < TN; j++) {
                b[j] = xs[(tt + 8u * j) * 33u + k];
            }
            for (var i = 0u; i < 4u; i++) {
                for (var j = 0u; j < TN; j++) {
                    acc[4u * i + j] += a[i] * b[j];
                }
            }
        }
        workgroupBarrier();
    }

    let out = p.outs[mi];
    for (var i = 0u; i < 4u; i++) {
        let r = r0 + tr + 8u * i;
        if r >= mat.x {
            continue;
        }
        var bias = 0.0;
        if out.z == 1u {
            bias = bitcast<f32>(w[out.y + r]);
        }
        for (var j = 0u; j < TN; j++) {
            let tok = t0 + tt + 8u * j;
            if tok >= n {
                continue;
            }
            let at = tok * p.y_stride + out.x + r;
            let v = acc[4u * i + j] + bias;
            if MODE == 0u {
                y[at] = v;
            } else {
                y[at] += v;
            }
        }
    }
}
