//! A whole model directory from arbitrary bytes (metadata.json, graph.json, weights/quantization.json,
//! weights/layer_0.bin and tokenizer/tokenizer.json, separated by `checks::PART_SEP`), validated as `omex
//! validate` does; one that validates loads and runs two tokens on the CPU engine. Never panics or aborts;
//! errors are fine. The checks live in ../checks.rs.
#![no_main]

#[path = "../checks.rs"]
mod checks;

use libfuzzer_sys::fuzz_target;
use std::path::PathBuf;
use std::sync::OnceLock;

fuzz_target!(|data: &[u8]| {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(|| checks::scratch_dir("model_dir"));
    let outcome = checks::model_dir(data, dir).map(|runs| runs.len());
    if std::env::var_os("OMEX_FUZZ_VERBOSE").is_some() {
        eprintln!("{outcome:?}");
    }
});
