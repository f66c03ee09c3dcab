//! Plain-Rust matmul tile: each (row, token) is one 8-lane dot product.

use crate::matvec::portable::dot;

/// `outs[j][i] = w[i] . x[j]` for `w` `[outs[0].len(), cols]` and `x` `[outs.len(), cols]`.
pub fn block_tile(w: &[f32], x: &[f32], cols: usize, outs: &mut [&mut [f32]]) {
    for (xr, out) in x.chunks_exact(cols).zip(outs.iter_mut()) {
        for (wr, o) in w.chunks_exact(cols).zip(out.iter_mut()) {
            *o = dot(wr, xr);
        }
    }
}
