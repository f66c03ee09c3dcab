//! AVX-512 VNNI q8 matmul over every quantized layout (raw GGUF blocks, int8, int4, ternary): a tile's weight
//! rows are unpacked once into 16-row panels of bytes, then every token of the tile runs `vpdpbusd` against them
//! with one i32 lane per weight row.
//!
//! The per-row AVX2 kernels ([`super::avx2`], [`super::avx2_ggml`]) reduce each (row, token) in an 8-lane
//! register, with integer steps, a conversion and an FMA per group of 32. Here a register holds four quants of
//! each of 16 rows and four bytes of one token's activations are broadcast to all lanes, so one `vpdpbusd` is
//! 64 multiply-adds with nothing to reduce across lanes, and the unpacking is paid once per tile and reused for
//! all its tokens. That only pays for tiles of [`MIN_TOKENS`] or more: a matvec reads each weight once and
//! stays with the AVX2 kernels.
//!
//! The arithmetic is the AVX2 kernels', bit for bit (see [`panel`]), so a row's result never depends on the
//! kernel, the tile or the batch it ran in. Quants go unsigned (`vpdpbusd` multiplies u8 by i8) as `u = q + o`,
//! with `o sum(q_x)` of each 4 activations taken back in integers (exactly what the AVX2 kernels' sign trick
//! gives): `o` = 128 for Q8_0 and int8, 32 for Q6_K (whose 16-value sub-block scales are then multiplied in as
//! integers, as their `madd` does), 1 for ternary; the types with a min term (Q4_K, Q5_K, Q5_0, Q5_1, int4) keep
//! it as a float `b s_x`, as those kernels do.

use super::avx2_ggml::{block_bytes, factors, group, groups_per_block, Rows, Q4K, Q5K, Q5_0, Q5_1, Q6K, Q8_0};
use super::Q8Activations;
use crate::ggml::GgmlBlock;
use crate::layout::{Matrix, Weights, GROUP, INT4_GROUP_BYTES, TERNARY_GROUP_BYTES};
use crate::x86::{unpack_int4, unpack_ternary};
use std::arch::x86_64::*;
use std::cell::RefCell;

/// omex's own quantized layouts, after the GGUF ones of [`super::avx2_ggml`]: int8 as `q + 128` with `b = -128
/// d`, int4 as its nibbles with its min `b = m`, ternary as `q + 1` with `b = -d`.
const INT8: u8 = 6;
const INT4: u8 = 7;
const TERN: u8 = 8;

/// Tokens a tile needs for the unpacking to pay: below, the AVX2 kernels are faster.
pub const MIN_TOKENS: usize = 12;

/// Weight rows per panel: one per i32 lane of a 512-bit register.
const PANEL: usize = 16;
/// Tokens per register block (8 accumulators each, one per lane of the AVX2 kernels' accumulator).
const TOKENS: usize = 3;

/// One thread's unpacked tile.
#[derive(Default)]
struct Scratch {
    /// `[panel][group][step 0..8][row 0..16][4]` unsigned quants.
    quants: Vec<u8>,
    /// `[panel][group][row]` the factor `a` of each group (Q6_K: `d`).
    a: Vec<f32>,
    /// `[panel][group][row]` the min term `b` (types with one).
    b: Vec<f32>,
    /// `[panel][group][half][row]` Q6_K's i8 scale of each 16 values.
    sc6: Vec<i32>,
    /// `[token][4 values]` `o sum(q_x)` of every 4 activations of the tile's tokens (types with an offset).
    xo: Vec<i32>,
}

impl Scratch {
    /// One row's group into its panel: the 32 quants `u` as 8 steps of 4 bytes in lane `lane`, and its
    /// factors. `pg` is the group's index over all panels (`panel * gpr + group`).
    ///
    /// # Safety
    /// AVX-512 F/VL; `pg` and `lane` inside the unpacked tile (checked once; one scatter replaced 8 checked
    /// 4-byte copies, and unpacking went from 18% to 16% of Qwen2.5-1.5B's prefill samples under perf).
    #[target_feature(enable = "avx512f,avx512vl,avx2")]
    unsafe fn put(&mut self, pg: usize, lane: usize, u: __m256i, a: f32, b: f32) {
        let at = pg * 8 * PANEL * 4 + 4 * lane;
        assert!(lane < PANEL && at + 7 * PANEL * 4 + 4 <= self.quants.len() && pg * PANEL + lane < self.a.len());
        // Step k's 4 bytes go PANEL * 4 bytes (PANEL i32s) after step k - 1's.
        let steps = _mm256_setr_epi32(0, 16, 32, 48, 64, 80, 96, 112);
        _mm256_i32scatter_epi32::<4>(self.quants.as_mut_ptr().add(at) as *mut i32, steps, u);
        self.a[pg * PANEL + lane] = a;
        self.b[pg * PANEL + lane] = b;
    }
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// The offset `o` of the unsigned quants `u = q + o` that is taken back in integers (exactly, so a group's
/// integer dot is `sum(q q_x)` as in the AVX2 kernels' sign trick).
const fn offset(l: u8) -> i32 {
    match l {
        Q8_0 | INT8 => 128,
        Q6K => 32,
        TERN => 1,
        _ => 0,
    }
}

/// Types with a min term `b s_x` (their quants go unsigned in the AVX2 kernels too).
const fn has_min(l: u8) -> bool {
    matches!(l, Q4K | Q5K | Q5_0 | Q5_1 | INT4)
}

/// Group `j` (`0..8` within its block for k-quants, 0 for small blocks) of the block at `blk` as 32 unsigned
/// quants `q + o`.
///
/// # Safety
/// AVX2; the block readable.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")]
#[inline]
unsafe fn unpack<const L: u8>(blk: *const u8, j: usize) -> __m256i {
    let none = [_mm256_setzero_si256(); 2];
    let (u, signed, _) = match j {
        0 => group::<L, 0>(blk, &none),
        1 => group::<L, 1>(blk, &none),
        2 => group::<L, 2>(blk, &none),
        3 => group::<L, 3>(blk, &none),
        4 => group::<L, 4>(blk, &none),
        5 => group::<L, 5>(blk, &none),
        6 => group::<L, 6>(blk, &none),
        _ => group::<L, 7>(blk, &none),
    };
    match L {
        // q + 128: flipping an i8's sign bit adds 128 to it read as u8.
        Q8_0 => _mm256_xor_si256(signed, _mm256_set1_epi8(i8::MIN)),
        Q6K => _mm256_add_epi8(signed, _mm256_set1_epi8(32)),
        _ => u,
    }
}

/// Unpacks rows `r0..r0 + nr` of `w` into `s` (rows past `nr` in the last panel are zero: they add nothing).
///
/// # Safety
/// AVX-512 VNNI; `w` views a validated matrix with at least `r0 + nr` rows.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")]
unsafe fn unpack_tile<const L: u8>(m: &Matrix, w: &Rows, r0: usize, nr: usize, s: &mut Scratch) {
    let gpr = w.gpr;
    let panels = nr.div_ceil(PANEL);
    s.quants.clear();
    s.quants.resize(panels * gpr * 8 * PANEL * 4, 0);
    s.a.clear();
    s.a.resize(panels * gpr * PANEL, 0.0);
    s.sc6.clear();
    s.sc6.resize(if L == Q6K { panels * gpr * 2 * PANEL } else { 0 }, 0);
    s.b.clear();
    s.b.resize(panels * gpr * PANEL, 0.0);
    if L >= INT8 {
        return unpack_omex::<L>(m, r0, nr, s);
    }
    let (bb, gpb) = (block_bytes(L), groups_per_block(L));
    for i in 0..nr {
        let (p, lane) = (i / PANEL, i % PANEL);
        let row = w.p.add((r0 + i) * w.row_bytes);
        let mut g0 = 0;
        while g0 < gpr {
            let ng = (gpr - g0).min(8);
            let (a, b) = factors::<L>(row, g0, ng);
            let (mut av, mut bv) = ([0f32; 8], [0f32; 8]);
            _mm256_storeu_ps(av.as_mut_ptr(), a);
            _mm256_storeu_ps(bv.as_mut_ptr(), b);
            for k in 0..ng {
                let g = g0 + k;
                let blk = row.add(g / gpb * bb);
                s.put(p * gpr + g, lane, unpack::<L>(blk, g % gpb), av[k], bv[k]);
                if L == Q6K {
                    // The i8 scales of the group's two sub-blocks of 16 (2j and 2j + 1 of the block).
                    for h in 0..2 {
                        s.sc6[((p * gpr + g) * 2 + h) * PANEL + lane] = *blk.add(192 + 2 * (g % 8) + h) as i8 as i32;
                    }
                }
            }
            g0 += ng;
        }
    }
}

/// [`unpack_tile`] for omex's int8, int4 and ternary layouts (quants and f16 scales in separate arrays; the
/// buffers were sized by the caller).
///
/// # Safety
/// AVX2/F16C; `m` validated, of one of those layouts, with at least `r0 + nr` rows.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")]
unsafe fn unpack_omex<const L: u8>(m: &Matrix, r0: usize, nr: usize, s: &mut Scratch) {
    let gpr = m.cols / GROUP;
    let f16 = |v: u16| half::f16::from_bits(v).to_f32();
    for i in 0..nr {
        let (p, lane) = (i / PANEL, i % PANEL);
        for g in 0..gpr {
            let at = (r0 + i) * gpr + g;
            let (u, a, b) = match m.w {
                Weights::Int8 { q, scales } => {
                    let v = _mm256_loadu_si256(q.as_ptr().add(at * GROUP) as *const __m256i);
                    let d = f16(scales[at]);
                    (_mm256_xor_si256(v, _mm256_set1_epi8(i8::MIN)), d, 0.0)
                }
                Weights::Int4 { q, scales, mins } => {
                    (unpack_int4(q.as_ptr().add(at * INT4_GROUP_BYTES)), f16(scales[at]), f16(mins[at]))
                }
                Weights::Ternary { q, scales } => {
                    let v = unpack_ternary(q.as_ptr().add(at * TERNARY_GROUP_BYTES));
                    let d = f16(scales[at]);
                    (_mm256_add_epi8(v, _mm256_set1_epi8(1)), d, 0.0)
                }
                _ => unreachable!("omex layouts only"),
            };
            s.put(p * gpr + g, lane, u, a, b);
        }
    }
}

/// `o sum(q_x)` of every 4 activations of tokens `t0..t0 + nt`.
fn x_sums(xq: &Q8Activations, t0: usize, nt: usize, o: i32, out: &mut Vec<i32>) {
    let cols = xq.cols;
    out.clear();
    out.extend(
        xq.qs[t0 * cols..(t0 + nt) * cols].chunks_exact(4).map(|c| o * c.iter().map(|&v| v as i32).sum::<i32>()),
    );
}

/// Panel `p` of the unpacked tile against tokens `t..t + T` of `xq` (`xt` is the tile's first token, for
/// `xo`): 16 rows' dot products per token.
///
/// Bit for bit the AVX2 kernels' arithmetic: their accumulator's lane `l` takes, per group, the exact integer
/// dot of values `4l..4l + 4` converted and multiplied by `a d_x` (one FMA), after the min terms of its chunk
/// of 8 groups (group `g0 + l`'s into lane `l`), and the lanes are summed in a fixed order. Here accumulator
/// `l` of a token holds lane `l` for 16 rows, so a row's result does not depend on the kernel, the tile or the
/// batch it was computed in.
///
/// # Safety
/// AVX-512 VNNI; `s` holds a tile unpacked from a matrix of `w.cols` columns with at least `p + 1` panels;
/// `xq` has at least `t + T` rows.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")]
unsafe fn panel<const L: u8, const T: usize>(
    w: &Rows,
    s: &Scratch,
    p: usize,
    xq: &Q8Activations,
    t: usize,
    xt: usize,
) -> [__m512; T] {
    let gpr = w.gpr;
    let mut acc = [[_mm512_setzero_ps(); 8]; T];
    let quants = s.quants.as_ptr().add(p * gpr * 8 * PANEL * 4);
    let x = |j: usize| xq.qs.as_ptr().add((t + j) * w.cols);
    let row_vec = |v: &[f32], g: usize| _mm512_loadu_ps(v.as_ptr().add((p * gpr + g) * PANEL));
    let mut g0 = 0;
    while g0 < gpr {
        let ng = (gpr - g0).min(8);
        if has_min(L) {
            for k in 0..ng {
                let b = row_vec(&s.b, g0 + k);
                for j in 0..T {
                    let sx = _mm512_set1_ps(*xq.s.get_unchecked((t + j) * gpr + g0 + k));
                    acc[j][k] = _mm512_fmadd_ps(b, sx, acc[j][k]);
                }
            }
        }
        for g in g0..g0 + ng {
            let q = quants.add(g * 8 * PANEL * 4);
            let a = row_vec(&s.a, g);
            let mut sc = [_mm512_setzero_ps(); T];
            for j in 0..T {
                sc[j] = _mm512_mul_ps(a, _mm512_set1_ps(*xq.d.get_unchecked((t + j) * gpr + g)));
            }
            for l in 0..8 {
                let wq = _mm512_loadu_si512(q.add(l * PANEL * 4) as *const _);
                let sc6 = if L == Q6K {
                    _mm512_loadu_si512(s.sc6.as_ptr().add(((p * gpr + g) * 2 + l / 4) * PANEL) as *const _)
                } else {
                    _mm512_setzero_si512()
                };
                for j in 0..T {
                    // Four activation bytes of token j broadcast to every lane.
                    let xb = _mm512_set1_epi32(std::ptr::read_unaligned(x(j).add(g * GROUP + 4 * l) as *const i32));
                    let mut d = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wq, xb);
                    if offset(L) != 0 {
                        let xo = *s.xo.get_unchecked((t + j - xt) * (w.cols / 4) + g * 8 + l);
                        d = _mm512_sub_epi32(d, _mm512_set1_epi32(xo));
                    }
                    if L == Q6K {
                        d = _mm512_mullo_epi32(d, sc6);
                    }
                    acc[j][l] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d), sc[j], acc[j][l]);
                }
            }
        }
        g0 += ng;
    }
    // The AVX2 kernels' lane sum: halves, then pairs, then the last two.
    acc.map(|a| {
        let h = [
            _mm512_add_ps(a[0], a[4]),
            _mm512_add_ps(a[1], a[5]),
            _mm512_add_ps(a[2], a[6]),
            _mm512_add_ps(a[3], a[7]),
        ];
        _mm512_add_ps(_mm512_add_ps(h[0], h[2]), _mm512_add_ps(h[1], h[3]))
    })
}

/// Panel `p` against tokens `t..t + T`, stored into `outs` (rows `16p..` of the tile, at most `nr`).
///
/// # Safety
/// As [`panel`], with `outs[t - t0 + j]` holding the tile's `nr` rows.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
unsafe fn run<const L: u8, const T: usize>(
    w: &Rows,
    s: &Scratch,
    p: usize,
    xq: &Q8Activations,
    t: usize,
    t0: usize,
    nr: usize,
    outs: &mut [&mut [f32]],
) {
    let acc = panel::<L, T>(w, s, p, xq, t, t0);
    let rows = (nr - p * PANEL).min(PANEL);
    let mask: __mmask16 = if rows == PANEL { !0 } else { (1u16 << rows) - 1 };
    for (j, v) in acc.iter().enumerate() {
        let out = &mut outs[t - t0 + j][p * PANEL..p * PANEL + rows];
        _mm512_mask_storeu_ps(out.as_mut_ptr(), mask, *v);
    }
}

/// `outs[j][i] = W[r0 + i] . x[t0 + j]` for a quantized matrix (raw GGUF blocks, int8, int4 or ternary).
///
/// # Safety
/// AVX-512 F/BW/VL/DQ/VNNI and AVX2/FMA/F16C; `m` validated and quantized (not F32/F16); `r0 + outs[j].len() <=
/// m.rows` for every `j` (all equally long) and `t0 + outs.len() <= xq.n()`; `xq.cols() == m.cols`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")]
pub unsafe fn tile(m: &Matrix, xq: &Q8Activations, r0: usize, t0: usize, outs: &mut [&mut [f32]]) {
    let nt = outs.len();
    let nr = outs.first().map_or(0, |o| o.len());
    assert!(outs.iter().all(|o| o.len() == nr) && r0 + nr <= m.rows && t0 + nt <= xq.n && xq.cols == m.cols);
    if nr == 0 {
        return;
    }
    let (gpr, cols) = (m.cols / GROUP, m.cols);
    let Some((kind, bytes)) = m.w.as_ggml() else {
        // Only `cols` and `gpr` are read for the omex layouts (`unpack_omex` reads the matrix itself).
        let w = Rows { p: std::ptr::null(), row_bytes: 0, gpr, cols };
        return match m.w {
            Weights::Int8 { .. } => tile_l::<INT8>(m, &w, xq, r0, t0, outs),
            Weights::Int4 { .. } => tile_l::<INT4>(m, &w, xq, r0, t0, outs),
            Weights::Ternary { .. } => tile_l::<TERN>(m, &w, xq, r0, t0, outs),
            _ => unreachable!("float weights take the float path"),
        };
    };
    let w = Rows { p: bytes.as_ptr(), row_bytes: kind.bytes_for(m.cols), gpr, cols };
    match kind {
        GgmlBlock::Q4K => tile_l::<Q4K>(m, &w, xq, r0, t0, outs),
        GgmlBlock::Q5K => tile_l::<Q5K>(m, &w, xq, r0, t0, outs),
        GgmlBlock::Q6K => tile_l::<Q6K>(m, &w, xq, r0, t0, outs),
        GgmlBlock::Q5_0 => tile_l::<Q5_0>(m, &w, xq, r0, t0, outs),
        GgmlBlock::Q5_1 => tile_l::<Q5_1>(m, &w, xq, r0, t0, outs),
        GgmlBlock::Q8_0 => tile_l::<Q8_0>(m, &w, xq, r0, t0, outs),
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")]
unsafe fn tile_l<const L: u8>(m: &Matrix, w: &Rows, xq: &Q8Activations, r0: usize, t0: usize, outs: &mut [&mut [f32]]) {
    let nt = outs.len();
    let nr = outs[0].len();
    SCRATCH.with(|cell| {
        let s = &mut *cell.borrow_mut();
        unpack_tile::<L>(m, w, r0, nr, s);
        if offset(L) != 0 {
            x_sums(xq, t0, nt, offset(L), &mut s.xo);
        }
        for p in 0..nr.div_ceil(PANEL) {
            let mut t = t0;
            while t < t0 + nt {
                let tt = (t0 + nt - t).min(TOKENS);
                match tt {
                    3 => run::<L, 3>(w, s, p, xq, t, t0, nr, outs),
                    2 => run::<L, 2>(w, s, p, xq, t, t0, nr, outs),
                    _ => run::<L, 1>(w, s, p, xq, t, t0, nr, outs),
                }
                t += tt;
            }
        }
    });
}
