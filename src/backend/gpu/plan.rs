//! The op program lowered into static dispatch lists: the weights as uploaded files, the buffers every forward
//! reuses, and per list the bound dispatches in order. Only the step buffer (tokens and position) and the
//! token ids change between forwards. Fusion is decided here: a norm before a product goes into the product's
//! prologue, a residual add into its epilogue, and in decode a SwiGLU into the gate|up matvec.

use super::adapters::LoraSet;
use super::buffers::{GpuBuffer, Purpose};
use super::context::{Dispatch, GpuContext, Region};
use super::ops::{
    attention, kv, misc, moe, KvCache, Linear, Mat, MatvecKernel, Norm, Output, MATMUL_TOKENS, MATMUL_TOKENS_SHORT,
};
use super::streaming::{self, Copy, RowLayout, Slots, Unit, UnitKind};
use super::weights::{GpuFile, GpuMatrix};
use crate::arch::{Buf, NormOp, Op, Program, QkPart};
use crate::backend::{Activations, KvType, WeightRef};
use crate::error::{Error, Result};
use crate::format::{DType, ModelDir, SectionKind};
use crate::graph::{Activation, Norm as NormKind, RopeStyle};
use crate::sampling::SamplerOptions;
use std::collections::HashMap;
use std::sync::Arc;

/// The weights of one block's ops, by tensor name.
pub(super) struct Layer {
    weights: HashMap<String, GpuMatrix>,
    /// The streamed piece that uploads this block's file into its slot (`None`: resident).
    piece: Option<usize>,
}

impl Layer {
    fn get(&self, name: &str) -> &GpuMatrix {
        &self.weights[name]
    }
}

/// The output head: the whole matrix, or pieces of rows `(matrix, first row, piece)`.
pub(super) type HeadParts = Vec<(GpuMatrix, u32, Option<usize>)>;

pub(super) struct Model {
    /// `None`: the embedding stays on the host and the engine gathers the rows.
    pub embed: Option<GpuMatrix>,
    /// Learned position embeddings `[positions, hidden]` in f32 (gpt2), a buffer of their own.
    pub positions: Option<GpuBuffer>,
    pub output_norm: GpuMatrix,
    pub output_norm_bias: Option<GpuMatrix>,
    pub head: HeadParts,
    layers: Vec<Layer>,
    /// The upload slots and the pieces that stream through them (`None`: everything resident).
    pub slots: Option<Slots>,
}

/// Which units stay resident, when streaming: the planner's answer.
pub(super) struct Residency<'a> {
    pub units: &'a [Unit],
    pub resident: &'a [bool],
    pub slots: usize,
    pub slot_bytes: u64,
}

impl Model {
    /// Uploads every weight file the graph reads, once, as it is on disk; with `residency`, only the resident
    /// units, and the rest become pieces streamed through the slots.
    pub fn upload(ctx: &GpuContext, dir: &ModelDir, p: &Program, residency: Option<Residency>) -> Result<Model> {
        // Files that are not uploaded: their tensors are found in a slot (or on the host).
        let mut streamed: HashMap<String, Option<Arc<GpuFile>>> = HashMap::new();
        let mut slots = None;
        let mut block_piece = vec![None; p.blocks.len()];
        if let Some(r) = &residency {
            let mut s = Slots::new(ctx, r.slots, r.slot_bytes)?;
            for (unit, &resident) in r.units.iter().zip(r.resident) {
                match (&unit.kind, resident) {
                    (_, true) => {}
                    (UnitKind::Embedding { file, .. } | UnitKind::Head { file }, false) => {
                        streamed.insert(file.clone(), None);
                    }
                    (UnitKind::Block { index, file }, false) => {
                        // A block of experts goes up in two steps: the rest first, then the routed experts.
                        let (experts, top_k) = expert_sections(dir, &p.blocks[*index].ops)?;
                        let (copies, experts) = streaming::block_copies(file, &dir.blob(file)?, &experts)?;
                        let (k, slot) = s.push(file.clone(), copies);
                        (s.pieces[k].experts, s.pieces[k].top_k) = (experts, top_k);
                        block_piece[*index] = Some(k);
                        streamed.insert(file.clone(), Some(slot));
                    }
                }
            }
            slots = Some(s);
        }
        // An embedding or head larger than one storage binding (lavapipe and browsers allow 128 MiB; a 151,936
        // x 896 int8 head is 145 MB) is not uploaded whole: the embedding stays on the host, the head goes up
        // in row pieces that each fit a binding.
        let max_binding = ctx.gpu.limits.max_storage_buffer_binding_size;
        let mut split_head = false;
        // (A tied head is the embedding: both are looked at, the file left out once.)
        let streams: Vec<String> = streamed.keys().cloned().collect();
        for (name, is_head) in [(&p.embedding, false), (&p.head, true)] {
            let view = dir.tensor(name)?;
            if streams.contains(&view.entry.file) || span_bytes(&view.entry) <= max_binding {
                continue;
            }
            log::info!(
                "{name}: {} bytes exceed the largest storage binding ({max_binding} bytes): {}",
                span_bytes(&view.entry),
                if is_head { "uploaded in row pieces" } else { "rows gathered on the host" }
            );
            split_head |= is_head;
            streamed.insert(view.entry.file.clone(), None);
        }
        let mut files: HashMap<String, Arc<GpuFile>> = HashMap::new();
        let mut get = |name: &str, shape: &[u32]| -> Result<Option<GpuMatrix>> {
            let w = WeightRef::load(dir, name, shape)?;
            let entry = &w.view().entry;
            let file = match (files.get(&entry.file), streamed.get(&entry.file)) {
                (_, Some(None)) => return Ok(None),
                (_, Some(Some(slot))) => slot.clone(),
                (Some(f), None) => f.clone(),
                (None, None) => {
                    let f = Arc::new(GpuFile::upload(ctx, &entry.file, w.view().blob.bytes())?);
                    files.insert(entry.file.clone(), f.clone());
                    f
                }
            };
            GpuMatrix::from_entry(file, entry).map(Some)
        };
        let mut must = |name: &str, shape: &[u32]| -> Result<GpuMatrix> {
            get(name, shape)?.ok_or_else(|| Error::Unsupported(format!("tensor {name} cannot stream")))
        };
        let f32_only = |m: GpuMatrix| -> Result<GpuMatrix> {
            if m.dtype != DType::F32 {
                return Err(Error::Unsupported(format!(
                    "tensor {}: the GPU engine needs norm weights and biases in f32",
                    m.name
                )));
            }
            Ok(m)
        };
        let d = p.hidden;
        let mut layers = Vec::with_capacity(p.blocks.len());
        for (block, piece) in p.blocks.iter().zip(block_piece) {
            let mut weights = HashMap::new();
            for (name, shape, is_f32) in tensors(p, &block.ops) {
                let m = must(&name, &shape)?;
                weights.insert(name, if is_f32 { f32_only(m)? } else { m });
            }
            layers.push(Layer { weights, piece });
        }
        let embed = get(&p.embedding, &[p.vocab, d])?;
        let head = match get(&p.head, &[p.vocab, d])? {
            Some(m) => vec![(m, 0, None)],
            None if split_head => resident_head_pieces(ctx, dir, &p.head, d, max_binding)?,
            None => {
                let s = slots.as_mut().expect("only a streamed file is left out");
                head_pieces(dir, &p.head, d, s)?
            }
        };
        // The output norm is read by every head piece: when its file streams (or stays on the host), it gets
        // a buffer of its own.
        let mut own_buffer = |name: &str| -> Result<GpuMatrix> {
            let m = match get(name, &[d])? {
                Some(m) => m,
                None => GpuMatrix::upload(ctx, name, &WeightRef::load(dir, name, &[d])?.matrix(), 0)?,
            };
            f32_only(m)
        };
        let output_norm = own_buffer(&p.final_norm.weight)?;
        let output_norm_bias = p.final_norm.bias.as_deref().map(&mut own_buffer).transpose()?;
        // The position table is small (positions x hidden): read into f32 on the host and uploaded apart, so it
        // is on the device whichever way the embedding's file goes.
        let positions = match &p.position_embedding {
            Some(name) => {
                let rows = dir.tensor(name)?.entry.shape.first().copied().unwrap_or(0);
                let table = WeightRef::load(dir, name, &[rows, d])?.to_f32();
                let usage = wgpu::BufferUsages::STORAGE;
                Some(ctx.pool.init("position embeddings", bytemuck::cast_slice(&table), usage, Purpose::Weights)?)
            }
            None => None,
        };
        Ok(Model { embed, positions, output_norm, output_norm_bias, head, layers, slots })
    }
}

/// Every tensor `ops` read: (name, shape, whether the GPU engine needs it in f32: norms and biases).
fn tensors(p: &Program, ops: &[Op]) -> Vec<(String, Vec<u32>, bool)> {
    let mut out = Vec::new();
    let norm = |n: &NormOp, width: u32, out: &mut Vec<(String, Vec<u32>, bool)>| {
        out.push((n.weight.clone(), vec![width], true));
        out.extend(n.bias.iter().map(|b| (b.clone(), vec![width], true)));
    };
    for op in ops {
        match op {
            Op::Linear { input, norm: n, mats, .. } => {
                if let Some(n) = n {
                    norm(n, p.width(*input), &mut out);
                }
                for m in mats {
                    out.push((m.weight.clone(), vec![m.rows, m.cols], false));
                    out.extend(m.bias.iter().map(|b| (b.clone(), vec![m.rows], true)));
                }
            }
            Op::HeadNorm { norm: n, .. } => norm(n, p.heads.head_dim, &mut out),
            Op::Norm { buf, norm: n } => norm(n, p.width(*buf), &mut out),
            Op::RopeStore { .. } | Op::Attention { .. } | Op::Glu { .. } | Op::Activation { .. } | Op::Add { .. } => {}
            Op::MoeRoute { norm: n, router, .. } => {
                norm(n, p.hidden, &mut out);
                out.push((router.weight.clone(), vec![router.rows, router.cols], false));
            }
            Op::Experts { experts, .. } => {
                for m in experts.iter().flat_map(|x| [&x.gate, &x.up, &x.down]) {
                    out.push((m.weight.clone(), vec![m.rows, m.cols], false));
                }
            }
        }
    }
    out
}

/// Each expert's sections in its block's file ((offset, bytes) of every section of its gate, up and down
/// matrices) and the routing's top k, for a block with experts; nothing for any other block.
fn expert_sections(dir: &ModelDir, ops: &[Op]) -> Result<(Vec<streaming::Spans>, usize)> {
    let mut out = (Vec::new(), 0);
    for op in ops {
        match op {
            Op::MoeRoute { top_k, .. } => out.1 = *top_k as usize,
            Op::Experts { experts, .. } => {
                for ex in experts {
                    let mut sections = Vec::new();
                    for m in [&ex.gate, &ex.up, &ex.down] {
                        sections.extend(dir.tensor(&m.weight)?.entry.sections.iter().map(|s| (s.offset, s.bytes)));
                    }
                    out.0.push(sections);
                }
            }
            _ => {}
        }
    }
    Ok(out)
}

/// Bytes from the first of a tensor's sections to the end of the last: what one binding of it covers.
fn span_bytes(e: &crate::format::TensorEntry) -> u64 {
    let secs = [SectionKind::Data, SectionKind::Scales, SectionKind::Mins].map(|k| e.section(k));
    let lo = secs.iter().flatten().map(|s| s.offset).min().unwrap_or(0);
    let hi = secs.iter().flatten().map(|s| s.offset + s.bytes).max().unwrap_or(0);
    hi - lo
}

/// A piece of rows `r0..r0 + n` of a matrix, its sections packed one after another (each 256-aligned): the
/// copies from the file that fill it and the matrix over the piece's buffer.
struct RowPiece {
    r0: u32,
    copies: Vec<Copy>,
    bytes: u64,
    label: String,
}

/// `name` cut into pieces of at most `piece_bytes` bytes each, with its row layout and dtype.
fn row_pieces(dir: &ModelDir, name: &str, piece_bytes: u64) -> Result<(Vec<RowPiece>, RowLayout, DType)> {
    let view = dir.tensor(name)?;
    let entry = &view.entry;
    let layout = RowLayout::of(entry)?;
    let per_piece = layout.rows_per_slot(piece_bytes);
    if per_piece == 0 {
        return Err(Error::Unsupported(format!("tensor {name}: one row does not fit {piece_bytes} bytes")));
    }
    let mut pieces = Vec::new();
    let mut r0 = 0;
    while r0 < layout.rows {
        let n = per_piece.min(layout.rows - r0);
        let (mut copies, mut at) = (Vec::new(), 0u64);
        for &(_, offset, per_row) in &layout.sections {
            let (start, len) = (offset + per_row * r0 as u64, per_row * n as u64);
            copies.push(Copy { blob: view.blob.clone(), src: start as usize..(start + len) as usize, dst: at });
            at += len.div_ceil(256) * 256;
        }
        pieces.push(RowPiece { r0, copies, bytes: at, label: format!("{} rows {r0}..{}", entry.file, r0 + n) });
        r0 += n;
    }
    Ok((pieces, layout, entry.dtype))
}

impl RowPiece {
    /// The piece as a matrix of `file` (a slot, or a buffer of its own).
    fn matrix(&self, name: &str, layout: &RowLayout, dtype: DType, cols: u32, file: Arc<GpuFile>) -> GpuMatrix {
        let n = (self.copies[0].src.len() as u64 / layout.sections[0].2) as u32;
        let placed: HashMap<SectionKind, (u64, u64)> = layout
            .sections
            .iter()
            .zip(&self.copies)
            .map(|(&(kind, _, _), c)| (kind, (c.dst, c.src.len() as u64)))
            .collect();
        GpuMatrix {
            name: format!("{name} rows {}..{}", self.r0, self.r0 + n),
            file,
            dtype,
            rows: n,
            cols,
            data: placed[&SectionKind::Data],
            scales: placed.get(&SectionKind::Scales).copied(),
            mins: placed.get(&SectionKind::Mins).copied(),
        }
    }
}

/// The output head as pieces of rows, each filling a slot.
fn head_pieces(dir: &ModelDir, name: &str, cols: u32, slots: &mut Slots) -> Result<HeadParts> {
    let (pieces, layout, dtype) = row_pieces(dir, name, slots.bytes)?;
    let mut parts = Vec::new();
    for p in pieces {
        let (k, slot) = slots.push(p.label.clone(), p.copies.clone());
        parts.push((p.matrix(name, &layout, dtype, cols, slot), p.r0, Some(k)));
    }
    Ok(parts)
}

/// The output head as resident pieces of rows, each a buffer of its own that fits one binding.
fn resident_head_pieces(ctx: &GpuContext, dir: &ModelDir, name: &str, cols: u32, max: u64) -> Result<HeadParts> {
    let (pieces, layout, dtype) = row_pieces(dir, name, max)?;
    let mut parts = Vec::new();
    for p in pieces {
        let mut bytes = vec![0u8; p.bytes as usize];
        for c in &p.copies {
            bytes[c.dst as usize..c.dst as usize + c.src.len()].copy_from_slice(&c.blob.bytes()[c.src.clone()]);
        }
        let file = Arc::new(GpuFile::upload(ctx, &p.label, &bytes)?);
        parts.push((p.matrix(name, &layout, dtype, cols, file), p.r0, None));
    }
    Ok(parts)
}

/// The buffers of a forward chunk of up to `max_batch` tokens.
pub(super) struct Buffers {
    /// `[n, pos, k, paged]`: tokens in the chunk, position of the first, decode steps taken (see sample.wgsl),
    /// and whether `seqmap` places the rows (see shaders/pages.wgsl).
    pub step: GpuBuffer,
    /// With a paged step: each token row's position and block table, then the tables.
    pub seqmap: GpuBuffer,
    pub ids: GpuBuffer,
    pub tokens: GpuBuffer,
    /// The hidden state (the program's `Hidden`).
    pub x: GpuBuffer,
    /// The program's other buffers.
    scratch: HashMap<Buf, GpuBuffer>,
    /// LayerNorm's output before a product (`[n, hidden]`), when the program has LayerNorms: unlike an RMS
    /// norm, it does not fold into the product's prologue.
    normed: Option<GpuBuffer>,
    pub logits: GpuBuffer,
    part: GpuBuffer,
    /// One table per rope of the program.
    cos_sin: Vec<GpuBuffer>,
    /// Each block's K and V caches, of `kv_type` elements.
    kv: Vec<(GpuBuffer, GpuBuffer)>,
    kv_type: KvType,
}

/// Tokens a multi-step decode records into one submission at most.
pub(super) const MAX_STEPS: u32 = 64;

impl Buffers {
    /// Words of the seqmap buffer: a position and a table offset per row, and a whole table per sequence.
    pub fn seqmap_words(s: &Sizes) -> u64 {
        2 * s.max_batch as u64 + s.max_seqs as u64 * s.ctx_len.div_ceil(crate::backend::KV_BLOCK_TOKENS) as u64
    }

    /// The bytes [`Buffers::new`] allocates, without allocating: (KV cache, everything else).
    pub fn bytes(p: &Program, s: &Sizes) -> (u64, u64) {
        let w = |bytes: u64| bytes.div_ceil(16).max(1) * 16;
        let b = s.max_batch as u64;
        let kv = 2 * p.blocks.len() as u64 * w(s.kv_rows as u64 * kv::row_bytes(s.kv, p.heads.kv_dim()));
        let ropes = p.ropes.iter().map(|r| w(8 * s.ctx_len as u64 * r.inv_freq.len() as u64));
        let activations = [16, 4 * b, 4 * MAX_STEPS as u64, 4 * s.logit_rows as u64 * p.vocab as u64]
            .into_iter()
            .chain([4 * Self::seqmap_words(s)])
            .chain(p.buffers().into_iter().map(|buf| 4 * b * p.width(buf) as u64))
            .chain(has_layernorm(p).then_some(4 * b * p.hidden as u64))
            .chain([attention::partials_bytes(p.heads, s.splits, s.max_seqs)])
            .map(w)
            .chain(ropes)
            .sum();
        (kv, activations)
    }

    pub fn new(ctx: &GpuContext, p: &Program, s: &Sizes) -> Result<Buffers> {
        let act = |label: &str, values: u64| ctx.pool.storage(label, 4 * values, Purpose::Activations);
        let (ctx_len, b) = (s.ctx_len, s.max_batch as u64);
        let kv = (0..p.blocks.len())
            .map(|l| {
                let bytes = s.kv_rows as u64 * kv::row_bytes(s.kv, p.heads.kv_dim());
                Ok((
                    ctx.pool.storage(&format!("k cache {l}"), bytes, Purpose::KvCache)?,
                    ctx.pool.storage(&format!("v cache {l}"), bytes, Purpose::KvCache)?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        let cos_sin = p
            .ropes
            .iter()
            .map(|r| {
                // A table of no rotated dimensions (gpt2) is never read, but a binding cannot be empty.
                let mut table = misc::cos_sin_table(&r.inv_freq, ctx_len);
                if table.is_empty() {
                    table.push([0.0; 2]);
                }
                ctx.pool.init(
                    "rope cos/sin",
                    bytemuck::cast_slice(&table),
                    wgpu::BufferUsages::STORAGE,
                    Purpose::Params,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let mut scratch = HashMap::new();
        for buf in p.buffers().into_iter().filter(|&buf| buf != Buf::Hidden) {
            scratch.insert(buf, act(&format!("{buf:?}"), b * p.width(buf) as u64)?);
        }
        Ok(Buffers {
            step: ctx.pool.storage("step", 16, Purpose::Activations)?,
            seqmap: act("seqmap", Self::seqmap_words(s))?,
            ids: ctx.pool.storage("ids", 4 * b, Purpose::Activations)?,
            tokens: ctx.pool.storage("tokens", 4 * MAX_STEPS as u64, Purpose::Activations)?,
            x: act("x", b * p.hidden as u64)?,
            scratch,
            normed: if has_layernorm(p) { Some(act("layernorm out", b * p.hidden as u64)?) } else { None },
            logits: act("logits", s.logit_rows as u64 * p.vocab as u64)?,
            part: attention::partials(ctx, p.heads, s.splits, s.max_seqs)?,
            cos_sin,
            kv,
            kv_type: s.kv,
        })
    }

    pub(super) fn get(&self, buf: Buf) -> &GpuBuffer {
        match buf {
            Buf::Hidden => &self.x,
            other => &self.scratch[&other],
        }
    }
}

/// Whether a LayerNorm of the program needs [`Buffers`]'s `normed`.
fn has_layernorm(p: &Program) -> bool {
    let layer = |n: &NormOp| matches!(n.kind, NormKind::LayerNorm { .. });
    layer(&p.final_norm)
        || p.blocks.iter().flat_map(|b| &b.ops).any(|op| matches!(op, Op::Linear { norm: Some(n), .. } if layer(n)))
}

/// A norm before a product: folded into its prologue (RMS), or a LayerNorm: a dispatch of its own into
/// `normed` first, or folded into a decode matvec's prologue too where its weight and bias share a file (the
/// fused form).
enum Prologue<'a> {
    Fused(Option<Norm<'a>>),
    LayerNorm(misc::LayerNormWeights<'a>, Option<Norm<'a>>),
}

fn prologue<'a>(n: Option<&NormOp>, weight: impl Fn(&str) -> &'a GpuMatrix) -> Prologue<'a> {
    match n.map(|n| (n, n.kind)) {
        None => Prologue::Fused(None),
        Some((n, NormKind::RmsNorm { eps })) => Prologue::Fused(Some(norm_of(weight(&n.weight), eps))),
        Some((n, NormKind::LayerNorm { eps })) => {
            let at = |m: &'a GpuMatrix| (Region::covering(&m.file.buffer, &[m.data]), m.data.0);
            let (w, b) = (weight(&n.weight), n.bias.as_deref().map(&weight));
            let fused = b.filter(|b| Arc::ptr_eq(&b.file, &w.file)).map(|b| Norm {
                region: Region::covering(&w.file.buffer, &[w.data, b.data]),
                offset: w.data.0,
                eps,
                bias: Some(b.data.0),
            });
            Prologue::LayerNorm(misc::LayerNormWeights { weight: at(w), bias: b.map(at), eps }, fused)
        }
    }
}

impl Prologue<'_> {
    /// The product's fused norm and its input: `x` itself, or `normed` after the LayerNorm dispatch (pushed
    /// onto `list`) of `cols` values per row. With `fuse_layer` (a decode matvec on the f32 kernels), a
    /// LayerNorm whose weight and bias share a file is fused into the product's load like an RMS norm.
    async fn lower<'b>(
        &self,
        ctx: &GpuContext,
        b: &'b Buffers,
        x: &'b GpuBuffer,
        cols: u32,
        fuse_layer: bool,
        list: &mut Vec<Dispatch>,
    ) -> Result<(Option<Norm<'_>>, &'b GpuBuffer)> {
        match self {
            Prologue::Fused(n) => Ok((*n, x)),
            Prologue::LayerNorm(_, Some(n)) if fuse_layer => Ok((Some(*n), x)),
            Prologue::LayerNorm(w, _) => {
                let y = b.normed.as_ref().expect("Buffers::new allocates it for a program with LayerNorms");
                list.push(misc::layernorm(ctx, cols, cols, cols, w, &b.step, x, y).await?);
                Ok((None, y))
            }
        }
    }
}

/// What the buffers are sized for.
#[derive(Clone, Copy, Debug)]
pub(super) struct Sizes {
    /// Positions of one sequence at most (the RoPE tables).
    pub ctx_len: usize,
    /// Rows of the KV cache: blocks for every sequence together.
    pub kv_rows: usize,
    /// Tokens per forward chunk.
    pub max_batch: u32,
    pub logit_rows: u32,
    pub splits: u32,
    /// Sequences a batched decode pass takes at most.
    pub max_seqs: u32,
    /// The KV cache's element type.
    pub kv: KvType,
}

/// The eps of an RMS norm that runs on its own (head and post norms); LayerNorm runs there only before a
/// product.
fn rms_eps(n: &NormOp) -> Result<f32> {
    match n.kind {
        NormKind::RmsNorm { eps } => Ok(eps),
        NormKind::LayerNorm { .. } => Err(Error::Unsupported(format!(
            "norm {}: a LayerNorm that is not before a matrix product does not run on the GPU engine yet",
            n.weight
        ))),
    }
}

fn norm_of(m: &GpuMatrix, eps: f32) -> Norm<'_> {
    Norm { region: Region::covering(&m.file.buffer, &[m.data]), offset: m.data.0, eps, bias: None }
}

/// Whether gate and up can be read by one fused SwiGLU matvec: one layout, one file, one binding.
fn fusable(ctx: &GpuContext, gate: &GpuMatrix, up: &GpuMatrix) -> bool {
    gate.dtype == up.dtype
        && Arc::ptr_eq(&gate.file, &up.file)
        && Region::covering(&gate.file.buffer, &[gate.spans(), up.spans()].concat()).size()
            <= ctx.gpu.limits.max_storage_buffer_binding_size
}

/// How a product runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    /// The decode matvec over one activation row (with `x_last`, the chunk's last row rather than row 0), by
    /// the kernel `MatvecKernel` picks.
    Matvec { x_last: bool },
    /// Several sequences' next tokens, one row each, at most `MATVEC_TOKENS` of them: the batched matvec (f32
    /// activations); the short matmul where it has too many row blocks for the adapter.
    Batched,
    /// A prompt's chunk: the prefill matmul in `tokens`-token tiles (f32 activations).
    Matmul { tokens: u32 },
}

/// The products of `x` with `mats` (each `(matrix, out offset, bias)`), fused into as few dispatches as the
/// layouts, files and binding size allow, each run as `shape` says.
#[allow(clippy::too_many_arguments)]
async fn products(
    ctx: &GpuContext,
    mats: &[(&GpuMatrix, u32, Option<&GpuMatrix>)],
    norm: Option<Norm<'_>>,
    output: Output,
    step: &GpuBuffer,
    x: &GpuBuffer,
    y: &GpuBuffer,
    y_stride: u32,
    shape: Shape,
    matvec: MatvecKernel,
) -> Result<Vec<Dispatch>> {
    let mut groups: Vec<Vec<Mat>> = Vec::new();
    for &(m, out, bias) in mats {
        if let Some(b) = bias {
            if !Arc::ptr_eq(&b.file, &m.file) {
                return Err(Error::Unsupported(format!("bias {} is not in the file of {}", b.name, m.name)));
            }
        }
        let mat = Mat { m, out, bias: bias.map(|b| b.data) };
        let joins = groups.last().is_some_and(|g| {
            let head = g[0].m;
            let mut spans: Vec<_> =
                g.iter().chain([&mat]).flat_map(|x| x.m.spans().into_iter().chain(x.bias)).collect();
            spans.sort();
            let region = Region::covering(&head.file.buffer, &spans);
            g.len() < 3
                && head.dtype == m.dtype
                && head.cols == m.cols
                && Arc::ptr_eq(&head.file, &m.file)
                && region.size() <= ctx.gpu.limits.max_storage_buffer_binding_size
        });
        match groups.last_mut() {
            Some(g) if joins => g.push(mat),
            _ => groups.push(vec![mat]),
        }
    }
    let mut out = Vec::new();
    for mats in groups {
        let x_last = shape == Shape::Matvec { x_last: true };
        let l = Linear { mats, norm, output, step, x, y, x_last, y_stride };
        out.push(match shape {
            Shape::Matvec { .. } => l.matvec_with(ctx, matvec).await?,
            Shape::Batched if l.fits_matvec_tokens(ctx) => l.matvec_tokens(ctx).await?,
            Shape::Batched => l.matmul(ctx, MATMUL_TOKENS_SHORT).await?,
            Shape::Matmul { tokens } => l.matmul(ctx, tokens).await?,
        });
    }
    Ok(out)
}

/// What lowering one op of block `l` needs: matvecs when `tokens` is 0, else products over chunks of up to
/// `tokens` (`MATMUL_TOKENS_SHORT` or `MATMUL_TOKENS`) rows; `batched`: the rows are several sequences' next
/// tokens (decode attention per row; the batched matvec for short chunks), not one prompt's (prefill attention).
struct Lowering<'a> {
    batched: bool,
    ctx: &'a GpuContext,
    p: &'a Program,
    b: &'a Buffers,
    layer: &'a Layer,
    l: usize,
    splits: u32,
    tokens: u32,
    mv: MatvecKernel,
    /// Decode matvec kernels an `omex optimize` profile chose, by [`tuning_key`].
    tuned: &'a Tuned,
    /// The active LoRA adapters (`None`: the base alone).
    loras: Option<&'a LoraSet>,
}

/// Decode matvec kernels by [`tuning_key`] (from an `optimization/` profile; empty: the automatic choice).
pub(super) type Tuned = HashMap<String, MatvecKernel>;

/// What a tuned kernel choice applies to: a linear op's label (as every block has it, without the block),
/// whether the decode fuses the next SwiGLU into it, and its first matrix's layout and its rows x columns,
/// e.g. `linear attn_q|attn_k|attn_v int4 960x576`; with that layout and the columns. `None` for other ops.
fn tuning_key(op: &Op, fused: bool, layer: &Layer) -> Option<(String, DType, u32)> {
    let Op::Linear { mats, .. } = op else { return None };
    let m = mats.first()?;
    let (dtype, rows) = (layer.get(&m.weight).dtype, mats.iter().map(|m| m.rows).sum::<u32>());
    let key = format!("{}{} {} {rows}x{}", op.label(), if fused { " + glu" } else { "" }, dtype.name(), m.cols);
    Some((key, dtype, m.cols))
}

impl Lowering<'_> {
    fn shape(&self) -> Shape {
        match (self.tokens, self.batched) {
            (0, _) => Shape::Matvec { x_last: false },
            // Steps of a few sequences: the batched matvec. On an H100 (SmolLM2 shapes) it made steps of 2 to 8
            // rows 1.4-1.5x faster than the matmul, was even at 12 to 16 and 0.5x at 64, where the matmul's tiles
            // (cooperative there) have workgroups enough.
            (MATMUL_TOKENS_SHORT, true) => Shape::Batched,
            (tokens, _) => Shape::Matmul { tokens },
        }
    }

    /// Appends the dispatches of `op` to `list`. With `fuse_swiglu` (the next op is a SwiGLU and this is a
    /// decode list), a gate|up product whose matrices allow it takes the SwiGLU into its epilogue: then the
    /// answer is `true`, the next op done.
    async fn op(&self, op: &Op, fuse_swiglu: bool, list: &mut Vec<Dispatch>) -> Result<bool> {
        let (ctx, p, b, layer) = (self.ctx, self.p, self.b, self.layer);
        let (st, h, tokens) = (&b.step, p.heads, self.tokens);
        let (k, v) = &b.kv[self.l];
        let cache = KvCache { k, v, ty: b.kv_type };
        match op {
            Op::Linear { input, norm, mats, output, add } => {
                let tuned = (tokens == 0).then(|| tuning_key(op, fuse_swiglu, layer)).flatten();
                let mv = tuned.and_then(|(key, ..)| self.tuned.get(&key).copied()).unwrap_or(self.mv);
                if norm.is_some() && *input != Buf::Hidden {
                    return Err(Error::Unsupported(format!("a norm of {input:?} before a product")));
                }
                let pro = prologue(norm.as_ref(), |name| layer.get(name));
                // A LayerNorm folds into a decode matvec on the f32 kernels (not into the LoRA down products,
                // which read the same prologue and take RMS norms only).
                let fuse_layer = tokens == 0 && self.loras.is_none() && mv.fuses_layer_norm();
                let (norm, x) = pro.lower(ctx, b, b.get(*input), p.width(*input), fuse_layer, list).await?;
                let ms: Vec<_> =
                    mats.iter().map(|m| (layer.get(&m.weight), m.bias.as_ref().map(|b| layer.get(b)))).collect();
                // LoRA: the down products before the op's product (x̂ is read before y is written), the up
                // products after it (adding to the stored or residual-added output is the same sum).
                let (in_w, out_w) = (p.width(*input), p.width(*output));
                let lora = match self.loras {
                    Some(set) => set.lower(ctx, mats, norm, st, x, in_w, b.get(*output), out_w).await?,
                    None => None,
                };
                let ups = match lora {
                    Some((downs, ups)) => {
                        list.extend(downs);
                        ups
                    }
                    None => Vec::new(),
                };
                let fuse_swiglu = fuse_swiglu && ups.is_empty();
                if let ([(gate, None), (up, None)], true, Buf::GateUp) = (ms.as_slice(), fuse_swiglu, output) {
                    if fusable(ctx, gate, up) {
                        let gu = [(*gate, 0, None), (*up, 0, None)];
                        let y = b.get(Buf::Act);
                        list.extend(products(ctx, &gu, norm, Output::SwiGlu, st, x, y, p.ffn, self.shape(), mv).await?);
                        return Ok(true);
                    }
                }
                let mut at = 0;
                let mut placed = Vec::new();
                for (m, bias) in ms {
                    placed.push((m, at, bias));
                    at += m.rows;
                }
                let out = if *add { Output::Add } else { Output::Store };
                let (y, stride) = (b.get(*output), p.width(*output));
                list.extend(products(ctx, &placed, norm, out, st, x, y, stride, self.shape(), mv).await?);
                list.extend(ups);
            }
            Op::HeadNorm { part, norm } => {
                let (offset, groups) = match part {
                    QkPart::Q => (0, h.n_heads),
                    QkPart::K => (h.q_dim(), h.n_kv),
                };
                let at = misc::NormGroups { cols: h.head_dim, groups, stride: p.width(Buf::Qkv), offset };
                list.push(self.rmsnorm(at, norm).await?);
            }
            Op::Norm { buf, norm } => {
                let width = p.width(*buf);
                let at = misc::NormGroups { cols: width, groups: 1, stride: width, offset: 0 };
                let d = self.rmsnorm_into(at, norm, b.get(*buf)).await?;
                list.push(d);
            }
            Op::RopeStore { rope } => {
                let r = &p.ropes[*rope];
                let (qkv, q, table) = (b.get(Buf::Qkv), b.get(Buf::Q), &b.cos_sin[*rope]);
                let half = r.style == RopeStyle::Half;
                // RoPE and the KV store stay a dispatch of their own: folded into the decode attention, they made
                // it 16 us slower per block on an H200 (the caches it reads become read_write), for 9 us saved.
                list.push(misc::rope_store(ctx, h, r.dims, half, st, qkv, table, q, cache, &b.seqmap).await?);
            }
            Op::Attention { window } => {
                let (q, att, scale) = (b.get(Buf::Q), b.get(Buf::Attn), p.attention_scale);
                let (part, map) = (&b.part, &b.seqmap);
                if tokens == 0 || self.batched {
                    let (pa, co) =
                        attention::decode(ctx, h, self.splits, scale, *window, st, q, cache, part, att, map).await?;
                    list.extend([pa, co]);
                } else {
                    list.push(attention::prefill(ctx, h, scale, *window, st, q, cache, att, map).await?);
                }
            }
            Op::Glu { act } => {
                let (gu, out, f) = (b.get(Buf::GateUp), b.get(Buf::Act), p.ffn);
                list.push(misc::glu(ctx, *act, f, 0, 2 * f, f, st, gu, out).await?);
            }
            Op::Activation { buf, act } => {
                list.push(misc::activation(ctx, *act, p.width(*buf), 0, st, b.get(*buf)).await?);
            }
            Op::Add { from, to } => {
                list.push(misc::add_assign(ctx, p.width(*to), 0, st, b.get(*from), b.get(*to)).await?);
            }
            Op::MoeRoute { norm, router, top_k } => {
                // The normed input goes to a buffer of its own: every expert's products read it after the
                // earlier experts have added to the hidden state.
                let (x, moe_in, route) = (b.get(Buf::Hidden), b.get(Buf::MoeIn), b.get(Buf::Route));
                let w = layer.get(&norm.weight);
                let region = Region::covering(&w.file.buffer, &[w.data]);
                list.push(match prologue(Some(norm), |name| layer.get(name)) {
                    Prologue::LayerNorm(lw, _) => {
                        misc::layernorm(ctx, p.hidden, p.hidden, p.hidden, &lw, st, x, moe_in).await?
                    }
                    Prologue::Fused(_) => {
                        misc::rmsnorm_into(ctx, p.hidden, norm.eps(), st, region, w.data.0, x, moe_in).await?
                    }
                });
                let r = [(layer.get(&router.weight), 0, None)];
                let (shape, mv) = (self.shape(), self.mv);
                list.extend(products(ctx, &r, None, Output::Store, st, moe_in, route, router.rows, shape, mv).await?);
                list.push(moe::route(ctx, router.rows, *top_k, st, route).await?);
            }
            Op::Experts { act, experts } => self.experts(*act, experts, list).await?,
        }
        Ok(false)
    }

    /// Every expert over the rows of the chunk, each one's output added with the rows' weights for it (0 for
    /// the rows not routed to it, which add nothing); an expert no row was routed to does not run (its
    /// dispatches are gated on the route: [`moe::gate`]).
    async fn experts(&self, act: Activation, experts: &[crate::arch::Expert], list: &mut Vec<Dispatch>) -> Result<()> {
        let (ctx, p, b, layer, st) = (self.ctx, self.p, self.b, self.layer, &self.b.step);
        let (moe_in, route, x) = (b.get(Buf::MoeIn), b.get(Buf::Route), b.get(Buf::Hidden));
        let (gu, a, out) = (b.get(Buf::GateUp), b.get(Buf::Act), b.get(Buf::Out));
        let (shape, mv, n) = (self.shape(), self.mv, experts.len() as u32);
        let mut gated: Vec<(u32, Dispatch)> = Vec::new();
        for (e, ex) in experts.iter().enumerate() {
            let (gate, up, down) = (layer.get(&ex.gate.weight), layer.get(&ex.up.weight), layer.get(&ex.down.weight));
            let f = ex.gate.rows;
            if f > p.ffn {
                let what = &ex.gate.weight;
                return Err(Error::Unsupported(format!("expert {what}: {f} rows, wider than the MLP's {}", p.ffn)));
            }
            let mut ds = Vec::new();
            if self.tokens == 0 && act == Activation::Silu && fusable(ctx, gate, up) {
                let gu2 = [(gate, 0, None), (up, 0, None)];
                ds.extend(products(ctx, &gu2, None, Output::SwiGlu, st, moe_in, a, f, shape, mv).await?);
            } else {
                let gu2 = [(gate, 0, None), (up, f, None)];
                ds.extend(products(ctx, &gu2, None, Output::Store, st, moe_in, gu, 2 * f, shape, mv).await?);
                ds.push(misc::glu(ctx, act, f, 0, 2 * f, f, st, gu, a).await?);
            }
            let d = [(down, 0, None)];
            ds.extend(products(ctx, &d, None, Output::Store, st, a, out, p.hidden, shape, mv).await?);
            ds.push(moe::add_weighted(ctx, p.hidden, n, e as u32, st, route, out, x).await?);
            gated.extend(ds.into_iter().map(|d| (e as u32, d)));
        }
        let mut slots: Vec<(u32, &mut Dispatch)> = gated.iter_mut().map(|(e, d)| (*e, d)).collect();
        list.push(moe::gate(ctx, n, st, route, &mut slots).await?);
        list.extend(gated.into_iter().map(|(_, d)| d));
        Ok(())
    }

    async fn rmsnorm(&self, at: misc::NormGroups, norm: &NormOp) -> Result<Dispatch> {
        self.rmsnorm_into(at, norm, self.b.get(Buf::Qkv)).await
    }

    async fn rmsnorm_into(&self, at: misc::NormGroups, norm: &NormOp, x: &GpuBuffer) -> Result<Dispatch> {
        let w = self.layer.get(&norm.weight);
        let region = Region::covering(&w.file.buffer, &[w.data]);
        misc::rmsnorm(self.ctx, at, rms_eps(norm)?, &self.b.step, region, w.data.0, x).await
    }
}

/// Dispatches that run together; when streaming, right after their piece is uploaded into its slot.
pub(super) struct Stage {
    pub piece: Option<usize>,
    pub dispatches: Vec<Dispatch>,
    /// The program's ops among `dispatches`: each one's label ("blk.3 linear attn_q|attn_k|attn_v", as the
    /// CPU engine's trace names them) and its first dispatch; it runs to the next op's first. (Read by the
    /// per-op trace, which browsers do not have.)
    #[cfg_attr(target_arch = "wasm32", allow(dead_code))]
    pub ops: Vec<(String, usize)>,
    /// A block of experts: its first dispatch that reads an expert's matrices (the route is written before it).
    /// When the block streams, the engine runs the stage up to here, reads the route back and uploads the
    /// routed experts only.
    pub experts_at: Option<usize>,
}

/// The dispatch lists of one model.
pub(super) struct Plan {
    /// The embedding gather (none when the embedding stays on the host: the engine writes the rows), then
    /// the learned positions added.
    pub embed: Vec<Dispatch>,
    /// One stage per block.
    pub decode: Vec<Stage>,
    /// Chunks of 2..=8 tokens (short matmul tiles).
    pub prefill_short: Vec<Stage>,
    pub prefill: Vec<Stage>,
    /// Several sequences' next tokens, one row each (paged step): 2..=8 rows, and more.
    pub batch_short: Vec<Stage>,
    pub batch: Vec<Stage>,
    /// Logits of the chunk's last token into logits row 0 (one stage per piece of the head).
    pub head_last: Vec<Stage>,
    /// Logits of every token of the chunk.
    pub head_all: Vec<Stage>,
    /// Greedy decoding: the argmax of logits row 0 into ids[0] and tokens[k], then the step moved on.
    pub argmax: Vec<Dispatch>,
    /// Sampling at a temperature: the sample kernel on logits row 0 into ids[0] and tokens[k], then the step
    /// moved on. Its settings and first draw number are written before each submission (`set_sample_params`).
    /// Empty for vocabularies the kernel cannot count exactly (2^24 and more): those sample on the host.
    pub sample: Vec<Dispatch>,
}

impl Plan {
    /// `activations`: the precision of the decode matvecs' activations (prefill matmuls take f32); `tuned`: the
    /// decode kernels a profile chose; `loras`: the LoRA adapters every block list applies (the head and
    /// embedding have none).
    #[allow(clippy::too_many_arguments)]
    pub async fn build(
        ctx: &GpuContext,
        p: &Program,
        w: &Model,
        b: &Buffers,
        splits: u32,
        activations: Activations,
        tuned: &Tuned,
        loras: Option<&LoraSet>,
    ) -> Result<Plan> {
        let mv = MatvecKernel::for_activations(activations);
        let (st, vocab) = (&b.step, p.vocab);
        let mut lists: [Vec<Stage>; 5] = Default::default();
        let kinds = [
            (0, false),
            (MATMUL_TOKENS_SHORT, false),
            (MATMUL_TOKENS, false),
            (MATMUL_TOKENS_SHORT, true),
            (MATMUL_TOKENS, true),
        ];
        for (l, (block, layer)) in p.blocks.iter().zip(&w.layers).enumerate() {
            for (stages, (tokens, batched)) in lists.iter_mut().zip(kinds) {
                let (mut list, mut labels, mut experts_at) = (Vec::new(), Vec::new(), None);
                let mut ops = block.ops.iter().peekable();
                while let Some(op) = ops.next() {
                    if let Op::Experts { .. } = op {
                        experts_at = Some(list.len());
                    }
                    let fuse_swiglu = tokens == 0 && matches!(ops.peek(), Some(Op::Glu { act: Activation::Silu }));
                    let lowered = Lowering { batched, ctx, p, b, layer, l, splits, tokens, mv, tuned, loras };
                    let (first, mut label) = (list.len(), format!("blk.{l} {}", op.label()));
                    if lowered.op(op, fuse_swiglu, &mut list).await? {
                        if let Some(fused) = ops.next() {
                            label = format!("{label} + {}", fused.label());
                        }
                    }
                    labels.push((label, first));
                }
                stages.push(Stage { piece: layer.piece, dispatches: list, ops: labels, experts_at });
            }
        }
        let [decode, prefill_short, prefill, batch_short, batch] = lists;
        let final_norm = prologue(Some(&p.final_norm), |name| match &w.output_norm_bias {
            Some(bias) if p.final_norm.bias.as_deref() == Some(name) => bias,
            _ => &w.output_norm,
        });
        // The logits of the last row (decode, a prompt's end) and of every row (a chunk, a batched step). A
        // batched step's head stays on the matmul: with the vocabulary's rows it has workgroups enough, and on an
        // H100 the cooperative matmul ran SmolLM2's head for 4 to 16 rows in 152 us, the batched matvec in 653.
        let shapes = [Shape::Matvec { x_last: true }, Shape::Matmul { tokens: MATMUL_TOKENS }];
        let mut heads: [Vec<Stage>; 2] = Default::default();
        for (stages, shape) in heads.iter_mut().zip(shapes) {
            // A LayerNorm runs once, before the first piece; every piece reads its output.
            let mut norm = Vec::new();
            let fuse_layer = matches!(shape, Shape::Matvec { .. }) && mv.fuses_layer_norm();
            let (on, x) = final_norm.lower(ctx, b, &b.x, p.hidden, fuse_layer, &mut norm).await?;
            for (m, row0, piece) in &w.head {
                let mut list = std::mem::take(&mut norm);
                let part = [(m, *row0, None)];
                list.extend(products(ctx, &part, on, Output::Store, st, x, &b.logits, vocab, shape, mv).await?);
                stages.push(Stage { piece: *piece, dispatches: list, ops: vec![("head".into(), 0)], experts_at: None });
            }
        }
        let [head_last, head_all] = heads;
        // Placeholder settings: the engine writes the real ones before it runs the dispatch.
        let sampling =
            misc::SampleParams::new(vocab, 0, 0, &SamplerOptions { temperature: 1.0, ..Default::default() }, 0);
        let sample = match vocab < misc::SAMPLE_MAX_VOCAB {
            true => vec![
                misc::sample(ctx, &sampling, st, &b.logits, &b.ids, &b.tokens).await?,
                misc::advance(ctx, st).await?,
            ],
            false => Vec::new(),
        };
        let mut embed = match &w.embed {
            Some(e) => vec![misc::embed(ctx, e, p.embed_scale.unwrap_or(1.0), st, &b.ids, &b.x).await?],
            None => Vec::new(),
        };
        // After the rows are gathered (here, or by the engine on the host before the submission).
        if let Some(table) = &w.positions {
            embed.push(misc::add_positions(ctx, p.hidden, st, table, &b.x, &b.seqmap).await?);
        }
        Ok(Plan {
            embed,
            decode,
            prefill_short,
            prefill,
            batch_short,
            batch,
            head_last,
            head_all,
            argmax: vec![
                misc::argmax(ctx, vocab, 0, 0, st, &b.logits, &b.ids, &b.tokens).await?,
                misc::advance(ctx, st).await?,
            ],
            sample,
        })
    }

    /// Dispatches a decode step records (embedding, blocks, head).
    pub fn decode_dispatches(&self) -> usize {
        let n = |s: &[Stage]| s.iter().map(|s| s.dispatches.len()).sum::<usize>();
        self.embed.len() + n(&self.decode) + n(&self.head_last)
    }
}

/// One linear op of a block's decode list, lowered with each decode matvec kernel that can run it: its
/// [`tuning_key`], and per candidate the kernel and the op's dispatches (what `omex optimize` times).
#[cfg(not(target_arch = "wasm32"))]
pub(super) struct TuneCase {
    pub key: String,
    pub dtype: DType,
    pub cols: u32,
    pub candidates: Vec<(MatvecKernel, Vec<Dispatch>)>,
}

/// The tuning cases of block `l` (its linear ops, each with the kernels `candidates` lists that resolve for
/// it), lowered as the decode list lowers them.
#[cfg(not(target_arch = "wasm32"))]
pub(super) async fn tune_cases(
    ctx: &GpuContext,
    p: &Program,
    w: &Model,
    b: &Buffers,
    splits: u32,
    l: usize,
    candidates: &[MatvecKernel],
) -> Result<Vec<TuneCase>> {
    let (block, layer) = (&p.blocks[l], &w.layers[l]);
    let mut cases = Vec::new();
    let mut ops = block.ops.iter().peekable();
    let none = Tuned::new();
    while let Some(op) = ops.next() {
        let fuse_swiglu = matches!(ops.peek(), Some(Op::Glu { act: Activation::Silu }));
        let Some((key, dtype, cols)) = tuning_key(op, fuse_swiglu, layer) else { continue };
        let mut case = TuneCase { key, dtype, cols, candidates: Vec::new() };
        let mut fused = false;
        for &mv in candidates {
            let lowered =
                Lowering { batched: false, ctx, p, b, layer, l, splits, tokens: 0, mv, tuned: &none, loras: None };
            let mut list = Vec::new();
            // A kernel that cannot run this op's layout or shape is no candidate.
            if let Ok(f) = lowered.op(op, fuse_swiglu, &mut list).await {
                fused = f;
                case.candidates.push((mv, list));
            }
        }
        if fused {
            ops.next();
        }
        cases.push(case);
    }
    Ok(cases)
}
