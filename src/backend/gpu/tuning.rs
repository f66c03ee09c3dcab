//! `omex optimize`'s profiles: per linear op of the model (its label, layout and shape), the decode matvec
//! kernel measured fastest on one adapter, in `optimization/<adapter>.json` inside the model directory (the
//! seeds' hardware-specific execution profiles). The engine uses a profile made on the same adapter, driver
//! and model files, for the same activation precision; any other is ignored with a warning.

use super::device::GpuDevice;
use super::ops::MatvecKernel;
use super::plan::Tuned;
use crate::backend::Activations;
use crate::error::{Error, Result};
use crate::format::ModelDir;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

pub const PROFILE_FORMAT: &str = "omex-optimization/1";

/// A profile: what it was measured on, and per op the kernels' times.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub format: String,
    pub adapter: String,
    pub driver: String,
    pub backend: String,
    /// SHA-256 of the model's `metadata.json` (which lists every file's hash): other weights, another profile.
    pub model: String,
    /// "f32" or "int8": the decode activations it was measured with.
    pub activations: String,
    pub ops: BTreeMap<String, OpTiming>,
}

/// One op's measurements: the kernel chosen, the one the engine picks without a profile, microseconds per
/// kernel, and how many blocks have the op.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpTiming {
    pub kernel: String,
    pub default: String,
    pub us: BTreeMap<String, f64>,
    pub blocks: usize,
}

impl Profile {
    /// What the profile buys a decode step over the engine's defaults: (default µs, tuned µs), summed over
    /// every block's ops.
    pub fn gain_us(&self) -> (f64, f64) {
        let at = |t: &OpTiming, k: &str| t.us.get(k).copied().unwrap_or(0.0) * t.blocks as f64;
        self.ops.values().fold((0.0, 0.0), |(d, b), t| (d + at(t, &t.default), b + at(t, &t.kernel)))
    }
}

fn activations_name(a: Activations) -> &'static str {
    match a {
        Activations::F32 => "f32",
        Activations::Int8 => "int8",
    }
}

/// The profile's file for this adapter: `optimization/<adapter name, lowercase, runs of other characters as
/// one '-'>.json`.
pub fn profile_path(dir: &ModelDir, gpu: &GpuDevice) -> PathBuf {
    let mut slug = String::new();
    for c in gpu.info.name.to_lowercase().chars() {
        match c.is_ascii_alphanumeric() {
            true => slug.push(c),
            false if !slug.ends_with('-') => slug.push('-'),
            false => {}
        }
    }
    let slug = slug.trim_matches('-');
    dir.root.join("optimization").join(format!("{}.json", if slug.is_empty() { "adapter" } else { slug }))
}

/// A profile with this adapter's and model's identity and no ops yet.
pub fn new_profile(dir: &ModelDir, gpu: &GpuDevice, activations: Activations) -> Result<Profile> {
    Ok(Profile {
        format: PROFILE_FORMAT.into(),
        adapter: gpu.info.name.clone(),
        driver: format!("{} {}", gpu.info.driver, gpu.info.driver_info).trim().to_string(),
        backend: format!("{:?}", gpu.info.backend),
        model: model_hash(dir)?,
        activations: activations_name(activations).into(),
        ops: BTreeMap::new(),
    })
}

fn model_hash(dir: &ModelDir) -> Result<String> {
    let path = dir.root.join("metadata.json");
    let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
    Ok(crate::format::checksum::sha256_bytes(&bytes))
}

/// The kernels of this adapter's profile, when there is one made here for these weights and activations; a
/// missing profile is no profile, and a foreign, stale or damaged one is ignored with a warning naming why.
pub fn load_tuned(dir: &ModelDir, gpu: &GpuDevice, activations: Activations) -> Tuned {
    let path = profile_path(dir, gpu);
    let Ok(bytes) = std::fs::read(&path) else { return Tuned::new() };
    match check(dir, gpu, activations, &bytes) {
        Ok(tuned) => {
            log::info!("using the optimization profile {} ({} ops tuned)", path.display(), tuned.len());
            tuned
        }
        Err(why) => {
            log::warn!("{}: ignored: {why}; `omex optimize` makes a new one", path.display());
            Tuned::new()
        }
    }
}

fn check(
    dir: &ModelDir,
    gpu: &GpuDevice,
    activations: Activations,
    bytes: &[u8],
) -> std::result::Result<Tuned, String> {
    let p: Profile = serde_json::from_slice(bytes).map_err(|e| format!("not a profile ({e})"))?;
    let here = new_profile(dir, gpu, activations).map_err(|e| e.to_string())?;
    if p.format != PROFILE_FORMAT {
        return Err(format!("format {:?}, not {PROFILE_FORMAT:?}", p.format));
    }
    for (what, theirs, ours) in [
        ("adapter", &p.adapter, &here.adapter),
        ("driver", &p.driver, &here.driver),
        ("backend", &p.backend, &here.backend),
        ("model (metadata.json's SHA-256)", &p.model, &here.model),
        ("activations", &p.activations, &here.activations),
    ] {
        if theirs != ours {
            return Err(format!("made for {what} {theirs:?}, this run has {ours:?}"));
        }
    }
    let mut tuned = Tuned::new();
    for (key, t) in &p.ops {
        let k =
            MatvecKernel::from_name(&t.kernel).ok_or_else(|| format!("op {key:?}: unknown kernel {:?}", t.kernel))?;
        let subgroups = matches!(k, MatvecKernel::GroupsSubgroup | MatvecKernel::Int8Subgroup);
        let int8 = matches!(k, MatvecKernel::Int8 | MatvecKernel::Int8Subgroup);
        if (subgroups && !gpu.tier.subgroups) || (int8 && activations != Activations::Int8) {
            return Err(format!("op {key:?}: kernel {} does not run here", t.kernel));
        }
        tuned.insert(key.clone(), k);
    }
    Ok(tuned)
}
