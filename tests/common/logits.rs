//! Comparing an engine's logits with a reference golden (tests/golden/*_logits.json, *_greedy.json): the
//! stored logits of a prompt's last position, the teacher-forced top-1, greedy continuations.
#![allow(dead_code)]

use super::{f64s, u32s};
use serde_json::Value;

pub fn argmax(row: &[f32]) -> usize {
    kernels_cpu::ops::argmax(row)
}

/// Largest |ours - reference| over the stored top-k and fixed-id logits of a prompt's last position.
pub fn max_diff(g: &Value, last: &Value, row: &[f32]) -> f64 {
    let mut worst = 0f64;
    for (ids, vals) in [(&last["top_ids"], &last["top_logits"]), (&g["fixed_token_ids"], &last["fixed_logits"])] {
        for (id, v) in u32s(ids).into_iter().zip(f64s(vals)) {
            worst = worst.max((row[id as usize] as f64 - v).abs());
        }
    }
    worst
}

/// Mean and population standard deviation of a logit row.
pub fn mean_std(row: &[f32]) -> (f64, f64) {
    let n = row.len() as f64;
    let mean = row.iter().map(|&x| x as f64).sum::<f64>() / n;
    let var = row.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
    (mean, var.sqrt())
}

/// Asserts the teacher-forced top-1 of every prompt position whose reference top-2 margin exceeds
/// `near_tie`; returns how many positions were compared.
pub fn teacher_forced_top1(p: &Value, logits: &[f32], vocab: usize, near_tie: f64) -> usize {
    let mut checked = 0;
    for (i, (top, margin)) in u32s(&p["argmax_ids"]).into_iter().zip(f64s(&p["top2_margins"])).enumerate() {
        if margin > near_tie {
            assert_eq!(argmax(&logits[i * vocab..(i + 1) * vocab]) as u32, top, "prompt {} position {i}", p["name"]);
            checked += 1;
        }
    }
    checked
}

pub fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// Greedy steps of a golden prompt before the first one whose reference top-2 margin is below `near_tie`.
pub fn clear_steps(p: &Value, near_tie: f64) -> usize {
    f64s(&p["top2_margins"]).iter().take_while(|&&m| m >= near_tie).count()
}
