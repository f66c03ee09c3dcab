// Prefill matmul on cooperative matrices (tensor cores): Y[t, out + r] = sum_c W[r, c] X[t, c] for the st.n
// activation rows of X and up to three matrices of one weight region, as matmul.wgsl computes it, with f16
// products accumulated in f32. Needs quant.wgsl before it, `cols % 32 == 0`, 32-wide subgroups, and an adapter
// offering 16x16x16 f16 -> f32 cooperative matrices; matmul.wgsl is the portable kernel.
//
// A workgroup (4 subgroups) computes 64 weight rows x 64 tokens. Per step of 64 columns (two quantization
// groups) it dequantizes the 64 x 64 weight block to f16 in shared memory and converts the 64 x 64 activation
// block (normed) to f16 beside it; subgroup s multiplies weight rows 16 s .. 16 s + 16 with every token, four
// 16-column slices a step. The next step's words are fetched into registers before the products start, so the
// loads are in flight while the tensor cores work (and 64-column steps halve the barriers of 32-column ones:
// 8% faster on an H200). Every cooperative load reads shared memory, and shared
// tiles are padded with zeros past the matrix and the chunk, so no cooperative op needs a bounds check.
//
// GGUF blocks (quant.wgsl's layouts 5..9) are decoded by `ggml16` when fetched and carried as f16 words.
//
// NORM: the activations are normed before they are rounded to f16 (x * norm[c] / rms), so a large residual
// value cannot overflow f16 on its way in; a first pass gathers the tile's 1 / rms. The products land in a
// shared f32 tile, from which the bias and MODE (0 store, 1 add into Y) are applied with coalesced writes.

enable f16;
enable wgpu_cooperative_matrix;

override LAYOUT: u32 = 3u;
override NORM: bool = false;
override MODE: u32 = 0u;

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
@group(0) @binding(4) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> y: array<f32>;

const BM: u32 = 64u;
// Tokens per tile (32 measured 13% slower on SmolLM2's products on an H200, despite twice the workgroups).
const BN: u32 = 64u;
// Columns per step; with `cols % 64 == 32` the last step's second group loads as zeros.
const KS: u32 = 64u;
// Row stride of the f16 tiles: 64 values + 8 of padding, 144 bytes (cooperative loads want 16-byte multiples).
const TS: u32 = 72u;
// Row stride of the f32 result tile (one row per token).
const CS: u32 = 68u;

var<workgroup> ws: array<f16, 4608>; // 64 rows x TS
var<workgroup> xs: array<f16, 4608>; // 64 tokens x TS
var<workgroup> cs: array<f32, 4352>; // 64 tokens x CS
var<workgroup> rs: array<f32, 64>;
var<workgroup> part: array<f32, 128>;

// The words of this thread's 16 weight values of a step (row tid / 2, half tid % 2 of the group), as loaded.
struct WeightWords {
    q0: vec4<u32>,
    q1: vec4<u32>,
    q2: vec4<u32>,
    q3: vec4<u32>,
    d: f32,
    m: f32,
}

fn fetch_weights(mat: vec4<u32>, r: u32, c0: u32, h: u32) -> WeightWords {
    var o: WeightWords;
    if r >= mat.x || c0 >= p.cols {
        return o; // zeros dequantize to 0 in every layout
    }
    let e = r * p.cols + c0 + 16u * h; // first element
    let g = e >> 5u;
    if is_ggml(LAYOUT) {
        // GGUF blocks: decoded here, as quant.wgsl's ggml16 does, and carried as f16 pairs (LAYOUT 1's words).
        let v = ggml16(LAYOUT, mat.y, e);
        o.q0 = vec4<u32>(pack2x16float(vec2<f32>(v[0], v[1])), pack2x16float(vec2<f32>(v[2], v[3])),
                         pack2x16float(vec2<f32>(v[4], v[5])), pack2x16float(vec2<f32>(v[6], v[7])));
        o.q1 = vec4<u32>(pack2x16float(vec2<f32>(v[8], v[9])), pack2x16float(vec2<f32>(v[10], v[11])),
                         pack2x16float(vec2<f32>(v[12], v[13])), pack2x16float(vec2<f32>(v[14], v[15])));
        return o;
    }
    switch LAYOUT {
        case 0u: {
            let b = mat.y + e;
            o.q0 = vec4<u32>(w[b], w[b + 1u], w[b + 2u], w[b + 3u]);
            o.q1 = vec4<u32>(w[b + 4u], w[b + 5u], w[b + 6u], w[b + 7u]);
            o.q2 = vec4<u32>(w[b + 8u], w[b + 9u], w[b + 10u], w[b + 11u]);
            o.q3 = vec4<u32>(w[b + 12u], w[b + 13u], w[b + 14u], w[b + 15u]);
        }
        case 1u: {
            let b = mat.y + (e >> 1u);
            o.q0 = vec4<u32>(w[b], w[b + 1u], w[b + 2u], w[b + 3u]);
            o.q1 = vec4<u32>(w[b + 4u], w[b + 5u], w[b + 6u], w[b + 7u]);
        }
        case 2u: {
            let b = mat.y + (e >> 2u);
            o.q0 = vec4<u32>(w[b], w[b + 1u], w[b + 2u], w[b + 3u]);
            o.d = f16_at(mat.z, g);
        }
        case 3u: {
            // Byte i of the group holds value i (low nibble) and i + 16 (high): both halves read the 4 words.
            let b = mat.y + g * 4u;
            o.q0 = vec4<u32>(w[b], w[b + 1u], w[b + 2u], w[b + 3u]) >> vec4<u32>(4u * h);
            o.d = f16_at(mat.z, g);
            o.m = f16_at(mat.w, g);
        }
        default: {
            let b = mat.y + g * 2u;
            o.q0 = vec4<u32>(w[b], w[b + 1u], 0u, 0u);
            o.d = f16_at(mat.z, g);
        }
    }
    return o;
}

// Value i (0..15) of the fetched words, dequantized as quant.wgsl's `dequant` does.
fn weight_value(o: WeightWords, h: u32, i: u32) -> f32 {
    if is_ggml(LAYOUT) {
        let v = select(o.q0, o.q1, i >= 8u);
        let pair = unpack2x16float(v[(i >> 1u) & 3u]);
        return select(pair.x, pair.y, (i & 1u) == 1u);
    }
    switch LAYOUT {
        case 0u: {
            let v = select(select(o.q0, o.q1, i >= 4u), select(o.q2, o.q3, i >= 12u), i >= 8u);
            return bitcast<f32>(v[i & 3u]);
        }
        case 1u: {
            let v = select(o.q0, o.q1, i >= 8u);
            let pair = unpack2x16float(v[(i >> 1u) & 3u]);
            return select(pair.x, pair.y, (i & 1u) == 1u);
        }
        case 2u: {
            return o.d * sbyte(o.q0[i >> 2u], i & 3u);
        }
        case 3u: {
            return o.d * f32((o.q0[i >> 2u] >> (8u * (i & 3u))) & 15u) + o.m;
        }
        default: {
            // Byte b of the group holds value 8 j + b in bits 2 j .. 2 j + 2: this half is j = 2 h, 2 h + 1.
            let j = 2u * h + (i >> 3u);
            let b = i & 7u;
            let word = select(o.q0.x, o.q0.y, b >= 4u);
            return o.d * (f32((word >> (8u * (b & 3u) + 2u * j)) & 3u) - 1.0);
        }
    }
}

// This thread's activations of a step: 8 vec4s (64 x 64 over 128 threads) of token `tok` from column `c`
// (one group); zeros past the chunk or the columns.
fn fetch_x(tok: u32, c: u32) -> array<vec4<f32>, 8> {
    var v: array<vec4<f32>, 8>;
    if tok < st.n && c < p.cols {
        let b = (tok * p.cols + c) / 4u;
        for (var i = 0u; i < 8u; i++) {
            v[i] = x[b + i];
        }
    }
    return v;
}

fn put_x(v: array<vec4<f32>, 8>, lt: u32, c: u32, k: u32) {
    for (var i = 0u; i < 8u; i++) {
        var xv = v[i];
        if NORM && c < p.cols {
            let at = p.norm + c + 4u * i;
            let g = vec4<f32>(bitcast<f32>(nw[at]), bitcast<f32>(nw[at + 1u]), bitcast<f32>(nw[at + 2u]),
                              bitcast<f32>(nw[at + 3u]));
            xv *= rs[lt] * g;
        }
        let o = lt * TS + k + 4u * i;
        xs[o] = f16(xv.x);
        xs[o + 1u] = f16(xv.y);
        xs[o + 2u] = f16(xv.z);
        xs[o + 3u] = f16(xv.w);
    }
}

@compute @workgroup_size(128)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_index) tid: u32,
    @builtin(subgroup_id) sg: u32,
) {
    let cols = p.cols;
    let t0 = wg.x * BN;
    var mi = 0u;
    var first = wg.y;
    if wg.y >= p.blocks1 {
        mi = select(1u, 2u, wg.y >= p.blocks2);
        first = wg.y - select(p.blocks1, p.blocks2, wg.y >= p.blocks2);
    }
    let mat = p.mats[mi];
    let r0 = first * BM;

    // Loader roles: weight row lr, half h of both groups; activation token lt, group kx / 32 of the step.
    let lr = tid / 2u;
    let h = tid % 2u;
    let lt = tid / 2u;
    let kx = 32u * (tid % 2u);

    if NORM {
        // 1 / rms of each token of the tile: 2 threads per token sum its squares.
        let tok = t0 + tid / 2u;
        var ss = 0.0;
        if tok < st.n {
            for (var c = tid % 2u; c < cols / 4u; c += 2u) {
                let v = x[tok * cols / 4u + c];
                ss += dot(v, v);
            }
        }
        part[tid] = ss;
        workgroupBarrier();
        if tid < BN {
            let s = part[2u * tid] + part[2u * tid + 1u];
            rs[tid] = 1.0 / sqrt(s / f32(cols) + p.eps);
        }
        workgroupBarrier();
    }

    var acc0 = coop_mat16x16<f32, C>();
    var acc1 = coop_mat16x16<f32, C>();
    var acc2 = coop_mat16x16<f32, C>();
    var acc3 = coop_mat16x16<f32, C>();
    var wa = fetch_weights(mat, r0 + lr, 0u, h);
    var wb = fetch_weights(mat, r0 + lr, 32u, h);
    var xv = fetch_x(t0 + lt, kx);
    for (var c0 = 0u; c0 < cols; c0 += KS) {
        for (var i = 0u; i < 16u; i++) {
            ws[lr * TS + 16u * h + i] = f16(weight_value(wa, h, i));
            ws[lr * TS + 32u + 16u * h + i] = f16(weight_value(wb, h, i));
        }
        put_x(xv, lt, c0 + kx, kx);
        workgroupBarrier();
        let next = c0 + KS;
        if next < cols {
            wa = fetch_weights(mat, r0 + lr, next, h);
            wb = fetch_weights(mat, r0 + lr, next + 32u, h);
            xv = fetch_x(t0 + lt, next + kx);
        }
        // Offsets and strides bound with `let`: naga's SPIR-V writer panics on inline expressions there.
        for (var kk = 0u; kk < KS; kk += 16u) {
            let ao = sg * 16u * TS + kk;
            let a = coopLoadT<coop_mat16x16<f16, A>>(&ws[ao], TS);
            let xo0 = kk;
            let xo1 = 16u * TS + kk;
            let xo2 = 32u * TS + kk;
            let xo3 = 48u * TS + kk;
            acc0 = coopMultiplyAdd(a, coopLoad<coop_mat16x16<f16, B>>(&xs[xo0], TS), acc0);
            acc1 = coopMultiplyAdd(a, coopLoad<coop_mat16x16<f16, B>>(&xs[xo1], TS), acc1);
            acc2 = coopMultiplyAdd(a, coopLoad<coop_mat16x16<f16, B>>(&xs[xo2], TS), acc2);
            acc3 = coopMultiplyAdd(a, coopLoad<coop_mat16x16<f16, B>>(&xs[xo3], TS), acc3);
        }
        workgroupBarrier();
    }

    // Column-major stores: element (row i, token j) of a product lands at cs[token * CS + row].
    let stride = CS;
    let o0 = sg * 16u;
    let o1 = 16u * CS + sg * 16u;
    let o2 = 32u * CS + sg * 16u;
    let o3 = 48u * CS + sg * 16u;
    coopStore(acc0, &cs[o0], stride);
    coopStore(acc1, &cs[o1], stride);
    coopStore(acc2, &cs[o2], stride);
    coopStore(acc3, &cs[o3], stride);
    workgroupBarrier();

    let out = p.outs[mi];
    for (var e = tid; e < BN * BM; e += 128u) {
        let t = t0 + e / BM;
        let r = r0 + e % BM;
        if t >= st.n || r >= mat.x {
            continue;
        }
        var v = cs[(e / BM) * CS + e % BM];
        if out.z == 1u {
            v += bitcast<f32>(w[out.y + r]);
        }
        let at = t * p.y_stride + out.x + r;
        if MODE == 0u {
            y[at] = v;
        } else {
            y[at] += v;
        }
    }
}
