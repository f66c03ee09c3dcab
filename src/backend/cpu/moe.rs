//! The CPU lowering of a mixture of experts ([`crate::arch::Op::MoeRoute`], [`crate::arch::Op::Experts`]): the
//! routing of each token (`kernels_cpu::ops::route`), then each routed expert run once over the batch of tokens
//! routed to it.

use super::{Activations, Linear, Scratch, WeightRef};
use crate::arch::{Buf, Program};
use crate::graph::Activation;
use kernels_cpu::ops;

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
    let (d, experts_n) = (p.hidden as usize, p.experts as usize);
    let [input, gate, up, out] = &mut s.moe;
    let normed = &s.bufs[Buf::MoeIn as usize];
    let route = &s.bufs[Buf::Route as usize];
    for (e, [wg, wu, wd]) in experts.iter().enumerate() {
        s.moe_rows.clear();
        for (t, r) in route.chunks_exact(experts_n).take(n).enumerate() {
            if r[e] != 0.0 {
                s.moe_rows.push((t, r[e]));
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
