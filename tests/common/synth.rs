//! Synthetic inputs for the import tests: a GGUF writer, a safetensors writer, a tiny byte-level BPE
//! vocabulary, random data, and a tiny llama in both formats. Written from the format specifications,
//! independently of omex's readers.
#![allow(dead_code)]

use std::path::Path;

/// xorshift64*: deterministic random numbers.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545F4914F6CDD1D)
    }

    /// Uniform in [-1, 1).
    pub fn uniform(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| (self.next_u64() >> 56) as u8).collect()
    }

    pub fn f32s(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform() * scale).collect()
    }
}

pub fn f16_bits(x: f32) -> [u8; 2] {
    half::f16::from_f32(x).to_bits().to_le_bytes()
}

/// A GGUF metadata value.
#[derive(Clone, Debug)]
pub enum GV {
    U32(u32),
    F32(f32),
    Bool(bool),
    Str(String),
    Strs(Vec<String>),
    I32s(Vec<i32>),
    F32s(Vec<f32>),
    /// A raw value type code and its encoded bytes.
    Raw(u32, Vec<u8>),
}

pub fn gstr(s: &str) -> Vec<u8> {
    let mut v = (s.len() as u64).to_le_bytes().to_vec();
    v.extend_from_slice(s.as_bytes());
    v
}

impl GV {
    fn encode(&self, out: &mut Vec<u8>) {
        let (code, bytes): (u32, Vec<u8>) = match self {
            GV::U32(v) => (4, v.to_le_bytes().to_vec()),
            GV::F32(v) => (6, v.to_le_bytes().to_vec()),
            GV::Bool(b) => (7, vec![*b as u8]),
            GV::Str(s) => (8, gstr(s)),
            GV::Strs(v) => {
                let mut b = 8u32.to_le_bytes().to_vec();
                b.extend((v.len() as u64).to_le_bytes());
                v.iter().for_each(|s| b.extend(gstr(s)));
                (9, b)
            }
            GV::I32s(v) => {
                let mut b = 5u32.to_le_bytes().to_vec();
                b.extend((v.len() as u64).to_le_bytes());
                v.iter().for_each(|x| b.extend(x.to_le_bytes()));
                (9, b)
            }
            GV::F32s(v) => {
                let mut b = 6u32.to_le_bytes().to_vec();
                b.extend((v.len() as u64).to_le_bytes());
                v.iter().for_each(|x| b.extend(x.to_le_bytes()));
                (9, b)
            }
            GV::Raw(code, b) => (*code, b.clone()),
        };
        out.extend(code.to_le_bytes());
        out.extend(bytes);
    }
}

/// One tensor of a GGUF being built: ggml dims (innermost first), ggml type code and data.
#[derive(Clone, Debug)]
pub struct GT {
    pub name: String,
    pub dims: Vec<u64>,
    pub ty: u32,
    pub data: Vec<u8>,
    /// Overrides the data offset written in the tensor info.
    pub offset: Option<u64>,
}

/// A GGUF file under construction.
#[derive(Clone, Debug)]
pub struct GgufBuilder {
    pub version: u32,
    pub kv: Vec<(String, GV)>,
    pub tensors: Vec<GT>,
    pub alignment: u64,
    pub n_kv_override: Option<u64>,
    pub n_tensors_override: Option<u64>,
}

impl Default for GgufBuilder {
    fn default() -> Self {
        GgufBuilder {
            version: 3,
            kv: Vec::new(),
            tensors: Vec::new(),
            alignment: 32,
            n_kv_override: None,
            n_tensors_override: None,
        }
    }
}

impl GgufBuilder {
    pub fn kv(mut self, k: &str, v: GV) -> Self {
        self.kv.push((k.to_string(), v));
        self
    }

    pub fn tensor(mut self, name: &str, dims: &[u64], ty: u32, data: Vec<u8>) -> Self {
        self.tensors.push(GT { name: name.to_string(), dims: dims.to_vec(), ty, data, offset: None });
        self
    }

    pub fn build(&self) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend(self.version.to_le_bytes());
        out.extend(self.n_tensors_override.unwrap_or(self.tensors.len() as u64).to_le_bytes());
        out.extend(self.n_kv_override.unwrap_or(self.kv.len() as u64).to_le_bytes());
        for (k, v) in &self.kv {
            out.extend(gstr(k));
            v.encode(&mut out);
        }
        let mut offset = 0u64;
        let mut offsets = Vec::new();
        for t in &self.tensors {
            out.extend(gstr(&t.name));
            out.extend((t.dims.len() as u32).to_le_bytes());
            t.dims.iter().for_each(|d| out.extend(d.to_le_bytes()));
            out.extend(t.ty.to_le_bytes());
            out.extend(t.offset.unwrap_or(offset).to_le_bytes());
            offsets.push(offset);
            offset = (offset + t.data.len() as u64).div_ceil(self.alignment) * self.alignment;
        }
        out.resize((out.len() as u64).div_ceil(self.alignment) as usize * self.alignment as usize, 0);
        let base = out.len();
        for (t, off) in self.tensors.iter().zip(offsets) {
            out.resize(base + off as usize, 0);
            out.extend(&t.data);
        }
        out
    }
}

/// A safetensors file of `(name, dtype, shape, data)`.
pub fn safetensors(tensors: &[(String, &str, Vec<u64>, Vec<u8>)]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::json!({"format": "pt"}));
    let mut at = 0usize;
    for (name, dtype, shape, data) in tensors {
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [at, at + data.len()]}),
        );
        at += data.len();
    }
    let mut h = serde_json::to_vec(&header).unwrap();
    h.resize(h.len().div_ceil(8) * 8, b' ');
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend(h);
    tensors.iter().for_each(|t| out.extend(&t.3));
    out
}

/// GPT-2's byte -> printable character map.
pub fn byte_chars() -> Vec<char> {
    let printable = |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
    let mut extra = 0;
    (0u32..256)
        .map(|b| {
            if printable(b) {
                char::from_u32(b).unwrap()
            } else {
                extra += 1;
                char::from_u32(255 + extra).unwrap()
            }
        })
        .collect()
}

/// A tiny byte-level BPE: `<|endoftext|>`, the 256 byte tokens, and a few merges. (tokens, merges)
pub fn tiny_vocab() -> (Vec<String>, Vec<String>) {
    let mut tokens = vec!["<|endoftext|>".to_string()];
    tokens.extend(byte_chars().into_iter().map(|c| c.to_string()));
    let merges = ["h e", "l l", "he ll", "o Ġ", "Ġ w"];
    for m in merges {
        tokens.push(m.replace(' ', ""));
    }
    (tokens, merges.iter().map(|s| s.to_string()).collect())
}

/// The tiny vocabulary as a Hugging Face tokenizer.json.
pub fn tiny_tokenizer_json() -> String {
    let (tokens, merges) = tiny_vocab();
    let vocab: serde_json::Map<String, serde_json::Value> =
        tokens.iter().enumerate().map(|(i, t)| (t.clone(), serde_json::json!(i))).collect();
    serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [{"id": 0, "content": "<|endoftext|>", "single_word": false, "lstrip": false, "rstrip": false,
                          "normalized": false, "special": true}],
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocab, "merges": merges}
    })
    .to_string()
}

/// ggml type codes used by the tests.
pub mod ty {
    pub const F32: u32 = 0;
    pub const F16: u32 = 1;
    pub const Q4_0: u32 = 2;
    pub const Q4_1: u32 = 3;
    pub const Q5_0: u32 = 6;
    pub const Q8_0: u32 = 8;
    pub const Q4_K: u32 = 12;
    pub const Q5_K: u32 = 13;
    pub const Q6_K: u32 = 14;
    pub const BF16: u32 = 30;
}

/// Random data of ggml type `t` for `n` values, with finite, moderate block parameters.
pub fn ggml_data(rng: &mut Rng, t: u32, n: usize) -> Vec<u8> {
    let (block_values, block_bytes, params): (usize, usize, &[usize]) = match t {
        ty::F32 => return rng.f32s(n, 0.5).iter().flat_map(|v| v.to_le_bytes()).collect(),
        ty::F16 => return rng.f32s(n, 0.5).iter().flat_map(|v| f16_bits(*v)).collect(),
        ty::BF16 => return rng.f32s(n, 0.5).iter().flat_map(|v| ((v.to_bits() >> 16) as u16).to_le_bytes()).collect(),
        ty::Q4_0 => (32, 18, &[0]),
        ty::Q4_1 => (32, 20, &[0, 2]),
        ty::Q5_0 => (32, 22, &[0]),
        ty::Q8_0 => (32, 34, &[0]),
        ty::Q4_K => (256, 144, &[0, 2]),
        ty::Q5_K => (256, 176, &[0, 2]),
        ty::Q6_K => (256, 210, &[208]),
        other => panic!("no generator for ggml type {other}"),
    };
    assert_eq!(n % block_values, 0);
    let mut out = Vec::new();
    for _ in 0..n / block_values {
        let mut b = rng.bytes(block_bytes);
        for &p in params {
            b[p..p + 2].copy_from_slice(&f16_bits(rng.uniform() * 0.02));
        }
        out.extend(b);
    }
    out
}

/// Hyper-parameters of the tiny llama.
pub const HIDDEN: u64 = 256;
pub const FFN: u64 = 512;
pub const HEADS: u32 = 4;
pub const KV_HEADS: u32 = 2;
pub const LAYERS: usize = 2;

/// A tiny llama GGUF using every type omex converts: (ggml name, ggml dims, type) per tensor.
pub fn tiny_llama_tensors(untied: bool) -> Vec<(String, Vec<u64>, u32)> {
    let vocab = tiny_vocab().0.len() as u64;
    let kv = HIDDEN / HEADS as u64 * KV_HEADS as u64;
    let mut v = vec![("token_embd.weight".to_string(), vec![HIDDEN, vocab], ty::Q8_0)];
    let per_layer = [
        [ty::Q4_0, ty::Q4_1, ty::F16, ty::F32, ty::Q4_K, ty::Q5_K, ty::Q6_K],
        [ty::Q4_1, ty::Q5_0, ty::BF16, ty::Q8_0, ty::Q4_1, ty::Q4_1, ty::Q4_1],
    ];
    for (i, types) in per_layer.iter().enumerate() {
        let n = |s: &str| format!("blk.{i}.{s}.weight");
        v.push((n("attn_norm"), vec![HIDDEN], ty::F32));
        v.push((n("attn_q"), vec![HIDDEN, HIDDEN], types[0]));
        v.push((n("attn_k"), vec![HIDDEN, kv], types[1]));
        v.push((n("attn_v"), vec![HIDDEN, kv], types[2]));
        v.push((n("attn_output"), vec![HIDDEN, HIDDEN], types[3]));
        v.push((n("ffn_norm"), vec![HIDDEN], ty::F32));
        v.push((n("ffn_gate"), vec![HIDDEN, FFN], types[4]));
        v.push((n("ffn_up"), vec![HIDDEN, FFN], types[5]));
        v.push((n("ffn_down"), vec![FFN, HIDDEN], types[6]));
    }
    v.push(("output_norm.weight".to_string(), vec![HIDDEN], ty::F32));
    if untied {
        v.push(("output.weight".to_string(), vec![HIDDEN, vocab], ty::Q4_1));
    }
    v
}

pub fn tiny_llama_gguf(seed: u64, untied: bool) -> GgufBuilder {
    let (tokens, merges) = tiny_vocab();
    let mut b = GgufBuilder::default()
        .kv("general.architecture", GV::Str("llama".into()))
        .kv("general.name", GV::Str("tiny llama".into()))
        .kv("llama.block_count", GV::U32(LAYERS as u32))
        .kv("llama.context_length", GV::U32(512))
        .kv("llama.embedding_length", GV::U32(HIDDEN as u32))
        .kv("llama.feed_forward_length", GV::U32(FFN as u32))
        .kv("llama.attention.head_count", GV::U32(HEADS))
        .kv("llama.attention.head_count_kv", GV::U32(KV_HEADS))
        .kv("llama.rope.freq_base", GV::F32(10000.0))
        .kv("llama.attention.layer_norm_rms_epsilon", GV::F32(1e-5))
        .kv("tokenizer.ggml.model", GV::Str("gpt2".into()))
        .kv("tokenizer.ggml.pre", GV::Str("gpt2".into()))
        .kv("tokenizer.ggml.token_type", GV::I32s((0..tokens.len()).map(|i| if i == 0 { 3 } else { 1 }).collect()))
        .kv("tokenizer.ggml.tokens", GV::Strs(tokens))
        .kv("tokenizer.ggml.merges", GV::Strs(merges))
        .kv("tokenizer.ggml.bos_token_id", GV::U32(0))
        .kv("tokenizer.ggml.eos_token_id", GV::U32(0));
    let mut rng = Rng(seed);
    for (name, dims, t) in tiny_llama_tensors(untied) {
        let n = dims.iter().product::<u64>() as usize;
        let data = ggml_data(&mut rng, t, n);
        b = b.tensor(&name, &dims, t, data);
    }
    b
}

/// Writes `bytes` to `dir/name` and returns the path.
pub fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

/// A fresh empty directory under the test target's tmp dir.
pub fn tmp_dir(name: &str) -> std::path::PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Runs the omex binary; returns (success, stdout, stderr).
pub fn omex(args: &[&std::ffi::OsStr]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_omex")).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[macro_export]
macro_rules! omex {
    ($($a:expr),* $(,)?) => { synth::omex(&[$(std::ffi::OsStr::new(&$a)),*]) };
}

/// An independent minimal GGUF walk (no omex code): every tensor's (name, ggml dims, type code, absolute
/// data offset). Panics on anything malformed; only for well-formed test inputs.
pub fn gguf_tensor_table(b: &[u8]) -> Vec<(String, Vec<u64>, u32, usize)> {
    let mut at = 0usize;
    let u32_ = |at: &mut usize| {
        *at += 4;
        u32::from_le_bytes(b[*at - 4..*at].try_into().unwrap())
    };
    let u64_ = |at: &mut usize| {
        *at += 8;
        u64::from_le_bytes(b[*at - 8..*at].try_into().unwrap())
    };
    fn skip_value(b: &[u8], at: &mut usize, t: u32) {
        let size = |t: u32| match t {
            0 | 1 | 7 => 1,
            2 | 3 => 2,
            4..=6 => 4,
            10..=12 => 8,
            _ => 0,
        };
        match t {
            8 => {
                let n = u64::from_le_bytes(b[*at..*at + 8].try_into().unwrap()) as usize;
                *at += 8 + n;
            }
            9 => {
                let et = u32::from_le_bytes(b[*at..*at + 4].try_into().unwrap());
                let n = u64::from_le_bytes(b[*at + 4..*at + 12].try_into().unwrap());
                *at += 12;
                for _ in 0..n {
                    skip_value(b, at, et);
                }
            }
            t => *at += size(t),
        }
    }
    assert_eq!(&b[..4], b"GGUF");
    at += 4;
    let _version = u32_(&mut at);
    let n_tensors = u64_(&mut at);
    let n_kv = u64_(&mut at);
    let mut alignment = 32u64;
    for _ in 0..n_kv {
        let klen = u64_(&mut at) as usize;
        let key = std::str::from_utf8(&b[at..at + klen]).unwrap().to_string();
        at += klen;
        let t = u32_(&mut at);
        if key == "general.alignment" {
            alignment = u32::from_le_bytes(b[at..at + 4].try_into().unwrap()) as u64;
        }
        skip_value(b, &mut at, t);
    }
    let mut infos = Vec::new();
    for _ in 0..n_tensors {
        let nlen = u64_(&mut at) as usize;
        let name = std::str::from_utf8(&b[at..at + nlen]).unwrap().to_string();
        at += nlen;
        let nd = u32_(&mut at);
        let dims: Vec<u64> = (0..nd).map(|_| u64_(&mut at)).collect();
        let t = u32_(&mut at);
        let off = u64_(&mut at);
        infos.push((name, dims, t, off));
    }
    let data = (at as u64).div_ceil(alignment) * alignment;
    infos.into_iter().map(|(n, d, t, o)| (n, d, t, (data + o) as usize)).collect()
}

/// A tensor of a converted model, dequantized with the kernels' scalar reference (`Matrix::dequant_row`);
/// 1-D F32 tensors are read directly. Returns (dtype, shape, values).
pub fn omex_values(dir: &omex::format::ModelDir, name: &str) -> (omex::format::DType, Vec<u32>, Vec<f32>) {
    use kernels_cpu::{Matrix, Weights};
    use omex::format::{DType, SectionKind};
    let t = dir.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
    let shape = t.entry.shape.clone();
    let cols = *shape.last().unwrap() as usize;
    let rows = t.entry.numel() as usize / cols;
    let data = t.data();
    let u16s = |k| -> &[u16] { bytemuck::cast_slice(t.section(k).unwrap()) };
    let w = match t.entry.dtype {
        DType::F32 => Weights::F32(bytemuck::cast_slice(data)),
        DType::F16 => Weights::F16(bytemuck::cast_slice(data)),
        DType::Int8 => Weights::Int8 { q: bytemuck::cast_slice(data), scales: u16s(SectionKind::Scales) },
        DType::Int4 => Weights::Int4 { q: data, scales: u16s(SectionKind::Scales), mins: u16s(SectionKind::Mins) },
        DType::Ternary => Weights::Ternary { q: data, scales: u16s(SectionKind::Scales) },
        DType::Bf16 => panic!("{name}: bf16 record"),
        DType::Q4K => Weights::Q4K(data),
        DType::Q5K => Weights::Q5K(data),
        DType::Q6K => Weights::Q6K(data),
        DType::Q5_0 => Weights::Q5_0(data),
        DType::Q5_1 => Weights::Q5_1(data),
    };
    let m = Matrix::new(rows, cols, w).unwrap();
    let mut out = vec![0f32; rows * cols];
    for (r, row) in out.chunks_exact_mut(cols).enumerate() {
        m.dequant_row(r, row);
    }
    (t.entry.dtype, shape, out)
}

/// The largest error a quantizer of `dtype` may make on a group of 32 source values (f16 rounding of the
/// parameters included); `None` where there is no simple bound (ternary).
pub fn quant_bound(dtype: omex::format::DType, group: &[f32]) -> Option<f32> {
    use omex::format::DType;
    let absmax = group.iter().fold(0f32, |a, v| a.max(v.abs()));
    let (mn, mx) = group.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
    // f16 rounding: a relative 2^-10 at most (round up or down), or 2^-24 absolute for subnormals.
    let (rel, abs) = (1.0 + 2f32.powi(-10), 2f32.powi(-24));
    let slack = 1.0 + 1e-5;
    match dtype {
        DType::F32 => Some(0.0),
        DType::F16 => Some(absmax * 2f32.powi(-11) + abs),
        DType::Int8 => Some(0.5 * (absmax / 127.0 * rel + abs) * slack),
        DType::Int4 => {
            let span = mx - mn + mn.abs() * 2f32.powi(-10) + abs;
            Some(0.5 * (span / 15.0 * rel + abs) * slack)
        }
        _ => None,
    }
}
