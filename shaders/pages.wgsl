// The paged KV cache, a prelude of the kernels that read or write it (rope, attention). The step buffer says
// how a chunk's token rows map to positions and cache rows:
// - paged 0: one sequence, row t at position st.pos + t, stored in cache row = position;
// - paged 1: `seqmap[2t]` is row t's position and `seqmap[2t + 1]` where its sequence's block table starts in
//   `seqmap`; position p lives in cache row `table[p / BLOCK_TOKENS] * BLOCK_TOKENS + p % BLOCK_TOKENS`
//   (backend::KV_BLOCK_TOKENS). Several sequences share one pass this way, each in its own blocks.
// The kernel declares `st` (the step buffer) and `seqmap` (binding of its choice).

const BLOCK_TOKENS: u32 = 16u;

struct Step {
    n: u32,
    pos: u32,
    k: u32,
    paged: u32,
}

fn row_position(t: u32) -> u32 {
    if st.paged == 0u {
        return st.pos + t;
    }
    return seqmap[2u * t];
}

fn cache_row(t: u32, pos: u32) -> u32 {
    if st.paged == 0u {
        return pos;
    }
    let table = seqmap[2u * t + 1u];
    return seqmap[table + pos / BLOCK_TOKENS] * BLOCK_TOKENS + pos % BLOCK_TOKENS;
}
