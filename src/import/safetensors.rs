//! A safetensors reader: a u64 header length, a JSON header `{name: {dtype, shape, data_offsets}}` (and an
//! optional `__metadata__` of strings), then the data. Every tensor's extent is checked against its dtype and
//! shape and against the file, so a file that opens can be sliced without panics. Sharded checkpoints are
//! read through `model.safetensors.index.json`'s `weight_map`.

use crate::error::{Error, Result};
use crate::format::Blob;
use crate::quant::GgmlType;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// A header larger than this is refused (the format's own readers use the same bound).
pub const MAX_HEADER: u64 = 100 << 20;
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// Bytes per element of a safetensors dtype; `None` for a dtype the format does not define.
pub fn dtype_size(dtype: &str) -> Option<u64> {
    Some(match dtype {
        "BOOL" | "U8" | "I8" | "F8_E5M2" | "F8_E4M3" => 1,
        "I16" | "U16" | "F16" | "BF16" => 2,
        "I32" | "U32" | "F32" => 4,
        "I64" | "U64" | "F64" => 8,
        _ => return None,
    })
}

#[derive(Clone, Debug, PartialEq)]
pub struct StTensor {
    pub name: String,
    pub dtype: String,
    /// Outermost first (row-major), as safetensors writes it.
    pub shape: Vec<u64>,
    /// Absolute byte offset in the file.
    pub offset: u64,
    pub bytes: u64,
}

impl StTensor {
    /// The ggml type with the same byte layout (F32, F16, BF16), if omex converts this dtype.
    pub fn ggml_type(&self) -> Option<GgmlType> {
        match self.dtype.as_str() {
            "F32" => Some(GgmlType::F32),
            "F16" => Some(GgmlType::F16),
            "BF16" => Some(GgmlType::BF16),
            _ => None,
        }
    }

    pub fn numel(&self) -> u64 {
        self.shape.iter().product()
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Header {
    /// Sorted by offset.
    pub tensors: Vec<StTensor>,
    pub metadata: BTreeMap<String, String>,
    pub data_offset: u64,
}

impl Header {
    /// Parses the header of the safetensors file `bytes` (the whole file).
    pub fn parse(bytes: &[u8]) -> Result<Header, String> {
        let len =
            bytes.get(..8).ok_or_else(|| format!("truncated: {} bytes, not even a header length", bytes.len()))?;
        let n = u64::from_le_bytes(len.try_into().expect("8 bytes"));
        if n > MAX_HEADER {
            return Err(format!("header length {n} is absurd (more than {MAX_HEADER} bytes)"));
        }
        if n > bytes.len() as u64 - 8 {
            return Err(format!("header length {n} runs past the end of the file ({} bytes)", bytes.len()));
        }
        let json: Value =
            serde_json::from_slice(&bytes[8..8 + n as usize]).map_err(|e| format!("header is not valid JSON: {e}"))?;
        let obj = json.as_object().ok_or("header is not a JSON object")?;
        let data_offset = 8 + n;
        let data_len = bytes.len() as u64 - data_offset;
        let mut metadata = BTreeMap::new();
        let mut tensors = Vec::with_capacity(obj.len());
        for (name, v) in obj {
            if name == "__metadata__" {
                let m = v.as_object().ok_or("__metadata__ is not an object")?;
                for (k, v) in m {
                    let s = v.as_str().ok_or_else(|| format!("__metadata__ field {k:?} is not a string"))?;
                    metadata.insert(k.clone(), s.to_string());
                }
                continue;
            }
            let err = |what: String| format!("tensor {name:?}: {what}");
            let dtype = v.get("dtype").and_then(Value::as_str).ok_or_else(|| err("no dtype string".into()))?;
            let size = dtype_size(dtype).ok_or_else(|| err(format!("unknown dtype {dtype:?}")))?;
            let shape = v.get("shape").and_then(Value::as_array).ok_or_else(|| err("no shape array".into()))?;
            let shape: Vec<u64> = shape
                .iter()
                .map(Value::as_u64)
                .collect::<Option<_>>()
                .ok_or_else(|| err("shape is not a list of non-negative integers".into()))?;
            if shape.len() > 8 {
                return Err(err(format!("{} dimensions", shape.len())));
            }
            let offs =
                v.get("data_offsets").and_then(Value::as_array).ok_or_else(|| err("no data_offsets array".into()))?;
            let (begin, end) = match offs.as_slice() {
                [b, e] => (b.as_u64(), e.as_u64()),
                _ => (None, None),
            };
            let (Some(begin), Some(end)) = (begin, end) else {
                return Err(err("data_offsets is not [begin, end]".into()));
            };
            if begin > end || end > data_len {
                return Err(err(format!("data_offsets [{begin}, {end}] lie outside the {data_len} data bytes")));
            }
            let want = shape.iter().try_fold(size, |a, &d| a.checked_mul(d));
            if want != Some(end - begin) {
                return Err(err(format!("{dtype} {shape:?} needs {want:?} bytes, data_offsets give {}", end - begin)));
            }
            tensors.push(StTensor {
                name: name.clone(),
                dtype: dtype.to_string(),
                shape,
                offset: data_offset + begin,
                bytes: end - begin,
            });
        }
        tensors.sort_by_key(|t| t.offset);
        for w in tensors.windows(2) {
            if w[0].offset + w[0].bytes > w[1].offset {
                return Err(format!("tensors {:?} and {:?} overlap", w[0].name, w[1].name));
            }
        }
        Ok(Header { tensors, metadata, data_offset })
    }
}

/// One opened safetensors file.
pub struct SafetensorsFile {
    pub path: PathBuf,
    pub header: Header,
    blob: Blob,
}

impl SafetensorsFile {
    pub fn open(path: &Path) -> Result<SafetensorsFile> {
        let map = crate::files::map_regular(path).map_err(|e| Error::io(path, e))?;
        let header = Header::parse(&map).map_err(|e| Error::parse(path, e))?;
        Ok(SafetensorsFile { path: path.to_path_buf(), header, blob: Blob::Mmap(map) })
    }

    pub fn data(&self, t: &StTensor) -> &[u8] {
        &self.blob.bytes()[t.offset as usize..(t.offset + t.bytes) as usize]
    }
}

/// All the safetensors files of a checkpoint, with a name -> (file, tensor) map.
pub struct Checkpoint {
    pub files: Vec<SafetensorsFile>,
    by_name: HashMap<String, (usize, usize)>,
}

impl Checkpoint {
    /// Opens the checkpoint in `dir`: the shards named by `model.safetensors.index.json` when it exists,
    /// else every `*.safetensors` file.
    pub fn open_dir(dir: &Path) -> Result<Checkpoint> {
        let index = dir.join(INDEX_FILE);
        let mut wanted: Option<BTreeMap<String, String>> = None;
        let names: Vec<String> = if index.exists() {
            let v: Value = crate::format::reader::read_json(&index)?;
            let map = v
                .get("weight_map")
                .and_then(Value::as_object)
                .ok_or_else(|| Error::invalid(&index, "no weight_map object"))?;
            let mut m = BTreeMap::new();
            for (k, f) in map {
                let f = f
                    .as_str()
                    .ok_or_else(|| Error::invalid(&index, format!("weight_map[{k:?}] is not a file name")))?;
                if f.contains('/') || f.contains('\\') || f.contains("..") {
                    return Err(Error::invalid(
                        &index,
                        format!("weight_map[{k:?}] = {f:?} leaves the model directory"),
                    ));
                }
                m.insert(k.clone(), f.to_string());
            }
            let mut files: Vec<String> = m.values().cloned().collect();
            files.sort();
            files.dedup();
            wanted = Some(m);
            files
        } else {
            let rd = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
            let mut v = Vec::new();
            for e in rd {
                let e = e.map_err(|e| Error::io(dir, e))?;
                let n = e.file_name().to_string_lossy().to_string();
                if n.ends_with(".safetensors") {
                    v.push(n);
                }
            }
            v.sort();
            v
        };
        if names.is_empty() {
            return Err(Error::Usage(format!("{}: no *.safetensors files (and no {INDEX_FILE})", dir.display())));
        }
        let mut files = Vec::with_capacity(names.len());
        let mut by_name = HashMap::new();
        for (fi, n) in names.iter().enumerate() {
            let f = SafetensorsFile::open(&dir.join(n))?;
            for (ti, t) in f.header.tensors.iter().enumerate() {
                if let Some((prev, _)) = by_name.insert(t.name.clone(), (fi, ti)) {
                    return Err(Error::invalid(&f.path, format!("tensor {:?} is also in {}", t.name, names[prev])));
                }
            }
            files.push(f);
        }
        if let Some(m) = wanted {
            for (name, file) in &m {
                match by_name.get(name) {
                    Some(&(fi, _)) if &names[fi] == file => {}
                    _ => {
                        return Err(Error::invalid(
                            &index,
                            format!("weight_map says tensor {name:?} is in {file}, which does not hold it"),
                        ))
                    }
                }
            }
        }
        Ok(Checkpoint { files, by_name })
    }

    pub fn get(&self, name: &str) -> Option<(&SafetensorsFile, &StTensor)> {
        let &(fi, ti) = self.by_name.get(name)?;
        let f = &self.files[fi];
        Some((f, &f.header.tensors[ti]))
    }

    /// Every tensor name, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.by_name.keys().map(String::as_str).collect();
        v.sort();
        v
    }
}
