//! Plain-Rust ops.

pub fn rmsnorm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let dim = weight.len();
    for (xr, or) in x.chunks_exact(dim).zip(out.chunks_exact_mut(dim)) {
        let ss: f32 = xr.iter().map(|v| v * v).sum();
        let r = 1.0 / (ss / dim as f32 + eps).sqrt();
        for ((o, &v), &w) in or.iter_mut().zip(xr).zip(weight) {
            *o = v * r * w;
        }
    }
}

pub fn layernorm(x: &[f32], weight: &[f32], bias: Option<&[f32]>, eps: f32, out: &mut [f32]) {
    let dim = weight.len();
    for (xr, or) in x.chunks_exact(dim).zip(out.chunks_exact_mut(dim)) {
        let mean = xr.iter().sum::<f32>() / dim as f32;
        let var = xr.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / dim as f32;
        let r = 1.0 / (var + eps).sqrt();
        for (k, (o, &v)) in or.iter_mut().zip(xr).enumerate() {
            *o = (v - mean) * r * weight[k] + bias.map_or(0.0, |b| b[k]);
        }
    }
}

pub fn silu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        *o = g / (1.0 + (-g).exp()) * u;
    }
}

pub fn silu(x: &mut [f32]) {
    for v in x.iter_mut() {
        *v /= 1.0 + (-*v).exp();
    }
}

pub fn gelu(x: &mut [f32]) {
    const C: f32 = 0.797_884_6; // sqrt(2 / pi)
    for v in x.iter_mut() {
        let u = C * (*v + 0.044715 * *v * *v * *v);
        *v /= 1.0 + (-2.0 * u).exp();
    }
}

pub fn add(a: &[f32], b: &[f32], out: &mut [f32]) {
    for ((o, &p), &q) in out.iter_mut().zip(a).zip(b) {
        *o = p + q;
    }
}

pub fn add_assign(a: &mut [f32], b: &[f32]) {
    for (p, &q) in a.iter_mut().zip(b) {
        *p += q;
    }
}

pub fn softmax(x: &mut [f32]) {
    let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let mut sum = 0f32;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

pub fn argmax(x: &[f32]) -> usize {
    let mut best = 0;
    let mut best_v = f32::NAN;
    for (i, &v) in x.iter().enumerate() {
        if !v.is_nan() && (best_v.is_nan() || v > best_v) {
            best = i;
            best_v = v;
        }
    }
    best
}
