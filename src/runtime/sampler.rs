//! Turning a row of logits into the next token: repetition penalty, then top-k, top-p and min-p filters,
//! then temperature and a draw from a seeded generator. Temperature 0 is greedy (argmax, lowest id on ties).

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

/// SplitMix64: small, fast, and the same sequence on every platform (wasm included) for a given seed.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

pub struct Sampler {
    opts: SamplerOptions,
    rng: Rng,
    /// (token, logit) candidates, reused between calls.
    cand: Vec<(u32, f32)>,
}

impl Sampler {
    pub fn new(opts: SamplerOptions) -> Sampler {
        let rng = Rng::new(opts.seed);
        Sampler { opts, rng, cand: Vec::new() }
    }

    pub fn options(&self) -> &SamplerOptions {
        &self.opts
    }

    /// Picks the next token from `logits` given the tokens so far (`history`, for the repetition penalty).
    /// `logits` is modified (penalised) in place.
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32]) -> u32 {
        self.penalise(logits, history);
        if self.opts.is_greedy() {
            return argmax(logits) as u32;
        }
        let o = &self.opts;
        self.cand.clear();
        self.cand.extend(logits.iter().enumerate().map(|(i, &l)| (i as u32, l)));
        let by_logit = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        if o.top_k > 0 && o.top_k < self.cand.len() {
            self.cand.select_nth_unstable_by(o.top_k - 1, by_logit);
            self.cand.truncate(o.top_k);
        }
        self.cand.sort_unstable_by(by_logit);
        // Softmax at the temperature over the remaining candidates (sorted, so the max is first).
        let max = self.cand[0].1;
        let mut probs: Vec<f64> = self.cand.iter().map(|&(_, l)| (((l - max) / o.temperature) as f64).exp()).collect();
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= total);
        let mut keep = probs.len();
        if o.top_p < 1.0 {
            let mut acc = 0.0;
            for (i, p) in probs.iter().enumerate() {
                acc += p;
                if acc >= o.top_p as f64 {
                    keep = i + 1;
                    break;
                }
            }
        }
        if o.min_p > 0.0 {
            let floor = probs[0] * o.min_p as f64;
            keep = keep.min(probs.iter().take_while(|&&p| p >= floor).count().max(1));
        }
        let total: f64 = probs[..keep].iter().sum();
        let mut r = self.rng.next_f64() * total;
        for (i, p) in probs[..keep].iter().enumerate() {
            r -= p;
            if r < 0.0 {
                return self.cand[i].0;
            }
        }
        self.cand[keep - 1].0
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

    #[test]
    fn top_p_and_min_p_cut_the_tail() {
        let logits = [1f32.ln(), 2f32.ln(), 7f32.ln()];
        let mut s = Sampler::new(SamplerOptions { top_p: 0.7, ..opts(1.0) });
        assert!((0..500).all(|_| s.sample(&mut logits.clone(), &[]) == 2));
        let mut s = Sampler::new(SamplerOptions { min_p: 0.25, ..opts(1.0) });
        assert!((0..500).all(|_| s.sample(&mut logits.clone(), &[]) != 0));
    }

    #[test]
    fn same_seed_same_tokens() {
        let logits: Vec<f32> = (0..100).map(|i| (i as f32 * 0.37).sin()).collect();
        let run = || {
            let mut s = Sampler::new(opts(0.8));
            (0..20).map(|_| s.sample(&mut logits.clone(), &[])).collect::<Vec<_>>()
        };
        assert_eq!(run(), run());
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
