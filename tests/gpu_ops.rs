//! The op set, one test body per op run on both backends: the CPU (kernels-cpu) and the GPU (WGSL on whatever
//! adapter there is; lavapipe on CI). Each body draws fresh seeded random inputs, odd shapes included, and
//! compares with an independent f64 reference built only on `Matrix::dequant_row` and the formulas; GPU
//! outputs start poisoned (all bits set), so an element a kernel leaves unwritten fails.

mod gpu_common;

use gpu_common::ops::{AttnCase, Cpu, DecodeCase, Gpu, LinearCase, Ops, PagedCase, RopeCase};
use gpu_common::sample_ref::{self, Pick};
use gpu_common::*;
use omex::backend::gpu::ops::{Heads, Output};
use omex::backend::KvType;
use omex::graph::Activation;
use omex::sampling::SamplerOptions;

macro_rules! both {
    ($($body:ident),* $(,)?) => {$(
        mod $body {
            #[test]
            fn cpu() {
                super::$body(&super::Cpu);
            }
            #[test]
            fn gpu() {
                if let Some(ctx) = super::gpu() {
                    super::$body(&super::Gpu(ctx));
                }
            }
        }
    )*};
}

both!(
    matvec_every_layout,
    matvec_fused,
    matmul_every_layout,
    matmul_fused,
    rmsnorm_rows,
    rmsnorm_heads,
    rope_both_styles,
    attention_decode,
    attention_prefill,
    attention_paged_batch,
    silu_mul_and_add,
    gelu_mul,
    layernorm_with_and_without_bias,
    activations_in_place,
    learned_positions,
    embed_every_layout,
    argmax_ties_and_nans,
    sample_matches_the_reference,
    rmsnorm_into_a_buffer_of_its_own,
    moe_route_rows,
    moe_add_weighted,
);

fn rms_ref(x: &[f32], w: &[f32], eps: f32) -> Vec<f64> {
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks_exact(w.len()) {
        let ss: f64 = row.iter().map(|&v| (v as f64).powi(2)).sum();
        let r = 1.0 / (ss / w.len() as f64 + eps as f64).sqrt();
        out.extend(row.iter().zip(w).map(|(&v, &g)| v as f64 * r * g as f64));
    }
    out
}

/// LayerNorm of each row in f64: (x - mean) / sqrt(variance + eps) * w + b.
fn layernorm_ref(x: &[f32], w: &[f32], b: &[f32], eps: f32) -> Vec<f64> {
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks_exact(w.len()) {
        let mean = row.iter().map(|&v| v as f64).sum::<f64>() / w.len() as f64;
        let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / w.len() as f64;
        let r = 1.0 / (var + eps as f64).sqrt();
        out.extend(row.iter().zip(w).zip(b).map(|((&v, &g), &b)| (v as f64 - mean) * r * g as f64 + b as f64));
    }
    out
}

fn silu_ref(g: f64) -> f64 {
    g / (1.0 + (-g).exp())
}

fn linear_ref(c: &LinearCase) -> Vec<f32> {
    let cols = c.mats[0].cols;
    let h: Vec<f64> = match (&c.norm, &c.ln_bias) {
        (Some((w, eps)), Some(b)) => layernorm_ref(&c.x[..c.n * cols], w, b, *eps),
        (Some((w, eps)), None) => rms_ref(&c.x[..c.n * cols], w, *eps),
        (None, _) => c.x[..c.n * cols].iter().map(|&v| v as f64).collect(),
    };
    let width = c.width();
    let mut y: Vec<f64> = c.y0.iter().map(|&v| v as f64).collect();
    for t in 0..c.n {
        let ht = &h[t * cols..(t + 1) * cols];
        let prods: Vec<Vec<f64>> = c
            .mats
            .iter()
            .zip(&c.biases)
            .map(|(m, b)| {
                let dense = m.dense();
                (0..m.rows)
                    .map(|r| {
                        let dot: f64 =
                            dense[r * cols..(r + 1) * cols].iter().zip(ht).map(|(&w, &x)| w as f64 * x).sum();
                        dot + b.as_ref().map_or(0.0, |b| b[r] as f64)
                    })
                    .collect()
            })
            .collect();
        let row = &mut y[t * width..(t + 1) * width];
        match c.output {
            Output::SwiGlu => {
                for (r, o) in row.iter_mut().enumerate() {
                    *o = silu_ref(prods[0][r]) * prods[1][r];
                }
            }
            _ => {
                for (o, p) in row.iter_mut().zip(prods.concat()) {
                    *o = if c.output == Output::Add { *o + p } else { p };
                }
            }
        }
    }
    y.iter().map(|&v| v as f32).collect()
}

/// Elementwise within `tol * (1 + max |want|)`.
fn check(b: &dyn Ops, what: &str, got: &[f32], want: &[f32], tol: f32) {
    let scale = 1.0 + want.iter().fold(0f32, |m, v| m.max(v.abs()));
    assert_close(&format!("{} {what}", b.name()), got, want, tol * scale, 0.0);
}

fn linear_case(rng: &mut Rng, layout: Layout, rows: &[usize], cols: usize, n: usize, output: Output) -> LinearCase {
    let mats: Vec<_> = rows.iter().map(|&r| OwnedMatrix::random(layout, r, cols, rng)).collect();
    let width = if output == Output::SwiGlu { rows[0] } else { rows.iter().sum() };
    LinearCase {
        biases: vec![None; mats.len()],
        mats,
        norm: None,
        ln_bias: None,
        output,
        x: rng.vec(n * cols, -1.0, 1.0),
        n,
        y0: rng.vec(n * width, -1.0, 1.0),
        matvec: n == 1,
    }
}

fn matvec_every_layout(b: &dyn Ops) {
    let mut rng = Rng::new(0x5eed_0001);
    for layout in LAYOUTS {
        let mut shapes = vec![(67, 96), (3, 32), (130, 256), (9, 1024)];
        if !layout.quantized() {
            shapes.extend([(37, 45), (5, 3), (1, 1)]);
        }
        for (rows, cols) in shapes {
            let c = linear_case(&mut rng, layout, &[rows], cols, 1, Output::Store);
            check(b, &format!("matvec {layout:?} {rows}x{cols}"), &b.linear(&c), &linear_ref(&c), 2e-5);
        }
    }
}

/// Fused products over `cols` columns: q|k|v with bias and norm, the residual add, a normed single matrix, and
/// (decode) gate/up SwiGLU.
fn fused_cases(rng: &mut Rng, layout: Layout, n: usize, cols: usize) -> Vec<(&'static str, LinearCase)> {
    let mut qkv = linear_case(rng, layout, &[40, 24, 24], cols, n, Output::Store);
    qkv.biases = qkv.mats.iter().map(|m| Some(rng.vec(m.rows, -0.5, 0.5))).collect();
    qkv.norm = Some((rng.vec(cols, 0.5, 1.5), 1e-5));
    let mut o = linear_case(rng, layout, &[33], cols, n, Output::Add);
    o.norm = None;
    let mut cases = vec![("q|k|v + bias, normed", qkv), ("residual add", o)];
    let mut single = linear_case(rng, layout, &[50], cols, n, Output::Store);
    single.norm = Some((rng.vec(cols, 0.5, 1.5), 1e-6));
    cases.push(("normed", single));
    if n == 1 {
        let mut gu = linear_case(rng, layout, &[44, 44], cols, n, Output::SwiGlu);
        gu.norm = Some((rng.vec(cols, 0.5, 1.5), 1e-5));
        cases.push(("gate/up SwiGLU, normed", gu));
        // GPT-2's ln before q|k|v (with biases), its input off-centre so that the mean matters.
        let mut ln = linear_case(rng, layout, &[40, 24, 24], cols, n, Output::Store);
        ln.x.iter_mut().for_each(|v| *v = 3.0 + 2.0 * *v);
        ln.biases = ln.mats.iter().map(|m| Some(rng.vec(m.rows, -0.5, 0.5))).collect();
        ln.norm = Some((rng.vec(cols, 0.5, 1.5), 1e-5));
        ln.ln_bias = Some(rng.vec(cols, -0.5, 0.5));
        cases.push(("q|k|v + bias, LayerNormed", ln));
    }
    cases
}

fn matvec_fused(b: &dyn Ops) {
    let mut rng = Rng::new(0x5eed_0002);
    for layout in LAYOUTS {
        for (what, c) in fused_cases(&mut rng, layout, 1, 64) {
            check(b, &format!("matvec {layout:?} {what}"), &b.linear(&c), &linear_ref(&c), 2e-5);
        }
    }
}

both!(gguf_matvec, gguf_matmul, gguf_embed);

/// Shapes for a GGUF layout: rows of one to four blocks, odd row counts.
fn gguf_shapes(layout: Layout) -> Vec<(usize, usize)> {
    let bv = layout.block_values().expect("a GGUF layout");
    vec![(67, bv), (3, 2 * bv), (9, 4 * bv)]
}

/// The GGUF block layouts as `--quant keep` stores them: every shape plus the fused products (q|k|v with
/// bias and norm, the residual add, SwiGLU), decode on the generic and the group matvecs.
fn gguf_matvec(b: &dyn Ops) {
    let mut rng = Rng::new(0x5eed_0101);
    for layout in GGUF_LAYOUTS {
        for (rows, cols) in gguf_shapes(layout) {
            let c = linear_case(&mut rng, layout, &[rows], cols, 1, Output::Store);
            check(b, &format!("matvec {layout:?} {rows}x{cols}"), &b.linear(&c), &linear_ref(&c), 2e-5);
        }
        for (what, c) in fused_cases(&mut rng, layout, 1, layout.block_values().expect("a GGUF layout")) {
            check(b, &format!("matvec {layout:?} {what}"), &b.linear(&c), &linear_ref(&c), 2e-5);
        }
    }
}

fn gguf_matmul(b: &dyn Ops) {
    let mut rng = Rng::new(0x5eed_0102);
    for layout in GGUF_LAYOUTS {
        let cols = 2 * layout.block_values().expect("a GGUF layout");
        for (rows, n) in [(45, 2), (33, 33), (64, 1)] {
            let mut c = linear_case(&mut rng, layout, &[rows], cols, n, Output::Store);
            c.matvec = false;
            check(b, &format!("matmul {layout:?} {rows}x{cols} n={n}"), &b.linear(&c), &linear_ref(&c), 2e-5);
        }
        for (what, mut c) in fused_cases(&mut rng, layout, 35, cols / 2) {
            c.matvec = false;
            check(b, &format!("matmul {layout:?} n=35 {what}"), &b.linear(&c), &linear_ref(&c), 2e-5);
        }
    }
}

fn gguf_embed(b: &dyn Ops) {
    let mut rng = Rng::new(0x5eed_0103);
    for layout in GGUF_LAYOUTS {
        let cols = layout.block_values().expect("a GGUF layout");
        let e = OwnedMatrix::random(layout, 20, cols, &mut rng);
        let ids = [3u32, 19, 0, 3, 11];
        let dense = e.dense();
        let want: Vec<f32> =
            ids.iter().flat_map(|&i| dense[i as usize * cols..(i as usize + 1) * cols].to_vec()).collect();
        check(b, &format!("embed {layout:?}"), &b.embed(&e, &ids), &want, 0.0);
    }
}

both!(matvec_q8_int_layouts);

/// Row `r` of a quantized matrix as integers `q` per column (`w = d q + m`) and `(d, m)` per group, decoded from
/// the layout's bytes as kernels-cpu/src/layout.rs documents them.
fn int_row(m: &kernels_cpu::Matrix, r: usize) -> (Vec<i32>, Vec<(f64, f64)>) {
    use kernels_cpu::{Weights, GROUP};
    let gpr = m.cols / GROUP;
    let h = |bits: u16| half::f16::from_bits(bits).to_f64();
    let mut q = Vec::with_capacity(m.cols);
    let mut dm = Vec::with_capacity(gpr);
    for g in r * gpr..(r + 1) * gpr {
        match m.w {
            Weights::Int8 { q: w, scales } => {
                q.extend(w[g * GROUP..(g + 1) * GROUP].iter().map(|&v| v as i32));
                dm.push((h(scales[g]), 0.0));
            }
            Weights::Int4 { q: w, scales, mins } => {
                let bytes = &w[g * 16..(g + 1) * 16];
                q.extend(bytes.iter().map(|&b| (b & 15) as i32).chain(bytes.iter().map(|&b| (b >> 4) as i32)));
                dm.push((h(scales[g]), h(mins[g])));
            }
            Weights::Ternary { q: w, scales } => {
                let bytes = &w[g * 8..(g + 1) * 8];
                q.extend((0..GROUP).map(|k| ((bytes[k % 8] >> (2 * (k / 8))) & 3) as i32 - 1));
                dm.push((h(scales[g]), 0.0));
            }
            _ => unreachable!("int8 activations are for quantized weights"),
        }
    }
    (q, dm)
}

/// The reference of a matvec with int8 activations: x normed by kernels-cpu's rmsnorm (as the CPU engine norms
/// it) and quantized by kernels-cpu's rule, then exact integer dots scaled in f64. Returns y and, per value, the
/// error allowed: 4e-6 of the sum of the magnitudes of its terms (f32 arithmetic), and, with a norm, one quant
/// step of every activation whose scaled value lies within 2^-17 (relative) of a rounding boundary: the GPU
/// norms with its own sum of squares, which may move such a value across. Without a norm the quants must match
/// exactly.
fn q8_ref(c: &LinearCase) -> (Vec<f64>, Vec<f64>) {
    let cols = c.mats[0].cols;
    let gpr = cols / kernels_cpu::GROUP;
    let h = match &c.norm {
        Some((w, eps)) => {
            let mut h = vec![0f32; cols];
            kernels_cpu::ops::rmsnorm(&c.x, w, *eps, &mut h);
            h
        }
        None => c.x.clone(),
    };
    let xq = kernels_cpu::quantize(&h, 1);
    let (qx, dx) = (xq.quants(), xq.scales());
    let near: Vec<bool> = h
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let d = dx[i / kernels_cpu::GROUP] as f64;
            let t = (v as f64 / d).abs();
            c.norm.is_some() && d > 0.0 && (t.fract() - 0.5).abs() < t * 2f64.powi(-17)
        })
        .collect();
    let prods: Vec<Vec<(f64, f64)>> = c
        .mats
        .iter()
        .zip(&c.biases)
        .map(|(m, bias)| {
            let mm = m.matrix();
            (0..m.rows)
                .map(|r| {
                    let (q, dm) = int_row(&mm, r);
                    let (mut y, mut l1, mut slack) = (0f64, 0f64, 0f64);
                    for (g, &(dw, mw)) in dm.iter().enumerate().take(gpr) {
                        let span = g * 32..(g + 1) * 32;
                        let isum: i64 = span.clone().map(|i| q[i] as i64 * qx[i] as i64).sum();
                        let qsum: i64 = span.clone().map(|i| qx[i] as i64).sum();
                        let d = dx[g] as f64;
                        let (a, b) = (dw * d * isum as f64, mw * d * qsum as f64);
                        y += a + b;
                        l1 += a.abs() + b.abs();
                        slack += span.filter(|&i| near[i]).map(|i| d * (dw * q[i] as f64 + mw).abs()).sum::<f64>();
                    }
                    let b = bias.as_ref().map_or(0.0, |b| b[r] as f64);
                    (y + b, 4e-6 * (l1 + b.abs()) + slack)
                })
                .collect()
        })
        .collect();
    let mut want: Vec<f64> = c.y0.iter().map(|&v| v as f64).collect();
    let mut tol = vec![0f64; want.len()];
    if c.output == Output::SwiGlu {
        for (r, (&(g, tg), &(u, tu))) in prods[0].iter().zip(&prods[1]).enumerate() {
            want[r] = silu_ref(g) * u;
            // |silu'| < 1.1
            tol[r] = 1.1 * tg * (u.abs() + tu) + silu_ref(g).abs() * tu;
        }
    } else {
        for (i, (p, t)) in prods.concat().into_iter().enumerate() {
            want[i] = if c.output == Output::Add { want[i] + p } else { p };
            tol[i] = t;
        }
    }
    for (t, w) in tol.iter_mut().zip(&want) {
        *t += 1e-6 * w.abs();
    }
    (want, tol)
}

/// x with exact rounding ties: each group holds +-127/128 (so d = 1/128 and 1/d = 128 exactly) and otherwise
/// (k + 1/2)/128, which the rule rounds to the even neighbour; one group is all zeros (d = 0).
fn tie_row(rng: &mut Rng, cols: usize) -> Vec<f32> {
    let mut x: Vec<f32> = (0..cols).map(|_| (rng.below(254) as f32 - 127.0 + 0.5) / 128.0).collect();
    for g in x.chunks_exact_mut(32) {
        let at = rng.below(32) as usize;
        g[at] = if rng.below(2) == 0 { 127.0 / 128.0 } else { -127.0 / 128.0 };
    }
    x[32..64].fill(0.0);
    x
}

/// The decode matvec with int8 activations (int8, int4, ternary weights) against the q8 reference, in every
/// kernel variant: odd rows, 1-3 fused matrices, biases, norm on and off, every output, rows longer than the
/// GPU kernel's 4096-column chunk, and activations spread over many magnitudes (scaled per group by 2^-12 to
/// 2^12).
fn matvec_q8_int_layouts(b: &dyn Ops) {
    let mut rng = Rng::new(0x5eed_0108);
    // cols, rows of each matrix, norm, output, biases
    let shapes: [(usize, &[usize], bool, Output, bool); 9] = [
        (32, &[3], false, Output::Store, false),
        (64, &[67, 5, 9], true, Output::Store, true),
        (96, &[33], false, Output::Add, false),
        (576, &[129, 65], true, Output::Store, true),
        (576, &[77, 77], true, Output::SwiGlu, false),
        (1024, &[41], false, Output::Add, false),
        (1536, &[35, 3, 11], false, Output::Add, true),
        (1536, &[19, 19], true, Output::SwiGlu, false),
        (4160, &[7], true, Output::Store, false),
    ];
    for layout in [Layout::Int8, Layout::Int4, Layout::Ternary] {
        let mut cases = Vec::new();
        for (cols, rows, norm, output, bias) in shapes {
            let mut c = linear_case(&mut rng, layout, rows, cols, 1, output);
            for g in c.x.chunks_exact_mut(32) {
                let s = 2f32.powi(rng.below(25) as i32 - 12);
                g.iter_mut().for_each(|v| *v *= s);
            }
            if norm {
                c.norm = Some((rng.vec(cols, 0.5, 1.5), 1e-5));
            }
            if bias {
                c.biases = c.mats.iter().map(|m| Some(rng.vec(m.rows, -0.5, 0.5))).collect();
            }
            let what = format!("{cols} cols, rows {rows:?}, norm {norm}, {output:?}");
            cases.push((what, c));
        }
        let mut ties = linear_case(&mut rng, layout, &[21], 256, 1, Output::Store);
        ties.x = tie_row(&mut rng, 256);
        cases.push(("exact ties".into(), ties));
        for (what, c) in cases {
            let (want, tol) = q8_ref(&c);
            for (kernel, got) in b.linear_q8(&c) {
                for (i, ((&g, &w), &t)) in got.iter().zip(&want).zip(&tol).enumerate() {
                    let err = (g as f64 - w).abs();
                    let n = want.len();
                    let case = format!("{} {kernel} q8 matvec {layout:?} {what}", b.name());
                    assert!(err <= t, "{case}: value {i} of {n}: got {g}, want {w} (error {err:.3e} > {t:.3e})");
                }
            }
        }
    }
}

fn matmul_every_layout(b: &dyn Ops) {
    let mut rng = Rng::new(0x5eed_0003);
    for layout in LAYOUTS {
        let cols = if layout.quantized() { 96 } else { 45 };
        for (rows, n) in [(45, 2), (33, 33), (7, 40), (64, 1)] {
            let mut c = linear_case(&mut rng, layout, &[rows], cols, n, Output::Store);
            c.matvec = false;
            check(b, &format!("matmul {layout:?} {rows}x{cols} n={n}"), &b.linear(&c), &linear_ref(&c), 2e-5);
        }
    }
}

fn matmul_fused(b: &dyn Ops) {
    let mut rng = Rng::new(0x5eed_0004);
    for layout in LAYOUTS {
        for n in [3, 35] {
            for (what, mut c) in fused_cases(&mut rng, layout, n, 64) {
                c.matvec = false;
                check(b, &format!("matmul {layout:?} n={n} {what}"), &b.linear(&c), &linear_ref(&c), 2e-5);
            }
        }
    }
}

fn rmsnorm_rows(b: &dyn Ops) {
    let mut rng = Rng::new(0x5eed_0005);
    for (dim, rows) in [(64, 3), (37, 1), (576, 2)] {
        let x = rng.vec(dim * rows, -2.0, 2.0);
        let w = rng.vec(dim, 0.5, 1.5);
        let want: Vec<f32> = rms_ref(&x, &w, 1e-5).iter().map(|&v| v as f32).collect();
        check(b, &format!("rmsnorm {rows}x{dim}"), &b.rmsnorm(&x, &w, 1e-5), &want, 1e-5);
    }
}

fn rope_both_styles(b: &dyn Ops) {
    let mut rng = Rng::new(0x5eed_0006);
    for kv in KV_TYPES {
        for half in [false, true] {
            for (heads, dims) in [
                (Heads { n_heads: 6, n_kv: 2, head_dim: 16 }, 16),
                (Heads { n_heads: 3, n_kv: 1, head_dim: 24 }, 8),
                (Heads { n_heads: 3, n_kv: 1, head_dim: 64 }, 32),
            ] {
                if !fits(kv, heads) {
                    continue;
                }
                let (n, pos0, ctx) = (3, 1000, 1004);
                let (qd, kvd) = (heads.q_dim() as usize, heads.kv_dim() as usize);
                let inv_freq: Vec<f32> =
                    (0..dims / 2).map(|i| 1.0 / 10000f32.powf(2.0 * i as f32 / dims as f32)).collect();
                let qkv = rng.vec(n * (qd + 2 * kvd), -1.0, 1.0);
                let c = RopeCase { heads, dims, half, qkv, n, pos0, ctx, inv_freq, kv };
                // Reference: the rotation in f64 of the f32 angle.
                let (mut q, mut kc, mut vc) = (vec![0f32; n * qd], vec![0f32; ctx * kvd], vec![0f32; ctx * kvd]);
                let hd = heads.head_dim as usize;
                for t in 0..n {
                    let row = &c.qkv[t * (qd + 2 * kvd)..(t + 1) * (qd + 2 * kvd)];
                    let pos = pos0 + t;
                    q[t * qd..(t + 1) * qd].copy_from_slice(&rope_ref(&row[..qd], hd, dims, half, pos, &c.inv_freq));
                    let k = rope_ref(&row[qd..qd + kvd], hd, dims, half, pos, &c.inv_freq);
                    kc[pos * kvd..(pos + 1) * kvd].copy_from_slice(&kv_round(kv, &k));
                    vc[pos * kvd..(pos + 1) * kvd].copy_from_slice(&kv_round(kv, &row[qd + kvd..]));
                }
                let (gq, gk, gv) = b.rope_store(&c);
                let what = format!("rope half={half} dims={dims} kv={kv:?}");
                check(b, &format!("{what} q"), &gq, &q, 1e-6);
                check(b, &format!("{what} k cache"), &gk[pos0 * kvd..], &kc[pos0 * kvd..], store_tol(kv));
                check(b, &format!("{what} v cache"), &gv[pos0 * kvd..], &vc[pos0 * kvd..], v_tol(kv));
            }
        }
    }
}

/// The KV cache types every cache op is checked over.
const KV_TYPES: [KvType; 3] = [KvType::F32, KvType::F16, KvType::Q8];

/// Whether a cache of `kv` can hold these heads (q8: blocks of 32 values within a head).
fn fits(kv: KvType, heads: Heads) -> bool {
    kv.check_head_dim(heads.head_dim).is_ok()
}

/// How far a rotated k stored in the cache may be from the f64 reference's, relative: an f32 rounding, or with
/// f16 one f16 step (the GPU rounds its f32 result to f16, the reference its f64 one, and the two f32 values
/// may straddle an f16 midpoint). With q8 one quantization step, `max|x| / 127` of the block, at most 1/127 of
/// the largest value `check` scales by: the GPU quantizes its f32 rotation, the reference its f64 one, and its
/// `1 / d` may differ from the host's in the last bit, so a value at a rounding midpoint may go either way.
fn store_tol(kv: KvType) -> f32 {
    match kv {
        KvType::F32 => 1e-6,
        KvType::F16 => 5e-4,
        KvType::Q8 => 1.0 / 126.0,
    }
}

/// The same for a stored v, which is not rotated: exact for f32 and f16 (one rounding of the same f32), one
/// step for q8 (the reciprocal of the scale, as above).
fn v_tol(kv: KvType) -> f32 {
    match kv {
        KvType::F32 | KvType::F16 => 0.0,
        KvType::Q8 => store_tol(kv),
    }
}

/// The q and k heads of fused qkv rows normed in place, each by the same `head_dim` weight (gemma3), the
/// v part untouched; 3 token rows, the norm applied to the first 2.
fn rmsnorm_heads(b: &dyn Ops) {
    let mut rng = Rng::new(0x5eed_0015);
    for (nh, nkv, hd) in [(4, 1, 256), (3, 3, 40), (2, 1, 12)] {
        let stride = (nh + 2 * nkv) * hd;
        let x = rng.vec(3 * stride, -2.0, 2.0);
        let w = rng.vec(hd, 0.5, 1.5);
        for (offset, groups) in [(0, nh), (nh * hd, nkv)] {
            let at = omex::backend::gpu::ops::misc::NormGroups {
                cols: hd as u32,
                groups: groups as u32,
                stride: stride as u32,
                offset: offset as u32,
            };
            let mut want = x.clone();
            for row in want.chunks_exact_mut(stride).take(2) {
                let part = &mut row[offset..offset + groups * hd];
                let normed = rms_ref(part, &w, 1e-6);
                part.iter_mut().zip(normed).for_each(|(v, r)| *v = r as f32);
            }
            let what = format!("head norm {nh}/{nkv}x{hd} at {offset}");
            check(b, &what, &b.rmsnorm_groups(&x, &w, 1e-6, at, 2), &want, 1e-5);
        }
    }
}

fn attention_ref(c: &AttnCase) -> Vec<f32> {
    let (nh, nkv, hd) = (c.heads.n_heads as usize, c.heads.n_kv as usize, c.heads.head_dim as usize);
    let (qd, kvd) = (nh * hd, nkv * hd);
    let mut out = vec![0f32; c.n * qd];
    for i in 0..c.n {
        for h in 0..nh {
            let kvh = h / (nh / nkv);
            let q = &c.q[i * qd + h * hd..i * qd + (h + 1) * hd];
            let len = c.pos0 + i + 1;
            // Keys before the window weigh nothing.
            let first = c.window.map_or(0, |w| len.saturating_sub(w as usize));
            let s: Vec<f64> = (0..len)
                .map(|j| match j < first {
                    true => f64::NEG_INFINITY,
                    false => {
                        c.scale as f64
                            * q.iter().zip(&c.k[j * kvd + kvh * hd..]).map(|(&a, &b)| a as f64 * b as f64).sum::<f64>()
                    }
                })
                .collect();
            let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = s.iter().map(|v| (v - m).exp()).collect();
            let sum: f64 = e.iter().sum();
            for d in 0..hd {
                let o: f64 = (0..len).map(|j| e[j] * c.v[j * kvd + kvh * hd + d] as f64).sum();
                out[i * qd + h * hd + d] = (o / sum) as f32;
            }
        }
    }
    out
}

/// Cache values drawn representable in `kv` (as the engine's store leaves them).
fn attn_case(rng: &mut Rng, heads: Heads, pos0: usize, n: usize, window: Option<u32>, kv: KvType) -> AttnCase {
    let ctx = pos0 + n + 3;
    let (qd, kvd) = (heads.q_dim() as usize, heads.kv_dim() as usize);
    AttnCase {
        heads,
        q: rng.vec(n * qd, -1.0, 1.0),
        k: kv_round(kv, &rng.vec(ctx * kvd, -1.0, 1.0)),
        v: kv_round(kv, &rng.vec(ctx * kvd, -1.0, 1.0)),
        pos0,
        n,
        scale: 1.0 / (heads.head_dim as f32).sqrt() * 2.0,
        window,
        kv,
    }
}

/// RoPE of the heads of `x` (`hd` values each, the first `dims` rotated) at `pos`, in f64 from the f32 angle.
fn rope_ref(x: &[f32], hd: usize, dims: usize, half: bool, pos: usize, inv_freq: &[f32]) -> Vec<f32> {
    let mut out = x.to_vec();
    for (s, d) in x.chunks_exact(hd).zip(out.chunks_exact_mut(hd)) {
        for (i, &f) in inv_freq.iter().enumerate() {
            let th = (pos as f32 * f) as f64;
            let (ia, ib) = if half { (i, i + dims / 2) } else { (2 * i, 2 * i + 1) };
            let (a, b) = (s[ia] as f64, s[ib] as f64);
            d[ia] = (a * th.cos() - b * th.sin()) as f32;
            d[ib] = (a * th.sin() + b * th.cos()) as f32;
        }
    }
    out
}

/// The token at `pos` over caches whose earlier rows hold keys rotated at their own positions (representable
/// in `kv`); row `pos` and the rows after it are NaN, so a missing store or a read past `pos` shows.
#[allow(clippy::too_many_arguments)]
fn decode_case(
    rng: &mut Rng,
    heads: Heads,
    dims: usize,
    half: bool,
    pos: usize,
    splits: u32,
    window: Option<u32>,
    kv: KvType,
) -> DecodeCase {
    let ctx = pos + 4;
    let (qd, kvd, hd) = (heads.q_dim() as usize, heads.kv_dim() as usize, heads.head_dim as usize);
    let inv_freq: Vec<f32> = (0..dims / 2).map(|i| 1.0 / 10000f32.powf(2.0 * i as f32 / dims as f32)).collect();
    let mut k = vec![f32::NAN; ctx * kvd];
    let mut v = vec![f32::NAN; ctx * kvd];
    for p in 0..pos {
        let row = rope_ref(&rng.vec(kvd, -1.0, 1.0), hd, dims, half, p, &inv_freq);
        k[p * kvd..(p + 1) * kvd].copy_from_slice(&kv_round(kv, &row));
        v[p * kvd..(p + 1) * kvd].copy_from_slice(&kv_round(kv, &rng.vec(kvd, -1.0, 1.0)));
    }
    let qkv = rng.vec(qd + 2 * kvd, -1.0, 1.0);
    let scale = 1.0 / (hd as f32).sqrt() * 2.0;
    DecodeCase { heads, dims, half, inv_freq, qkv, k, v, pos, scale, splits, window, kv }
}

/// What a cache of `kv` holds for `values` uploaded to it: the values themselves, except q8's rounding.
fn held(kv: KvType, values: &[f32]) -> Vec<f32> {
    match kv {
        KvType::Q8 => kv_round(kv, values),
        _ => values.to_vec(),
    }
}

/// The formula's attention output of a decode case's token over caches `k` and `v` as a backend stored them.
fn attended(c: &DecodeCase, k: &[f32], v: &[f32]) -> Vec<f32> {
    let (qd, hd) = (c.heads.q_dim() as usize, c.heads.head_dim as usize);
    let q = rope_ref(&c.qkv[..qd], hd, c.dims, c.half, c.pos, &c.inv_freq);
    let (k, v) = (k.to_vec(), v.to_vec());
    attention_ref(&AttnCase { heads: c.heads, q, k, v, pos0: c.pos, n: 1, scale: c.scale, window: c.window, kv: c.kv })
}

/// (output, K cache, V cache): rope, the store at `pos` (rounded to the cache's type) and attention, each from
/// its formula.
fn decode_ref(c: &DecodeCase) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (qd, kvd, hd) = (c.heads.q_dim() as usize, c.heads.kv_dim() as usize, c.heads.head_dim as usize);
    let rot = |x: &[f32]| rope_ref(x, hd, c.dims, c.half, c.pos, &c.inv_freq);
    let (mut k, mut v) = (c.k.clone(), c.v.clone());
    k[c.pos * kvd..(c.pos + 1) * kvd].copy_from_slice(&kv_round(c.kv, &rot(&c.qkv[qd..qd + kvd])));
    v[c.pos * kvd..(c.pos + 1) * kvd].copy_from_slice(&kv_round(c.kv, &c.qkv[qd + kvd..]));
    let (q, pos0, n, scale, window, kv) = (rot(&c.qkv[..qd]), c.pos, 1, c.scale, c.window, c.kv);
    let a = AttnCase { heads: c.heads, q, k, v, pos0, n, scale, window, kv };
    (attention_ref(&a), a.k, a.v)
}

fn attention_decode(b: &dyn Ops) {
    let mut rng = Rng::new(0x5eed_0007);
    // (heads, RoPE dims): SmolLM2's 9/3, 2 KV heads x 3 of head dim 8 rotating half of it, 8 query heads per KV
    // head with halves that straddle vec4s (12 of 40), the widest head, the most query heads per KV head.
    let shapes = [
        (Heads { n_heads: 9, n_kv: 3, head_dim: 64 }, 64),
        (Heads { n_heads: 6, n_kv: 2, head_dim: 8 }, 4),
        (Heads { n_heads: 8, n_kv: 1, head_dim: 40 }, 12),
        (Heads { n_heads: 2, n_kv: 2, head_dim: 128 }, 128),
        (Heads { n_heads: 16, n_kv: 1, head_dim: 64 }, 32),
        (Heads { n_heads: 4, n_kv: 1, head_dim: 256 }, 256),
    ];
    // (pos, splits): key `pos` first or last of its split of 64-key tiles, alone in it, in a later tile of it,
    // and splits left empty.
    let steps = [(0, 1), (0, 4), (63, 1), (63, 3), (64, 2), (200, 3), (200, 8), (255, 4), (300, 2)];
    for (kv, half) in KV_TYPES.into_iter().flat_map(|kv| [(kv, false), (kv, true)]) {
        for (heads, dims) in shapes.into_iter().filter(|&(h, _)| fits(kv, h)) {
            for (pos, splits) in steps {
                // A window of 70 keys: all of them early on, then fewer than the position, across split edges.
                let window = (!half && pos > 0).then_some(70);
                let c = decode_case(&mut rng, heads, dims, half, pos, splits, window, kv);
                let (mut want, want_k, want_v) = decode_ref(&c);
                let (out, k, v) = b.decode_attention(&c);
                let what = format!(
                    "decode attention {heads:?} dims={dims} half={half} pos={pos} splits={splits} {window:?} {kv:?}"
                );
                if kv == KvType::Q8 {
                    // The stored row may be a step off the reference's (checked below): attention is checked
                    // against its formula over the cache as stored.
                    want = attended(&c, &k, &v);
                }
                check(b, &what, &out, &want, 1e-5);
                let row = pos * heads.kv_dim() as usize..(pos + 1) * heads.kv_dim() as usize;
                check(b, &format!("{what}: k stored"), &k[row.clone()], &want_k[row.clone()], store_tol(kv));
                check(b, &format!("{what}: v stored"), &v[row.clone()], &want_v[row.clone()], v_tol(kv));
                // Every other row as it was, bit for bit (the NaNs too; a q8 cache holds them as 0).
                let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                let (ck, cv) = (held(kv, &c.k), held(kv, &c.v));
                for (name, got, was) in [("k", &k, &ck), ("v", &v, &cv)] {
                    let same = |r: std::ops::Range<usize>| bits(&got[r.clone()]) == bits(&was[r]);
                    assert!(
                        same(0..row.start) && same(row.end..was.len()),
                        "{} {what}: the {name} cache changed outside row {pos}",
                        b.name()
                    );
                }
            }
        }
    }
}

/// The server's decode step: several sequences' tokens in one pass, each at its own position over its own
/// blocks of a shared cache (tables shuffled, so a sequence's blocks are neither contiguous nor in order).
/// Checked against each row's formula on a contiguous copy of its sequence; every cache row no step
/// writes keeps its bits.
fn attention_paged_batch(b: &dyn Ops) {
    const BT: usize = omex::backend::KV_BLOCK_TOKENS;
    let mut rng = Rng::new(0x5eed_000b);
    let shapes = [(Heads { n_heads: 9, n_kv: 3, head_dim: 64 }, 64), (Heads { n_heads: 8, n_kv: 2, head_dim: 40 }, 12)];
    // Positions of the batch's rows: first of a block, last of one, one past a 64-key tile, a long one.
    let positions = [0usize, 15, 16, 65, 130, 7, 200];
    for (kv, half) in KV_TYPES.into_iter().flat_map(|kv| [(kv, false), (kv, true)]) {
        for (heads, dims) in shapes.into_iter().filter(|&(h, _)| fits(kv, h)) {
            for (splits, window) in [(1, None), (3, None), (2, Some(40))] {
                let kvd = heads.kv_dim() as usize;
                let qd = heads.q_dim() as usize;
                let inv_freq: Vec<f32> =
                    (0..dims / 2).map(|i| 1.0 / 10000f32.powf(2.0 * i as f32 / dims as f32)).collect();
                let need: Vec<usize> = positions.iter().map(|p| (p + 1).div_ceil(BT)).collect();
                let total = need.iter().sum::<usize>() + 3;
                // Hand out the blocks in a shuffled order.
                let mut order: Vec<u32> = (0..total as u32).collect();
                for i in (1..order.len()).rev() {
                    order.swap(i, rng.below(i as u64 + 1) as usize);
                }
                let mut k = vec![f32::NAN; total * BT * kvd];
                let mut v = vec![f32::NAN; total * BT * kvd];
                let mut rows = Vec::new();
                let mut contiguous = Vec::new();
                let mut next = 0;
                for (&pos, &n) in positions.iter().zip(&need) {
                    let table = order[next..next + n].to_vec();
                    next += n;
                    let c = decode_case(&mut rng, heads, dims, half, pos, splits, window, kv);
                    for p in 0..pos {
                        let r = (table[p / BT] as usize * BT + p % BT) * kvd;
                        k[r..r + kvd].copy_from_slice(&c.k[p * kvd..(p + 1) * kvd]);
                        v[r..r + kvd].copy_from_slice(&c.v[p * kvd..(p + 1) * kvd]);
                    }
                    rows.push((c.qkv.clone(), pos, table));
                    contiguous.push(c);
                }
                let scale = contiguous[0].scale;
                let c = PagedCase { heads, dims, half, inv_freq, rows, k, v, scale, splits, window, kv };
                let (out, kc, vc) = b.paged_decode(&c);
                let mut written = vec![false; total * BT];
                for (i, one) in contiguous.iter().enumerate() {
                    let what = format!("paged batch {heads:?} half={half} splits={splits} {window:?} {kv:?}: row {i}");
                    let (mut want, want_k, want_v) = decode_ref(one);
                    let (pos, table) = (c.rows[i].1, &c.rows[i].2);
                    if kv == KvType::Q8 {
                        // As in `attention_decode`: over the sequence's rows as stored.
                        let rows = |cache: &[f32]| -> Vec<f32> {
                            (0..=pos)
                                .flat_map(|p| {
                                    let r = table[p / BT] as usize * BT + p % BT;
                                    cache[r * kvd..(r + 1) * kvd].to_vec()
                                })
                                .collect()
                        };
                        want = attended(one, &rows(&kc), &rows(&vc));
                    }
                    check(b, &what, &out[i * qd..(i + 1) * qd], &want, 1e-5);
                    let r = table[pos / BT] as usize * BT + pos % BT;
                    written[r] = true;
                    let at = pos * kvd..(pos + 1) * kvd;
                    let (got_k, tol) = (&kc[r * kvd..(r + 1) * kvd], store_tol(kv));
                    check(b, &format!("{what}: k stored"), got_k, &want_k[at.clone()], tol);
                    check(b, &format!("{what}: v stored"), &vc[r * kvd..(r + 1) * kvd], &want_v[at], v_tol(kv));
                }
                let (ck, cv) = (held(kv, &c.k), held(kv, &c.v));
                for (r, _) in written.iter().enumerate().filter(|(_, w)| !**w) {
                    let span = r * kvd..(r + 1) * kvd;
                    let same = |got: &[f32], was: &[f32]| got.iter().zip(was).all(|(g, w)| g.to_bits() == w.to_bits());
                    assert!(
                        same(&kc[span.clone()], &ck[span.clone()]) && same(&vc[span.clone()], &cv[span.clone()]),
                        "{}: paged batch changed cache row {r}, which no row of the step writes",
                        b.name()
                    );
                }
            }
        }
    }
}

fn attention_prefill(b: &dyn Ops) {
    let mut rng = Rng::new(0x5eed_0008);
    let shapes = [
        Heads { n_heads: 6, n_kv: 2, head_dim: 24 },
        Heads { n_heads: 2, n_kv: 2, head_dim: 128 },
        Heads { n_heads: 9, n_kv: 3, head_dim: 64 },
        // Gemma 3 270M's.
        Heads { n_heads: 4, n_kv: 1, head_dim: 256 },
    ];
    for (kv, heads) in KV_TYPES.into_iter().flat_map(|kv| shapes.map(|h| (kv, h))).filter(|&(kv, h)| fits(kv, h)) {
        for (pos0, n) in [(0, 13), (5, 9), (0, 1), (17, 3), (30, 41)] {
            for window in [None, Some(1), Some(7), Some(40)] {
                let c = attn_case(&mut rng, heads, pos0, n, window, kv);
                let what = format!("prefill attention {heads:?} pos={pos0} n={n} window={window:?} {kv:?}");
                check(b, &what, &b.attention(&c), &attention_ref(&c), 1e-5);
            }
        }
    }
}

fn silu_mul_and_add(b: &dyn Ops) {
    let mut rng = Rng::new(0x5eed_0009);
    let (g, u) = (rng.vec(70, -8.0, 8.0), rng.vec(70, -2.0, 2.0));
    let want: Vec<f32> = g.iter().zip(&u).map(|(&g, &u)| (silu_ref(g as f64) * u as f64) as f32).collect();
    check(b, "silu_mul", &b.silu_mul(&g, &u), &want, 1e-6);
    let (x, y) = (rng.vec(131, -1.0, 1.0), rng.vec(131, -1.0, 1.0));
    let want: Vec<f32> = x.iter().zip(&y).map(|(a, b)| a + b).collect();
    check(b, "add", &b.add(&x, &y), &want, 0.0);
}

fn gelu_mul(b: &dyn Ops) {
    let mut rng = Rng::new(0x5eed_0016);
    let (g, u) = (rng.vec(70, -12.0, 12.0), rng.vec(70, -2.0, 2.0));
    let gelu = |x: f64| 0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x.powi(3))).tanh());
    let want: Vec<f32> = g.iter().zip(&u).map(|(&g, &u)| (gelu(g as f64) * u as f64) as f32).collect();
    check(b, "gelu_mul", &b.gelu_mul(&g, &u), &want, 1e-5);
}

fn layernorm_with_and_without_bias(b: &dyn Ops) {
    let mut rng = Rng::new(0x5eed_0017);
    for (rows, cols) in [(1usize, 64usize), (3, 100), (2, 1537), (5, 7)] {
        // An offset so the mean matters: a kernel that skipped it is far off.
        let x: Vec<f32> = rng.vec(rows * cols, -2.0, 2.0).iter().map(|v| v + 3.0).collect();
        let (w, bias) = (rng.vec(cols, 0.5, 1.5), rng.vec(cols, -0.5, 0.5));
        for with_bias in [true, false] {
            let bias = with_bias.then_some(bias.as_slice());
            let mut want = Vec::with_capacity(x.len());
            for row in x.chunks_exact(cols) {
                let mean = row.iter().map(|&v| v as f64).sum::<f64>() / cols as f64;
                let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / cols as f64;
                let r = 1.0 / (var + 1e-5).sqrt();
                want.extend(
                    (0..cols)
                        .map(|k| ((row[k] as f64 - mean) * r * w[k] as f64 + bias.map_or(0.0, |b| b[k] as f64)) as f32),
                );
            }
            let what = format!("layernorm {rows}x{cols} bias {with_bias}");
            check(b, &what, &b.layernorm(&x, &w, bias, 1e-5), &want, 1e-5);
        }
    }
}

fn activations_in_place(b: &dyn Ops) {
    let mut rng = Rng::new(0x5eed_0018);
    let x = rng.vec(70, -12.0, 12.0);
    let gelu = |x: f64| 0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x.powi(3))).tanh());
    let want: Vec<f32> = x.iter().map(|&v| gelu(v as f64) as f32).collect();
    check(b, "gelu", &b.activation(&x, Activation::Gelu), &want, 1e-5);
    let want: Vec<f32> = x.iter().map(|&v| silu_ref(v as f64) as f32).collect();
    check(b, "silu", &b.activation(&x, Activation::Silu), &want, 1e-6);
}

fn learned_positions(b: &dyn Ops) {
    let mut rng = Rng::new(0x5eed_0019);
    let (cols, positions) = (45usize, 40usize);
    let table = rng.vec(positions * cols, -1.0, 1.0);
    // One sequence's chunk at 3.., then rows of several sequences at their own positions.
    for at in [vec![3u32, 4, 5, 6, 7], vec![0], vec![39, 0, 17, 17, 5, 38]] {
        let x = rng.vec(at.len() * cols, -1.0, 1.0);
        let mut want = x.clone();
        for (row, &p) in want.chunks_exact_mut(cols).zip(&at) {
            row.iter_mut().zip(&table[p as usize * cols..]).for_each(|(v, &t)| *v += t);
        }
        check(b, &format!("positions {at:?}"), &b.add_positions(&x, &table, cols, &at), &want, 0.0);
    }
}

fn embed_every_layout(b: &dyn Ops) {
    let mut rng = Rng::new(0x5eed_000a);
    for layout in LAYOUTS {
        let cols = if layout.quantized() { 96 } else { 45 };
        let e = OwnedMatrix::random(layout, 50, cols, &mut rng);
        let ids = [3u32, 49, 0, 3, 17];
        let dense = e.dense();
        let want: Vec<f32> =
            ids.iter().flat_map(|&i| dense[i as usize * cols..(i as usize + 1) * cols].to_vec()).collect();
        check(b, &format!("embed {layout:?}"), &b.embed(&e, &ids), &want, 0.0);
    }
}

fn argmax_ties_and_nans(b: &dyn Ops) {
    let mut rng = Rng::new(0x5eed_000b);
    for len in [1usize, 7, 1000, 49152] {
        let mut x = rng.vec(len, -5.0, 5.0);
        let top = rng.below(len as u64) as usize;
        x[top] = 9.0;
        assert_eq!(b.argmax(&x), top as u32, "{} argmax of {len}", b.name());
        if len > 10 {
            // A tie: the lower index wins; NaNs are ignored.
            let other = (top + len / 2) % len;
            x[other] = 9.0;
            x[(top + 1) % len] = f32::NAN;
            assert_eq!(b.argmax(&x), top.min(other) as u32, "{} argmax with a tie", b.name());
        }
    }
    assert_eq!(b.argmax(&[f32::NAN, f32::NAN]), 0, "{} argmax of NaNs", b.name());
    assert_eq!(b.argmax(&[f32::NEG_INFINITY, -3.0]), 1, "{} argmax with -inf", b.name());
}

/// A row of logits: spread, peaked (a few far above the rest), in ties (five values), or spread with NaNs and
/// infinities.
fn logit_row(rng: &mut Rng, len: usize, kind: usize) -> Vec<f32> {
    let mut x = rng.vec(len, -5.0, 5.0);
    match kind {
        0 => {}
        1 => {
            for _ in 0..1 + rng.below(4) {
                x[rng.below(len as u64) as usize] = rng.range(8.0, 14.0);
            }
        }
        2 => x.iter_mut().for_each(|v| *v = (*v * 0.5).round() * 0.75),
        _ => {
            for v in x.iter_mut() {
                match rng.below(40) {
                    0 => *v = f32::NAN,
                    1 => *v = f32::NEG_INFINITY,
                    _ => {}
                }
            }
        }
    }
    x
}

fn sample_opts(rng: &mut Rng, len: usize) -> SamplerOptions {
    let mut one = |xs: &[f64]| xs[rng.below(xs.len() as u64) as usize];
    SamplerOptions {
        temperature: one(&[0.3, 0.7, 1.0, 1.8]) as f32,
        top_k: one(&[0.0, 0.0, 1.0, 3.0, 40.0, (len / 3) as f64, (len + 3) as f64]) as usize,
        top_p: one(&[1.0, 1.0, 0.95, 0.8, 0.5, 0.1]) as f32,
        min_p: one(&[0.0, 0.0, 0.05, 0.3]) as f32,
        seed: rng.next_u64(),
        ..Default::default()
    }
}

/// Six chained draws per row against the f64 reference, for many rows and settings; picks within 1e-5 of a
/// boundary that f32 rounding could move are skipped (and counted: they must be rare).
fn sample_matches_the_reference(b: &dyn Ops) {
    let mut rng = Rng::new(0x5eed_000c);
    let (mut checked, mut skipped) = (0, 0);
    for len in [1usize, 7, 1000, 49152] {
        let rows = if len == 49152 { 12 } else { 40 };
        for row in 0..rows {
            let logits = logit_row(&mut rng, len, row % 4);
            let opts = sample_opts(&mut rng, len);
            // Draw numbers anywhere, across the wrap at 2^32 too.
            let draw = if row % 10 == 9 { u32::MAX - 2 } else { rng.next_u64() as u32 };
            let got = b.sample(&logits, &opts, draw, 6);
            for (k, &id) in got.iter().enumerate() {
                match sample_ref::pick(&logits, &opts, draw.wrapping_add(k as u32), 1e-5) {
                    Pick::Id(want) => {
                        assert_eq!(
                            id,
                            want,
                            "{} sample: {len} logits (row {row}), draw {k} of {draw}, {opts:?}",
                            b.name()
                        );
                        checked += 1;
                    }
                    Pick::Near => skipped += 1,
                }
            }
        }
    }
    eprintln!("{} sample: {checked} picks checked, {skipped} skipped within rounding of a boundary", b.name());
    assert!(skipped * 100 <= checked, "{} sample: {skipped} skipped of {checked}", b.name());
    // Nothing but NaNs: id 0, as argmax.
    let opts = SamplerOptions { temperature: 1.0, ..Default::default() };
    assert_eq!(b.sample(&[f32::NAN; 5], &opts, 0, 2), [0, 0], "{} sample of NaNs", b.name());
}

/// LoRA's down and up kernels (shaders/lora.wgsl, GPU only: the CPU engine runs kernels-cpu's products) against
/// a plain f64 loop and the CPU engine's `lora::apply_cpu`: odd shapes, several rows, the RMS norm recomputed
/// on load or not, the adapter's columns of `t` after another's, the up product adding into random outputs at
/// a column offset. `t` starts poisoned; a row past the step's `n` must stay untouched.
#[test]
fn lora_down_up_match_cpu() {
    use omex::backend::gpu::ops::lora::{self, GpuLoraMat, Scratch};
    use omex::backend::gpu::ops::Norm;
    use omex::backend::gpu::Region;
    use omex::backend::lora::{apply_cpu, LoraMat};
    use omex::format::adapter::Values;
    let Some(ctx) = gpu() else { return };
    let mut rng = Rng::new(0x10_7a);
    for (rows, cols, rank, n, norm) in
        [(5, 7, 3, 1, false), (33, 70, 4, 3, true), (130, 96, 16, 5, true), (64, 200, 8, 2, false)]
    {
        let (a, b) = (rng.vec(rank * cols, -0.5, 0.5), rng.vec(rows * rank, -0.5, 0.5));
        let m = LoraMat { rows, cols, rank, scale: 1.0, a: Values::F32(a.clone()), b: Values::F32(b.clone()) };
        // One row more than the step runs, and 3 values past each row's `cols`.
        let x_stride = cols + 3;
        let x = rng.vec((n + 1) * x_stride, -1.0, 1.0);
        let (w, eps) = (rng.vec(cols, 0.5, 1.5), 1e-5f32);
        let xhat: Vec<f64> = (0..n)
            .flat_map(|i| {
                let row = &x[i * x_stride..i * x_stride + cols];
                match norm {
                    true => rms_ref(row, &w, eps),
                    false => row.iter().map(|&v| v as f64).collect(),
                }
            })
            .collect();
        let (width, col, s) = (rows + 9, 4usize, 0.75f32);
        let base = rng.vec((n + 1) * width, -1.0, 1.0);
        let mut want_t = vec![0f64; n * rank];
        let mut want = base.iter().map(|&v| v as f64).collect::<Vec<_>>();
        for i in 0..n {
            for k in 0..rank {
                want_t[i * rank + k] = (0..cols).map(|c| a[k * cols + c] as f64 * xhat[i * cols + c]).sum();
            }
            for r in 0..rows {
                let bt: f64 = (0..rank).map(|k| b[r * rank + k] as f64 * want_t[i * rank + k]).sum();
                want[i * width + col + r] += s as f64 * bt;
            }
        }
        let want: Vec<f32> = want.iter().map(|&v| v as f32).collect();
        // The CPU engine's path on the same normed rows.
        let xhat32: Vec<f32> = xhat.iter().map(|&v| v as f32).collect();
        let mut cpu = base[..n * width].to_vec();
        apply_cpu(&m, s, &xhat32, n, col, width, &mut Vec::new(), &mut Vec::new(), &mut cpu);
        assert_close("lora on the CPU", &cpu, &want[..n * width], 1e-5, 1e-4);

        let g = GpuLoraMat::upload(ctx, "test", &m).unwrap();
        let (xb, yb) = (upload_f32(ctx, &x), upload_f32(ctx, &base));
        // The norm weight 256 bytes into its buffer, as inside a layer file.
        let mut words = vec![f32::NAN; 64];
        words.extend_from_slice(&w);
        let wb = upload_f32(ctx, &words);
        let nm = Norm { region: Region::covering(&wb, &[(256, 4 * cols as u64)]), offset: 256, eps, bias: None };
        let (t_stride, offset) = (rank as u32 + 5, 2u32);
        let tb = poisoned(ctx, (n + 1) * t_stride as usize);
        let t = Scratch { t: &tb, stride: t_stride, offset };
        let st = step(ctx, n as u32, 0);
        let down = pollster::block_on(lora::down(ctx, &g, norm.then_some(nm), &st, &xb, x_stride as u32, t)).unwrap();
        // The scale at index 2 of the scales buffer.
        let scales = upload_f32(ctx, &[f32::NAN, f32::NAN, s]);
        let up = pollster::block_on(lora::up(ctx, &g, &scales, 2, &st, t, &yb, width as u32, col as u32)).unwrap();
        ctx.run(&[down, up], n as u32);
        let got_t = pollster::block_on(ctx.read_f32(&tb, 0, (n + 1) * t_stride as usize)).unwrap();
        for (i, row) in got_t.chunks_exact(t_stride as usize).enumerate() {
            for (j, &v) in row.iter().enumerate() {
                let k = j as i64 - offset as i64;
                if i < n && (0..rank as i64).contains(&k) {
                    let wt = want_t[i * rank + k as usize];
                    assert!((v as f64 - wt).abs() <= 1e-5 + 1e-4 * wt.abs(), "t[{i}, {j}]: {v} vs {wt}");
                } else {
                    assert_eq!(v.to_bits(), u32::MAX, "t[{i}, {j}] was written");
                }
            }
        }
        let got = pollster::block_on(ctx.read_f32(&yb, 0, (n + 1) * width)).unwrap();
        assert_close(&format!("lora {rows}x{cols} rank {rank}, {n} rows, norm {norm}"), &got, &want, 1e-5, 1e-4);
        // The adapter did change the outputs it targets.
        assert!(got[col] != base[col], "the up product added nothing");
    }
}

fn rmsnorm_into_a_buffer_of_its_own(b: &dyn Ops) {
    let mut rng = Rng::new(0x5eed_0021);
    for (dim, rows) in [(64, 3), (37, 1), (896, 2)] {
        let x: Vec<f32> = rng.vec(dim * rows, -2.0, 2.0).iter().map(|v| v + 1.0).collect();
        let w = rng.vec(dim, 0.5, 1.5);
        let want: Vec<f32> = rms_ref(&x, &w, 1e-6).iter().map(|&v| v as f32).collect();
        check(b, &format!("rmsnorm_into {rows}x{dim}"), &b.rmsnorm_into(&x, &w, 1e-6), &want, 1e-5);
    }
}

/// Routing against a softmax and renormalisation in f64, the experts chosen by their logits (ties to the lower
/// id). Logits are multiples of 1/64, so two distinct ones stay apart through any engine's `exp`, and equal
/// ones (the tie rows) stay equal.
fn moe_route_rows(b: &dyn Ops) {
    let mut rng = Rng::new(0x5eed_0022);
    for (experts, k, rows) in
        [(4, 2, 3), (8, 2, 5), (3, 3, 2), (7, 1, 4), (60, 4, 3), (64, 8, 2), (130, 6, 3), (256, 8, 2)]
    {
        let mut logits: Vec<f32> =
            rng.vec(experts * rows, -6.0, 6.0).iter().map(|v| (v * 64.0).round() / 64.0).collect();
        // Row 0: every other logit equal to its neighbour's (ties everywhere); the last row: huge logits.
        for e in (1..experts).step_by(2) {
            logits[e] = logits[e - 1];
        }
        let last = (rows - 1) * experts;
        logits[last..].iter_mut().for_each(|v| *v *= 200.0);
        let mut want = vec![0f32; logits.len()];
        for (row, w) in logits.chunks_exact(experts).zip(want.chunks_exact_mut(experts)) {
            let mut order: Vec<usize> = (0..experts).collect();
            order.sort_by(|&a, &c| row[c].total_cmp(&row[a]).then(a.cmp(&c)));
            let max = row[order[0]] as f64;
            let sum: f64 = order[..k].iter().map(|&e| (row[e] as f64 - max).exp()).sum();
            for &e in &order[..k] {
                w[e] = ((row[e] as f64 - max).exp() / sum) as f32;
            }
        }
        let got = b.route(&logits, experts, k);
        let what = format!("route top {k} of {experts}, {rows} rows");
        // The experts chosen: a weight of 0 where the reference has none, and not 0 where it has a normal one
        // (a subnormal weight, from a huge logit gap, may flush to 0 on a GPU).
        for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
            let ok = if w == 0.0 { g == 0.0 } else { w < f32::MIN_POSITIVE || g != 0.0 };
            assert!(ok, "{} {what}: expert {} of row {}: {g} against {w}", b.name(), i % experts, i / experts);
        }
        check(b, &what, &got, &want, 2e-6);
    }
}

/// An expert's output added with each row's weight; a row not routed to it (weight 0) is left as it was even
/// where the expert's output is not finite.
fn moe_add_weighted(b: &dyn Ops) {
    let mut rng = Rng::new(0x5eed_0023);
    let (rows, cols, experts, expert) = (5, 70, 4, 2);
    let x = rng.vec(rows * cols, -1.0, 1.0);
    let mut out = rng.vec(rows * cols, -1.0, 1.0);
    let mut route = rng.vec(rows * experts, 0.0, 1.0);
    for t in [1, 3] {
        route[t * experts + expert] = 0.0;
        out[t * cols + 5] = f32::NAN;
        out[t * cols + 6] = f32::INFINITY;
    }
    let want: Vec<f32> = (0..rows * cols)
        .map(|i| {
            let w = route[(i / cols) * experts + expert] as f64;
            if w == 0.0 {
                x[i]
            } else {
                (x[i] as f64 + w * out[i] as f64) as f32
            }
        })
        .collect();
    check(b, "moe add_weighted", &b.add_weighted(&x, &out, &route, experts, expert), &want, 1e-6);
}

/// The gate launches an expert's dispatches with their grid (which follows the chunk's rows) when some row is
/// routed to the expert and not at all otherwise: an in-place SiLU gated on expert 1 changes every row, or none.
#[test]
fn moe_gate_runs_an_expert_only_when_routed() {
    use omex::backend::gpu::ops::{misc, moe};
    let Some(ctx) = gpu() else { return };
    let (experts, rows, cols) = (3usize, 4usize, 70usize);
    let x = Rng::new(0x5eed_0024).vec(rows * cols, -2.0, 2.0);
    let silu_x: Vec<f32> = x.iter().map(|&v| silu_ref(v as f64) as f32).collect();
    for (routed, want) in [(None, &x), (Some(2), &silu_x), (Some(0), &silu_x)] {
        // Experts 0 and 2 take every row; expert 1 at most the one row.
        let mut route: Vec<f32> = (0..rows).flat_map(|_| [0.5, 0.0, 0.5]).collect();
        if let Some(r) = routed {
            route[r * experts + 1] = 0.25;
        }
        let (xb, rb, st) = (upload_f32(ctx, &x), upload_f32(ctx, &route), step(ctx, rows as u32, 0));
        let mut d = pollster::block_on(misc::activation(ctx, Activation::Silu, cols as u32, 0, &st, &xb)).unwrap();
        let g = pollster::block_on(moe::gate(ctx, experts as u32, &st, &rb, &mut [(1, &mut d)])).unwrap();
        ctx.run(&[g, d], rows as u32);
        let got = pollster::block_on(ctx.read_f32(&xb, 0, x.len())).unwrap();
        assert_close(&format!("gated silu, expert 1 routed at row {routed:?}"), &got, want, 1e-6, 1e-6);
    }
}
