//! How work is cut into rayon tasks: rows for a matvec, rows x tokens tiles for a matmul. Every output element
//! is computed whole by one task, in an order that does not depend on the cut, so results are identical for
//! any number of threads.

use rayon::prelude::*;

/// Weight bytes a matvec task should read at least (about 10-20 us on one core of the reference machine).
pub const MIN_TASK_BYTES: usize = 96 * 1024;

/// Multiply-adds a matmul tile should do at least (about 20 us at 25 GFLOP/s).
pub const MIN_TILE_MACS: usize = 256 * 1024;

/// Tokens per matmul tile at most: a whole prefill chunk, so a tile unpacks (AVX-512) or dequantizes (float
/// path) its weight rows once rather than once per 64 tokens. CPU time of a 512-token prefill on 2 Zen 4 cores
/// against 64 (`perf stat` task-clock, two runs each): Gemma 3 270M -13%, Qwen2.5-Coder-1.5B -14%, 0.5B
/// -6 to -21%, SmolLM2 with f32 activations -14%; SmolLM2 int8 and the AVX2 kernels unchanged within noise.
pub const MAX_TILE_TOKENS: usize = 512;

/// Bytes of (dequantized) weight rows a matmul tile may hold: the tile is re-read for every 3-token block, so
/// it must stay in L2 (a whole 1536 x 576 matrix dequantized to f32, 3.5 MB, halved the float path's speed).
pub const MAX_TILE_WEIGHT_BYTES: usize = 192 * 1024;

/// Rows per matvec task: at least `MIN_TASK_BYTES` of weights, at most 4 tasks per thread, a multiple of 4.
pub fn rows_per_task(rows: usize, row_bytes: usize) -> usize {
    let total = rows.saturating_mul(row_bytes.max(1));
    let max_tasks = 4 * rayon::current_num_threads();
    let tasks = (total / MIN_TASK_BYTES).clamp(1, max_tasks);
    round_up(rows.div_ceil(tasks), 4).max(4)
}

/// `(rows per tile, tokens per tile)` for a `[rows, cols]` x `n` tokens matmul whose tiles hold
/// `tile_row_bytes` per weight row.
pub fn tile_shape(rows: usize, cols: usize, n: usize, tile_row_bytes: usize) -> (usize, usize) {
    let tb = n.clamp(1, MAX_TILE_TOKENS);
    let token_tiles = n.div_ceil(tb);
    let want_tiles = 8 * rayon::current_num_threads();
    let row_tiles = want_tiles.div_ceil(token_tiles).max(1);
    let rb_count = rows.div_ceil(row_tiles);
    let rb_work = MIN_TILE_MACS.div_ceil(tb * cols.max(1));
    let rb_cache = (MAX_TILE_WEIGHT_BYTES / tile_row_bytes.max(1)) / 4 * 4;
    (round_up(rb_count.max(rb_work).max(4), 4).min(rb_cache.max(4)), tb)
}

fn round_up(v: usize, m: usize) -> usize {
    v.div_ceil(m) * m
}

/// Calls `f(r0, rows, y_chunk)` for disjoint row ranges of `y` in parallel.
pub fn for_row_chunks(y: &mut [f32], row_bytes: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    let rpt = rows_per_task(y.len(), row_bytes);
    if rpt >= y.len() {
        f(0, y);
        return;
    }
    y.par_chunks_mut(rpt).enumerate().for_each(|(i, ch)| f(i * rpt, ch));
}

/// Splits `y` (`[n, rows]`, token-major) into tiles of `rb` rows x `tb` tokens and calls `f(r0, t0, outs)` for
/// each in parallel, where `outs[j][i]` is `y[t0 + j][r0 + i]`.
pub fn for_tiles(y: &mut [f32], rows: usize, rb: usize, tb: usize, f: impl Fn(usize, usize, &mut [&mut [f32]]) + Sync) {
    assert!(rows > 0 && rb > 0 && tb > 0);
    let n_rb = rows.div_ceil(rb);
    let mut grid: Vec<Vec<&mut [f32]>> = (0..n_rb).map(|_| Vec::new()).collect();
    for token_row in y.chunks_mut(rows) {
        for (b, piece) in token_row.chunks_mut(rb).enumerate() {
            grid[b].push(piece);
        }
    }
    if grid.len() == 1 && grid[0].len() <= tb {
        f(0, 0, &mut grid[0]);
        return;
    }
    grid.par_iter_mut().enumerate().for_each(|(b, col)| {
        col.par_chunks_mut(tb).enumerate().for_each(|(c, outs)| f(b * rb, c * tb, outs));
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn in_pool<R: Send>(n: usize, f: impl FnOnce() -> R + Send) -> R {
        rayon::ThreadPoolBuilder::new().num_threads(n).build().unwrap().install(f)
    }

    #[test]
    #[cfg_attr(target_arch = "wasm32", ignore = "wasm32 without atomics cannot start a 2-thread pool")]
    fn the_thread_test_shapes_really_split() {
        // tests/threads.rs uses 1030 x 576 int4 (360 bytes a row) and n = 37: both must give several tasks.
        let rpt = in_pool(2, || rows_per_task(1030, 360));
        assert!(rpt < 1030 && rpt % 4 == 0, "{rpt}");
        let (rb, tb) = in_pool(2, || tile_shape(1030, 576, 37, 4 * 576));
        assert!(rb < 1030 && tb <= 37, "{rb} {tb}");
    }

    #[test]
    fn tiles_cover_every_output_once() {
        let (rows, n) = (13, 7);
        let mut y = vec![0f32; rows * n];
        for_tiles(&mut y, rows, 4, 3, |r0, t0, outs| {
            for (j, o) in outs.iter_mut().enumerate() {
                for (i, v) in o.iter_mut().enumerate() {
                    *v += ((t0 + j) * rows + r0 + i) as f32;
                }
            }
        });
        assert!(y.iter().enumerate().all(|(k, &v)| v == k as f32));
    }
}
