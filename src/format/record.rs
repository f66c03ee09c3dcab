//! One tensor record of a `weights/*.bin` file: the seed's 24-byte header, the shape, the quantization
//! parameters (a section table) and the data, every section aligned so the file can be bound to a GPU buffer
//! unchanged.
//!
//! ```text
//! off  size  field
//!   0     4  magic "OMEX"
//!   4     4  version (u32, 1)
//!   8     4  layer id (u32; EMBEDDING_LAYER / HEAD_LAYER for the non-block files)
//!  12     4  dtype (u32, see DType)
//!  16     4  ndim (u32, 1..=4)
//!  20     4  element count (u32)
//!  24  4*nd  shape (u32 each, outermost first; a matrix is [rows, cols], row-major)
//!   .     4  group size (u32; 32 for omex's grouped dtypes, the block's values for a GGUF block dtype (256 for
//!              the K-quants, 32 for Q5_0/Q5_1), 0 for floats)
//!   .     4  name length (u32, <= 256), then the UTF-8 name, zero-padded to 4 bytes
//!   .     4  section count (u32, 1..=3)
//!   .  24*n  sections: kind u32 (0 data, 1 scales, 2 mins), dtype u32, offset u64, bytes u64
//!   .     8  record length (u64, multiple of ALIGN: where the next record starts)
//! ```
//! Section offsets are relative to the record's start, which is itself ALIGN-aligned in the file, and every
//! section starts on an ALIGN boundary. All integers are little-endian.

use super::dtype::{DType, SectionKind};

pub const MAGIC: [u8; 4] = *b"OMEX";
pub const RECORD_VERSION: u32 = 1;
/// Alignment of records and sections: the GPU's storage-buffer offset alignment (256 on every adapter we know).
pub const ALIGN: u64 = 256;
pub const HEADER_BYTES: usize = 24;
pub const MAX_NDIM: u32 = 4;
pub const MAX_NAME: u32 = 256;
pub const EMBEDDING_LAYER: u32 = u32::MAX - 1;
pub const HEAD_LAYER: u32 = u32::MAX;

/// One section of a record: where its bytes are, relative to the record's start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Section {
    pub kind: SectionKind,
    pub dtype: DType,
    pub offset: u64,
    pub bytes: u64,
}

/// A parsed record descriptor (everything but the section bytes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub version: u32,
    pub layer_id: u32,
    pub dtype: DType,
    pub shape: Vec<u32>,
    pub numel: u32,
    pub group_size: u32,
    pub name: String,
    pub sections: Vec<Section>,
    /// Bytes from the start of this record to the start of the next.
    pub record_bytes: u64,
}

pub fn align_up(x: u64) -> u64 {
    x.div_ceil(ALIGN) * ALIGN
}

impl Record {
    /// Describes a record for `name` with the sections its dtype needs, laid out after the descriptor.
    pub fn new(layer_id: u32, name: &str, dtype: DType, shape: &[u32]) -> Result<Record, String> {
        if shape.is_empty() || shape.len() > MAX_NDIM as usize {
            return Err(format!("tensor {name}: {} dimensions (1..={MAX_NDIM} allowed)", shape.len()));
        }
        if name.len() > MAX_NAME as usize {
            return Err(format!("tensor name longer than {MAX_NAME} bytes: {name}"));
        }
        let numel = shape.iter().try_fold(1u32, |acc, &d| acc.checked_mul(d));
        let numel = numel.ok_or_else(|| format!("tensor {name}: shape {shape:?} has more than 2^32 elements"))?;
        let group_size = dtype.group_size();
        if group_size > 0 && shape.last().copied().unwrap_or(0) % group_size != 0 {
            return Err(format!("tensor {name}: {dtype} needs the last dimension to be a multiple of {group_size}"));
        }
        let groups = numel as u64 / kernels_cpu::GROUP as u64;
        let mut sections: Vec<Section> = dtype
            .param_sections()
            .iter()
            .map(|&kind| Section { kind, dtype: DType::F16, offset: 0, bytes: groups * 2 })
            .collect();
        sections.push(Section { kind: SectionKind::Data, dtype, offset: 0, bytes: dtype.data_bytes(numel as u64) });
        let mut rec = Record {
            version: RECORD_VERSION,
            layer_id,
            dtype,
            shape: shape.to_vec(),
            numel,
            group_size,
            name: name.to_string(),
            sections,
            record_bytes: 0,
        };
        let mut at = align_up(rec.descriptor_bytes() as u64);
        for s in &mut rec.sections {
            s.offset = at;
            at = align_up(at + s.bytes);
        }
        rec.record_bytes = at;
        Ok(rec)
    }

    fn descriptor_bytes(&self) -> usize {
        let name = self.name.len().div_ceil(4) * 4;
        HEADER_BYTES + 4 * self.shape.len() + 4 + 4 + name + 4 + 24 * self.sections.len() + 8
    }

    pub fn section(&self, kind: SectionKind) -> Option<&Section> {
        self.sections.iter().find(|s| s.kind == kind)
    }

    /// The descriptor bytes (header, shape, parameters table), to be followed by padding and the sections.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.descriptor_bytes());
        let u32s = |out: &mut Vec<u8>, v: u32| out.extend_from_slice(&v.to_le_bytes());
        out.extend_from_slice(&MAGIC);
        for v in [self.version, self.layer_id, self.dtype.code(), self.shape.len() as u32, self.numel] {
            u32s(&mut out, v);
        }
        for &d in &self.shape {
            u32s(&mut out, d);
        }
        u32s(&mut out, self.group_size);
        u32s(&mut out, self.name.len() as u32);
        out.extend_from_slice(self.name.as_bytes());
        out.resize(out.len().div_ceil(4) * 4, 0);
        u32s(&mut out, self.sections.len() as u32);
        for s in &self.sections {
            u32s(&mut out, s.kind as u32);
            u32s(&mut out, s.dtype.code());
            out.extend_from_slice(&s.offset.to_le_bytes());
            out.extend_from_slice(&s.bytes.to_le_bytes());
        }
        out.extend_from_slice(&self.record_bytes.to_le_bytes());
        out
    }

    /// Parses the record starting at `bytes[0]`; `bytes` runs to the end of the file. Every field is checked
    /// against the file's length and against the others, so a record that parses can be sliced without panics.
    pub fn decode(bytes: &[u8]) -> Result<Record, String> {
        let mut c = Cursor { bytes, at: 0 };
        let magic = c.take(4, "magic")?;
        if magic != MAGIC {
            return Err(format!("bad magic {magic:02x?} (expected \"OMEX\")"));
        }
        let version = c.u32("version")?;
        if version != RECORD_VERSION {
            return Err(format!("unsupported record version {version} (this omex reads {RECORD_VERSION})"));
        }
        let layer_id = c.u32("layer id")?;
        let code = c.u32("dtype")?;
        let dtype = DType::from_code(code).ok_or_else(|| format!("unknown dtype code {code}"))?;
        let ndim = c.u32("ndim")?;
        if ndim == 0 || ndim > MAX_NDIM {
            return Err(format!("ndim {ndim} out of range 1..={MAX_NDIM}"));
        }
        let numel = c.u32("element count")?;
        let shape = (0..ndim).map(|_| c.u32("shape")).collect::<Result<Vec<_>, _>>()?;
        let product = shape.iter().try_fold(1u32, |acc, &d| acc.checked_mul(d));
        if product != Some(numel) {
            return Err(format!("shape {shape:?} does not multiply to the element count {numel}"));
        }
        let group_size = c.u32("group size")?;
        let name_len = c.u32("name length")?;
        if name_len > MAX_NAME {
            return Err(format!("name length {name_len} exceeds {MAX_NAME}"));
        }
        let name = std::str::from_utf8(c.take(name_len as usize, "name")?)
            .map_err(|_| "tensor name is not valid UTF-8".to_string())?
            .to_string();
        let pad = c.at.div_ceil(4) * 4 - c.at;
        if c.take(pad, "name padding")?.iter().any(|&b| b != 0) {
            return Err(format!("tensor {name}: the padding after the name is not zero"));
        }
        let n_sections = c.u32("section count")?;
        if !(1..=3).contains(&n_sections) {
            return Err(format!("tensor {name}: section count {n_sections} out of range 1..=3"));
        }
        let mut sections = Vec::with_capacity(n_sections as usize);
        for _ in 0..n_sections {
            let kind = c.u32("section kind")?;
            let kind =
                SectionKind::from_code(kind).ok_or_else(|| format!("tensor {name}: unknown section kind {kind}"))?;
            let code = c.u32("section dtype")?;
            let sdtype =
                DType::from_code(code).ok_or_else(|| format!("tensor {name}: unknown section dtype {code}"))?;
            let offset = c.u64("section offset")?;
            let len = c.u64("section bytes")?;
            sections.push(Section { kind, dtype: sdtype, offset, bytes: len });
        }
        let record_bytes = c.u64("record length")?;
        let rec = Record { version, layer_id, dtype, shape, numel, group_size, name, sections, record_bytes };
        rec.check_against(bytes.len() as u64, c.at as u64)?;
        Ok(rec)
    }

    /// Checks the section table: exactly the sections the dtype needs, of the right sizes, aligned, not
    /// overlapping the descriptor or each other, inside the record, and the record inside the file.
    fn check_against(&self, available: u64, descriptor_end: u64) -> Result<(), String> {
        let expected = Record::new(self.layer_id, &self.name, self.dtype, &self.shape)
            .map_err(|e| format!("tensor {}: {e}", self.name))?;
        let name = &self.name;
        if self.group_size != expected.group_size {
            return Err(format!("tensor {name}: group size {} (expected {})", self.group_size, expected.group_size));
        }
        if self.sections.len() != expected.sections.len() {
            return Err(format!(
                "tensor {name}: {} sections (a {} record has {})",
                self.sections.len(),
                self.dtype,
                expected.sections.len()
            ));
        }
        if !self.record_bytes.is_multiple_of(ALIGN) || self.record_bytes > available {
            return Err(format!(
                "tensor {name}: record length {} is unaligned or runs past the end of the file ({available} bytes left)",
                self.record_bytes
            ));
        }
        let mut floor = descriptor_end;
        for (s, want) in self.sections.iter().zip(&expected.sections) {
            if s.kind != want.kind || s.dtype != want.dtype || s.bytes != want.bytes {
                return Err(format!(
                    "tensor {name}: section {:?} ({} bytes of {}) where {:?} ({} bytes of {}) belongs",
                    s.kind, s.bytes, s.dtype, want.kind, want.bytes, want.dtype
                ));
            }
            let end =
                s.offset.checked_add(s.bytes).ok_or_else(|| format!("tensor {name}: section offset overflows"))?;
            if s.offset % ALIGN != 0 || s.offset < floor || end > self.record_bytes {
                return Err(format!(
                    "tensor {name}: {:?} section at {}..{end} is unaligned, overlaps, or lies outside the record ({} bytes)",
                    s.kind, s.offset, self.record_bytes
                ));
            }
            floor = end;
        }
        Ok(())
    }
}

/// A little-endian reader that reports which field ran past the end.
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, field: &str) -> Result<&'a [u8], String> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len());
        let end = end.ok_or_else(|| format!("truncated: the {field} field runs past the end of the file"))?;
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn u32(&mut self, field: &str) -> Result<u32, String> {
        let b = self.take(4, field)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self, field: &str) -> Result<u64, String> {
        let b = self.take(8, field)?;
        Ok(u64::from_le_bytes(b.try_into().expect("took 8 bytes")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> (Record, Vec<u8>) {
        let rec = Record::new(3, "blk.3.attn_q", DType::Int4, &[64, 64]).unwrap();
        let mut bytes = rec.encode();
        bytes.resize(rec.record_bytes as usize, 0);
        (rec, bytes)
    }

    #[test]
    fn roundtrip_and_alignment() {
        let (rec, bytes) = sample();
        assert_eq!(Record::decode(&bytes).unwrap(), rec);
        assert_eq!(&bytes[..4], b"OMEX");
        assert_eq!(u32::from_le_bytes(bytes[12..16].try_into().unwrap()), 4);
        let kinds: Vec<_> = rec.sections.iter().map(|s| s.kind).collect();
        assert_eq!(kinds, [SectionKind::Scales, SectionKind::Mins, SectionKind::Data]);
        for s in &rec.sections {
            assert_eq!(s.offset % ALIGN, 0);
        }
        assert_eq!(rec.section(SectionKind::Data).unwrap().bytes, 64 * 64 / 2);
    }

    #[test]
    fn every_truncation_is_an_error() {
        let (_, bytes) = sample();
        for len in 0..bytes.len() {
            assert!(Record::decode(&bytes[..len]).is_err(), "truncated to {len} bytes parsed");
        }
    }

    #[test]
    fn corrupt_fields_are_named() {
        let (_, bytes) = sample();
        let corrupt = |at: usize, v: u32| {
            let mut b = bytes.clone();
            b[at..at + 4].copy_from_slice(&v.to_le_bytes());
            Record::decode(&b).unwrap_err()
        };
        assert!(corrupt(0, 0).contains("magic"));
        assert!(corrupt(12, 99).contains("dtype"));
        assert!(corrupt(16, 7).contains("ndim"));
        assert!(corrupt(24, 0x10000).contains("element count"));
        // Two dimensions whose product overflows u32.
        let mut b = bytes.clone();
        b[24..28].copy_from_slice(&0x10000u32.to_le_bytes());
        b[28..32].copy_from_slice(&0x10000u32.to_le_bytes());
        assert!(Record::decode(&b).unwrap_err().contains("multiply"));
    }
}
