//! Kernels and the pipeline cache. A [`Kernel`] is a WGSL file (with the weight-layout prelude where it reads
//! weights), an entry point and its bindings; a pipeline is a kernel specialised by WGSL `override` constants,
//! compiled once and cached under (kernel, entry point, constants). Bind group layouts are explicit (made from
//! the binding list), so a binding a specialisation leaves unused is still accepted.

use crate::error::{Error, Result};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// How a kernel sees one binding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Access {
    Uniform,
    Read,
    ReadWrite,
}

/// A compute entry point of a WGSL source, with its bindings (group 0) in binding order.
#[derive(Clone, Copy, Debug)]
pub struct Kernel {
    pub name: &'static str,
    pub entry: &'static str,
    pub bindings: &'static [(u32, Access)],
    source: &'static str,
}

use Access::{Read, ReadWrite, Uniform};

macro_rules! shader {
    ($file:literal) => {
        include_str!(concat!("../../../shaders/", $file))
    };
    (quant $file:literal) => {
        concat!(include_str!("../../../shaders/quant.wgsl"), include_str!(concat!("../../../shaders/", $file)))
    };
    ($first:literal $(+ $rest:literal)+) => {
        concat!(
            include_str!(concat!("../../../shaders/", $first)),
            $(include_str!(concat!("../../../shaders/", $rest))),+
        )
    };
}

/// Parameters, step, weights, norm weights, x, y.
const WEIGHT_OP: &[(u32, Access)] = &[(0, Uniform), (1, Read), (2, Read), (3, Read), (4, Read), (5, ReadWrite)];

pub const MATVEC: Kernel = Kernel {
    name: "matvec",
    entry: "main",
    bindings: WEIGHT_OP,
    source: shader!("quant.wgsl" + "matvec.wgsl" + "matvec_wg_sum.wgsl"),
};
/// The group matvec (vec4 loads, `cols % 32 == 0`) with the portable shared-memory reduction.
pub const MATVEC_GROUPS: Kernel = Kernel {
    name: "matvec_groups",
    entry: "main",
    bindings: WEIGHT_OP,
    source: shader!(
        "matvec_groups.wgsl" + "matvec_ggml.wgsl" + "matvec_teams.wgsl" + "matvec_wg_sum.wgsl" + "reduce_shared.wgsl"
    ),
};
/// The group matvec with subgroup-shuffle reductions (needs the SUBGROUP feature).
pub const MATVEC_GROUPS_SG: Kernel = Kernel {
    name: "matvec_groups_subgroup",
    entry: "main",
    bindings: WEIGHT_OP,
    source: shader!(
        "matvec_groups.wgsl" + "matvec_ggml.wgsl" + "matvec_teams.wgsl" + "matvec_wg_sum.wgsl" + "reduce_subgroup.wgsl"
    ),
};
/// The batched decode matvec: the generic matvec's units, TOK token rows per workgroup (several sequences' next
/// tokens).
pub const MATVEC_TOKENS: Kernel = Kernel {
    name: "matvec_tokens",
    entry: "tokens",
    bindings: WEIGHT_OP,
    source: shader!("quant.wgsl" + "matvec.wgsl" + "matvec_wg_sum.wgsl" + "matvec_tokens.wgsl"),
};
pub const MATMUL: Kernel =
    Kernel { name: "matmul", entry: "main", bindings: WEIGHT_OP, source: shader!(quant "matmul.wgsl") };
/// The prefill matmul on cooperative matrices (its `enable` directives must open the module, so the layout
/// prelude follows it).
pub const MATMUL_COOP: Kernel = Kernel {
    name: "matmul_coop",
    entry: "main",
    bindings: WEIGHT_OP,
    source: shader!("matmul_coop.wgsl" + "quant.wgsl"),
};
pub const EMBED: Kernel = Kernel {
    name: "embed",
    entry: "main",
    bindings: &[(0, Uniform), (1, Read), (2, Read), (3, Read), (4, ReadWrite)],
    source: shader!(quant "embed.wgsl"),
};
/// Parameters, step, qkv, cos/sin, q, K cache, V cache, seqmap.
const ROPE_BINDINGS: &[(u32, Access)] =
    &[(0, Uniform), (1, Read), (2, Read), (3, Read), (4, ReadWrite), (5, ReadWrite), (6, ReadWrite), (7, Read)];
/// RoPE and the KV store into an f32 cache; [`ROPE_F16`] and [`ROPE_Q8`] are the same source over an f16 or
/// q8_0 cache (the element type is the prelude, shaders/kv_f32.wgsl, kv_f16.wgsl or kv_q8.wgsl, and for the
/// writer kv_store_*.wgsl; so for every kernel that touches the cache).
pub const ROPE: Kernel = Kernel {
    name: "rope",
    entry: "main",
    bindings: ROPE_BINDINGS,
    source: shader!("pages.wgsl" + "kv_f32.wgsl" + "kv_store_f32.wgsl" + "rope.wgsl"),
};
pub const ROPE_F16: Kernel = Kernel {
    name: "rope_f16",
    entry: "main",
    bindings: ROPE_BINDINGS,
    source: shader!("pages.wgsl" + "kv_f16.wgsl" + "kv_store_f16.wgsl" + "rope.wgsl"),
};
pub const ROPE_Q8: Kernel = Kernel {
    name: "rope_q8",
    entry: "main",
    bindings: ROPE_BINDINGS,
    source: shader!("pages.wgsl" + "kv_q8.wgsl" + "kv_store_q8.wgsl" + "rope.wgsl"),
};
const ATTN_DECODE_BINDINGS: &[(u32, Access)] =
    &[(0, Uniform), (1, Read), (2, Read), (3, Read), (4, Read), (5, ReadWrite), (8, Read)];
pub const ATTN_DECODE: Kernel = Kernel {
    name: "attention_decode",
    entry: "partial",
    bindings: ATTN_DECODE_BINDINGS,
    source: shader!("pages.wgsl" + "kv_f32.wgsl" + "attention_decode.wgsl"),
};
pub const ATTN_DECODE_F16: Kernel = Kernel {
    name: "attention_decode_f16",
    entry: "partial",
    bindings: ATTN_DECODE_BINDINGS,
    source: shader!("pages.wgsl" + "kv_f16.wgsl" + "attention_decode.wgsl"),
};
pub const ATTN_DECODE_Q8: Kernel = Kernel {
    name: "attention_decode_q8",
    entry: "partial",
    bindings: ATTN_DECODE_BINDINGS,
    source: shader!("pages.wgsl" + "kv_q8.wgsl" + "attention_decode.wgsl"),
};
/// The combine step reads only the partials: one pipeline for every cache type.
pub const ATTN_COMBINE: Kernel = Kernel {
    name: "attention_decode",
    entry: "combine",
    bindings: &[(0, Uniform), (1, Read), (6, ReadWrite), (7, Read), (8, Read)],
    source: shader!("pages.wgsl" + "kv_f32.wgsl" + "attention_decode.wgsl"),
};
const ATTN_PREFILL_BINDINGS: &[(u32, Access)] =
    &[(0, Uniform), (1, Read), (2, Read), (3, Read), (4, Read), (5, ReadWrite), (6, Read)];
pub const ATTN_PREFILL: Kernel = Kernel {
    name: "attention_prefill",
    entry: "main",
    bindings: ATTN_PREFILL_BINDINGS,
    source: shader!("pages.wgsl" + "kv_f32.wgsl" + "attention_prefill.wgsl"),
};
pub const ATTN_PREFILL_F16: Kernel = Kernel {
    name: "attention_prefill_f16",
    entry: "main",
    bindings: ATTN_PREFILL_BINDINGS,
    source: shader!("pages.wgsl" + "kv_f16.wgsl" + "attention_prefill.wgsl"),
};
pub const ATTN_PREFILL_Q8: Kernel = Kernel {
    name: "attention_prefill_q8",
    entry: "main",
    bindings: ATTN_PREFILL_BINDINGS,
    source: shader!("pages.wgsl" + "kv_q8.wgsl" + "attention_prefill.wgsl"),
};
pub const RMSNORM: Kernel = Kernel {
    name: "norm",
    entry: "main",
    bindings: &[(0, Uniform), (1, Read), (2, Read), (3, ReadWrite)],
    source: shader!("norm.wgsl"),
};
const ELEMENTWISE: &[(u32, Access)] = &[(0, Uniform), (1, Read), (2, Read), (3, Read), (4, ReadWrite)];
pub const SILU_MUL: Kernel =
    Kernel { name: "elementwise", entry: "silu_mul", bindings: ELEMENTWISE, source: shader!("elementwise.wgsl") };
pub const GELU_MUL: Kernel =
    Kernel { name: "elementwise", entry: "gelu_mul", bindings: ELEMENTWISE, source: shader!("elementwise.wgsl") };
pub const ADD_ASSIGN: Kernel = Kernel {
    name: "elementwise",
    entry: "add_assign",
    bindings: &[(0, Uniform), (1, Read), (3, Read), (4, ReadWrite)],
    source: shader!("elementwise.wgsl"),
};
/// An activation in place: parameters, step, out.
const ACTIVATION: &[(u32, Access)] = &[(0, Uniform), (1, Read), (4, ReadWrite)];
pub const GELU: Kernel =
    Kernel { name: "elementwise", entry: "gelu", bindings: ACTIVATION, source: shader!("elementwise.wgsl") };
pub const SILU: Kernel =
    Kernel { name: "elementwise", entry: "silu", bindings: ACTIVATION, source: shader!("elementwise.wgsl") };
pub const LAYERNORM: Kernel = Kernel {
    name: "layernorm",
    entry: "main",
    bindings: &[(0, Uniform), (1, Read), (2, Read), (3, Read), (4, Read), (5, ReadWrite)],
    source: shader!("workgroup_reduce.wgsl" + "layernorm.wgsl"),
};
/// A mixture of experts' routing (parameters, step, logits in place), weighted add (parameters, step, route,
/// one expert's output, x) and gate.
pub const MOE_ROUTE: Kernel = Kernel {
    name: "moe",
    entry: "route_top_k",
    bindings: &[(0, Uniform), (1, Read), (2, ReadWrite)],
    source: shader!("workgroup_reduce.wgsl" + "moe.wgsl"),
};
pub const MOE_ADD: Kernel = Kernel {
    name: "moe",
    entry: "add_weighted",
    bindings: &[(0, Uniform), (1, Read), (3, Read), (4, Read), (5, ReadWrite)],
    source: shader!("workgroup_reduce.wgsl" + "moe.wgsl"),
};
/// Parameters, step, route, the gated dispatches' indirect counts and grids.
pub const MOE_GATE: Kernel = Kernel {
    name: "moe",
    entry: "gate",
    bindings: &[(0, Uniform), (1, Read), (3, Read), (6, ReadWrite)],
    source: shader!("workgroup_reduce.wgsl" + "moe.wgsl"),
};
pub const ADD_POSITIONS: Kernel = Kernel {
    name: "positions",
    entry: "main",
    bindings: &[(0, Uniform), (1, Read), (2, Read), (3, ReadWrite), (4, Read)],
    source: shader!("pages.wgsl" + "positions.wgsl"),
};
/// Parameters, logits, ids, tokens, step: the bindings of both samplers.
const SAMPLER: &[(u32, Access)] = &[(0, Uniform), (1, Read), (2, ReadWrite), (3, ReadWrite), (4, Read)];
pub const ARGMAX: Kernel =
    Kernel { name: "sample", entry: "argmax", bindings: SAMPLER, source: shader!("sample.wgsl") };
pub const SAMPLE: Kernel =
    Kernel { name: "sample", entry: "sample", bindings: SAMPLER, source: shader!("sample.wgsl") };
pub const ADVANCE: Kernel =
    Kernel { name: "sample", entry: "advance", bindings: &[(5, ReadWrite)], source: shader!("sample.wgsl") };
/// The decode matvec with int8 activations (`dot4I8Packed`; int8, int4 and ternary weights) and the portable
/// shared-memory reduction.
pub const MATVEC_Q8: Kernel = Kernel {
    name: "matvec_q8",
    entry: "main",
    bindings: WEIGHT_OP,
    source: shader!("matvec_q8.wgsl" + "matvec_teams.wgsl" + "matvec_wg_sum.wgsl" + "reduce_shared.wgsl"),
};
/// The int8-activation matvec with subgroup-shuffle reductions (needs the SUBGROUP feature).
pub const MATVEC_Q8_SG: Kernel = Kernel {
    name: "matvec_q8_subgroup",
    entry: "main",
    bindings: WEIGHT_OP,
    source: shader!("matvec_q8.wgsl" + "matvec_teams.wgsl" + "matvec_wg_sum.wgsl" + "reduce_subgroup.wgsl"),
};

/// LoRA's `t = A x̂` (the RMS norm optionally recomputed on load): parameters, step, norm weight, x, A, t.
pub const LORA_DOWN: Kernel = Kernel {
    name: "lora",
    entry: "down",
    bindings: &[(0, Uniform), (1, Read), (2, Read), (3, Read), (4, Read), (5, ReadWrite)],
    source: shader!("workgroup_reduce.wgsl" + "lora.wgsl"),
};
/// LoRA's `y += s B t`: parameters, step, B, t, y, the scales.
pub const LORA_UP: Kernel = Kernel {
    name: "lora",
    entry: "up",
    bindings: &[(0, Uniform), (1, Read), (6, Read), (7, Read), (8, ReadWrite), (9, Read)],
    source: shader!("workgroup_reduce.wgsl" + "lora.wgsl"),
};

impl Kernel {
    pub fn source(&self) -> &'static str {
        self.source
    }
}

/// A compiled pipeline and the bind group layout its bind groups are made with.
pub struct Pipeline {
    pub kernel: Kernel,
    pub pipeline: wgpu::ComputePipeline,
    pub layout: wgpu::BindGroupLayout,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    name: &'static str,
    entry: &'static str,
    /// (name, f64 bits), in the order given.
    constants: Vec<(&'static str, u64)>,
}

/// Compiled pipelines, shader modules and bind group layouts, each made once.
pub struct PipelineCache {
    device: wgpu::Device,
    modules: Mutex<HashMap<&'static str, wgpu::ShaderModule>>,
    layouts: Mutex<HashMap<Vec<(u32, Access)>, wgpu::BindGroupLayout>>,
    pipelines: Mutex<HashMap<Key, Arc<Pipeline>>>,
}

impl PipelineCache {
    pub fn new(device: &wgpu::Device) -> PipelineCache {
        PipelineCache {
            device: device.clone(),
            modules: Mutex::default(),
            layouts: Mutex::default(),
            pipelines: Mutex::default(),
        }
    }

    /// Pipelines compiled so far.
    pub fn len(&self) -> usize {
        self.pipelines.lock().expect("pipeline cache poisoned").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The kernel's module. Every loop of our kernels is bounded by a constant or a parameter the host sets, and
    /// every integer division is by a constant or a parameter the host keeps non-zero, so two of the guards naga
    /// would add are left out: a hidden counter in every loop (which also stops the driver from unrolling loops
    /// and pipelining their loads: kernels ran several times slower with it) and a zero test before each
    /// integer division. Bounds checks on buffer accesses stay. `OMEX_GPU_CHECKED=1` keeps every guard.
    fn module(&self, kernel: &Kernel) -> wgpu::ShaderModule {
        let desc = wgpu::ShaderModuleDescriptor {
            label: Some(kernel.name),
            source: wgpu::ShaderSource::Wgsl(kernel.source.into()),
        };
        if std::env::var("OMEX_GPU_CHECKED").is_ok_and(|v| v == "1") {
            return self.device.create_shader_module(desc);
        }
        let mut checks = wgpu::ShaderRuntimeChecks::checked();
        checks.force_loop_bounding = false;
        checks.int_div_checks = false;
        // SAFETY: see above; the kernels' loops terminate and their divisors are non-zero for every dispatch the
        // ops build (the ops check the shapes they are given), and out-of-range accesses are still clamped.
        unsafe { self.device.create_shader_module_trusted(desc, checks) }
    }

    fn layout(&self, bindings: &[(u32, Access)]) -> wgpu::BindGroupLayout {
        let mut layouts = self.layouts.lock().expect("pipeline cache poisoned");
        layouts
            .entry(bindings.to_vec())
            .or_insert_with(|| {
                let entries: Vec<_> = bindings
                    .iter()
                    .map(|&(binding, access)| wgpu::BindGroupLayoutEntry {
                        binding,
                        visibility: wgpu::ShaderStages::COMPUTE,
                        ty: wgpu::BindingType::Buffer {
                            ty: match access {
                                Access::Uniform => wgpu::BufferBindingType::Uniform,
                                Access::Read => wgpu::BufferBindingType::Storage { read_only: true },
                                Access::ReadWrite => wgpu::BufferBindingType::Storage { read_only: false },
                            },
                            has_dynamic_offset: false,
                            min_binding_size: None,
                        },
                        count: None,
                    })
                    .collect();
                self.device
                    .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor { label: None, entries: &entries })
            })
            .clone()
    }

    /// The pipeline of `kernel` with these `override` constants, compiled on first use. Compilation and
    /// validation errors come back as [`Error::Gpu`] naming the kernel.
    pub async fn get(&self, kernel: &Kernel, constants: &[(&'static str, f64)]) -> Result<Arc<Pipeline>> {
        let key = Key {
            name: kernel.name,
            entry: kernel.entry,
            constants: constants.iter().map(|&(k, v)| (k, v.to_bits())).collect(),
        };
        if let Some(p) = self.pipelines.lock().expect("pipeline cache poisoned").get(&key) {
            return Ok(p.clone());
        }
        let what = || format!("kernel {}::{} {constants:?}", kernel.name, kernel.entry);
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let cached = self.modules.lock().expect("pipeline cache poisoned").get(kernel.name).cloned();
        let module = match cached {
            Some(m) => m,
            None => self.module(kernel),
        };
        let layout = self.layout(kernel.bindings);
        let pipeline_layout = self.device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some(kernel.name),
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
        let pipeline = self.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(kernel.name),
            layout: Some(&pipeline_layout),
            module: &module,
            entry_point: Some(kernel.entry),
            compilation_options: wgpu::PipelineCompilationOptions {
                constants,
                zero_initialize_workgroup_memory: false,
            },
            cache: None,
        });
        if let Some(e) = scope.pop().await {
            return Err(Error::Gpu(format!("{}: {e}", what())));
        }
        self.modules.lock().expect("pipeline cache poisoned").insert(kernel.name, module);
        let p = Arc::new(Pipeline { kernel: *kernel, pipeline, layout });
        self.pipelines.lock().expect("pipeline cache poisoned").insert(key, p.clone());
        Ok(p)
    }
}
