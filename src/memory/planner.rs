//! The memory planner: given each weight unit's GPU size, the KV cache and the activations, and a budget,
//! decide which units stay resident on the GPU and which stream through a ring of upload slots, and predict
//! the speed from measured bandwidths.
//!
//! A unit is a weight file as the forward pass uses it: a transformer block's file, or a big matrix (the
//! output head) that can stream in row pieces. Every token reads every unit once, so the bytes uploaded per
//! token are the sum of the streamed units: the planner maximises the bytes it keeps resident. A whole-file
//! unit needs a slot as large as itself, so the planner tries each candidate slot size (whole-file units
//! larger than the slot must then be resident) and keeps the plan that moves the fewest bytes.

use serde::Serialize;

/// One weight unit as the GPU holds it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LayerCost {
    /// What it is, e.g. `layer_3.bin` or `embedding.bin (token embedding, output head)`.
    pub file: String,
    /// Bytes of GPU memory it takes when resident.
    pub bytes: u64,
    /// Bytes uploaded per forward pass when it is not resident. 0 for a unit the GPU never reads when it is
    /// not resident (an embedding table whose rows are then gathered on the host); for a block of experts, as
    /// `read` (only the routed experts go up).
    pub moved: u64,
    /// Streams in pieces of at most a slot (rows of a matrix); otherwise it needs a slot as large as itself.
    pub splittable: bool,
    /// Weight bytes a decode token's kernels read from it: all of a block's, the rows of the output head, none
    /// of an untied embedding (one row is gathered), and of a block of experts its dense part plus `top_k` of
    /// its `experts` experts' matrices (the share read on average when routing is even).
    pub read: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PlanInput {
    /// In execution order (embedding, blocks, head).
    pub layers: Vec<LayerCost>,
    pub kv_bytes: u64,
    /// Activations, parameters and readback buffers.
    pub activation_bytes: u64,
    /// Upload slots when streaming: 2 is double buffering (upload i+1 while computing i).
    pub slots: usize,
    /// The smallest slot a splittable unit can stream through (its largest indivisible piece).
    pub min_slot: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Plan {
    /// Per unit (same order as the input): resident or not.
    pub resident: Vec<bool>,
    /// Slots allocated (0 when nothing streams) and the size of each.
    pub slots: usize,
    pub slot_bytes: u64,
    pub resident_bytes: u64,
    pub kv_bytes: u64,
    pub activation_bytes: u64,
    /// Everything the plan allocates: resident + slots + KV + activations.
    pub total_bytes: u64,
    /// Bytes uploaded per forward pass: per token when decoding, per chunk of tokens in a prefill.
    pub streamed_bytes_per_token: u64,
    pub weight_bytes: u64,
    /// Weight bytes a decode token reads (the units' [`LayerCost::read`]).
    pub read_bytes_per_token: u64,
}

impl Plan {
    pub fn streams(&self) -> bool {
        self.slots > 0
    }
}

/// The budget cannot hold even the streaming minimum.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TooSmall {
    pub budget: u64,
    /// The smallest budget that works.
    pub minimum: u64,
}

/// Slot sizes worth trying: each whole-file unit's size, and a piece size for the splittable ones.
fn slot_candidates(input: &PlanInput) -> Vec<u64> {
    let mut sizes: Vec<u64> = input
        .layers
        .iter()
        .filter(|l| !l.splittable && l.moved > 0 && l.bytes >= input.min_slot)
        .map(|l| l.bytes)
        .collect();
    if let Some(largest) = input.layers.iter().filter(|l| l.splittable).map(|l| l.moved).max() {
        sizes.push(input.min_slot.max((4 << 20).min(largest)));
    }
    sizes.sort_unstable();
    sizes.dedup();
    sizes
}

pub fn plan(input: &PlanInput, budget: Option<u64>) -> Result<Plan, TooSmall> {
    let weight_bytes: u64 = input.layers.iter().map(|l| l.bytes).sum();
    let read_bytes_per_token: u64 = input.layers.iter().map(|l| l.read).sum();
    let fixed = input.kv_bytes + input.activation_bytes;
    let make = |resident: Vec<bool>, slot_bytes: u64| {
        let on = |want: bool| input.layers.iter().zip(&resident).filter(move |(_, r)| **r == want).map(|(l, _)| l);
        let resident_bytes: u64 = on(true).map(|l| l.bytes).sum();
        let moved: u64 = on(false).map(|l| l.moved).sum();
        let slots = if moved == 0 { 0 } else { input.slots.max(1) };
        let slot_bytes = if slots == 0 { 0 } else { slot_bytes };
        Plan {
            slots,
            slot_bytes,
            resident_bytes,
            kv_bytes: input.kv_bytes,
            activation_bytes: input.activation_bytes,
            total_bytes: resident_bytes + slots as u64 * slot_bytes + fixed,
            streamed_bytes_per_token: moved,
            weight_bytes,
            read_bytes_per_token,
            resident,
        }
    };
    let budget = match budget {
        None => return Ok(make(vec![true; input.layers.len()], 0)),
        Some(b) if weight_bytes + fixed <= b => return Ok(make(vec![true; input.layers.len()], 0)),
        Some(b) => b,
    };
    let slots = input.slots.max(1) as u64;
    let mut best: Option<Plan> = None;
    let mut minimum = u64::MAX;
    for slot in slot_candidates(input) {
        // Whole-file units larger than a slot cannot stream through it.
        let forced = |l: &LayerCost| !l.splittable && l.moved > 0 && l.bytes > slot;
        let forced_bytes: u64 = input.layers.iter().filter(|l| forced(l)).map(|l| l.bytes).sum();
        let floor = fixed + slots * slot + forced_bytes;
        minimum = minimum.min(floor);
        if floor > budget {
            continue;
        }
        // Fill what is left with the units that save the most upload per resident byte, largest first.
        let mut room = budget - floor;
        let mut resident: Vec<bool> = input.layers.iter().map(forced).collect();
        let mut order: Vec<usize> =
            (0..input.layers.len()).filter(|&i| !resident[i] && input.layers[i].moved > 0).collect();
        let ratio = |i: usize| input.layers[i].moved as f64 / input.layers[i].bytes.max(1) as f64;
        order.sort_by(|&a, &b| ratio(b).total_cmp(&ratio(a)).then(input.layers[b].bytes.cmp(&input.layers[a].bytes)));
        for i in order {
            if input.layers[i].bytes <= room {
                room -= input.layers[i].bytes;
                resident[i] = true;
            }
        }
        let p = make(resident, slot);
        // A plan that streams nothing needs no slots: it must still fit.
        if p.total_bytes > budget {
            continue;
        }
        let better = match &best {
            None => true,
            Some(b) => (p.streamed_bytes_per_token, p.total_bytes) < (b.streamed_bytes_per_token, b.total_bytes),
        };
        if better {
            best = Some(p);
        }
    }
    best.ok_or(TooSmall { budget, minimum })
}

/// Bandwidths measured by `omex profile` on this machine's GPU.
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
pub struct DeviceProfile {
    pub adapter: String,
    /// Host-to-GPU upload the way streaming does it (`queue.write_buffer` from a host slice, a few MB at a
    /// time, host copy included), GB/s.
    pub upload_gbs: f64,
    /// Host-to-GPU upload through a mapped staging buffer and a buffer copy, GB/s (for comparison).
    #[serde(default)]
    pub staging_upload_gbs: f64,
    /// A matrix-vector product over quantized weights, GB/s of weight bytes.
    pub matvec_gbs: f64,
    /// A device-to-device copy, GB/s (the memory ceiling).
    pub copy_gbs: f64,
    /// GPU time of one dispatch, microseconds.
    pub dispatch_us: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Prediction {
    pub decode_tok_s: f64,
    /// With upload and compute one after the other (no double buffering).
    pub decode_tok_s_serial: f64,
    pub compute_ms_per_token: f64,
    pub upload_ms_per_token: f64,
    /// Prefill: a chunk of `batch` tokens uploads the streamed bytes once, so streaming caps prefill at
    /// `batch` tokens per upload time (`None`: nothing streams). Compute is not modelled here.
    pub prefill_tok_s_upload_bound: Option<f64>,
}

/// Decode speed from the bandwidth model: a token reads its weight bytes once (compute: every block's, the
/// head's, the routed share of a block's experts) and uploads the streamed bytes; with double buffering the two
/// overlap and the slower one sets the pace.
pub fn predict(plan: &Plan, profile: &DeviceProfile, dispatches_per_token: usize, batch: u32) -> Prediction {
    let compute_s = plan.read_bytes_per_token as f64 / (profile.matvec_gbs * 1e9)
        + dispatches_per_token as f64 * profile.dispatch_us * 1e-6;
    let upload_s = plan.streamed_bytes_per_token as f64 / (profile.upload_gbs * 1e9);
    Prediction {
        decode_tok_s: 1.0 / compute_s.max(upload_s),
        decode_tok_s_serial: 1.0 / (compute_s + upload_s),
        compute_ms_per_token: compute_s * 1e3,
        upload_ms_per_token: upload_s * 1e3,
        prefill_tok_s_upload_bound: plan.streams().then(|| batch as f64 / upload_s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input() -> PlanInput {
        let unit = |file: String, bytes: u64| LayerCost { file, bytes, moved: bytes, splittable: false, read: bytes };
        let mut layers = vec![unit("embedding.bin".into(), 30)];
        layers.extend((0..10).map(|i| unit(format!("layer_{i}.bin"), 5)));
        layers.push(unit("head.bin".into(), 1));
        PlanInput { layers, kv_bytes: 4, activation_bytes: 2, slots: 2, min_slot: 1 }
    }

    #[test]
    fn everything_fits_without_a_budget_or_with_a_large_one() {
        for budget in [None, Some(1000), Some(81 + 6)] {
            let p = plan(&input(), budget).unwrap();
            assert!(!p.streams() && p.resident.iter().all(|r| *r) && p.streamed_bytes_per_token == 0);
            assert_eq!(p.total_bytes, 87);
        }
    }

    #[test]
    fn a_tight_budget_streams_the_fewest_bytes_and_stays_under_it() {
        for budget in 52..87 {
            let p = plan(&input(), Some(budget)).unwrap();
            assert!(p.total_bytes <= budget, "budget {budget}: plan takes {}", p.total_bytes);
            // Resident bytes + streamed bytes = all weights.
            assert_eq!(p.resident_bytes + p.streamed_bytes_per_token, 81);
            // Every streamed layer fits a slot.
            for (l, r) in input().layers.iter().zip(&p.resident) {
                assert!(*r || l.bytes <= p.slot_bytes);
            }
        }
        // 30 (embedding resident) + 2 slots x 5 + 6 fixed = 46 streams the ten blocks and the head.
        let p = plan(&input(), Some(46)).unwrap();
        assert_eq!((p.slot_bytes, p.streamed_bytes_per_token), (5, 51));
    }

    #[test]
    fn too_small_names_the_minimum() {
        let err = plan(&input(), Some(40)).unwrap_err();
        assert_eq!(err, TooSmall { budget: 40, minimum: 46 });
        assert!(plan(&input(), Some(err.minimum)).is_ok());
    }

    #[test]
    fn a_splittable_unit_streams_in_pieces_and_a_host_gathered_one_moves_nothing() {
        let mut i = input();
        // The embedding is also the output head (tied): it streams in pieces of a slot.
        i.layers[0].splittable = true;
        // 6 fixed + 2 slots of 5 = 16; the 4 bytes left keep the head file (1 byte) resident.
        let p = plan(&i, Some(20)).unwrap();
        assert_eq!((p.slot_bytes, p.streamed_bytes_per_token, p.total_bytes), (5, 80, 17));
        assert!(!p.resident[0] && p.resident[11]);
        // Untied: the GPU never reads a non-resident embedding (its rows are gathered on the host).
        i.layers[0].moved = 0;
        let p = plan(&i, Some(20)).unwrap();
        assert_eq!(p.streamed_bytes_per_token, 50);
        // ... and it is only resident when everything fits.
        assert!(!plan(&i, Some(86)).unwrap().resident[0]);
        assert!(plan(&i, Some(87)).unwrap().resident.iter().all(|r| *r));
    }

    #[test]
    fn overlap_is_bounded_by_the_slower_side() {
        let p = plan(&input(), Some(46)).unwrap();
        let prof = DeviceProfile {
            adapter: "t".into(),
            upload_gbs: 1e-9 * 51.0,
            staging_upload_gbs: 0.0,
            matvec_gbs: 1e-9 * 81.0 / 2.0,
            copy_gbs: 1.0,
            dispatch_us: 0.0,
        };
        let pred = predict(&p, &prof, 0, 8);
        assert!((pred.decode_tok_s - 0.5).abs() < 1e-9, "compute 2 s, upload 1 s: {pred:?}");
        assert!((pred.decode_tok_s_serial - 1.0 / 3.0).abs() < 1e-9);
        assert_eq!(pred.prefill_tok_s_upload_bound, Some(8.0));
    }
}
