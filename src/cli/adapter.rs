//! `omex adapter add|list|remove|merge`: LoRA adapters kept in a model's `adapters/` folder.

use clap::{Args, Subcommand};
use omex::format::adapter::{self, AdapterData};
use omex::format::ModelDir;
use omex::graph::Transformer;
use omex::import::lora::{import_peft, StoreAs};
use omex::import::lora_gguf::{import_gguf, is_gguf};
use omex::import::merge::MergeQuant;
use omex::{Error, Result};
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct AdapterArgs {
    #[command(subcommand)]
    pub command: AdapterCommand,
}

#[derive(Subcommand, Debug)]
pub enum AdapterCommand {
    /// Import a PEFT LoRA directory (adapter_config.json + adapter_model.safetensors) or a llama.cpp LoRA GGUF
    /// as MODEL/adapters/NAME
    Add(AddArgs),
    /// List the model's adapters: targets, ranks, scales, size
    List(ListArgs),
    /// Delete the adapter MODEL/adapters/NAME
    Remove(RemoveArgs),
    /// Bake the adapter NAME into a new model directory (dequantize, add, requantize), and say how far the
    /// merged model's logits are from the unmerged adapter's
    Merge(MergeArgs),
}

#[derive(Args, Debug)]
pub struct MergeArgs {
    /// The base model directory
    pub model: PathBuf,
    /// The adapter to merge, NAME or NAME:SCALE
    pub name: String,
    /// The new model directory (must not exist)
    #[arg(long, short = 'o')]
    pub out: PathBuf,
    /// Layout of the merged matrices: keep (each matrix's own; GGUF blocks become int8), f32, f16, int8, int4
    #[arg(long, default_value = "keep")]
    pub quant: MergeQuant,
    /// The text on which merged and unmerged logits are compared
    #[arg(long, default_value = COMPARE_TEXT)]
    pub text: String,
    /// CPU threads of the comparison (default: one per core)
    #[arg(long, short = 't', default_value_t = 0)]
    pub threads: usize,
}

const COMPARE_TEXT: &str = "The old lighthouse keeper climbed the stairs every evening, counting the steps \
    as his father had taught him, and lit the lamp before the ships came home.";

#[derive(Args, Debug)]
pub struct AddArgs {
    /// The base model directory
    pub model: PathBuf,
    /// The PEFT adapter directory (as written by save_pretrained) or a LoRA GGUF file (convert_lora_to_gguf.py)
    pub peft: PathBuf,
    /// The adapter's name in the model (letters, digits, '-', '_', '.')
    #[arg(long)]
    pub name: String,
    /// Storage of A and B: keep (f16 stays f16, f32 and bf16 become f32), f16 or f32
    #[arg(long, default_value = "keep")]
    pub dtype: StoreAs,
    /// Replace an existing adapter of that name
    #[arg(long)]
    pub replace: bool,
}

#[derive(Args, Debug)]
pub struct ListArgs {
    pub model: PathBuf,
}

#[derive(Args, Debug)]
pub struct RemoveArgs {
    pub model: PathBuf,
    pub name: String,
}

pub fn run(args: AdapterArgs) -> Result<()> {
    match args.command {
        AdapterCommand::Add(a) => add(a),
        AdapterCommand::List(a) => list(a),
        AdapterCommand::Remove(a) => {
            adapter::remove(&a.model, &a.name)?;
            outln!("removed adapter {} from {}", a.name, a.model.display());
            Ok(())
        }
        AdapterCommand::Merge(a) => merge(a),
    }
}

fn base(model: &std::path::Path) -> Result<(ModelDir, Transformer)> {
    let dir = ModelDir::open(model)?;
    let t = Transformer::from_graph(&dir.graph, &model.join(omex::format::graph::GRAPH_FILE))?;
    Ok((dir, t))
}

fn add(a: AddArgs) -> Result<()> {
    let (dir, t) = base(&a.model)?;
    if !a.replace && adapter::adapter_dir(&a.model, &a.name).exists() {
        return Err(Error::Usage(format!(
            "{}: adapter {:?} exists; remove it first (omex adapter remove) or pass --replace",
            a.model.display(),
            a.name
        )));
    }
    let (file, tensors) = if is_gguf(&a.peft) {
        import_gguf(&a.peft, &dir, &t, &a.name, a.dtype)?
    } else {
        import_peft(&a.peft, &dir, &t, &a.name, a.dtype)?
    };
    let targets = file.targets.len();
    let dest = adapter::write(&a.model, file, &tensors, a.replace)?;
    // Read back through the loader every engine uses, so what was written is what runs.
    let data = AdapterData::open_for(&a.model, &a.name, Some((&t.architecture, t.hidden_size, &dir.index)))?;
    log::info!("wrote {}", dest.display());
    outln!("added adapter {} to {}: {} ({})", a.name, a.model.display(), matrices(targets), summary(&data));
    Ok(())
}

/// "rank 8, scale 2, f16, 1.2 MB".
fn summary(d: &AdapterData) -> String {
    let mut ranks: Vec<u32> = d.targets.iter().map(|t| t.rank).collect();
    ranks.sort();
    ranks.dedup();
    let mut scales: Vec<String> = d.targets.iter().map(|t| format!("{}", t.scale)).collect();
    scales.sort();
    scales.dedup();
    let dtypes: std::collections::BTreeSet<String> = d.targets.iter().map(|t| t.a.dtype().to_string()).collect();
    format!(
        "rank {}, scale {}, {}, {}",
        ranks.iter().map(u32::to_string).collect::<Vec<_>>().join("/"),
        scales.join("/"),
        dtypes.into_iter().collect::<Vec<_>>().join("/"),
        omex::format::metadata::human_bytes(d.file.weights.bytes)
    )
}

fn list(a: ListArgs) -> Result<()> {
    let (dir, t) = base(&a.model)?;
    let names = adapter::list(&a.model)?;
    if names.is_empty() {
        outln!("{}: no adapters", a.model.display());
    }
    let mut bad = 0;
    for name in names {
        let checked = AdapterData::open_for(&a.model, &name, Some((&t.architecture, t.hidden_size, &dir.index)));
        match checked {
            Ok(d) => {
                let kinds: std::collections::BTreeSet<&str> =
                    d.file.targets.iter().filter_map(|t| t.weight.rsplit('.').next()).collect();
                outln!(
                    "{name}: {} over {} ({}), from {}",
                    matrices(d.targets.len()),
                    kinds.into_iter().collect::<Vec<_>>().join(", "),
                    summary(&d),
                    d.file.source
                );
            }
            Err(e) => {
                bad += 1;
                outln!("{name}: unusable: {e}");
            }
        }
    }
    match bad {
        0 => Ok(()),
        n => Err(Error::invalid(&a.model, format!("{} cannot be used", super::count(n, "adapter")))),
    }
}

fn matrices(n: usize) -> String {
    format!("{n} {}", if n == 1 { "matrix" } else { "matrices" })
}

fn merge(a: MergeArgs) -> Result<()> {
    if a.out.exists() {
        return Err(Error::Usage(format!("{}: exists; give a new directory to -o", a.out.display())));
    }
    let base = omex::runtime::Model::load(&a.model)?;
    let (name, scale) = omex::runtime::parse_adapter_spec(&a.name)?;
    let adapter = base.adapter(name)?;
    let s = omex::import::merge::merge(&base.dir, &adapter, scale, &a.out, a.quant)?;
    outln!(
        "merged adapter {name} (scale {scale}) into {} matrices: {} ({})",
        s.merged,
        a.out.display(),
        omex::format::metadata::human_bytes(s.bytes)
    );
    if let Some((t, from, to)) = s.relayout.first() {
        outln!("{} stored as {to} (the base's {from} is not re-encoded), e.g. {t}", matrices(s.relayout.len()));
    }
    // How far the merged model is from the base with the adapter unmerged: f32 activations on both.
    let opts = omex::runtime::EngineOptions {
        backend: omex::runtime::BackendChoice::Cpu,
        threads: a.threads,
        context_length: Some(512),
        activations: omex::backend::Activations::F32,
        kv: omex::backend::KvType::F32,
        ..Default::default()
    };
    let ids = base.tokenizer.encode(&a.text);
    if ids.is_empty() || ids.len() > 512 {
        return Err(Error::Usage(format!("--text: {} tokens (1 to 512)", ids.len())));
    }
    let mut unmerged = base.engine(&opts)?;
    unmerged.set_adapters(&base.active_adapters(std::slice::from_ref(&a.name))?)?;
    let want = unmerged.forward(&ids, 0, omex::backend::Logits::All)?;
    drop(unmerged);
    let merged = omex::runtime::Model::load(&a.out)?;
    let got = merged.engine(&opts)?.forward(&ids, 0, omex::backend::Logits::All)?;
    let vocab = want.len() / ids.len();
    let (mut max_abs, mut max_rel, mut same_top) = (0f32, 0f32, 0);
    for (w, g) in want.chunks_exact(vocab).zip(got.chunks_exact(vocab)) {
        for (x, y) in w.iter().zip(g) {
            max_abs = max_abs.max((x - y).abs());
            max_rel = max_rel.max((x - y).abs() / x.abs().max(1.0));
        }
        same_top += usize::from(kernels_argmax(w) == kernels_argmax(g));
    }
    outln!(
        "merged vs unmerged over {} ({:?}...): max |logit difference| {max_abs:.3e} ({max_rel:.2e} relative), same top token at {same_top}/{} positions",
        super::count(ids.len(), "token"),
        a.text.chars().take(30).collect::<String>(),
        ids.len()
    );
    Ok(())
}

/// The first index of the largest value.
fn kernels_argmax(v: &[f32]) -> usize {
    v.iter().enumerate().fold((0, f32::NEG_INFINITY), |b, (i, &x)| if x > b.1 { (i, x) } else { b }).0
}
