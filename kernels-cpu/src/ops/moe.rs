//! Mixture-of-experts routing of one token: the router's logits in, each expert's weight out.

/// Routes one token in place: `row` holds the router's logits over every expert and becomes each expert's
/// weight. A softmax over all experts (maximum subtracted first), the `k` largest probabilities (ties to the
/// lower id), each divided by their sum; every other expert gets 0. An engine runs an expert for a token
/// only where its weight is not 0 (a chosen probability that underflowed to 0 would add nothing anyway).
///
/// # Panics
/// If `k` is 0 or above `row.len()` (the program's check refuses such a route before anything runs).
pub fn route(row: &mut [f32], k: usize) {
    assert!(k >= 1 && k <= row.len(), "route: top {k} of {} experts", row.len());
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for v in row.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    row.iter_mut().for_each(|v| *v /= sum);
    // A chosen probability is marked by its sign bit (every probability is >= 0, so -0.0 marks a chosen 0).
    let mut kept = 0.0;
    for _ in 0..k {
        let mut best: Option<usize> = None;
        for (e, &v) in row.iter().enumerate() {
            if !v.is_sign_negative() && best.is_none_or(|b| v > row[b]) {
                best = Some(e);
            }
        }
        // k is at most the experts, so an expert is always left.
        let e = best.unwrap_or(0);
        kept += row[e];
        row[e] = -row[e];
    }
    // The largest probability is 1 / sum > 0 and always chosen, so `kept` > 0.
    for v in row.iter_mut() {
        *v = if v.is_sign_negative() { -*v / kept } else { 0.0 };
    }
}

#[cfg(test)]
mod tests {
    use super::route;

    /// The route of `logits`: (chosen ids by falling weight, then id; their weights).
    fn routed(logits: &[f32], k: usize) -> (Vec<usize>, Vec<f32>) {
        let mut w = logits.to_vec();
        route(&mut w, k);
        let mut ids: Vec<usize> = (0..w.len()).filter(|&e| w[e] != 0.0).collect();
        ids.sort_by(|&a, &b| w[b].total_cmp(&w[a]).then(a.cmp(&b)));
        let weights = ids.iter().map(|&e| w[e]).collect();
        (ids, weights)
    }

    fn renormalised(logits: &[f32], ids: &[usize]) -> Vec<f32> {
        let sum: f64 = ids.iter().map(|&i| (logits[i] as f64).exp()).sum();
        ids.iter().map(|&i| ((logits[i] as f64).exp() / sum) as f32).collect()
    }

    #[test]
    fn picks_the_largest_and_renormalises() {
        let logits = [1.0, 3.0, 2.0, -1.0, 0.5];
        let (ids, w) = routed(&logits, 2);
        assert_eq!(ids, [1, 2]);
        for (a, b) in w.iter().zip(renormalised(&logits, &ids)) {
            assert!((a - b).abs() < 1e-6, "{w:?}");
        }
        let mut row = logits;
        route(&mut row, 1);
        assert_eq!(row, [0.0, 1.0, 0.0, 0.0, 0.0]);
    }

    #[test]
    fn ties_go_to_the_lower_id_and_every_expert_can_be_kept() {
        let mut row = [0.5, 2.0, 0.5, 2.0];
        route(&mut row, 3);
        assert_eq!(row[2], 0.0, "{row:?}");
        assert!(row[0] > 0.0 && row[1] == row[3] && (row.iter().sum::<f32>() - 1.0).abs() < 1e-6, "{row:?}");
        let logits = [0.1, -0.2, 0.3];
        let (ids, w) = routed(&logits, 3);
        assert_eq!(ids, [2, 0, 1]);
        for (a, b) in w.iter().zip(renormalised(&logits, &ids)) {
            assert!((a - b).abs() < 1e-6, "{w:?}");
        }
    }

    /// Large logits do not overflow the softmax (the maximum is taken out first), and a chosen expert whose
    /// probability underflows to 0 keeps weight 0.
    #[test]
    fn extreme_logits_stay_finite() {
        let mut row = [1000.0, 999.0, -1000.0];
        route(&mut row, 3);
        assert!((row[0] - 1.0 / (1.0 + (-1f32).exp())).abs() < 1e-6, "{row:?}");
        assert!(row.iter().all(|v| v.is_finite() && *v >= 0.0) && row[2] == 0.0, "{row:?}");
    }
}
