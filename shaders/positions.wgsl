// Learned position embeddings (GPT-2): x[t, c] += table[pos(t), c] for each of the chunk's st.n token rows, at
// the positions pages.wgsl gives (one sequence's pos.. or each row's own in a batch). `table` is
// [positions, cols] f32. One thread per value.

struct Params {
    cols: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> st: Step;
@group(0) @binding(2) var<storage, read> table: array<f32>;
@group(0) @binding(3) var<storage, read_write> x: array<f32>;
@group(0) @binding(4) var<storage, read> seqmap: array<u32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let c = gid.x;
    let t = gid.y;
    if c >= p.cols || t >= st.n {
        return;
    }
    x[t * p.cols + c] += table[row_position(t) * p.cols + c];
}
