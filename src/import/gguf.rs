//! A GGUF (v2, v3) reader. The file is mmapped; the header (metadata key/values and tensor infos) is parsed
//! eagerly with every read bounds-checked, so a file that opens can be sliced without panics: each tensor's
//! data lies inside the file, aligned, and no two tensors overlap.
//!
//! Layout (little-endian): magic "GGUF", version u32, tensor count u64, KV count u64, the KVs (key string,
//! value type u32, value), the tensor infos (name string, n_dims u32, dims u64 each, innermost first, ggml
//! type u32, offset u64 relative to the data section), then the data section at the next multiple of
//! `general.alignment` (default 32). Strings are a u64 length and UTF-8 bytes; arrays a u32 element type,
//! a u64 count and the elements.

use crate::error::{Error, Result};
use crate::format::Blob;
use crate::quant::GgmlType;
use std::collections::HashSet;
use std::path::{Path, PathBuf};

pub use super::gguf_value::Value;

pub const MAGIC: [u8; 4] = *b"GGUF";
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml's GGML_MAX_DIMS.
pub const MAX_DIMS: u32 = 4;
/// Arrays of arrays are legal; deeper nesting than this is refused.
const MAX_DEPTH: u32 = 3;

/// One tensor's description. `dims` are in ggml order (innermost, contiguous dimension first).
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    pub ty: GgmlType,
    pub dims: Vec<u64>,
    /// Absolute byte offset of the data in the file.
    pub offset: u64,
    pub bytes: u64,
}

impl TensorInfo {
    pub fn numel(&self) -> u64 {
        self.dims.iter().product()
    }

    /// The shape outermost first (row-major): ggml ne=[576, 49152] is `[49152, 576]`.
    pub fn shape(&self) -> Vec<u64> {
        self.dims.iter().rev().copied().collect()
    }
}

/// The parsed header of a GGUF file.
#[derive(Clone, Debug, PartialEq)]
pub struct Header {
    pub version: u32,
    pub kv: Vec<(String, Value)>,
    pub tensors: Vec<TensorInfo>,
    pub alignment: u64,
    /// Absolute offset of the data section.
    pub data_offset: u64,
}

/// Little-endian reads that fail, instead of panicking, past the end.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn left(&self) -> u64 {
        (self.bytes.len() - self.at) as u64
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8], String> {
        if n > self.left() {
            return Err(format!("truncated: needs {n} bytes at offset {}, the file has {} left", self.at, self.left()));
        }
        let s = &self.bytes[self.at..self.at + n as usize];
        self.at += n as usize;
        Ok(s)
    }

    fn arr<const N: usize>(&mut self) -> Result<[u8; N], String> {
        Ok(self.take(N as u64)?.try_into().expect("took N bytes"))
    }

    fn u32(&mut self) -> Result<u32, String> {
        self.arr().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Result<u64, String> {
        self.arr().map(u64::from_le_bytes)
    }

    fn string(&mut self) -> Result<String, String> {
        let len = self.u64()?;
        if len > self.left() {
            return Err(format!(
                "string length {len} at offset {} runs past the end of the file (truncated or corrupt)",
                self.at - 8
            ));
        }
        let at = self.at;
        let b = self.take(len)?;
        String::from_utf8(b.to_vec()).map_err(|e| format!("string at offset {at} is not valid UTF-8 ({e})"))
    }

    /// The smallest encoding of one value of type `code`, to bound counts before allocating.
    fn min_size(code: u32) -> u64 {
        match code {
            0 | 1 | 7 => 1,
            2 | 3 => 2,
            4..=6 => 4,
            8 | 10..=12 => 8,
            _ => 12,
        }
    }

    fn value(&mut self, code: u32, depth: u32) -> Result<Value, String> {
        Ok(match code {
            0 => Value::U8(self.arr::<1>()?[0]),
            1 => Value::I8(self.arr::<1>()?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.arr()?)),
            3 => Value::I16(i16::from_le_bytes(self.arr()?)),
            4 => Value::U32(self.u32()?),
            5 => Value::I32(i32::from_le_bytes(self.arr()?)),
            6 => Value::F32(f32::from_le_bytes(self.arr()?)),
            7 => match self.arr::<1>()?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(format!("bool byte {b} is neither 0 nor 1")),
            },
            8 => Value::String(self.string()?),
            9 => {
                if depth >= MAX_DEPTH {
                    return Err(format!("arrays nested deeper than {MAX_DEPTH}"));
                }
                let elem = self.u32()?;
                let count = self.u64()?;
                if elem > 12 {
                    return Err(format!("unknown array element type {elem}"));
                }
                let need = count.checked_mul(Self::min_size(elem));
                if need.is_none_or(|n| n > self.left()) {
                    return Err(format!(
                        "array count {count} cannot fit in the {} bytes left (truncated or corrupt file)",
                        self.left()
                    ));
                }
                let mut v = Vec::with_capacity(count as usize);
                for i in 0..count {
                    v.push(self.value(elem, depth + 1).map_err(|e| format!("element {i}: {e}"))?);
                }
                Value::Array(v)
            }
            10 => Value::U64(self.u64()?),
            11 => Value::I64(i64::from_le_bytes(self.arr()?)),
            12 => Value::F64(f64::from_le_bytes(self.arr()?)),
            t => return Err(format!("unknown value type {t}")),
        })
    }
}

impl Header {
    /// Parses the header of the GGUF file `bytes` (the whole file: tensor extents are checked against it).
    pub fn parse(bytes: &[u8]) -> Result<Header, String> {
        let mut r = Reader { bytes, at: 0 };
        let magic = r.arr::<4>().map_err(|_| format!("truncated: {} bytes, not even a GGUF magic", bytes.len()))?;
        if magic != MAGIC {
            return Err(format!("bad magic {magic:02x?}: not a GGUF file (expected \"GGUF\")"));
        }
        let version = r.u32().map_err(|e| format!("version: {e}"))?;
        match version {
            2 | 3 => {}
            1 => {
                return Err(
                    "unsupported GGUF version 1 (omex reads versions 2 and 3; re-convert with a current llama.cpp)"
                        .into(),
                )
            }
            v if v != 0 && v.swap_bytes() <= 3 => {
                return Err(format!("big-endian GGUF (version {}) is not supported", v.swap_bytes()))
            }
            v => return Err(format!("unsupported GGUF version {v} (omex reads versions 2 and 3)")),
        }
        let n_tensors = r.u64().map_err(|e| format!("tensor count: {e}"))?;
        let n_kv = r.u64().map_err(|e| format!("kv count: {e}"))?;
        // A KV takes at least 13 bytes (key length, type, one byte of value), a tensor info at least 32.
        if n_kv > r.left() / 13 {
            return Err(format!(
                "kv count {n_kv} is absurd: it cannot fit in the {} bytes left (truncated or corrupt file)",
                r.left()
            ));
        }
        if n_tensors > r.left() / 32 {
            return Err(format!(
                "tensor count {n_tensors} is absurd: it cannot fit in the {} bytes left (truncated or corrupt file)",
                r.left()
            ));
        }
        let mut kv: Vec<(String, Value)> = Vec::with_capacity(n_kv as usize);
        let mut keys = HashSet::new();
        for i in 0..n_kv {
            let key = r.string().map_err(|e| format!("key of kv {i}: {e}"))?;
            let code = r.u32().map_err(|e| format!("key {key:?}: value type: {e}"))?;
            let value = r.value(code, 0).map_err(|e| format!("key {key:?}: {e}"))?;
            if !keys.insert(key.clone()) {
                return Err(format!("key {key:?} appears twice"));
            }
            kv.push((key, value));
        }
        let alignment = match kv.iter().find(|(k, _)| k == "general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some((_, Value::U32(a))) if a.is_power_of_two() => *a as u64,
            Some((_, v)) => return Err(format!("key \"general.alignment\": {v:?} is not a power of two u32")),
        };
        let mut infos = Vec::with_capacity(n_tensors as usize);
        let mut names = HashSet::new();
        for i in 0..n_tensors {
            let name = r.string().map_err(|e| format!("name of tensor {i}: {e}"))?;
            let err = |e: String| format!("tensor {name:?}: {e}");
            let n_dims = r.u32().map_err(|e| err(format!("n_dims: {e}")))?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(err(format!("n_dims {n_dims} out of range 1..={MAX_DIMS}")));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                dims.push(r.u64().map_err(|e| err(format!("dims: {e}")))?);
            }
            let code = r.u32().map_err(|e| err(format!("type: {e}")))?;
            let ty = GgmlType::from_code(code).ok_or_else(|| err(format!("unknown ggml type {code}")))?;
            let offset = r.u64().map_err(|e| err(format!("offset: {e}")))?;
            let numel = dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d)).filter(|&n| n <= i64::MAX as u64);
            let numel = numel.ok_or_else(|| err(format!("dimensions {dims:?} overflow when multiplied")))?;
            if dims[0] % ty.block_values() as u64 != 0 {
                return Err(err(format!(
                    "rows of {} values are not a whole number of {ty} blocks of {}",
                    dims[0],
                    ty.block_values()
                )));
            }
            let size = ty.bytes_for(numel).ok_or_else(|| err(format!("byte size of {dims:?} {ty} overflows")))?;
            if offset % alignment != 0 {
                return Err(err(format!("data offset {offset} is not a multiple of the alignment {alignment}")));
            }
            if !names.insert(name.clone()) {
                return Err(format!("tensor {name:?} appears twice"));
            }
            infos.push((name, ty, dims, offset, size));
        }
        let data_offset = (r.at as u64).div_ceil(alignment) * alignment;
        let mut tensors = Vec::with_capacity(infos.len());
        for (name, ty, dims, offset, size) in infos {
            let start = data_offset.checked_add(offset);
            let end = start.and_then(|s| s.checked_add(size));
            match (start, end) {
                (Some(start), Some(end)) if end <= bytes.len() as u64 => tensors.push(TensorInfo { name, ty, dims, offset: start, bytes: size }),
                _ => {
                    return Err(format!(
                        "tensor {name:?}: data at offset {offset} ({size} bytes) runs past the end of the file ({} bytes, data section at {data_offset})",
                        bytes.len()
                    ))
                }
            }
        }
        let mut by_offset: Vec<&TensorInfo> = tensors.iter().collect();
        by_offset.sort_by_key(|t| t.offset);
        for w in by_offset.windows(2) {
            if w[0].offset + w[0].bytes > w[1].offset {
                return Err(format!("tensors {:?} and {:?} overlap", w[0].name, w[1].name));
            }
        }
        Ok(Header { version, kv, tensors, alignment, data_offset })
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.kv.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }
}

/// An opened GGUF file: its header and its bytes (mmapped).
pub struct GgufFile {
    pub path: PathBuf,
    pub header: Header,
    blob: Blob,
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<GgufFile> {
        let map = crate::files::map_regular(path).map_err(|e| Error::io(path, e))?;
        Self::from_blob(path, Blob::Mmap(map))
    }

    /// A GGUF file already in memory (`path` names it in errors).
    pub fn from_bytes(path: &Path, bytes: &[u8]) -> Result<GgufFile> {
        Self::from_blob(path, Blob::from_bytes(bytes))
    }

    fn from_blob(path: &Path, blob: Blob) -> Result<GgufFile> {
        let header = Header::parse(blob.bytes()).map_err(|e| Error::parse(path, e))?;
        Ok(GgufFile { path: path.to_path_buf(), header, blob })
    }

    /// The bytes of a tensor of this file's header (in bounds: checked when the header was parsed).
    pub fn data(&self, t: &TensorInfo) -> &[u8] {
        &self.blob.bytes()[t.offset as usize..(t.offset + t.bytes) as usize]
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.header.get(key)
    }

    fn typed<'a, T>(&'a self, key: &str, want: &str, conv: impl Fn(&'a Value) -> Option<T>) -> Result<Option<T>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => conv(v).map(Some).ok_or_else(|| {
                Error::parse(
                    &self.path,
                    format!("metadata key {key:?}: expected {want}, found {} {v:?}", v.type_name()),
                )
            }),
        }
    }

    /// An optional non-negative integer key that must fit a u32.
    pub fn opt_u32(&self, key: &str) -> Result<Option<u32>> {
        self.typed(key, "a u32", |v| v.as_u64().and_then(|n| u32::try_from(n).ok()))
    }

    pub fn opt_f32(&self, key: &str) -> Result<Option<f32>> {
        self.typed(key, "a number", |v| v.as_f64().map(|f| f as f32))
    }

    pub fn opt_str(&self, key: &str) -> Result<Option<&str>> {
        self.typed(key, "a string", Value::as_str)
    }

    pub fn opt_bool(&self, key: &str) -> Result<Option<bool>> {
        self.typed(key, "a bool", Value::as_bool)
    }

    pub fn req_u32(&self, key: &str) -> Result<u32> {
        self.opt_u32(key)?.ok_or_else(|| self.missing(key))
    }

    pub fn req_f32(&self, key: &str) -> Result<f32> {
        self.opt_f32(key)?.ok_or_else(|| self.missing(key))
    }

    pub fn req_str(&self, key: &str) -> Result<&str> {
        self.opt_str(key)?.ok_or_else(|| self.missing(key))
    }

    /// An optional array whose elements all convert with `conv`.
    pub fn opt_array<T>(&self, key: &str, want: &str, conv: impl Fn(&Value) -> Option<T>) -> Result<Option<Vec<T>>> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        let arr = v.as_array().ok_or_else(|| {
            Error::parse(&self.path, format!("metadata key {key:?}: expected an array, found {}", v.type_name()))
        })?;
        arr.iter()
            .enumerate()
            .map(|(i, e)| {
                conv(e).ok_or_else(|| {
                    Error::parse(
                        &self.path,
                        format!("metadata key {key:?}: element {i}: expected {want}, found {}", e.type_name()),
                    )
                })
            })
            .collect::<Result<Vec<T>>>()
            .map(Some)
    }

    fn missing(&self, key: &str) -> Error {
        Error::parse(&self.path, format!("metadata key {key:?} is missing"))
    }
}
