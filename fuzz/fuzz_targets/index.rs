//! `weights/quantization.json` from arbitrary bytes, resolved against a fixed, valid weight file through the
//! model reader (`ModelDir::tensor`): never panics, and every tensor it hands out can be sliced.
#![no_main]

use libfuzzer_sys::fuzz_target;
use omex::format::{DType, ModelDir, Record, SectionKind};
use std::collections::HashMap;
use std::sync::OnceLock;

/// A weight file with three records (int4, f32, ternary) and the JSON files `ModelDir` needs.
fn fixture() -> &'static (Vec<u8>, Vec<u8>, Vec<u8>) {
    static F: OnceLock<(Vec<u8>, Vec<u8>, Vec<u8>)> = OnceLock::new();
    F.get_or_init(|| {
        let mut file = Vec::new();
        for (name, dtype, shape) in [("a", DType::Int4, vec![4u32, 64]), ("b", DType::F32, vec![7]), ("c", DType::Ternary, vec![2, 32])] {
            let rec = Record::new(0, name, dtype, &shape).unwrap();
            let start = file.len();
            file.extend(rec.encode());
            file.resize(start + rec.record_bytes as usize, 0x11);
        }
        let metadata = br#"{"omex_version":"1.0","model_name":"m","model_version":"1","model_architecture":"llama",
            "parameters":"1K","creation_date":"","created_by":"","license":"","description":"","source_format":"",
            "quantization":{"type":"keep","method":"","symmetric":true},"hardware_targets":[],
            "minimum_requirements":{"ram":"","compute":"","storage":""},
            "recommended_requirements":{"ram":"","compute":"","storage":""},"files":[]}"#
            .to_vec();
        let graph = br#"{"graph_id":"g","graph_type":"transformer/llama","nodes":[],"edges":[],"entry_points":{}}"#.to_vec();
        (file, metadata, graph)
    })
}

fuzz_target!(|data: &[u8]| {
    let (file, metadata, graph) = fixture();
    let mut files = HashMap::new();
    files.insert("metadata.json".to_string(), metadata.clone());
    files.insert("graph.json".to_string(), graph.clone());
    files.insert("weights/quantization.json".to_string(), data.to_vec());
    files.insert("weights/layer_0.bin".to_string(), file.clone());
    let Ok(dir) = ModelDir::from_memory("fuzz", files) else {
        return;
    };
    let names: Vec<String> = dir.index.tensors.iter().map(|t| t.name.clone()).collect();
    for name in names {
        if let Ok(t) = dir.tensor(&name) {
            for kind in [SectionKind::Data, SectionKind::Scales, SectionKind::Mins] {
                if let Some(s) = t.section(kind) {
                    assert_eq!(s.len() as u64, t.entry.section(kind).unwrap().bytes);
                }
            }
            let _ = t.entry.payload_bytes();
            let _ = t.entry.numel();
        }
    }
});
