// RoPE and the KV-cache store, one thread per pair of values: for each of the st.n token rows of the fused
// q|k|v projection (at the positions and cache rows pages.wgsl gives), writes the rotated q to `q`, the rotated
// k and the v row into the caches, whose element type is the prelude's (kv_f32.wgsl, kv_f16.wgsl or kv_q8.wgsl,
// written through kv_store_*.wgsl: every thread calls `kv_store`, since the q8 one reduces over the workgroup,
// so no thread returns early). The head dim is even, so a pair never straddles two heads.
//
// Pair i (i < dims / 2) of a head is (2i, 2i + 1) when STYLE 0 (interleaved) or (i, i + dims / 2) when STYLE 1
// (half); values past `dims` are not rotated. cos/sin come from a table `cs` of [positions, dims / 2] computed
// on the CPU exactly as kernels-cpu's rope does (f32 angle, f64 cos/sin rounded to f32), so the GPU adds no
// error of its own there.

override STYLE: u32 = 0u;

struct Params {
    n_heads: u32,
    n_kv: u32,
    head_dim: u32,
    dims: u32,
    // Values per token of qkv, and where k and v start in it.
    stride: u32,
    k_col: u32,
    v_col: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> st: Step;
@group(0) @binding(2) var<storage, read> qkv: array<f32>;
@group(0) @binding(3) var<storage, read> cs: array<vec2<f32>>;
@group(0) @binding(4) var<storage, read_write> q: array<f32>;
@group(0) @binding(5) var<storage, read_write> kc: array<KvWord>;
@group(0) @binding(6) var<storage, read_write> vc: array<KvWord>;
@group(0) @binding(7) var<storage, read> seqmap: array<u32>;

// Value `j` of the head starting at `base` of token row `row`, rotated for position `pos`.
fn rotated(row: u32, base: u32, j: u32, pos: u32) -> f32 {
    let v = qkv[row + base + j];
    if j >= p.dims {
        return v;
    }
    let half = p.dims / 2u;
    var i: u32;
    var partner: u32;
    var first: bool;
    if STYLE == 0u {
        i = j / 2u;
        first = (j & 1u) == 0u;
        partner = select(j - 1u, j + 1u, first);
    } else {
        first = j < half;
        i = select(j - half, j, first);
        partner = select(j - half, j + half, first);
    }
    let c = cs[pos * half + i];
    let o = qkv[row + base + partner];
    // (a, b) -> (a cos - b sin, a sin + b cos)
    if first {
        return v * c.x - o * c.y;
    }
    return o * c.y + v * c.x;
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(local_invocation_index) lane: u32) {
    let t = gid.y;
    // The pair's first value.
    let e = 2u * gid.x;
    let hd = p.head_dim;
    let qd = p.n_heads * hd;
    let kvd = p.n_kv * hd;
    // Where the pair goes (0: not to the cache), its index there, and its values.
    var which = 0u;
    var at = 0u;
    var v = vec2<f32>(0.0);
    if t < st.n && e < qd + 2u * kvd {
        let pos = row_position(t);
        let row = t * p.stride;
        if e < qd {
            let j = e % hd;
            q[t * qd + e] = rotated(row, e - j, j, pos);
            q[t * qd + e + 1u] = rotated(row, e - j, j + 1u, pos);
        } else if e < qd + kvd {
            let f = e - qd;
            let j = f % hd;
            let base = p.k_col + f - j;
            which = 1u;
            at = cache_row(t, pos) * kvd + f;
            v = vec2<f32>(rotated(row, base, j, pos), rotated(row, base, j + 1u, pos));
        } else {
            let f = e - qd - kvd;
            let src = row + p.v_col + f;
            which = 2u;
            at = cache_row(t, pos) * kvd + f;
            v = vec2<f32>(qkv[src], qkv[src + 1u]);
        }
    }
    kv_store(lane, which, at, v);
}
