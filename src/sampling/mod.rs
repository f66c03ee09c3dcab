//! Turning a row of logits into the next token: repetition penalty, then temperature with top-k, top-p and
//! min-p cuts, and a draw from a counter-based generator ([`uniform`]) that the GPU computes identically.
//! Temperature 0 is greedy (argmax, lowest id on ties).

/// Sampling settings; the defaults are greedy.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplerOptions {
    /// 0 (or below) is greedy.
    pub temperature: f32,
    /// Keep the k most likely tokens (0: off).
    pub top_k: usize,
    /// Keep the smallest set whose probability reaches p (1: off).
    pub top_p: f32,
    /// Drop tokens less likely than min_p times the most likely (0: off).
    pub min_p: f32,
    /// Divide positive logits (multiply negative ones) of recently seen tokens by this (1: off).
    pub repetition_penalty: f32,
    /// How many recent tokens the penalty looks at.
    pub repeat_last_n: usize,
    pub seed: u64,
}

impl Default for SamplerOptions {
    fn default() -> Self {
        SamplerOptions {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            repeat_last_n: 64,
            seed: 0,
        }
    }
}

impl SamplerOptions {
    pub fn check(&self) -> Result<(), String> {
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return Err(format!("temperature {} must be a finite number >= 0", self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(format!("top-p {} must be in (0, 1]", self.top_p));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return Err(format!("min-p {} must be in [0, 1]", self.min_p));
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            return Err(format!("repetition penalty {} must be > 0", self.repetition_penalty));
        }
        Ok(())
    }

    pub fn is_greedy(&self) -> bool {
        self.temperature <= 0.0
    }
}

/// lowbias32 (from Chris Wellons' hash prospector): a 32-bit integer hash with full avalanche, in 32-bit
/// arithmetic only, so that the GPU (WGSL has no u64) computes it bit for bit as the host does.
fn lowbias32(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb_352d);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846c_a68b);
    x ^= x >> 16;
    x
}

/// The uniform in [0, 1) of draw number `n` of a sampler seeded `seed`: a pure function of both (counter-based,
/// so a draw on the GPU needs no generator state, only its number). Both halves of the seed are hashed into a
/// key, the key is mixed with `n` and hashed again, and the top 24 bits become the value, exact in f32 and f64
/// alike. `shaders/sample.wgsl` computes the same.
pub fn uniform(seed: u64, n: u32) -> f32 {
    let key = lowbias32(lowbias32(seed as u32 ^ 0x9e37_79b9) ^ (seed >> 32) as u32);
    (lowbias32(key ^ n) >> 8) as f32 / (1u32 << 24) as f32
}

/// Turns rows of logits into tokens. Every sampled token takes the next draw number (greedy ones too, though
/// they use no randomness), so the token at index i of a generation always uses draw i, wherever it was
/// sampled: [`Sampler::skip_draws`] accounts for tokens sampled elsewhere (on the GPU).
///
/// The semantics, shared with the GPU's `sample` kernel so both pick the same token from the same logits and
/// the same uniform. With logits `l` (NaNs never kept), `m` the largest and temperature `T > 0`, the weight of a
/// token is `w = exp((l - m) / T)` (1 at the maximum, so an infinite maximum stays defined):
/// - top-k keeps the logits >= the k-th largest: ties at the cut are all kept, so more than k may remain;
/// - top-p keeps the logits >= the largest cut c such that the weight of {l >= c} reaches `top_p` of the
///   weight top-k kept (a tie group is kept or dropped whole);
/// - min-p keeps `p >= min_p * p_max`, that is `w >= min_p`;
/// - the draw walks the kept tokens in id order (the distribution is the same as in sorted order, and the GPU
///   needs no sort): `r = u * kept weight`, the first id whose running sum exceeds `r` (the last kept id of
///   positive weight if rounding runs out).
///
/// The host works in f64: it is the reference the GPU's f32 approximates, and the two can only disagree when
/// `r` or the top-p target falls within f32 rounding of a boundary.
pub struct Sampler {
    opts: SamplerOptions,
    /// The number of the next draw.
    draws: u32,
    /// Logits of the candidates for the cuts, reused between calls.
    cand: Vec<f32>,
}

impl Sampler {
    pub fn new(opts: SamplerOptions) -> Sampler {
        Sampler { opts, draws: 0, cand: Vec::new() }
    }

    pub fn options(&self) -> &SamplerOptions {
        &self.opts
    }

    /// The number of the next draw (tokens sampled or skipped so far, modulo 2^32).
    pub fn draws(&self) -> u32 {
        self.draws
    }

    /// Moves the draw counter on by `n` tokens sampled elsewhere with the same options.
    pub fn skip_draws(&mut self, n: u32) {
        self.draws = self.draws.wrapping_add(n);
    }

    /// Picks the next token from `logits` given the tokens so far (`history`, for the repetition penalty).
    /// `logits` is modified (penalised) in place.
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32]) -> u32 {
        self.penalise(logits, history);
        let draw = self.draws;
        self.draws = self.draws.wrapping_add(1);
        if self.opts.is_greedy() {
            return argmax(logits) as u32;
        }
        self.pick(logits, uniform(self.opts.seed, draw) as f64)
    }

    fn pick(&mut self, logits: &[f32], u: f64) -> u32 {
        let Some(max) = logits.iter().copied().filter(|l| !l.is_nan()).reduce(f32::max) else { return 0 };
        let o = &self.opts;
        let t = o.temperature as f64;
        let weight = |l: f32| if l == max { 1.0 } else { ((l as f64 - max as f64) / t).exp() };
        self.cand.clear();
        self.cand.extend(logits.iter().copied().filter(|l| !l.is_nan()));
        // Everything not NaN is >= -inf.
        let mut cut = f32::NEG_INFINITY;
        if o.top_k > 0 && o.top_k < self.cand.len() {
            cut = *self.cand.select_nth_unstable_by(o.top_k - 1, |a, b| b.total_cmp(a)).1;
        }
        if o.top_p < 1.0 {
            self.cand.retain(|&l| l >= cut);
            cut = cut.max(top_p_cut(&mut self.cand, weight, o.top_p as f64));
        }
        let min_p = o.min_p as f64;
        let kept = |l: f32| if l >= cut { Some(weight(l)).filter(|&w| w >= min_p) } else { None };
        let total: f64 = logits.iter().filter_map(|&l| kept(l)).sum();
        let r = u * total;
        let (mut acc, mut last) = (0.0, 0);
        for (i, w) in logits.iter().enumerate().filter_map(|(i, &l)| Some((i, kept(l)?))) {
            if w > 0.0 {
                acc += w;
                last = i;
                if acc > r {
                    return i as u32;
                }
            }
        }
        last as u32
    }

    fn penalise(&self, logits: &mut [f32], history: &[u32]) {
        let p = self.opts.repetition_penalty;
        if p == 1.0 {
            return;
        }
        let recent = &history[history.len().saturating_sub(self.opts.repeat_last_n)..];
        let mut seen = std::collections::HashSet::new();
        for &t in recent {
            if let Some(l) = logits.get_mut(t as usize) {
                if seen.insert(t) {
                    *l = if *l > 0.0 { *l / p } else { *l * p };
                }
            }
        }
    }
}

/// The top-p cut over `cand` (the logits top-k kept, none NaN): the largest logit c such that the weight of
/// the candidates >= c reaches `p` of their total. Sorts only as much as it needs, the n largest with n growing
/// fourfold until the cut is among them (a nucleus is usually a small part of the vocabulary).
fn top_p_cut(cand: &mut [f32], weight: impl Fn(f32) -> f64, p: f64) -> f32 {
    let target = p * cand.iter().map(|&l| weight(l)).sum::<f64>();
    let desc = |a: &f32, b: &f32| b.total_cmp(a);
    let len = cand.len();
    let mut n = len.min(64);
    loop {
        if n < len {
            cand.select_nth_unstable_by(n - 1, desc);
        }
        let head = &mut cand[..n];
        head.sort_unstable_by(desc);
        let (mut mass, mut i) = (0.0, 0);
        while i < n {
            let c = head[i];
            while i < n && head[i] == c {
                mass += weight(head[i]);
                i += 1;
            }
            // A tie group that runs to the end of the sorted head may go on past it.
            if i == n && n < len {
                break;
            }
            if mass >= target {
                return c;
            }
        }
        if n == len {
            // Only rounding gets here (p < 1): the whole set.
            return head[n - 1];
        }
        n = (n * 4).min(len);
    }
}

/// Index of the largest value; the lowest index wins ties, NaN never wins.
pub fn argmax(x: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] || x[best].is_nan() {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(temperature: f32) -> SamplerOptions {
        SamplerOptions { temperature, seed: 42, ..Default::default() }
    }

    #[test]
    fn greedy_takes_the_first_maximum() {
        let mut s = Sampler::new(opts(0.0));
        assert_eq!(s.sample(&mut [1.0, 3.0, 3.0, -1.0], &[]), 1);
    }

    #[test]
    fn top_k_1_is_greedy_at_any_temperature() {
        let mut s = Sampler::new(SamplerOptions { top_k: 1, ..opts(5.0) });
        for _ in 0..50 {
            assert_eq!(s.sample(&mut [0.5, 0.1, 2.0, 1.9], &[]), 2);
        }
    }

    #[test]
    fn frequencies_follow_the_softmax() {
        // logits ln(1), ln(2), ln(7): probabilities 0.1, 0.2, 0.7.
        let logits = [1f32.ln(), 2f32.ln(), 7f32.ln()];
        let mut s = Sampler::new(opts(1.0));
        let mut counts = [0usize; 3];
        let n = 20_000;
        for _ in 0..n {
            counts[s.sample(&mut logits.clone(), &[]) as usize] += 1;
        }
        for (c, p) in counts.iter().zip([0.1, 0.2, 0.7]) {
            let f = *c as f64 / n as f64;
            assert!((f - p).abs() < 0.015, "frequency {f} vs probability {p}");
        }
    }

    /// Frequencies of `draws` tokens sampled from `logits` with `o`.
    fn frequencies(o: SamplerOptions, logits: &[f32], draws: usize) -> Vec<f64> {
        let mut s = Sampler::new(o);
        let mut counts = vec![0usize; logits.len()];
        for _ in 0..draws {
            counts[s.sample(&mut logits.to_vec(), &[]) as usize] += 1;
        }
        counts.iter().map(|&c| c as f64 / draws as f64).collect()
    }

    fn assert_frequencies(got: &[f64], want: &[f64]) {
        for (i, (f, p)) in got.iter().zip(want).enumerate() {
            assert!((f - p).abs() < 0.012, "token {i}: frequency {f} vs probability {p} ({got:?})");
        }
    }

    #[test]
    fn cuts_renormalise_what_they_keep() {
        // Probabilities 0.05, 0.1, 0.15, 0.3, 0.4 at temperature 1.
        let logits: Vec<f32> = [0.05f32, 0.1, 0.15, 0.3, 0.4].iter().map(|p| p.ln()).collect();
        // top-p 0.6: 0.4 alone falls short, 0.4 + 0.3 reaches it.
        let f = frequencies(SamplerOptions { top_p: 0.6, ..opts(1.0) }, &logits, 20_000);
        assert_frequencies(&f, &[0.0, 0.0, 0.0, 3.0 / 7.0, 4.0 / 7.0]);
        // min-p 0.3: p >= 0.12 stays.
        let f = frequencies(SamplerOptions { min_p: 0.3, ..opts(1.0) }, &logits, 20_000);
        assert_frequencies(&f, &[0.0, 0.0, 0.15 / 0.85, 0.3 / 0.85, 0.4 / 0.85]);
        // top-k 3, then top-p 0.5 of their 0.85: 0.4 falls short, 0.4 + 0.3 reaches it.
        let f = frequencies(SamplerOptions { top_k: 3, top_p: 0.5, ..opts(1.0) }, &logits, 20_000);
        assert_frequencies(&f, &[0.0, 0.0, 0.0, 3.0 / 7.0, 4.0 / 7.0]);
        // Temperature 2 flattens: p ~ sqrt(p).
        let roots: Vec<f64> = [0.05f64, 0.1, 0.15, 0.3, 0.4].iter().map(|p| p.sqrt()).collect();
        let sum: f64 = roots.iter().sum();
        let f = frequencies(opts(2.0), &logits, 20_000);
        assert_frequencies(&f, &roots.iter().map(|r| r / sum).collect::<Vec<_>>());
    }

    #[test]
    fn ties_at_the_top_k_cut_are_all_kept() {
        // The 2nd largest logit is 1, held by three tokens: all three stay, equally likely.
        let logits = [0.0, 2.0, 1.0, 1.0, 1.0, -1.0];
        let e = std::f64::consts::E;
        let f = frequencies(SamplerOptions { top_k: 2, ..opts(1.0) }, &logits, 20_000);
        let z = e * e + 3.0 * e;
        assert_frequencies(&f, &[0.0, e * e / z, e / z, e / z, e / z, 0.0]);
    }

    #[test]
    fn nans_are_never_drawn() {
        let mut s = Sampler::new(opts(1.0));
        assert!((0..200).all(|_| s.sample(&mut [f32::NAN, 1.0, f32::NAN, 0.5], &[]) % 2 == 1));
        assert_eq!(s.sample(&mut [f32::NAN, f32::NAN], &[]), 0, "nothing to draw: id 0, as argmax");
        // An infinite maximum takes everything; -inf is never drawn.
        assert!((0..200).all(|_| s.sample(&mut [1.0, f32::INFINITY, f32::NEG_INFINITY], &[]) == 1));
    }

    #[test]
    fn uniforms_are_spread_and_depend_on_both_seed_halves() {
        let u: Vec<f32> = (0..10_000).map(|n| uniform(42, n)).collect();
        assert!(u.iter().all(|&x| (0.0..1.0).contains(&x)));
        let mean = u.iter().map(|&x| x as f64).sum::<f64>() / u.len() as f64;
        assert!((mean - 0.5).abs() < 0.01, "mean {mean}");
        // Tenths are about equally filled.
        let mut bins = [0usize; 10];
        u.iter().for_each(|&x| bins[(x * 10.0) as usize] += 1);
        assert!(bins.iter().all(|&b| (900..1100).contains(&b)), "{bins:?}");
        for other in [43, 42 | (1 << 32), 42 | (1 << 63)] {
            assert!((0..64).filter(|&n| uniform(other, n) == uniform(42, n)).count() < 2, "seed {other:#x}");
        }
    }

    #[test]
    fn draw_numbers_pick_the_stream_position() {
        let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.61).cos()).collect();
        let mut a = Sampler::new(opts(1.0));
        let all: Vec<u32> = (0..12).map(|_| a.sample(&mut logits.clone(), &[])).collect();
        assert_eq!(a.draws(), 12);
        let mut b = Sampler::new(opts(1.0));
        b.skip_draws(5);
        let rest: Vec<u32> = (0..7).map(|_| b.sample(&mut logits.clone(), &[])).collect();
        assert_eq!(rest, all[5..]);
        // Greedy tokens take a draw too, so the counter is the token's index whatever the options.
        let mut g = Sampler::new(opts(0.0));
        g.sample(&mut logits.clone(), &[]);
        assert_eq!(g.draws(), 1);
    }

    #[test]
    fn same_seed_same_tokens() {
        let logits: Vec<f32> = (0..100).map(|i| (i as f32 * 0.37).sin()).collect();
        let run = |seed| {
            let mut s = Sampler::new(SamplerOptions { seed, ..opts(0.8) });
            (0..20).map(|_| s.sample(&mut logits.clone(), &[])).collect::<Vec<_>>()
        };
        assert_eq!(run(42), run(42));
        assert_ne!(run(42), run(43));
    }

    #[test]
    fn repetition_penalty_demotes_seen_tokens() {
        let mut s = Sampler::new(SamplerOptions { repetition_penalty: 2.0, ..opts(0.0) });
        assert_eq!(s.sample(&mut [3.0, 2.0, -1.0], &[0]), 1);
        let mut l = [3.0, 2.0, -1.0];
        s.sample(&mut l, &[2, 2]);
        assert_eq!(l[2], -2.0, "a repeated token is penalised once");
    }

    #[test]
    fn bad_options_are_refused() {
        assert!(SamplerOptions { temperature: -1.0, ..Default::default() }.check().is_err());
        assert!(SamplerOptions { top_p: 0.0, ..Default::default() }.check().is_err());
        assert!(SamplerOptions { repetition_penalty: 0.0, ..Default::default() }.check().is_err());
    }
}
