//! The CPU lowering of a mixture of experts ([`crate::arch::Op::MoeRoute`], [`crate::arch::Op::Experts`]): the
//! routing of each token, then each routed expert run once over the batch of tokens routed to it.

use super::{Activations, Linear, Scratch, WeightRef};
use crate::arch::{Buf, Program};
use crate::graph::Activation;
use kernels_cpu::ops;

/// One token's routing: `probs` (its router logits) through a softmax over every expert, the `k` largest
/// (ties to the lower id) into `route[..k]` as f32 ids, their probabilities over their sum into `route[k..]`.
pub(super) fn route_token(probs: &mut [f32], k: usize, route: &mut [f32]) {
    let max = probs.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for v in probs.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    probs.iter_mut().for_each(|v| *v /= sum);
    let (ids, weights) = route.split_at_mut(k);
    let mut kept = 0.0;
    for j in 0..k {
        let mut best: Option<usize> = None;
        for (e, &v) in probs.iter().enumerate() {
            let taken = ids[..j].iter().any(|&id| id as usize == e);
            if !taken && best.is_none_or(|b| v > probs[b]) {
                best = Some(e);
            }
        }
        // k is at most the experts (the program's check), so some expert is always left.
        let e = best.unwrap_or(0);
        ids[j] = e as f32;
        weights[j] = probs[e];
        kept += probs[e];
    }
    weights.iter_mut().for_each(|w| *w /= kept);
}

/// `x += sum over each token's routed experts of weight * down(glu(gate, up))`: each expert runs once over
/// the tokens routed to it (gathered into a batch), its output rows added back weighted.
pub(super) fn run_experts(
    p: &Program,
    experts: &[[WeightRef; 3]],
    glu: Activation,
    act: Activations,
    s: &mut Scratch,
    n: usize,
    x: &mut [f32],
) {
    let (d, k) = (p.hidden as usize, p.top_k as usize);
    let [input, gate, up, out] = &mut s.moe;
    let normed = &s.bufs[Buf::MoeIn as usize];
    let route = &s.bufs[Buf::Route as usize];
    for (e, [wg, wu, wd]) in experts.iter().enumerate() {
        s.moe_rows.clear();
        for (t, r) in route.chunks_exact(2 * k).take(n).enumerate() {
            if let Some(j) = r[..k].iter().position(|&id| id as usize == e) {
                s.moe_rows.push((t, r[k + j]));
            }
        }
        let m = s.moe_rows.len();
        if m == 0 {
            continue;
        }
        let f = wg.view().entry.shape[0] as usize;
        input.clear();
        for &(t, _) in &s.moe_rows {
            input.extend_from_slice(&normed[t * d..(t + 1) * d]);
        }
        gate.resize(m * f, 0.0);
        up.resize(m * f, 0.0);
        let lin = Linear::prepare(act, input, m, &mut s.xq);
        lin.apply(&wg.matrix(), &s.xq, gate);
        lin.apply(&wu.matrix(), &s.xq, up);
        // The activations `act(gate) * up` go where the input was.
        input.resize(m * f, 0.0);
        match glu {
            Activation::Silu => ops::silu_mul(gate, up, input),
            Activation::Gelu => {
                ops::gelu(gate);
                input.iter_mut().zip(gate.iter().zip(up.iter())).for_each(|(a, (&g, &u))| *a = g * u);
            }
        }
        out.resize(m * d, 0.0);
        Linear::prepare(act, input, m, &mut s.xq).apply(&wd.matrix(), &s.xq, out);
        for (&(t, w), o) in s.moe_rows.iter().zip(out.chunks_exact(d)) {
            x[t * d..(t + 1) * d].iter_mut().zip(o).for_each(|(xv, &ov)| *xv += w * ov);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::route_token;

    /// The route of `logits` (ids, weights), against a softmax and renormalisation computed here in f64.
    fn route(logits: &[f32], k: usize) -> (Vec<usize>, Vec<f32>) {
        let mut probs = logits.to_vec();
        let mut r = vec![f32::NAN; 2 * k];
        route_token(&mut probs, k, &mut r);
        (r[..k].iter().map(|&id| id as usize).collect(), r[k..].to_vec())
    }

    fn renormalised(logits: &[f32], ids: &[usize]) -> Vec<f32> {
        let sum: f64 = ids.iter().map(|&i| (logits[i] as f64).exp()).sum();
        ids.iter().map(|&i| ((logits[i] as f64).exp() / sum) as f32).collect()
    }

    #[test]
    fn picks_the_largest_in_order_and_renormalises() {
        let logits = [1.0, 3.0, 2.0, -1.0, 0.5];
        let (ids, w) = route(&logits, 2);
        assert_eq!(ids, [1, 2]);
        for (a, b) in w.iter().zip(renormalised(&logits, &ids)) {
            assert!((a - b).abs() < 1e-6, "{w:?}");
        }
        let (ids, w) = route(&logits, 1);
        assert_eq!((ids, w), (vec![1], vec![1.0]));
    }

    #[test]
    fn ties_go_to_the_lower_id_and_every_expert_can_be_kept() {
        let (ids, w) = route(&[0.5, 2.0, 0.5, 2.0], 3);
        assert_eq!(ids, [1, 3, 0]);
        assert!((w.iter().sum::<f32>() - 1.0).abs() < 1e-6 && (w[0] - w[1]).abs() < 1e-7, "{w:?}");
        let logits = [0.1, -0.2, 0.3];
        let (ids, w) = route(&logits, 3);
        assert_eq!(ids, [2, 0, 1]);
        for (a, b) in w.iter().zip(renormalised(&logits, &ids)) {
            assert!((a - b).abs() < 1e-6, "{w:?}");
        }
    }

    /// Large logits do not overflow the softmax (the maximum is taken out first).
    #[test]
    fn large_logits_stay_finite() {
        let (ids, w) = route(&[1000.0, 999.0, -1000.0], 2);
        assert_eq!(ids, [0, 1]);
        assert!(w.iter().all(|v| v.is_finite()) && (w[0] - 1.0 / (1.0 + (-1f32).exp())).abs() < 1e-6, "{w:?}");
    }
}
