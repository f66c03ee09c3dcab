//! A tiny GGUF metadata reader for the tokenizer tests and bench (the real importer lives in omex's
//! `import` room; the tokenizer must not depend on it). Included with `#[path]` by
//! `tests/tokenizer_reference.rs` and `benches/tokenizer.rs`; as a test target of its own it has no tests.
#![allow(dead_code)]

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

use omex::tokenizer::GgufVocab;

/// A GGUF metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum Kv {
    Int(i64),
    Uint(u64),
    Float(f64),
    Bool(bool),
    Str(String),
    Array(Vec<Kv>),
}

fn bad(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

struct R<T: Read>(T);

impl<T: Read> R<T> {
    fn bytes<const N: usize>(&mut self) -> io::Result<[u8; N]> {
        let mut b = [0u8; N];
        self.0.read_exact(&mut b)?;
        Ok(b)
    }
    fn u32(&mut self) -> io::Result<u32> {
        Ok(u32::from_le_bytes(self.bytes()?))
    }
    fn u64(&mut self) -> io::Result<u64> {
        Ok(u64::from_le_bytes(self.bytes()?))
    }
    fn string(&mut self) -> io::Result<String> {
        let len = self.u64()?;
        if len > 1 << 28 {
            return Err(bad(format!("string of {len} bytes")));
        }
        let mut b = vec![0u8; len as usize];
        self.0.read_exact(&mut b)?;
        String::from_utf8(b).map_err(|e| bad(e.to_string()))
    }
    fn value(&mut self, ty: u32) -> io::Result<Kv> {
        Ok(match ty {
            0 => Kv::Uint(u8::from_le_bytes(self.bytes()?) as u64),
            1 => Kv::Int(i8::from_le_bytes(self.bytes()?) as i64),
            2 => Kv::Uint(u16::from_le_bytes(self.bytes()?) as u64),
            3 => Kv::Int(i16::from_le_bytes(self.bytes()?) as i64),
            4 => Kv::Uint(self.u32()? as u64),
            5 => Kv::Int(i32::from_le_bytes(self.bytes()?) as i64),
            6 => Kv::Float(f32::from_le_bytes(self.bytes()?) as f64),
            7 => Kv::Bool(self.bytes::<1>()?[0] != 0),
            8 => Kv::Str(self.string()?),
            9 => {
                let elem = self.u32()?;
                let n = self.u64()?;
                if n > 1 << 24 {
                    return Err(bad(format!("array of {n} values")));
                }
                Kv::Array((0..n).map(|_| self.value(elem)).collect::<io::Result<_>>()?)
            }
            10 => Kv::Uint(self.u64()?),
            11 => Kv::Int(i64::from_le_bytes(self.bytes()?)),
            12 => Kv::Float(f64::from_le_bytes(self.bytes()?)),
            t => return Err(bad(format!("unknown GGUF value type {t}"))),
        })
    }
}

/// Reads the metadata key-values of a GGUF file (version 2 or 3), stopping before the tensor infos.
pub fn read_kv(path: &Path) -> io::Result<HashMap<String, Kv>> {
    let mut r = R(BufReader::with_capacity(1 << 20, File::open(path)?));
    if &r.bytes::<4>()? != b"GGUF" {
        return Err(bad("not a GGUF file".into()));
    }
    let version = r.u32()?;
    if version < 2 {
        return Err(bad(format!("GGUF version {version}")));
    }
    let _tensors = r.u64()?;
    let n = r.u64()?;
    let mut out = HashMap::new();
    for _ in 0..n {
        let key = r.string()?;
        let ty = r.u32()?;
        out.insert(key, r.value(ty)?);
    }
    Ok(out)
}

/// The SmolLM2 GGUF: `$OMEX_SMOLLM2_GGUF`, else the omex model cache.
pub fn smollm2_path() -> PathBuf {
    match std::env::var_os("OMEX_SMOLLM2_GGUF") {
        Some(p) => PathBuf::from(p),
        None => {
            let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
            home.join(".cache/omex/models/SmolLM2-135M-Instruct.Q4_1.gguf")
        }
    }
}

/// The tokenizer fields of a GGUF file, as the converter hands them to `write_tokenizer_dir`.
pub fn read_vocab(path: &Path) -> io::Result<GgufVocab> {
    let kv = read_kv(path)?;
    let s = |k: &str| match kv.get(k) {
        Some(Kv::Str(s)) => Some(s.clone()),
        _ => None,
    };
    let id = |k: &str| match kv.get(k) {
        Some(Kv::Uint(u)) => Some(*u as u32),
        Some(Kv::Int(i)) => Some(*i as u32),
        _ => None,
    };
    let b = |k: &str| match kv.get(k) {
        Some(Kv::Bool(b)) => Some(*b),
        _ => None,
    };
    let arr = |k: &str| match kv.get(k) {
        Some(Kv::Array(a)) => a.clone(),
        _ => Vec::new(),
    };
    let strings =
        |k: &str| arr(k).into_iter().filter_map(|v| if let Kv::Str(s) = v { Some(s) } else { None }).collect();
    Ok(GgufVocab {
        model: s("tokenizer.ggml.model").unwrap_or_default(),
        pre: s("tokenizer.ggml.pre"),
        tokens: strings("tokenizer.ggml.tokens"),
        token_types: arr("tokenizer.ggml.token_type")
            .into_iter()
            .map(|v| match v {
                Kv::Int(i) => i as i32,
                Kv::Uint(u) => u as i32,
                _ => 1,
            })
            .collect(),
        scores: arr("tokenizer.ggml.scores")
            .into_iter()
            .map(|v| if let Kv::Float(f) = v { f as f32 } else { 0.0 })
            .collect(),
        merges: strings("tokenizer.ggml.merges"),
        bos_id: id("tokenizer.ggml.bos_token_id"),
        eos_id: id("tokenizer.ggml.eos_token_id"),
        unk_id: id("tokenizer.ggml.unknown_token_id"),
        pad_id: id("tokenizer.ggml.padding_token_id"),
        add_bos: b("tokenizer.ggml.add_bos_token"),
        add_eos: b("tokenizer.ggml.add_eos_token"),
        add_space_prefix: b("tokenizer.ggml.add_space_prefix"),
        chat_template: s("tokenizer.chat_template"),
    })
}

/// The Qwen2.5-Coder-0.5B GGUF: `$OMEX_QWEN05_GGUF`, else the omex model cache
/// (`scripts/fetch-model.sh qwen2.5-coder-0.5b` puts it there).
pub fn qwen05_path() -> PathBuf {
    match std::env::var_os("OMEX_QWEN05_GGUF") {
        Some(p) => PathBuf::from(p),
        None => {
            let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
            home.join(".cache/omex/models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf")
        }
    }
}
