//! `omex graph-visualize DIR -o OUT.svg [--expand N] [--force]`: the model's op program (src/arch) drawn as an
//! SVG: the embedding, runs of blocks whose op lists have one shape collapsed into a box with their count, one
//! block expanded op by op (its buffers, the weight bytes and dtypes it reads from weights/quantization.json,
//! the kernels it lowers to on the GPU and the CPU), then the final norm and the head.

use clap::Args;
use omex::arch::{self, Buf, NormOp, Op, Program, QkPart};
use omex::format::graph::GRAPH_FILE;
use omex::format::index::INDEX_FILE;
use omex::format::metadata::human_bytes;
use omex::format::{DType, ModelDir, TensorEntry};
use omex::graph::{Activation, BlockWeights, Norm, Transformer};
use omex::{Error, Result};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
pub struct GraphVisualizeArgs {
    /// The model directory
    pub model: PathBuf,
    /// Where to write the SVG
    #[arg(short, long)]
    pub output: PathBuf,
    /// The block drawn op by op
    #[arg(long, default_value_t = 0)]
    pub expand: usize,
    /// Replace OUTPUT if it exists (a file; never a directory)
    #[arg(long)]
    pub force: bool,
}

pub fn run(args: GraphVisualizeArgs) -> Result<()> {
    check_output(&args.model, &args.output, args.force)?;
    let dir = ModelDir::open(&args.model)?;
    let t = Transformer::from_graph(&dir.graph, &args.model.join(GRAPH_FILE))?;
    let p = arch::program(&t)?;
    if args.expand >= p.blocks.len() {
        return Err(Error::Usage(format!(
            "--expand {}: {} has {} (0..={})",
            args.expand,
            args.model.display(),
            super::count(p.blocks.len(), "block"),
            p.blocks.len().saturating_sub(1)
        )));
    }
    let drawing = Drawing::new(&dir, &t, &p, args.expand)?;
    let svg = drawing.render();
    write_output(&args.output, &svg, args.force)?;
    outln!(
        "{}: {} in {}, block {} expanded ({}), {} of weights",
        args.output.display(),
        super::count(p.blocks.len(), "block"),
        super::count(drawing.groups.len(), "group"),
        args.expand,
        super::count(p.blocks[args.expand].ops.len(), "op"),
        human_bytes(drawing.total)
    );
    Ok(())
}

/// Refuses an output that exists (unless `force`), a directory, or a file of the model directory itself.
fn check_output(model: &Path, out: &Path, force: bool) -> Result<()> {
    let Ok(meta) = std::fs::metadata(out) else { return Ok(()) };
    if meta.is_dir() {
        return Err(Error::Usage(format!("{}: is a directory; pass -o FILE.svg", out.display())));
    }
    if let (Ok(m), Ok(o)) = (model.canonicalize(), out.canonicalize()) {
        if o.starts_with(&m) {
            return Err(Error::Usage(format!(
                "{}: is a file of the model directory {}; choose another -o",
                out.display(),
                model.display()
            )));
        }
    }
    if !force {
        return Err(Error::Usage(format!("{}: already exists (pass --force to replace it)", out.display())));
    }
    Ok(())
}

fn write_output(out: &Path, svg: &str, force: bool) -> Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true);
    if force {
        opts.create(true).truncate(true);
    } else {
        // Checked before, but a file may have appeared since: never replace it without --force.
        opts.create_new(true);
    }
    let mut f = opts.open(out).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => {
            Error::Usage(format!("{}: already exists (pass --force to replace it)", out.display()))
        }
        _ => Error::io(out, e),
    })?;
    f.write_all(svg.as_bytes()).and_then(|()| f.flush()).map_err(|e| Error::io(out, e))
}

/// The kernels one op lowers to: GPU decode, GPU prefill, CPU. Mirrors `Lowering::op` and `products` in
/// src/backend/gpu/plan.rs (matrices of one layout go in one dispatch, three at most; the decode gate|up
/// product takes the next SwiGLU into its epilogue) and `run_step` in src/backend/cpu.rs: change them together.
/// `mats`: each matrix's role label and layout; `swiglu`: this op is half of the fused decode SwiGLU.
fn kernels(op: &Op, mats: &[(String, DType)], swiglu: bool) -> [String; 3] {
    let both = |s: &str| [s.to_string(), s.to_string()];
    let (gpu, cpu) = match op {
        Op::Linear { norm, add, mats: ms, .. } => {
            let cols = ms.first().map_or(0, |m| m.cols);
            // `products`: consecutive matrices of one layout share a dispatch, up to three.
            let mut groups: Vec<(DType, Vec<&str>)> = Vec::new();
            for (role, dtype) in mats {
                match groups.last_mut() {
                    Some((d, g)) if d == dtype && g.len() < 3 => g.push(role),
                    _ => groups.push((*dtype, vec![role])),
                }
            }
            // `MatvecKernel::resolve` for f32 activations: odd widths take the generic matvec.
            let matvec = |_: DType| if cols % 32 != 0 { "matvec" } else { "matvec_groups" };
            let list = |name: &dyn Fn(DType) -> &'static str| {
                let g = groups.iter().map(|(d, roles)| format!("{}({})", name(*d), roles.join("|")));
                g.collect::<Vec<_>>().join(" + ")
            };
            let mut fused = Vec::new();
            // An RMS norm folds into the product's prologue; a LayerNorm too for the decode matvec (f32
            // activations), and is a dispatch of its own before the prefill matmul.
            let layer_norm = norm.as_ref().is_some_and(|n| matches!(n.kind, omex::graph::Norm::LayerNorm { .. }));
            if norm.is_some() && !layer_norm {
                fused.push("norm in the prologue");
            }
            if ms.iter().any(|m| m.bias.is_some()) {
                fused.push("bias in the epilogue");
            }
            if *add {
                fused.push("+= in the epilogue");
            }
            let with = |k: String, extra: Option<&str>| {
                let f: Vec<&str> = fused.iter().copied().chain(extra).collect();
                if f.is_empty() {
                    k
                } else {
                    format!("{k}, {}", f.join(", "))
                }
            };
            let decode = match swiglu {
                true => with(format!("{}(gate|up)", matvec(mats[0].1)), Some("SwiGLU epilogue (the next Glu)")),
                false => with(list(&matvec), None),
            };
            let prefill = with(list(&|_| "matmul"), None);
            let (decode, prefill) = match layer_norm {
                true => (format!("{decode}, LayerNorm in the prologue"), format!("layernorm → {prefill}")),
                false => (decode, prefill),
            };
            let mut cpu = match norm {
                Some(n) => format!("{} → ", norm_kernel(n)),
                None => String::new(),
            };
            let _ = write!(cpu, "{}× matvec | matmul (q8 with int8 activations)", ms.len());
            if ms.iter().any(|m| m.bias.is_some()) {
                cpu.push_str(" → bias add");
            }
            if *add {
                cpu.push_str(" → add_assign");
            }
            ([decode, prefill], cpu)
        }
        Op::HeadNorm { norm, .. } => (both("norm (each head, in place)"), format!("{} each head", norm_kernel(norm))),
        Op::Norm { norm, .. } => (both("norm (in place)"), norm_kernel(norm).to_string()),
        Op::RopeStore { .. } => (both("rope (q → Q, k and v → KV cache)"), "rope, kv_store".to_string()),
        Op::Attention { .. } => (
            ["attention_decode partial + combine".to_string(), "attention_prefill".to_string()],
            "attention_window".to_string(),
        ),
        Op::Glu { act: Activation::Silu } => (
            [
                if swiglu { "in the gate|up matvec (SwiGLU epilogue)" } else { "elementwise silu_mul" }.to_string(),
                "elementwise silu_mul".to_string(),
            ],
            "silu_mul".to_string(),
        ),
        Op::Glu { act: Activation::Gelu } => (both("elementwise gelu_mul"), "gelu, then × up".to_string()),
        Op::Activation { act, .. } => {
            let a = act_name(*act);
            (both(&format!("elementwise {a} (in place)")), a.to_string())
        }
        Op::Add { .. } => (both("elementwise add_assign"), "add_assign".to_string()),
        Op::MoeRoute { .. } => (
            [
                "layernorm (RMS) → MoeIn → router matvec → moe route_top_k".to_string(),
                "layernorm (RMS) → MoeIn → router matmul → moe route_top_k".to_string(),
            ],
            "rmsnorm → router matvec | matmul → softmax, top-k".to_string(),
        ),
        Op::Experts { .. } => (
            [
                "every expert: gate|up matvec (SwiGLU epilogue) → down matvec → moe add_weighted".to_string(),
                "every expert over every row: gate|up matmul → glu → down matmul → moe add_weighted".to_string(),
            ],
            "per routed expert: its tokens gathered → gate, up → glu → down → weighted add_assign".to_string(),
        ),
    };
    let [decode, prefill] = gpu;
    [decode, prefill, cpu]
}

fn norm_kernel(n: &NormOp) -> &'static str {
    match n.kind {
        Norm::RmsNorm { .. } => "rmsnorm",
        Norm::LayerNorm { .. } => "layernorm",
    }
}

/// The weight tensors an op reads.
fn tensors(op: &Op) -> Vec<&str> {
    fn norm(n: &NormOp) -> Vec<&str> {
        std::iter::once(n.weight.as_str()).chain(n.bias.as_deref()).collect()
    }
    match op {
        Op::Linear { norm: n, mats, .. } => {
            let mut v = n.as_ref().map(norm).unwrap_or_default();
            for m in mats {
                v.push(&m.weight);
                v.extend(m.bias.as_deref());
            }
            v
        }
        Op::HeadNorm { norm: n, .. } | Op::Norm { norm: n, .. } => norm(n),
        Op::MoeRoute { norm: n, router, .. } => norm(n).into_iter().chain([router.weight.as_str()]).collect(),
        Op::Experts { experts, .. } => experts
            .iter()
            .flat_map(|e| [e.gate.weight.as_str(), e.up.weight.as_str(), e.down.weight.as_str()])
            .collect(),
        _ => Vec::new(),
    }
}

/// `op` with its tensor names blanked: blocks whose ops are equal this way have one shape.
fn shape(op: &Op) -> Op {
    let norm =
        |n: &NormOp| NormOp { kind: n.kind, weight: String::new(), bias: n.bias.as_ref().map(|_| String::new()) };
    match op {
        Op::Linear { input, norm: n, mats, output, add } => Op::Linear {
            input: *input,
            norm: n.as_ref().map(norm),
            mats: mats
                .iter()
                .map(|m| arch::Mat {
                    weight: String::new(),
                    bias: m.bias.as_ref().map(|_| String::new()),
                    rows: m.rows,
                    cols: m.cols,
                })
                .collect(),
            output: *output,
            add: *add,
        },
        Op::HeadNorm { part, norm: n } => Op::HeadNorm { part: *part, norm: norm(n) },
        Op::Norm { buf, norm: n } => Op::Norm { buf: *buf, norm: norm(n) },
        other => other.clone(),
    }
}

/// The short name of a block's matrix (q, k, v, o, gate, up, down), else the tensor's own name.
fn role(b: Option<&BlockWeights>, name: &str) -> String {
    let known = b.map(|b| {
        [(&b.attn_q, "q"), (&b.attn_k, "k"), (&b.attn_v, "v"), (&b.attn_output, "o")]
            .into_iter()
            .chain(b.ffn_gate.iter().map(|g| (g, "gate")))
            .chain(b.ffn_up.iter().map(|u| (u, "up")))
            .chain(b.ffn_down.iter().map(|w| (w, "down")))
            .chain(b.moe.iter().map(|m| (&m.router, "router")))
            .find(|(n, _)| n.as_str() == name)
            .map(|(_, r)| r.to_string())
    });
    known.flatten().unwrap_or_else(|| name.to_string())
}

fn buf(b: Buf) -> &'static str {
    match b {
        Buf::Hidden => "Hidden",
        Buf::Qkv => "Qkv",
        Buf::Q => "Q",
        Buf::Attn => "Attn",
        Buf::GateUp => "GateUp",
        Buf::Act => "Act",
        Buf::Out => "Out",
        Buf::MoeIn => "MoeIn",
        Buf::Route => "Route",
    }
}

/// The op's kind and buffers, e.g. "Linear norm(Hidden) → Qkv [q|k|v] +bias".
fn describe(op: &Op, p: &Program, b: Option<&BlockWeights>) -> String {
    match op {
        Op::Linear { input, norm, mats, output, add } => {
            let x = if norm.is_some() { format!("norm({})", buf(*input)) } else { buf(*input).to_string() };
            let roles: Vec<String> = mats.iter().map(|m| role(b, &m.weight)).collect();
            let bias = if mats.iter().any(|m| m.bias.is_some()) { " +bias" } else { "" };
            let to = if *add { format!("{} +=", buf(*output)) } else { buf(*output).to_string() };
            format!("Linear {x} → {to} [{}]{bias}", roles.join("|"))
        }
        Op::HeadNorm { part, .. } => {
            let part = match part {
                QkPart::Q => "q",
                QkPart::K => "k",
            };
            format!("HeadNorm each {part} head of Qkv ({} values), in place", p.heads.head_dim)
        }
        Op::RopeStore { rope } => {
            let r = &p.ropes[*rope];
            // inv_freq[i] = base^(-2i/dims), so the base is inv_freq[1]^(-dims/2).
            let base = match r.inv_freq.get(1) {
                Some(&f) if f > 0.0 => {
                    // Four significant digits: f32 frequencies carry a few units of error at a base of 1e6.
                    let base = (f as f64).powf(-(r.dims as f64) / 2.0);
                    let unit = 10f64.powi(base.log10().floor() as i32 - 3).max(1.0);
                    format!(", base {:.0}", (base / unit).round() * unit)
                }
                _ => String::new(),
            };
            format!("RopeStore Qkv → Q, k and v → KV cache (rope table {rope}: {} dims{base})", r.dims)
        }
        Op::Attention { window: Some(w) } => format!("Attention Q → Attn over the last {w} positions (sliding window)"),
        Op::Attention { window: None } => "Attention Q → Attn over the whole context (causal)".to_string(),
        Op::Glu { act } => format!("Glu {}(GateUp.gate) × GateUp.up → Act", act_name(*act)),
        Op::Activation { buf: b, act } => format!("Activation {} of {} in place", act_name(*act), buf(*b)),
        Op::Norm { buf: b, .. } => format!("Norm {} in place", buf(*b)),
        Op::Add { from, to } => format!("Add {} += {}", buf(*to), buf(*from)),
        Op::MoeRoute { router, top_k, .. } => {
            format!("MoeRoute norm(Hidden) → MoeIn, top {top_k} of {} experts → Route", router.rows)
        }
        Op::Experts { act, experts } => format!(
            "Experts Hidden += Σ route weight × down({}(gate(MoeIn)) × up(MoeIn)) over the routed of {} experts",
            act_name(*act),
            experts.len()
        ),
    }
}

fn act_name(act: Activation) -> &'static str {
    match act {
        Activation::Silu => "silu",
        Activation::Gelu => "gelu",
    }
}

/// Bytes in the picture: "4.2 MB (4,197,312 B)".
fn bytes(n: u64) -> String {
    let digits = n.to_string();
    let mut grouped = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            grouped.push(',');
        }
        grouped.push(c);
    }
    if n < 1000 {
        format!("{n} B")
    } else {
        format!("{} ({grouped} B)", human_bytes(n))
    }
}

/// The distinct layouts of `entries`, in first-seen order, with their counts: "q5_0 ×2, int8, f32 ×3".
fn dtypes<'a>(entries: impl IntoIterator<Item = &'a TensorEntry>) -> String {
    let mut seen: Vec<(DType, usize)> = Vec::new();
    for e in entries {
        match seen.iter_mut().find(|(d, _)| *d == e.dtype) {
            Some((_, n)) => *n += 1,
            None => seen.push((e.dtype, 1)),
        }
    }
    let s = seen.iter().map(|(d, n)| if *n == 1 { d.to_string() } else { format!("{d} ×{n}") });
    s.collect::<Vec<_>>().join(", ")
}

/// A box of text: its lines (the first the title) and its style class.
struct TextBox {
    class: &'static str,
    lines: Vec<String>,
    /// An op box's kind and weight bytes, as attributes of its `<g>` (for tools and tests).
    op: Option<(&'static str, u64)>,
}

const LINE_H: f64 = 15.0;
const PAD: f64 = 9.0;
/// About the width of one character of the 11px labels.
const CHAR_W: f64 = 6.3;

impl TextBox {
    fn height(&self) -> f64 {
        2.0 * PAD + LINE_H * self.lines.len() as f64 + 2.0
    }
}

/// Splits `items` joined by `sep` into lines of at most `width` characters, the first prefixed.
fn wrap(prefix: &str, items: &[String], sep: &str, width: usize) -> Vec<String> {
    let mut lines = vec![prefix.to_string()];
    for (i, item) in items.iter().enumerate() {
        let piece = if i + 1 < items.len() { format!("{item}{sep}") } else { item.clone() };
        let last = lines.last_mut().expect("one line");
        if last.chars().count() + piece.chars().count() > width && last.trim().len() > prefix.trim().len() {
            lines.push(format!("    {piece}"));
        } else {
            last.push_str(&piece);
        }
    }
    lines
}

/// Splits one long line at spaces into lines of at most `width` characters.
fn wrap_words(line: &str, width: usize) -> Vec<String> {
    let words: Vec<String> = line.split(' ').map(str::to_string).collect();
    let (first, rest) = words.split_first().map_or((String::new(), &[][..]), |(f, r)| (f.clone(), r));
    wrap(&first, rest.iter().map(|w| format!(" {w}")).collect::<Vec<_>>().as_slice(), "", width)
}

/// A run of consecutive blocks of one shape.
struct Group {
    first: usize,
    last: usize,
}

/// Everything the picture shows, gathered from the model before drawing.
struct Drawing {
    title: String,
    subtitle: String,
    overview: Vec<TextBox>,
    /// Which overview box is the group of the expanded block.
    selected: usize,
    header: String,
    ops: Vec<TextBox>,
    groups: Vec<Group>,
    total: u64,
}

const WIDTH: f64 = 1240.0;
const LEFT_X: f64 = 20.0;
const LEFT_W: f64 = 390.0;
const RIGHT_X: f64 = 450.0;
const RIGHT_W: f64 = WIDTH - RIGHT_X - 20.0;
const GAP: f64 = 22.0;
const TOP: f64 = 96.0;

impl Drawing {
    fn new(dir: &ModelDir, t: &Transformer, p: &Program, expand: usize) -> Result<Drawing> {
        let index_path = dir.root.join(INDEX_FILE);
        let entry = |name: &str| -> Result<&TensorEntry> {
            dir.index.get(name).ok_or_else(|| {
                Error::invalid(&index_path, format!("the graph names tensor {name:?}, which the index does not list"))
            })
        };
        let read = |names: &[&str]| -> Result<(u64, Vec<&TensorEntry>)> {
            let es = names.iter().map(|n| entry(n)).collect::<Result<Vec<_>>>()?;
            Ok((es.iter().map(|e| e.payload_bytes()).sum(), es))
        };
        let total: u64 = dir.index.tensors.iter().map(TensorEntry::payload_bytes).sum();
        let left_chars = ((LEFT_W - 2.0 * PAD) / CHAR_W) as usize;
        let right_chars = ((RIGHT_W - 2.0 * PAD) / CHAR_W) as usize;

        let h = p.heads;
        let title = format!("{} · {} · {} of weights", p.architecture, dir.metadata.model_name, bytes(total));
        let mut groups: Vec<Group> = Vec::new();
        let shapes: Vec<Vec<Op>> = p.blocks.iter().map(|b| b.ops.iter().map(shape).collect()).collect();
        for (l, s) in shapes.iter().enumerate() {
            match groups.last_mut() {
                Some(g) if shapes[g.first] == *s => g.last = l,
                _ => groups.push(Group { first: l, last: l }),
            }
        }
        let subtitle = format!(
            "vocab {} · hidden {} · ffn {} · {} heads ({} kv) × {} · {} in {} of one shape · converted with --quant {}",
            p.vocab,
            p.hidden,
            p.ffn,
            h.n_heads,
            h.n_kv,
            h.head_dim,
            super::count(p.blocks.len(), "block"),
            super::count(groups.len(), "run"),
            dir.index.target,
        );

        let mut overview = Vec::new();
        let (emb_bytes, emb) = read(&[&p.embedding])?;
        let shape_of = |e: &TensorEntry| e.shape.iter().map(u32::to_string).collect::<Vec<_>>().join(" × ");
        let mut lines = vec![
            "Embedding".to_string(),
            format!("{} [{}] · {}", p.embedding, shape_of(emb[0]), emb[0].dtype),
            format!("reads one row a token of {}", bytes(emb_bytes)),
        ];
        if let Some(s) = p.embed_scale {
            lines.push(format!("rows × {s:.2} (√hidden)"));
        }
        if let Some(pos) = &p.position_embedding {
            let (pos_bytes, es) = read(&[pos])?;
            lines.push(format!("+ {pos} [{}] · {} · {}", shape_of(es[0]), es[0].dtype, bytes(pos_bytes)));
            lines.push("  (learned positions: GPU add_positions · CPU add_assign)".to_string());
        }
        lines.push("GPU: embed (rows gathered on the host when the".to_string());
        lines.push("    table is larger than one binding) · CPU: dequant_row".to_string());
        overview.push(TextBox { class: "io", lines, op: None });

        let mut selected = 0;
        for g in &groups {
            let n = g.last - g.first + 1;
            if (g.first..=g.last).contains(&expand) {
                selected = overview.len();
            }
            let blocks = if n == 1 { format!("block {}", g.first) } else { format!("blocks {}–{}", g.first, g.last) };
            let ops = &p.blocks[g.first].ops;
            let mut traits = vec![super::count(ops.len(), "op")];
            for op in ops {
                match op {
                    Op::Attention { window: Some(w) } => traits.push(format!("window {w}")),
                    Op::Attention { window: None } => traits.push("full attention".to_string()),
                    Op::RopeStore { rope } => traits.push(format!("rope table {rope}")),
                    _ => {}
                }
            }
            let mut names = Vec::new();
            for b in &p.blocks[g.first..=g.last] {
                names.extend(b.ops.iter().flat_map(tensors));
            }
            let (group_bytes, es) = read(&names)?;
            let mut lines = vec![format!("{blocks}  × {n}"), traits.join(" · ")];
            lines.extend(wrap("", &[bytes(group_bytes), dtypes(es)], " · ", left_chars));
            overview.push(TextBox { class: if n > 1 { "group" } else { "block" }, lines, op: None });
        }

        let (norm_bytes, norm_es) = read(&[&p.final_norm.weight])?;
        let layer_norm = matches!(p.final_norm.kind, omex::graph::Norm::LayerNorm { .. });
        let gpu_norm = if layer_norm { "layernorm before the head" } else { "in the head matvec's prologue" };
        overview.push(TextBox {
            class: "norm",
            lines: vec![
                "Final norm".to_string(),
                format!("{} · {} · {}", p.final_norm.weight, norm_es[0].dtype, bytes(norm_bytes)),
                format!("GPU: {gpu_norm} · CPU: {}", norm_kernel(&p.final_norm)),
            ],
            op: None,
        });
        let (head_bytes, head) = read(&[&p.head])?;
        let mut lines = vec!["Head".to_string(), format!("{} [{}] · {}", p.head, shape_of(head[0]), head[0].dtype)];
        if p.head == p.embedding {
            lines.push(format!("tied: the embedding, {} read again", bytes(head_bytes)));
        } else {
            lines.push(format!("reads {}", bytes(head_bytes)));
        }
        let prologue = if layer_norm { "" } else { "final norm in the prologue; " };
        lines.push(format!("GPU: matvec ({prologue}split in"));
        lines.push("    pieces larger than one binding) · CPU: matvec | matmul".to_string());
        overview.push(TextBox { class: "io", lines, op: None });

        let block = &p.blocks[expand];
        let bw = t.blocks.get(expand);
        let mut ops = Vec::new();
        let mut block_bytes = 0;
        let mut fused_prev = false;
        for (i, op) in block.ops.iter().enumerate() {
            let names = tensors(op);
            let (op_bytes, es) = read(&names)?;
            block_bytes += op_bytes;
            let mut mats = Vec::new();
            if let Op::Linear { mats: ms, .. } = op {
                for m in ms {
                    mats.push((role(bw, &m.weight), entry(&m.weight)?.dtype));
                }
            }
            // `Plan::build`: a decode gate|up product followed by Glu{Silu} takes it into its epilogue when both
            // matrices share a layout (and a binding) and have no bias.
            let fuses = matches!(op, Op::Linear { output: Buf::GateUp, mats: ms, .. }
                    if ms.len() == 2 && ms.iter().all(|m| m.bias.is_none()) && mats[0].1 == mats[1].1)
                && matches!(block.ops.get(i + 1), Some(Op::Glu { act: Activation::Silu }));
            let swiglu = fuses || (fused_prev && matches!(op, Op::Glu { .. }));
            fused_prev = fuses;
            let [decode, prefill, cpu] = kernels(op, &mats, swiglu);
            let mut lines = vec![format!("{}. {}", i + 1, describe(op, p, bw))];
            if !names.is_empty() {
                let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
                lines.extend(wrap("tensors: ", &names, ", ", right_chars));
                lines.push(format!("reads {} · {}", bytes(op_bytes), dtypes(es)));
            } else {
                lines.push("reads no weights".to_string());
            }
            lines.extend(wrap_words(&format!("GPU decode: {decode} · prefill: {prefill}"), right_chars));
            lines.extend(wrap_words(&format!("CPU: {cpu}"), right_chars));
            let (class, kind) = match op {
                Op::Linear { .. } => ("linear", "Linear"),
                Op::HeadNorm { .. } => ("norm", "HeadNorm"),
                Op::Norm { .. } => ("norm", "Norm"),
                Op::RopeStore { .. } => ("attn", "RopeStore"),
                Op::Attention { .. } => ("attn", "Attention"),
                Op::Glu { .. } => ("glu", "Glu"),
                Op::Activation { .. } => ("glu", "Activation"),
                Op::Add { .. } => ("add", "Add"),
                Op::MoeRoute { .. } => ("linear", "MoeRoute"),
                Op::Experts { .. } => ("glu", "Experts"),
            };
            ops.push(TextBox { class, lines, op: Some((kind, op_bytes)) });
        }
        let header = format!(
            "Block {expand} expanded · weights/{} · {} · reads {}",
            block.file,
            super::count(block.ops.len(), "op"),
            bytes(block_bytes)
        );
        Ok(Drawing { title, subtitle, overview, selected, header, ops, groups, total })
    }

    fn render(&self) -> String {
        let left_h: f64 = self.overview.iter().map(|b| b.height() + GAP).sum();
        let right_h: f64 = 30.0 + self.ops.iter().map(|b| b.height() + GAP).sum::<f64>();
        let height = TOP + left_h.max(right_h) + 44.0;
        let mut s = String::new();
        let _ = write!(
            s,
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{height:.0}\" \
             viewBox=\"0 0 {WIDTH} {height:.0}\">\n<style>{STYLE}</style>\n\
             <defs><marker id=\"arrow\" viewBox=\"0 0 10 10\" refX=\"9\" refY=\"5\" markerWidth=\"7\" \
             markerHeight=\"7\" orient=\"auto\"><path d=\"M0,0 L10,5 L0,10 z\" fill=\"#555\"/></marker></defs>\n\
             <rect x=\"0\" y=\"0\" width=\"{WIDTH}\" height=\"{height:.0}\" fill=\"#fff\"/>\n"
        );
        text(&mut s, "title", LEFT_X, 32.0, &self.title);
        text(&mut s, "sub", LEFT_X, 54.0, &self.subtitle);
        text(
            &mut s,
            "sub",
            LEFT_X,
            72.0,
            "Model order top to bottom; runs of blocks with equal op lists are collapsed.",
        );

        // The overview column.
        let mut y = TOP;
        let mut selected_y = TOP;
        let mut prev_bottom: Option<f64> = None;
        for (i, b) in self.overview.iter().enumerate() {
            if let Some(pb) = prev_bottom {
                arrow(&mut s, LEFT_X + LEFT_W / 2.0, pb, y);
            }
            let class = if i == self.selected { format!("{} sel", b.class) } else { b.class.to_string() };
            draw_box(&mut s, &class, LEFT_X, y, LEFT_W, b);
            if i == self.selected {
                selected_y = y + b.height() / 2.0;
            }
            prev_bottom = Some(y + b.height());
            y += b.height() + GAP;
        }

        // The expanded block, joined to its group.
        let header_y = TOP + 14.0;
        let _ = writeln!(
            s,
            "<path class=\"link\" d=\"M{:.1},{selected_y:.1} C{:.1},{selected_y:.1} {:.1},{:.1} {:.1},{:.1}\"/>",
            LEFT_X + LEFT_W,
            (LEFT_X + LEFT_W + RIGHT_X) / 2.0,
            (LEFT_X + LEFT_W + RIGHT_X) / 2.0,
            header_y - 4.0,
            RIGHT_X - 4.0,
            header_y - 4.0
        );
        text(&mut s, "head", RIGHT_X, header_y, &self.header);
        let mut y = TOP + 30.0;
        let mut prev_bottom: Option<f64> = None;
        for b in &self.ops {
            if let Some(pb) = prev_bottom {
                arrow(&mut s, RIGHT_X + 40.0, pb, y);
            }
            draw_box(&mut s, b.class, RIGHT_X, y, RIGHT_W, b);
            prev_bottom = Some(y + b.height());
            y += b.height() + GAP;
        }
        let notes = [
            "Kernels: as src/backend/gpu/plan.rs (Lowering::op) and src/backend/cpu.rs (run_step) lower the ops; the \
             matvec variants those for f32 activations; matmul_coop replaces matmul on adapters with cooperative matrices.",
            "Bytes: the sections of each tensor in weights/quantization.json (what a GPU binds).",
        ];
        for (i, n) in notes.iter().enumerate() {
            text(&mut s, "note", LEFT_X, height - 30.0 + 14.0 * i as f64, n);
        }
        s.push_str("</svg>\n");
        s
    }
}

const STYLE: &str = "text{font-family:'DejaVu Sans',Verdana,Arial,sans-serif;font-size:11px;fill:#222}\
.title{font-size:17px;font-weight:bold}.sub{fill:#555;font-size:12px}.head{font-size:13px;font-weight:bold}\
.note{fill:#777;font-size:10px}.t{font-weight:bold;font-size:12px}\
rect.box{stroke:#666;stroke-width:1}rect.io{fill:#e8eef7}rect.group{fill:#fdf1dc}rect.block{fill:#fbf6ea}\
rect.sel{stroke:#d0481c;stroke-width:2.5}rect.linear{fill:#dde8f6}rect.norm{fill:#e2f2e0}rect.attn{fill:#fde7d6}\
rect.glu{fill:#ece2f4}rect.add{fill:#eeeeee}\
line.arrow{stroke:#555;stroke-width:1.3}path.link{fill:none;stroke:#d0481c;stroke-width:1.5;stroke-dasharray:5 4}";

/// Text safe inside XML content and attribute values (control characters XML forbids become '?').
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => out.push('?'),
            c => out.push(c),
        }
    }
    out
}

/// `<text>` at `(x, y)`; `content` is escaped here.
fn text(s: &mut String, class: &str, x: f64, y: f64, content: &str) {
    let _ = writeln!(s, "<text class=\"{class}\" x=\"{x:.1}\" y=\"{y:.1}\">{}</text>", esc(content));
}

fn draw_box(s: &mut String, class: &str, x: f64, y: f64, w: f64, b: &TextBox) {
    match b.op {
        Some((kind, bytes)) => {
            let _ = writeln!(s, "<g class=\"op\" data-kind=\"{kind}\" data-bytes=\"{bytes}\">");
        }
        None => s.push_str("<g>\n"),
    }
    let _ = writeln!(
        s,
        "<rect class=\"box {class}\" x=\"{x:.1}\" y=\"{y:.1}\" width=\"{w:.1}\" height=\"{:.1}\" rx=\"6\"/>",
        b.height()
    );
    for (i, line) in b.lines.iter().enumerate() {
        let class = if i == 0 { "t" } else { "l" };
        // SVG collapses spaces: a wrapped line's indent becomes an offset.
        let indent = if line.starts_with("  ") { 18.0 } else { 0.0 };
        text(s, class, x + PAD + indent, y + PAD + 11.0 + LINE_H * i as f64, line.trim_start());
    }
    s.push_str("</g>\n");
}

fn arrow(s: &mut String, x: f64, from: f64, to: f64) {
    let _ = writeln!(
        s,
        "<line class=\"arrow\" x1=\"{x:.1}\" y1=\"{from:.1}\" x2=\"{x:.1}\" y2=\"{:.1}\" marker-end=\"url(#arrow)\"/>",
        to - 1.0
    );
}
