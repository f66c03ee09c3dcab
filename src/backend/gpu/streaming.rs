//! Weights that stream: when the GPU memory budget cannot hold the whole model, the planner
//! ([`crate::memory::planner`]) keeps some weight units resident and streams the others through a ring of
//! upload slots, straight from the mapped weight files.
//!
//! The units of a llama-family model, in execution order:
//! - the token embedding file: resident, or left on the host, where the rows of the chunk's tokens are
//!   gathered (a token reads one row, not the table). When the output head is tied to it, it is also the head.
//! - one file per transformer block: resident, or uploaded whole into a slot before the block runs (its
//!   tensors' section offsets are file offsets, so they are the same in the slot). A block of experts goes up
//!   in two steps: everything but the experts' matrices, then, once the block's route has been computed and
//!   read back, the matrices of the experts some row was routed to (at their file offsets in the same slot).
//! - the output head matrix (its own file, or the tied embedding): resident, or uploaded in pieces of rows
//!   that fit a slot, each piece's product written to its rows of the logits.
//!
//! Pieces use the slots in turn (piece `k` uses slot `k % slots`), the same order on every forward pass, so
//! every dispatch is bound once, at load, to the slot its weights will be in.

use super::buffers::Purpose;
use super::context::GpuContext;
use super::weights::GpuFile;
use crate::error::{Error, Result};
use crate::format::{Blob, ModelDir, SectionKind, TensorEntry};
use crate::graph::Transformer;
use crate::memory::planner::LayerCost;
use std::collections::HashMap;
use std::sync::Arc;

/// What a weight unit is to the forward pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UnitKind {
    /// The token embedding file; `tied`: it also holds the output head.
    Embedding {
        file: String,
        tied: bool,
    },
    Block {
        index: usize,
        file: String,
    },
    /// The output head matrix, in a file of its own.
    Head {
        file: String,
    },
}

#[derive(Clone, Debug)]
pub struct Unit {
    pub kind: UnitKind,
    pub cost: LayerCost,
}

/// Bytes one matrix row takes in each of its sections (data, scales, mins), and each section's place in its
/// file: a piece of rows is one contiguous range per section.
#[derive(Clone, Debug)]
pub struct RowLayout {
    pub rows: u32,
    /// (kind, offset in the file, bytes per row).
    pub sections: Vec<(SectionKind, u64, u64)>,
}

/// Sections placed in a slot start on 256-byte boundaries (every adapter's storage offset alignment).
const SLOT_ALIGN: u64 = 256;

fn align(n: u64) -> u64 {
    n.div_ceil(SLOT_ALIGN) * SLOT_ALIGN
}

impl RowLayout {
    pub fn of(entry: &TensorEntry) -> Result<RowLayout> {
        let rows: u32 = match entry.shape.as_slice() {
            [r, _] => *r,
            _ => return Err(Error::Unsupported(format!("tensor {}: only a 2-D matrix streams in rows", entry.name))),
        };
        let mut sections = Vec::new();
        for kind in [SectionKind::Data, SectionKind::Scales, SectionKind::Mins] {
            let Some(s) = entry.section(kind) else { continue };
            if rows == 0 || s.bytes % rows as u64 != 0 || !(s.bytes / rows as u64).is_multiple_of(4) {
                return Err(Error::Unsupported(format!(
                    "tensor {}: its {kind:?} section ({} bytes) does not split into whole 4-byte rows",
                    entry.name, s.bytes
                )));
            }
            sections.push((kind, s.offset, s.bytes / rows as u64));
        }
        Ok(RowLayout { rows, sections })
    }

    /// Bytes a slot needs for `rows` rows.
    pub fn slot_bytes(&self, rows: u32) -> u64 {
        self.sections.iter().map(|&(_, _, per)| align(per * rows as u64)).sum()
    }

    /// The most rows a slot of `slot` bytes holds (0 if not even one).
    pub fn rows_per_slot(&self, slot: u64) -> u32 {
        let per: u64 = self.sections.iter().map(|s| s.2).sum();
        let mut rows =
            (slot.saturating_sub(SLOT_ALIGN * self.sections.len() as u64) / per.max(1)).min(self.rows as u64) as u32;
        while rows > 0 && self.slot_bytes(rows) > slot {
            rows -= 1;
        }
        rows
    }

    /// Bytes uploaded for the whole matrix.
    pub fn total_bytes(&self) -> u64 {
        self.sections.iter().map(|&(_, _, per)| per * self.rows as u64).sum()
    }
}

/// The weight units of a model, in execution order, with what each costs resident and streamed.
pub fn units(dir: &ModelDir, cfg: &Transformer) -> Result<Vec<Unit>> {
    let entry = |name: &str| -> Result<TensorEntry> { Ok(dir.tensor(name)?.entry) };
    let file_bytes = |file: &str| -> Result<u64> { Ok(dir.blob(file)?.bytes().len() as u64) };
    let embed = entry(&cfg.token_embedding)?;
    let head = entry(&cfg.output)?;
    let head_rows = RowLayout::of(&head)?;
    let tied = head.file == embed.file;
    let mut units = vec![Unit {
        kind: UnitKind::Embedding { file: embed.file.clone(), tied },
        cost: LayerCost {
            file: if tied { format!("{} (token embedding, output head)", embed.file) } else { embed.file.clone() },
            bytes: file_bytes(&embed.file)?,
            moved: if tied { head_rows.total_bytes() } else { 0 },
            splittable: tied,
            read: if tied { head_rows.total_bytes() } else { 0 },
        },
    }];
    // Each block must own its file: it is uploaded whole, and nothing else may need it meanwhile.
    let mut owner: HashMap<String, usize> = HashMap::new();
    for (index, b) in cfg.blocks.iter().enumerate() {
        let mut file = None;
        for name in b.names() {
            let f = entry(name)?.file;
            if *file.get_or_insert_with(|| f.clone()) != f || f == embed.file || f == head.file {
                return Err(Error::Unsupported(format!(
                    "block {index}: its tensors share files with other tensors ({f}); streaming needs one weight file per block"
                )));
            }
        }
        let file = file.expect("a block has tensors");
        if let Some(other) = owner.insert(file.clone(), index) {
            return Err(Error::Unsupported(format!(
                "blocks {other} and {index} share {file}; streaming needs one file per block"
            )));
        }
        let bytes = file_bytes(&file)?;
        // A token runs `top_k` of a block's experts: the rest of their bytes are not read.
        let unread = match (&b.moe, &cfg.moe) {
            (Some(w), Some(m)) => {
                let expert_bytes: u64 =
                    w.experts.iter().flatten().map(|n| Ok(upload_bytes(&entry(n)?))).sum::<Result<u64>>()?;
                expert_bytes - expert_bytes * m.top_k as u64 / m.experts.max(1) as u64
            }
            _ => 0,
        };
        units.push(Unit {
            kind: UnitKind::Block { index, file: file.clone() },
            // Only the routed experts are uploaded (on average `top_k` of them), as read.
            cost: LayerCost {
                file,
                bytes,
                moved: bytes - unread.min(bytes),
                splittable: false,
                read: bytes - unread.min(bytes),
            },
        });
    }
    if !tied {
        units.push(Unit {
            kind: UnitKind::Head { file: head.file.clone() },
            cost: LayerCost {
                file: head.file.clone(),
                bytes: file_bytes(&head.file)?,
                moved: head_rows.total_bytes(),
                splittable: true,
                read: head_rows.total_bytes(),
            },
        });
    }
    Ok(units)
}

/// Bytes of a tensor's sections (its values, scales and mins) as they are uploaded: each widened to whole
/// 4-byte words (see [`block_copies`]).
fn upload_bytes(e: &TensorEntry) -> u64 {
    e.sections.iter().map(|s| s.offset.saturating_add(s.bytes).div_ceil(4) * 4 - s.offset / 4 * 4).sum()
}

/// GPU bytes of weights outside every unit: the output norm, in a small file of its own (uploaded whole) or,
/// when its file is a unit's, copied into a buffer of its own (the head pieces all read it).
pub fn other_bytes(dir: &ModelDir, cfg: &Transformer, units: &[Unit]) -> Result<u64> {
    let norm = dir.tensor(&cfg.output_norm)?.entry;
    let in_unit = units.iter().any(|u| match &u.kind {
        UnitKind::Embedding { file, .. } | UnitKind::Block { file, .. } | UnitKind::Head { file } => *file == norm.file,
    });
    let bytes = if in_unit { 4 * cfg.hidden_size as u64 } else { dir.blob(&norm.file)?.bytes().len() as u64 };
    Ok(bytes.div_ceil(16) * 16)
}

/// The smallest slot the output head can stream through (one row of it).
pub fn min_slot(dir: &ModelDir, cfg: &Transformer) -> Result<u64> {
    Ok(RowLayout::of(&dir.tensor(&cfg.output)?.entry)?.slot_bytes(1))
}

/// One copy from a mapped weight file into a slot.
#[derive(Clone)]
pub struct Copy {
    pub blob: Arc<Blob>,
    pub src: std::ops::Range<usize>,
    pub dst: u64,
}

/// Weights uploaded into one slot before the stage that reads them.
pub struct Piece {
    /// For logs and traces: `layer_3.bin`, `embedding.bin rows 0..3640`.
    pub name: String,
    pub slot: usize,
    /// Uploaded before the stage runs: for a block of experts, everything but the experts' matrices.
    pub copies: Vec<Copy>,
    /// A block of experts: each expert's matrices, uploaded only when a row of the chunk was routed to it (the
    /// engine reads the route back first), at their file offsets, like the rest of the block.
    pub experts: Vec<Vec<Copy>>,
    /// Experts a row runs (the routing's top k), for the plan's average bytes a pass.
    pub top_k: usize,
}

impl Piece {
    /// Bytes uploaded before the stage (for a block of experts: without the experts).
    pub fn bytes(&self) -> u64 {
        copied(&self.copies)
    }

    /// Bytes a pass uploads on average: with experts, `top_k` of them (even routing), as the planner counts.
    pub fn planned_bytes(&self) -> u64 {
        let experts: u64 = self.experts.iter().map(|c| copied(c)).sum();
        self.bytes() + experts * self.top_k as u64 / self.experts.len().max(1) as u64
    }
}

fn copied(copies: &[Copy]) -> u64 {
    copies.iter().map(|c| c.src.len() as u64).sum()
}

/// Byte ranges of a file: (offset, bytes) each.
pub type Spans = Vec<(u64, u64)>;

/// A streamed block's file as copies: the byte ranges of each expert's matrices (`experts[e]`: (offset, bytes)
/// of its sections, widened to whole 4-byte words as buffer writes need) apart, one list per expert, and the
/// rest of the file in the first list. Every range keeps its file offset in the slot.
pub fn block_copies(file: &str, blob: &Arc<Blob>, experts: &[Spans]) -> Result<(Vec<Copy>, Vec<Vec<Copy>>)> {
    let len = blob.bytes().len() as u64;
    let copy = |from: u64, to: u64| Copy { blob: blob.clone(), src: from as usize..to as usize, dst: from };
    // (A range past the end stays past it, for the check below.)
    let words = |&(at, n): &(u64, u64)| {
        let end = at.saturating_add(n);
        let to = if end <= len { end.div_ceil(4).saturating_mul(4).min(len) } else { end };
        (at / 4 * 4, to - at / 4 * 4)
    };
    let experts: Vec<Spans> = experts.iter().map(|r| r.iter().map(words).collect()).collect();
    let mut taken: Vec<(u64, u64)> = experts.iter().flatten().map(|&(at, n)| (at, at.saturating_add(n))).collect();
    taken.sort_unstable();
    let mut dense = Vec::new();
    let mut at = 0;
    for &(from, to) in &taken {
        if from < at || to > len {
            return Err(Error::Unsupported(format!(
                "{file}: expert sections overlap or pass the end of the file ({from}..{to} of {len} bytes)"
            )));
        }
        if from > at {
            dense.push(copy(at, from));
        }
        at = to;
    }
    if at < len {
        dense.push(copy(at, len));
    }
    let experts = experts.iter().map(|ranges| ranges.iter().map(|&(from, n)| copy(from, from + n)).collect()).collect();
    Ok((dense, experts))
}

/// The slots and the pieces that go through them, in execution order.
pub struct Slots {
    pub files: Vec<Arc<GpuFile>>,
    pub bytes: u64,
    pub pieces: Vec<Piece>,
}

impl Slots {
    pub fn new(ctx: &GpuContext, count: usize, bytes: u64) -> Result<Slots> {
        let files = (0..count)
            .map(|i| {
                let usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST;
                let buffer = ctx.pool.create(&format!("upload slot {i}"), bytes, usage, Purpose::Weights)?;
                Ok(Arc::new(GpuFile { name: format!("slot {i}"), buffer }))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Slots { files, bytes, pieces: Vec::new() })
    }

    /// Adds a piece; returns its index and the slot it will be in.
    pub fn push(&mut self, name: String, copies: Vec<Copy>) -> (usize, Arc<GpuFile>) {
        let k = self.pieces.len();
        let slot = k % self.files.len();
        self.pieces.push(Piece { name, slot, copies, experts: Vec::new(), top_k: 0 });
        (k, self.files[slot].clone())
    }

    /// Bytes uploaded per pass over every piece, on average (a block of experts: as routing spreads evenly).
    pub fn bytes_per_pass(&self) -> u64 {
        self.pieces.iter().map(Piece::planned_bytes).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ranges(copies: &[Copy]) -> Vec<(usize, usize)> {
        copies.iter().map(|c| (c.src.start, c.src.end)).collect()
    }

    #[test]
    fn a_block_splits_into_its_experts_and_the_rest_once_each() {
        let blob = Arc::new(Blob::from_bytes(&[7u8; 1024]));
        // Expert 0: two sections, the second 6 bytes (widened to 8); expert 1: one section.
        let experts = vec![vec![(256, 128), (512, 6)], vec![(768, 200)]];
        let (dense, ex) = block_copies("layer_0.bin", &blob, &experts).unwrap();
        assert_eq!(ranges(&ex[0]), [(256, 384), (512, 520)]);
        assert_eq!(ranges(&ex[1]), [(768, 968)]);
        assert_eq!(ranges(&dense), [(0, 256), (384, 512), (520, 768), (968, 1024)]);
        let mut all: Vec<_> = dense.iter().chain(ex.iter().flatten()).map(|c| (c.src.start, c.src.end)).collect();
        all.sort();
        assert!(all.windows(2).all(|w| w[0].1 == w[1].0) && all[0].0 == 0 && all.last().unwrap().1 == 1024);
        assert!(dense.iter().chain(ex.iter().flatten()).all(|c| c.dst == c.src.start as u64 && c.src.start % 4 == 0));

        for bad in [vec![vec![(256, 128)], vec![(300, 8)]], vec![vec![(1000, 100)]], vec![vec![(u64::MAX - 4, 8)]]] {
            let e = block_copies("layer_0.bin", &blob, &bad).err().expect("refused");
            assert!(e.to_string().contains("layer_0.bin"), "{e}");
        }
    }
}
