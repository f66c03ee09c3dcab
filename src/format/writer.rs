//! Writes `weights/*.bin` files record by record, padding so every record and section is ALIGN-aligned.

use super::dtype::{DType, SectionKind};
use super::index::TensorEntry;
use super::record::{Record, ALIGN};
use crate::error::{Error, Result};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

pub struct LayerFileWriter {
    path: PathBuf,
    /// File name relative to `weights/`, as the index records it.
    file_name: String,
    layer_id: u32,
    out: BufWriter<std::fs::File>,
    at: u64,
}

impl LayerFileWriter {
    pub fn create(weights_dir: &Path, file_name: &str, layer_id: u32) -> Result<Self> {
        let path = weights_dir.join(file_name);
        let f = std::fs::File::create(&path).map_err(|e| Error::io(&path, e))?;
        Ok(LayerFileWriter {
            path,
            file_name: file_name.into(),
            layer_id,
            out: BufWriter::with_capacity(1 << 20, f),
            at: 0,
        })
    }

    /// Appends one tensor. `sections` gives the bytes of each section the dtype needs, in any order; their
    /// lengths are checked against the layout of `shape`.
    pub fn write_tensor(
        &mut self,
        name: &str,
        dtype: DType,
        shape: &[u32],
        sections: &[(SectionKind, &[u8])],
    ) -> Result<TensorEntry> {
        let rec = Record::new(self.layer_id, name, dtype, shape).map_err(|e| Error::invalid(&self.path, e))?;
        if sections.len() != rec.sections.len() {
            return Err(Error::invalid(
                &self.path,
                format!("tensor {name}: {} sections given, {dtype} needs {}", sections.len(), rec.sections.len()),
            ));
        }
        debug_assert_eq!(self.at % ALIGN, 0);
        let start = self.at;
        self.put(&rec.encode())?;
        for s in &rec.sections {
            let bytes = sections.iter().find(|(k, _)| *k == s.kind).map(|(_, b)| *b);
            let bytes = bytes
                .ok_or_else(|| Error::invalid(&self.path, format!("tensor {name}: missing {:?} section", s.kind)))?;
            if bytes.len() as u64 != s.bytes {
                return Err(Error::invalid(
                    &self.path,
                    format!("tensor {name}: {:?} section has {} bytes, layout needs {}", s.kind, bytes.len(), s.bytes),
                ));
            }
            self.pad_to(start + s.offset)?;
            self.put(bytes)?;
        }
        self.pad_to(start + rec.record_bytes)?;
        Ok(TensorEntry::from_record(&rec, &self.file_name, start))
    }

    fn put(&mut self, bytes: &[u8]) -> Result<()> {
        self.out.write_all(bytes).map_err(|e| Error::io(&self.path, e))?;
        self.at += bytes.len() as u64;
        Ok(())
    }

    fn pad_to(&mut self, offset: u64) -> Result<()> {
        const ZEROS: [u8; ALIGN as usize] = [0; ALIGN as usize];
        while self.at < offset {
            let n = (offset - self.at).min(ALIGN) as usize;
            self.put(&ZEROS[..n])?;
        }
        Ok(())
    }

    pub fn finish(mut self) -> Result<u64> {
        self.out.flush().map_err(|e| Error::io(&self.path, e))?;
        Ok(self.at)
    }
}
