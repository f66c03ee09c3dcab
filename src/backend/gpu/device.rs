//! The adapter and the device: picked with high-performance preference, opened with the adapter's real limits
//! (wgpu's defaults would cap a storage binding at 128 MiB), and the optional feature tiers the kernels can use
//! detected and logged.

use crate::error::{Error, Result};
use std::sync::{Arc, Mutex};

/// Optional hardware features a kernel variant may use. Every kernel also has a portable variant that needs
/// none of them (WebGPU, lavapipe).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tier {
    /// Subgroup operations (`subgroupAdd`...), with the adapter's subgroup size range.
    pub subgroups: bool,
    pub subgroup_min: u32,
    pub subgroup_max: u32,
    /// `f16` arithmetic in shaders.
    pub f16: bool,
    /// 16x16x16 cooperative matrices with f16 inputs and f32 accumulators (tensor cores), with f16 and
    /// 32-wide subgroups beside them: the prefill matmul's fast kernel (shaders/matmul_coop.wgsl).
    pub cooperative_matrix: bool,
}

impl Tier {
    /// A short list for logs, e.g. "subgroups 32..32, f16".
    pub fn describe(&self) -> String {
        let mut v = Vec::new();
        if self.subgroups {
            v.push(format!("subgroups {}..{}", self.subgroup_min, self.subgroup_max));
        }
        if self.f16 {
            v.push("f16".to_string());
        }
        if self.cooperative_matrix {
            v.push("cooperative matrix".to_string());
        }
        if v.is_empty() {
            "portable".to_string()
        } else {
            v.join(", ")
        }
    }
}

/// How to open the device.
#[derive(Clone, Debug, Default)]
pub struct DeviceOptions {
    /// Use the portable kernels only, whatever the adapter offers (`OMEX_GPU_PORTABLE=1` does the same).
    pub portable: bool,
}

/// An open device and its queue, with what the adapter is and offers.
pub struct GpuDevice {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    pub limits: wgpu::Limits,
    pub tier: Tier,
    /// The first error wgpu reported outside an error scope (validation, out of memory, device lost).
    errors: Arc<Mutex<Option<String>>>,
}

fn no_adapter(why: impl std::fmt::Display) -> Error {
    Error::Gpu(format!(
        "no usable GPU adapter ({why}); install the GPU's Vulkan, Metal or DX12 driver (on Linux without a GPU, \
         `apt-get install mesa-vulkan-drivers` gives the lavapipe software adapter), or run with --backend cpu"
    ))
}

/// The preferred adapter among `backends` (or the one `WGPU_ADAPTER_NAME` names).
async fn request_adapter(backends: wgpu::Backends) -> Result<wgpu::Adapter> {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    desc.backends = backends;
    let instance = wgpu::Instance::new(desc);
    if let Ok(a) = wgpu::util::initialize_adapter_from_env(&instance, None).await {
        return Ok(a);
    }
    let options = wgpu::RequestAdapterOptions {
        power_preference: wgpu::PowerPreference::HighPerformance,
        force_fallback_adapter: false,
        compatible_surface: None,
        apply_limit_buckets: false,
    };
    instance.request_adapter(&options).await.map_err(no_adapter)
}

/// Whether the adapter multiplies 16x16x16 f16 cooperative matrices into f32 ones, and has the f16 and the
/// fixed 32-wide subgroups the cooperative matmul is written for.
fn coop_f16_f32(adapter: &wgpu::Adapter, tier: &Tier) -> bool {
    use wgpu::CooperativeScalarType as S;
    if !adapter.features().contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX)
        || !tier.f16
        || !tier.subgroups
        || (tier.subgroup_min, tier.subgroup_max) != (32, 32)
    {
        return false;
    }
    adapter
        .cooperative_matrix_properties()
        .iter()
        .any(|c| (c.m_size, c.n_size, c.k_size) == (16, 16, 16) && c.ab_type == S::F16 && c.cr_type == S::F32)
}

impl GpuDevice {
    /// Opens the preferred adapter. Backends follow `WGPU_BACKEND` (e.g. `vulkan`, `gl`), the adapter
    /// `WGPU_ADAPTER_NAME`, as wgpu reads them.
    pub async fn open(opts: &DeviceOptions) -> Result<GpuDevice> {
        // Without WGPU_BACKEND, the primary backends first (Vulkan, Metal, DX12, WebGPU), then GL: probing GL
        // when a primary adapter exists only adds noise (EGL warnings on headless Linux).
        let adapter = match wgpu::Backends::from_env() {
            Some(backends) => request_adapter(backends).await?,
            None => match request_adapter(wgpu::Backends::PRIMARY).await {
                Ok(a) => a,
                Err(_) => request_adapter(wgpu::Backends::SECONDARY).await?,
            },
        };
        let info = adapter.get_info();
        if !adapter.get_downlevel_capabilities().flags.contains(wgpu::DownlevelFlags::COMPUTE_SHADERS) {
            return Err(no_adapter(format!("{} ({:?}) has no compute shaders", info.name, info.backend)));
        }
        let offered = adapter.features();
        let portable = opts.portable || std::env::var("OMEX_GPU_PORTABLE").is_ok_and(|v| v == "1");
        let tier = Tier {
            subgroups: !portable && offered.contains(wgpu::Features::SUBGROUP),
            subgroup_min: info.subgroup_min_size,
            subgroup_max: info.subgroup_max_size,
            f16: !portable && offered.contains(wgpu::Features::SHADER_F16),
            cooperative_matrix: false,
        };
        let tier = Tier { cooperative_matrix: !portable && coop_f16_f32(&adapter, &tier), ..tier };
        let mut features = wgpu::Features::empty();
        if tier.subgroups {
            features |= wgpu::Features::SUBGROUP;
        }
        if tier.f16 {
            features |= wgpu::Features::SHADER_F16;
        }
        if tier.cooperative_matrix {
            features |= wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX;
        }
        features |= super::timer::KernelTimer::wanted_features() & offered;
        let limits = adapter.limits();
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("omex"),
                required_features: features,
                required_limits: limits.clone(),
                // SAFETY: wgpu gates cooperative matrices behind this token because the feature is new; we
                // ask for it only when the adapter lists the exact configuration our kernel uses, and every
                // cooperative load and store of that kernel stays inside shared-memory tiles it sizes itself.
                experimental_features: match tier.cooperative_matrix {
                    true => unsafe { wgpu::ExperimentalFeatures::enabled() },
                    false => wgpu::ExperimentalFeatures::disabled(),
                },
                memory_hints: wgpu::MemoryHints::Performance,
                trace: wgpu::Trace::Off,
            })
            .await
            .map_err(|e| Error::Gpu(format!("{}: cannot open the device: {e}", info.name)))?;
        let errors = Arc::new(Mutex::new(None));
        let sink = errors.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            log::error!("GPU: {e}");
            sink.lock().expect("error slot poisoned").get_or_insert_with(|| e.to_string());
        }));
        let sink = errors.clone();
        device.set_device_lost_callback(move |reason, msg| {
            sink.lock().expect("error slot poisoned").get_or_insert_with(|| format!("device lost ({reason:?}): {msg}"));
        });
        log::info!(
            "GPU: {} ({:?}, {:?}, driver {} {}); kernels: {}; max storage binding {} MiB, max buffer {} MiB, \
             workgroup storage {} KiB",
            info.name,
            info.device_type,
            info.backend,
            info.driver,
            info.driver_info,
            tier.describe(),
            limits.max_storage_buffer_binding_size >> 20,
            limits.max_buffer_size >> 20,
            limits.max_compute_workgroup_storage_size >> 10
        );
        Ok(GpuDevice { device, queue, info, limits, tier, errors })
    }

    /// Whether this is a hardware adapter (not lavapipe, llvmpipe or WARP).
    pub fn is_hardware(&self) -> bool {
        self.info.device_type != wgpu::DeviceType::Cpu
    }

    /// "NVIDIA H100 (Vulkan, subgroups 32..32, f16)".
    pub fn describe(&self) -> String {
        format!("{} ({:?}, {})", self.info.name, self.info.backend, self.tier.describe())
    }

    /// Fails with the first error wgpu reported since the last call, if any.
    pub fn check(&self) -> Result<()> {
        match self.errors.lock().expect("error slot poisoned").take() {
            Some(e) => Err(Error::Gpu(e)),
            None => Ok(()),
        }
    }
}
