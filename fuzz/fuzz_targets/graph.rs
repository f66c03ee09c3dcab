//! graph.json from arbitrary bytes through `Transformer::from_graph`: never panics; an accepted model keeps
//! every guarantee of `Transformer::check` (counts within `graph::limits`, finite eps and rope parameters,
//! derived sizes without overflow) and survives `to_graph` unchanged. The checks live in ../checks.rs.
#![no_main]

#[path = "../checks.rs"]
mod checks;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let outcome = checks::graph(data).map(|t| t.blocks.len());
    if std::env::var_os("OMEX_FUZZ_VERBOSE").is_some() {
        eprintln!("{outcome:?}");
    }
});
