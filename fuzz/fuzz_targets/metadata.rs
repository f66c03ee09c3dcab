//! metadata.json from arbitrary bytes, written into an otherwise valid model directory (the seed
//! seeds/model_dir/int8) and validated as `omex validate` does: never panics; a valid report means the
//! metadata is of this version and lists only files inside the directory with their sizes. The checks live in
//! ../checks.rs.
#![no_main]

#[path = "../checks.rs"]
mod checks;

use libfuzzer_sys::fuzz_target;
use std::path::PathBuf;
use std::sync::OnceLock;

fn fixture() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = checks::scratch_dir("metadata");
        checks::write_model_dir(include_bytes!("../seeds/model_dir/int8"), &dir).expect("the fixture is five parts");
        dir
    })
}

fuzz_target!(|data: &[u8]| {
    let outcome = checks::metadata(data, fixture()).map(|m| m.files.len());
    if std::env::var_os("OMEX_FUZZ_VERBOSE").is_some() {
        eprintln!("{outcome:?}");
    }
});
