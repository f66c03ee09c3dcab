// Element-wise ops over `rows` rows of `len` values (rows = st.n, the chunk's tokens, when p.rows is 0); thread
// (x, y) = (value, row).
// `silu_mul`: SwiGLU, out[t, c] = silu(g) * u with g = a[t * stride + c], u = a[t * stride + up + c]: the fused
// gate|up projection of a prefill chunk (the decode matvec fuses SwiGLU itself).
// `gelu_mul`: GeGLU the same way, with GELU's tanh approximation (as kernels-cpu's gelu).
// `add_assign`: out += b (a residual add no product's epilogue took; `a` is not read).
// `silu`, `gelu`: out = act(out) in place (a plain MLP's activation, GPT-2; `a` and `b` are not read).

struct Params {
    len: u32,
    rows: u32,
    // silu_mul: values per row of `a`, and where the up half starts in a row.
    stride: u32,
    up: u32,
}

struct Step {
    n: u32,
    pos: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> st: Step;
@group(0) @binding(2) var<storage, read> a: array<f32>;
@group(0) @binding(3) var<storage, read> b: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

fn in_range(gid: vec3<u32>) -> bool {
    let rows = select(p.rows, st.n, p.rows == 0u);
    return gid.x < p.len && gid.y < rows;
}

@compute @workgroup_size(64)
fn silu_mul(@builtin(global_invocation_id) gid: vec3<u32>) {
    if in_range(gid) {
        let g = a[gid.y * p.stride + gid.x];
        let u = a[gid.y * p.stride + p.up + gid.x];
        out[gid.y * p.len + gid.x] = g / (1.0 + exp(-g)) * u;
    }
}

// GELU with the tanh approximation: x * (1 + tanh(k)) / 2 = x / (1 + exp(-2k)); the clamp keeps exp finite
// for very negative x.
fn gelu_tanh(x: f32) -> f32 {
    let k = 0.7978846 * (x + 0.044715 * x * x * x);
    return x / (1.0 + exp(min(-2.0 * k, 80.0)));
}

@compute @workgroup_size(64)
fn gelu_mul(@builtin(global_invocation_id) gid: vec3<u32>) {
    if in_range(gid) {
        let g = a[gid.y * p.stride + gid.x];
        let u = a[gid.y * p.stride + p.up + gid.x];
        out[gid.y * p.len + gid.x] = gelu_tanh(g) * u;
    }
}

@compute @workgroup_size(64)
fn add_assign(@builtin(global_invocation_id) gid: vec3<u32>) {
    if in_range(gid) {
        let i = gid.y * p.len + gid.x;
        out[i] += b[i];
    }
}

@compute @workgroup_size(64)
fn gelu(@builtin(global_invocation_id) gid: vec3<u32>) {
    if in_range(gid) {
        let i = gid.y * p.len + gid.x;
        out[i] = gelu_tanh(out[i]);
    }
}

@compute @workgroup_size(64)
fn silu(@builtin(global_invocation_id) gid: vec3<u32>) {
    if in_range(gid) {
        let i = gid.y * p.len + gid.x;
        let v = out[i];
        out[i] = v / (1.0 + exp(-v));
    }
}
