//! The cooperative-matrix matmul (shaders/matmul_coop.wgsl) needs tensor cores, which no CI adapter has
//! (lavapipe offers no cooperative matrices), so CI cannot run it; here naga parses, validates and compiles
//! it to SPIR-V for every specialisation the engine builds (the omex layouts and the GGUF blocks), so a broken
//! kernel still fails CI. Its numbers are checked on hardware by the matmul tests of gpu_ops.rs, which run it
//! beside the tiled kernel wherever the adapter offers cooperative matrices.

use naga::back::{pipeline_constants, spv, PipelineConstants};
use naga::valid::{Capabilities, ValidationFlags, Validator};
use naga::ShaderStage;
use omex::backend::gpu::pipelines::MATMUL_COOP;

/// SPIR-V words of the kernel specialised by `constants`, or the error that stopped it.
fn compile(constants: &[(&str, f64)]) -> Result<Vec<u32>, String> {
    let src = MATMUL_COOP.source();
    let module = naga::front::wgsl::parse_str(src).map_err(|e| e.emit_to_string(src))?;
    let info = Validator::new(ValidationFlags::all(), Capabilities::all())
        .validate(&module)
        .map_err(|e| e.emit_to_string(src))?;
    let constants: PipelineConstants = constants.iter().map(|&(k, v)| (k.to_string(), v)).collect();
    let entry = MATMUL_COOP.entry;
    let (m, i) = pipeline_constants::process_overrides(&module, &info, Some((ShaderStage::Compute, entry)), &constants)
        .map_err(|e| e.to_string())?;
    let pipeline = spv::PipelineOptions { shader_stage: ShaderStage::Compute, entry_point: entry.into() };
    spv::write_vec(&m, &i, &spv::Options::default(), Some(&pipeline)).map_err(|e| e.to_string())
}

#[test]
fn cooperative_matmul_compiles_for_every_specialisation() {
    for layout in 0..10 {
        for norm in [0.0, 1.0] {
            for mode in [0.0, 1.0] {
                let what = format!("matmul_coop LAYOUT {layout} NORM {norm} MODE {mode}");
                let words = compile(&[("LAYOUT", layout as f64), ("NORM", norm), ("MODE", mode)])
                    .unwrap_or_else(|e| panic!("{what}: {e}"));
                assert!(words.len() > 100 && words[0] == 0x0723_0203, "{what}: not a SPIR-V module");
            }
        }
    }
}
