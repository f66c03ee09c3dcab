//! A random tiny llama (or gemma3) written as a `model.omex/` directory with `LayerFileWriter` and `Transformer::to_graph`,
//! every matrix role in a chosen layout, for engine tests that need no converter and no download.
#![allow(dead_code)]

use omex::format::graph::GRAPH_FILE;
use omex::format::metadata::{Metadata, QuantSummary, Requirements, METADATA_FILE, OMEX_VERSION};
use omex::format::record::{EMBEDDING_LAYER, HEAD_LAYER};
use omex::format::{DType, LayerFileWriter, WeightIndex};
use omex::graph::{Activation, BlockWeights, Norm, RopeConfig, RopeStyle, SlidingWindow, Transformer};
use std::path::Path;

/// The shape and layouts of a tiny model.
#[derive(Clone, Debug)]
pub struct TinySpec {
    pub vocab: u32,
    pub hidden: u32,
    pub intermediate: u32,
    pub n_heads: u32,
    pub n_kv_heads: u32,
    pub head_dim: u32,
    pub layers: usize,
    pub context: u32,
    pub rope_style: RopeStyle,
    /// Rotated dims per head (`head_dim` for full RoPE).
    pub rope_dims: u32,
    pub tied: bool,
    pub qkv_bias: bool,
    /// Layouts of the embedding, the attention matrices, the FFN matrices and the (untied) head.
    pub embed: DType,
    pub attn: DType,
    pub ffn: DType,
    pub head: DType,
    /// A gemma3 block (q/k norms, post norms, GeGLU, a scaled embedding) with this sliding window.
    pub gemma3: Option<SlidingWindow>,
}

impl TinySpec {
    /// A small GQA model with int4 matrices and an int8 embedding.
    pub fn small() -> TinySpec {
        TinySpec {
            vocab: 96,
            hidden: 64,
            intermediate: 160,
            n_heads: 4,
            n_kv_heads: 2,
            head_dim: 16,
            layers: 2,
            context: 64,
            rope_style: RopeStyle::Half,
            rope_dims: 16,
            tied: true,
            qkv_bias: false,
            embed: DType::Int8,
            attn: DType::Int4,
            ffn: DType::Int4,
            head: DType::F16,
            gemma3: None,
        }
    }
}

/// xorshift64*.
struct Rng(u64);

impl Rng {
    fn uniform(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let v = self.0.wrapping_mul(0x2545F4914F6CDD1D);
        ((v >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    fn vec(&mut self, n: usize, scale: f32, offset: f32) -> Vec<f32> {
        (0..n).map(|_| offset + scale * self.uniform()).collect()
    }
}

fn put(w: &mut LayerFileWriter, index: &mut WeightIndex, name: &str, dtype: DType, shape: &[u32], values: &[f32]) {
    let packed = omex::quant::quantize(values, dtype).expect("quantize");
    let entry = w.write_tensor(name, dtype, shape, &packed.sections()).expect("write tensor");
    index.tensors.push(entry);
}

/// Writes the model into `dir` (created fresh) and returns its graph.
pub fn write_tiny_model(dir: &Path, spec: &TinySpec, seed: u64) -> Transformer {
    let _ = std::fs::remove_dir_all(dir);
    let weights = dir.join("weights");
    std::fs::create_dir_all(&weights).unwrap();
    let mut rng = Rng(seed | 1);
    let (d, f, hd) = (spec.hidden, spec.intermediate, spec.head_dim);
    let (qd, kvd) = (spec.n_heads * hd, spec.n_kv_heads * hd);
    let mut index = WeightIndex::new("keep");
    // Scales chosen so activations stay O(1) through the layers.
    let mat = |rng: &mut Rng, rows: u32, cols: u32| rng.vec((rows * cols) as usize, 1.5 / (cols as f32).sqrt(), 0.0);

    let mut w = LayerFileWriter::create(&weights, "embedding.bin", EMBEDDING_LAYER).unwrap();
    put(&mut w, &mut index, "token_embd", spec.embed, &[spec.vocab, d], &rng.vec((spec.vocab * d) as usize, 1.0, 0.0));
    w.finish().unwrap();

    let mut blocks = Vec::new();
    for i in 0..spec.layers {
        let b = match spec.gemma3 {
            Some(_) => BlockWeights::gemma3(i),
            None => BlockWeights::standard(i, spec.qkv_bias),
        };
        let mut w = LayerFileWriter::create(&weights, &b.file, i as u32).unwrap();
        put(&mut w, &mut index, &b.attn_norm, DType::F32, &[d], &rng.vec(d as usize, 0.3, 1.0));
        put(&mut w, &mut index, &b.attn_q, spec.attn, &[qd, d], &mat(&mut rng, qd, d));
        put(&mut w, &mut index, &b.attn_k, spec.attn, &[kvd, d], &mat(&mut rng, kvd, d));
        put(&mut w, &mut index, &b.attn_v, spec.attn, &[kvd, d], &mat(&mut rng, kvd, d));
        if let Some([bq, bk, bv]) = &b.attn_qkv_bias {
            put(&mut w, &mut index, bq, DType::F32, &[qd], &rng.vec(qd as usize, 0.2, 0.0));
            put(&mut w, &mut index, bk, DType::F32, &[kvd], &rng.vec(kvd as usize, 0.2, 0.0));
            put(&mut w, &mut index, bv, DType::F32, &[kvd], &rng.vec(kvd as usize, 0.2, 0.0));
        }
        put(&mut w, &mut index, &b.attn_output, spec.attn, &[d, qd], &mat(&mut rng, d, qd));
        put(&mut w, &mut index, &b.ffn_norm, DType::F32, &[d], &rng.vec(d as usize, 0.3, 1.0));
        put(&mut w, &mut index, b.ffn_gate.as_deref().expect("a gated MLP"), spec.ffn, &[f, d], &mat(&mut rng, f, d));
        put(&mut w, &mut index, b.ffn_up.as_deref().expect("a dense MLP"), spec.ffn, &[f, d], &mat(&mut rng, f, d));
        put(&mut w, &mut index, b.ffn_down.as_deref().expect("a dense MLP"), spec.ffn, &[d, f], &mat(&mut rng, d, f));
        for name in b.attn_qk_norm.iter().flatten() {
            put(&mut w, &mut index, name, DType::F32, &[hd], &rng.vec(hd as usize, 0.3, 1.0));
        }
        for name in b.post_norms.iter().flatten() {
            put(&mut w, &mut index, name, DType::F32, &[d], &rng.vec(d as usize, 0.3, 1.0));
        }
        w.finish().unwrap();
        blocks.push(b);
    }

    let mut w = LayerFileWriter::create(&weights, "head.bin", HEAD_LAYER).unwrap();
    put(&mut w, &mut index, "output_norm", DType::F32, &[d], &rng.vec(d as usize, 0.3, 1.0));
    if !spec.tied {
        put(&mut w, &mut index, "output", spec.head, &[spec.vocab, d], &mat(&mut rng, spec.vocab, d));
    }
    w.finish().unwrap();

    let cfg = Transformer {
        architecture: if spec.gemma3.is_some() { "gemma3" } else { "llama" }.into(),
        vocab_size: spec.vocab,
        hidden_size: d,
        intermediate_size: f,
        n_heads: spec.n_heads,
        n_kv_heads: spec.n_kv_heads,
        head_dim: hd,
        context_length: spec.context,
        norm: Norm::RmsNorm { eps: 1e-5 },
        rope: RopeConfig { base: 10000.0, style: spec.rope_style, dims: spec.rope_dims, scaling: None },
        activation: if spec.gemma3.is_some() { Activation::Gelu } else { Activation::Silu },
        token_embedding: "token_embd".into(),
        embedding_file: "embedding.bin".into(),
        position_embedding: None,
        output_norm: "output_norm".into(),
        output_norm_bias: None,
        output: if spec.tied { "token_embd".into() } else { "output".into() },
        head_file: "head.bin".into(),
        tied_embeddings: spec.tied,
        blocks,
        sliding_window: spec.gemma3,
        moe: None,
    };
    let json = |path: &Path, v: &dyn erased::Json| std::fs::write(path, v.json()).unwrap();
    json(&dir.join(GRAPH_FILE), &cfg.to_graph("tiny_graph"));
    json(&dir.join("weights/quantization.json"), &index);
    let req = Requirements { ram: "1 MB".into(), compute: "any".into(), storage: "1 MB".into() };
    let metadata = Metadata {
        omex_version: OMEX_VERSION.into(),
        model_name: "tiny".into(),
        model_version: "1.0".into(),
        model_architecture: "llama".into(),
        parameters: "0K".into(),
        parameter_count: 0,
        creation_date: "2026-01-01T00:00:00Z".into(),
        created_by: "tests/common/tiny_model.rs".into(),
        license: "Apache-2.0".into(),
        description: "a random tiny llama for engine tests".into(),
        source_format: "synthetic".into(),
        quantization: QuantSummary { kind: "keep".into(), method: "random".into(), symmetric: false },
        hardware_targets: vec![],
        minimum_requirements: req.clone(),
        recommended_requirements: req,
        files: vec![],
    };
    json(&dir.join(METADATA_FILE), &metadata);
    cfg
}

mod erased {
    /// Serializes any of the three JSON files.
    pub trait Json {
        fn json(&self) -> String;
    }
    impl<T: serde::Serialize> Json for T {
        fn json(&self) -> String {
            serde_json::to_string_pretty(self).expect("serializable")
        }
    }
}
