//! The sampler's semantics in f64, written from the formulas (`omex::sampling::Sampler` documents them) and
//! sharing no code with the host sampler or the kernel: the whole candidate list is sorted, every cut is read off
//! it directly. A pick whose inputs fall within `tol` (relative) of a boundary that f32 rounding could move is
//! reported as [`Pick::Near`] instead of an id.

use omex::sampling::SamplerOptions;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pick {
    Id(u32),
    /// The draw, the top-p target or a min-p threshold is within rounding of a boundary.
    Near,
}

fn lowbias32(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb352d);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846ca68b);
    x ^= x >> 16;
    x
}

/// The uniform of draw `n`: the seed's halves hashed into a key, the key xor `n` hashed, its top 24 bits.
pub fn uniform(seed: u64, n: u32) -> f64 {
    let key = lowbias32(lowbias32((seed & 0xffff_ffff) as u32 ^ 0x9e3779b9) ^ (seed >> 32) as u32);
    (lowbias32(key ^ n) >> 8) as f64 / 16_777_216.0
}

/// The token draw `draw` picks from `logits` with `o` (temperature > 0, no repetition penalty).
pub fn pick(logits: &[f32], o: &SamplerOptions, draw: u32, tol: f64) -> Pick {
    let l: Vec<f64> = logits.iter().map(|&x| x as f64).collect();
    let mut sorted: Vec<f64> = l.iter().copied().filter(|x| !x.is_nan()).collect();
    if sorted.is_empty() {
        return Pick::Id(0);
    }
    sorted.sort_by(|a, b| b.partial_cmp(a).unwrap());
    let m = sorted[0];
    let t = o.temperature as f64;
    let w = |x: f64| if x == m { 1.0 } else { ((x - m) / t).exp() };
    let mut near = false;
    // top-k: logits >= the k-th largest, ties included.
    let mut cut = if o.top_k > 0 && o.top_k < sorted.len() { sorted[o.top_k - 1] } else { f64::NEG_INFINITY };
    let top_k: Vec<f64> = sorted.iter().copied().filter(|&x| x >= cut).collect();
    // top-p: the largest logit c with weight(>= c) >= top_p * weight(top-k), tie groups whole.
    if o.top_p < 1.0 {
        let z: f64 = top_k.iter().map(|&x| w(x)).sum();
        let goal = o.top_p as f64 * z;
        let (mut mass, mut i) = (0.0, 0);
        while i < top_k.len() {
            let c = top_k[i];
            while i < top_k.len() && top_k[i] == c {
                mass += w(top_k[i]);
                i += 1;
            }
            near |= (mass - goal).abs() <= tol * z;
            if mass >= goal || i == top_k.len() {
                cut = cut.max(c);
                break;
            }
        }
    }
    // min-p: w >= min_p; then the draw in id order.
    let min_p = o.min_p as f64;
    let kept: Vec<(usize, f64)> = l
        .iter()
        .enumerate()
        .filter(|&(_, &x)| !x.is_nan() && x >= cut)
        .map(|(i, &x)| {
            near |= min_p > 0.0 && (w(x) - min_p).abs() <= tol * min_p;
            (i, w(x))
        })
        .filter(|&(_, wx)| wx >= min_p)
        .collect();
    let z: f64 = kept.iter().map(|k| k.1).sum();
    let r = uniform(o.seed, draw) * z;
    let (mut acc, mut picked) = (0.0, None);
    for &(i, wx) in &kept {
        acc += wx;
        near |= (acc - r).abs() <= tol * z;
        if picked.is_none() && acc > r {
            picked = Some(i as u32);
        }
    }
    match (near, picked) {
        (true, _) => Pick::Near,
        (false, Some(id)) => Pick::Id(id),
        (false, None) => unreachable!("r < z: some running sum exceeds it"),
    }
}
