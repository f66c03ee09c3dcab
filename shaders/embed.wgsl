// Embedding gather: out[i, c] = E[ids[i], c] for the st.n token ids, dequantized from the embedding's own
// layout (any of quant.wgsl's). Needs quant.wgsl before it. One thread per value.

override LAYOUT: u32 = 0u;

struct Params {
    cols: u32,
    q: u32,
    s: u32,
    m: u32,
    // Every value is multiplied by it (gemma3 scales its embedding by sqrt(hidden)).
    scale: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

struct Step {
    n: u32,
    pos: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> st: Step;
@group(0) @binding(2) var<storage, read> w: array<u32>;
@group(0) @binding(3) var<storage, read> ids: array<u32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let c = gid.x;
    let t = gid.y;
    if c >= p.cols || t >= st.n {
        return;
    }
    out[t * p.cols + c] = p.scale * dequant(LAYOUT, p.q, p.s, p.m, ids[t] * p.cols + c);
}
