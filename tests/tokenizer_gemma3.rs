//! Gemma 3 270M against an independent SentencePiece reference: the tokenizer omex writes when it converts
//! the GGUF must give, for every string of tests/data/tokenizer/gemma3_cases.json, the ids that
//! scripts/reference/gemma3_tokenizer.py got from `sentencepiece` (a BPE model built from the GGUF's pieces,
//! scores and types; added tokens such as `<start_of_turn>` split out first, as Hugging Face does; BOS
//! prepended). Written by scripts/reference/make_gemma3_tokenizer_data.py. Skipped, saying why, when the
//! GGUF is absent: `$OMEX_GEMMA3_GGUF`, else `~/.cache/omex/models/gemma-3-270m-q4_k_m.gguf`.

mod common;

use std::path::Path;

use omex::tokenizer::Tokenizer;
use serde::Deserialize;

#[derive(Deserialize)]
struct Case {
    name: String,
    text: String,
    /// The reference's ids, BOS first.
    ids: Vec<u32>,
}

#[derive(Deserialize)]
struct Expected {
    model: Model,
    bos_id: u32,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Model {
    sha256: String,
}

fn expected() -> Expected {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tokenizer/gemma3_cases.json");
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&bytes).expect("gemma3_cases.json parses")
}

fn sha256_hex(path: &Path) -> String {
    use sha2::Digest;
    let bytes = std::fs::read(path).unwrap();
    sha2::Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn gemma3_from_gguf_matches_sentencepiece() {
    let Some(gguf) = common::gemma3_gguf() else { return };
    let exp = expected();
    assert!(exp.cases.len() >= 30, "too few cases: {}", exp.cases.len());
    assert_eq!(sha256_hex(&gguf), exp.model.sha256, "{} is not the file the reference used", gguf.display());

    let dir = common::converted(&gguf, "gemma3", "keep");
    let tok = Tokenizer::load(&dir.join("tokenizer")).unwrap();
    assert_eq!(tok.vocab_size(), 262144);
    assert_eq!(tok.bos_id(), Some(exp.bos_id));
    assert!(tok.add_bos(), "the GGUF asks for BOS");

    let bad: Vec<String> = exp
        .cases
        .iter()
        .filter_map(|c| {
            let got = tok.encode_with_specials(&c.text);
            (got != c.ids).then(|| format!("{} {:?}\n  omex:      {got:?}\n  reference: {:?}", c.name, c.text, c.ids))
        })
        .collect();
    assert!(
        bad.is_empty(),
        "{} of {} strings differ from the SentencePiece reference:\n{}",
        bad.len(),
        exp.cases.len(),
        bad.join("\n")
    );
}
