//! One decode step of SmolLM2-135M at the kernel level (random weights in the model's layouts: Int4 blocks,
//! an Int8 tied head, an f16 KV cache), timed per kernel kind, to see where a step's time goes on a target
//! (natively, or compiled for wasm32-wasip1 and run under Node by `scripts/wasm-bench.sh`):
//!
//! `cargo run --release -p kernels-cpu --example decode_step -- [ISA] [POS] [STEPS] [ACT]`
//!
//! ISA: a name `OMEX_CPU_ISA` takes (default: detected); POS: the KV cache length attended (default 128);
//! STEPS: steps timed (default 20); ACT: `int8` (default, the q8 products) or `f32` (the float matvec).
//! One thread. Prints milliseconds per step for each kernel kind and the step rate.

#[path = "../tests/common/mod.rs"]
mod common;

use common::{Layout, Owned, Rng};
use half::f16;
use kernels_cpu::{attention, isa, matvec, ops, q8, Isa};
use std::time::Instant;

const DIM: usize = 576;
const FFN: usize = 1536;
const LAYERS: usize = 30;
const HEADS: usize = 9;
const KV_HEADS: usize = 3;
const HEAD_DIM: usize = 64;
const VOCAB: usize = 49152;

struct Block {
    q: Owned,
    k: Owned,
    v: Owned,
    o: Owned,
    gate: Owned,
    up: Owned,
    down: Owned,
    kc: Vec<f16>,
    vc: Vec<f16>,
}

/// Seconds spent per kernel kind.
#[derive(Default)]
struct Times {
    norm: f64,
    quant: f64,
    matvec: f64,
    head: f64,
    rope_kv: f64,
    attention: f64,
    act: f64,
}

fn timed<R>(acc: &mut f64, f: impl FnOnce() -> R) -> R {
    let t = Instant::now();
    let r = f();
    *acc += t.elapsed().as_secs_f64();
    r
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let isa: Isa = a.get(1).map_or_else(isa::detect, |s| isa::parse_choice(s).unwrap_or_else(|e| panic!("{e}")));
    let pos: usize = a.get(2).map_or(128, |s| s.parse().expect("POS: a number"));
    let steps: usize = a.get(3).map_or(20, |s| s.parse().expect("STEPS: a number"));
    let int8 = a.get(4).is_none_or(|s| s != "f32");
    let ctx = pos + steps + 2;
    let mut rng = Rng::new(7);
    let mut blocks: Vec<Block> = (0..LAYERS)
        .map(|_| {
            let mut m = |rows, cols| Owned::random(Layout::Int4, rows, cols, &mut rng);
            let (q, k, v, o) = (m(DIM, DIM), m(KV_HEADS * HEAD_DIM, DIM), m(KV_HEADS * HEAD_DIM, DIM), m(DIM, DIM));
            let (gate, up, down) = (m(FFN, DIM), m(FFN, DIM), m(DIM, FFN));
            let kv = (0..ctx * KV_HEADS * HEAD_DIM).map(|_| f16::from_f32(rng.range(-1.0, 1.0))).collect::<Vec<_>>();
            Block { q, k, v, o, gate, up, down, kc: kv.clone(), vc: kv }
        })
        .collect();
    let head = Owned::random(Layout::Int8, VOCAB, DIM, &mut rng);
    let norm_w = rng.vec(DIM, 0.5, 1.5);
    let inv_freq: Vec<f32> = (0..HEAD_DIM / 2).map(|i| 10000f32.powf(-2.0 * i as f32 / HEAD_DIM as f32)).collect();

    let pool = rayon::ThreadPoolBuilder::new().num_threads(1);
    #[cfg(target_arch = "wasm32")]
    let pool = pool.use_current_thread();
    let pool = pool.build().expect("a one-thread pool");
    let mut t = Times::default();
    let (mut h, mut xn) = (rng.vec(DIM, -1.0, 1.0), vec![0f32; DIM]);
    let (mut qv, mut kv, mut vv, mut att) = (vec![0f32; DIM], vec![0f32; 192], vec![0f32; 192], vec![0f32; DIM]);
    let (mut g, mut u, mut gu, mut o) = (vec![0f32; FFN], vec![0f32; FFN], vec![0f32; FFN], vec![0f32; DIM]);
    let mut logits = vec![0f32; VOCAB];
    let mut xq = q8::Q8Activations::new();
    let mut step = |t: &mut Times, p: usize, blocks: &mut [Block]| {
        let mv = |t: &mut Times, m: &Owned, x: &[f32], xq: &q8::Q8Activations, y: &mut [f32]| {
            timed(&mut t.matvec, || {
                if int8 {
                    q8::matvec_q8_with(isa, &m.matrix(), xq, y)
                } else {
                    matvec::matvec_with(isa, &m.matrix(), x, y)
                }
            })
        };
        for b in blocks.iter_mut() {
            timed(&mut t.norm, || ops::rmsnorm_with(isa, &h, &norm_w, 1e-5, &mut xn));
            timed(&mut t.quant, || xq.quantize_into_with(isa, &xn, 1));
            mv(t, &b.q, &xn, &xq, &mut qv);
            mv(t, &b.k, &xn, &xq, &mut kv);
            mv(t, &b.v, &xn, &xq, &mut vv);
            timed(&mut t.rope_kv, || {
                ops::rope_with(isa, &mut qv, HEADS, HEAD_DIM, p, &inv_freq, ops::RopeStyle::Half);
                ops::rope_with(isa, &mut kv, KV_HEADS, HEAD_DIM, p, &inv_freq, ops::RopeStyle::Half);
                attention::kv_store(&mut b.kc, p, &kv);
                attention::kv_store(&mut b.vc, p, &vv);
            });
            timed(&mut t.attention, || {
                attention::attention_with(isa, &qv, &b.kc, &b.vc, p, 1, HEADS, KV_HEADS, HEAD_DIM, 0.125, &mut att)
            });
            timed(&mut t.quant, || xq.quantize_into_with(isa, &att, 1));
            mv(t, &b.o, &att, &xq, &mut o);
            timed(&mut t.act, || ops::add_assign_with(isa, &mut h, &o));
            timed(&mut t.norm, || ops::rmsnorm_with(isa, &h, &norm_w, 1e-5, &mut xn));
            timed(&mut t.quant, || xq.quantize_into_with(isa, &xn, 1));
            mv(t, &b.gate, &xn, &xq, &mut g);
            mv(t, &b.up, &xn, &xq, &mut u);
            timed(&mut t.act, || ops::silu_mul_with(isa, &g, &u, &mut gu));
            timed(&mut t.quant, || xq.quantize_into_with(isa, &gu, 1));
            mv(t, &b.down, &gu, &xq, &mut o);
            timed(&mut t.act, || ops::add_assign_with(isa, &mut h, &o));
            // Keep the residual stream bounded over many steps.
            let s = h.iter().map(|v| v.abs()).fold(0f32, f32::max).max(1.0);
            h.iter_mut().for_each(|v| *v /= s);
        }
        timed(&mut t.norm, || ops::rmsnorm_with(isa, &h, &norm_w, 1e-5, &mut xn));
        timed(&mut t.quant, || xq.quantize_into_with(isa, &xn, 1));
        timed(&mut t.head, || {
            if int8 {
                q8::matvec_q8_with(isa, &head.matrix(), &xq, &mut logits)
            } else {
                matvec::matvec_with(isa, &head.matrix(), &xn, &mut logits)
            }
        });
        ops::argmax_with(isa, &logits)
    };
    let total = pool.install(|| {
        step(&mut Times::default(), pos, &mut blocks);
        let t0 = Instant::now();
        for s in 0..steps {
            std::hint::black_box(step(&mut t, pos + 1 + s, &mut blocks));
        }
        t0.elapsed().as_secs_f64()
    });
    let ms = |v: f64| v * 1e3 / steps as f64;
    println!(
        "decode_step {} {} pos={pos}: {:.2} ms/step ({:.1} steps/s) | matvec {:.2} head {:.2} attention {:.2} \
         rope+kv {:.2} norm {:.2} quantize {:.2} act+add {:.2} ms",
        isa,
        if int8 { "int8" } else { "f32" },
        ms(total),
        steps as f64 / total,
        ms(t.matvec),
        ms(t.head),
        ms(t.attention),
        ms(t.rope_kv),
        ms(t.norm),
        ms(t.quant),
        ms(t.act),
    );
}
