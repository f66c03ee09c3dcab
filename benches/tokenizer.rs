//! Tokenizer throughput on ~1 MiB of mixed text (the test corpus repeated: prose, code, CJK, emoji...),
//! with the SmolLM2 tokenizer built from its GGUF ($OMEX_SMOLLM2_GGUF or the omex model cache), else the
//! small GPT-2 test tokenizer. `scripts/tokenizer_reference.py --bench` times Hugging Face `tokenizers`
//! on the same text.

#[path = "../tests/tokenizer_gguf.rs"]
mod gguf;

use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use omex::tokenizer::{write_tokenizer_dir, Tokenizer};

/// The corpus strings, each followed by "\n", cycled until the text reaches 1 MiB (as the script does).
fn bench_text() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tokenizer/corpus.json");
    let corpus: Vec<String> = serde_json::from_slice(&std::fs::read(path).expect("corpus")).expect("corpus json");
    let mut text = String::new();
    let mut i = 0;
    while text.len() < 1 << 20 {
        text.push_str(&corpus[i % corpus.len()]);
        text.push('\n');
        i += 1;
    }
    text
}

fn tokenizer() -> (Tokenizer, &'static str) {
    let path = gguf::smollm2_path();
    if let Ok(vocab) = gguf::read_vocab(&path) {
        let dir = std::env::temp_dir().join(format!("omex-tokenizer-bench-{}", std::process::id()));
        write_tokenizer_dir(&vocab, &dir).expect("write tokenizer");
        let tok = Tokenizer::load(&dir).expect("load tokenizer");
        let _ = std::fs::remove_dir_all(&dir);
        return (tok, "smollm2");
    }
    eprintln!("{} not found: benchmarking the small GPT-2 test tokenizer instead", path.display());
    let json = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tokenizer/gpt2_tokenizer.json");
    (Tokenizer::from_hf_json(&std::fs::read(json).expect("gpt2 json")).expect("gpt2"), "gpt2-test")
}

fn bench(c: &mut Criterion) {
    let text = bench_text();
    let lines: Vec<&str> = text.split('\n').collect();
    let (tok, name) = tokenizer();
    let ids = tok.encode(&text);
    eprintln!("{name}: {} bytes, {} lines, {} tokens", text.len(), lines.len(), ids.len());

    let mut g = c.benchmark_group(format!("tokenizer/{name}"));
    g.throughput(Throughput::Bytes(text.len() as u64));
    g.sample_size(20);
    g.bench_function("encode one string", |b| b.iter(|| tok.encode(&text)));
    g.bench_function("encode lines", |b| b.iter(|| lines.iter().map(|l| tok.encode(l).len()).sum::<usize>()));
    g.bench_function("encode_batch lines", |b| b.iter(|| tok.encode_batch(&lines)));
    g.bench_function("decode", |b| b.iter(|| tok.decode(&ids)));
    g.bench_function("stream decode", |b| {
        b.iter(|| {
            let mut s = tok.stream_decoder(false);
            ids.iter().filter_map(|&id| s.push(id)).map(|t| t.len()).sum::<usize>()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
