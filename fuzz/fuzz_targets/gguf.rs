//! The GGUF header parser on arbitrary bytes: never panics; a header that parses describes tensors that lie
//! inside the file, aligned, without overlap, and whose data can be sliced and dequantized.
#![no_main]

use libfuzzer_sys::fuzz_target;
use omex::import::gguf::GgufFile;
use omex::quant::dequant;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(f) = GgufFile::from_bytes(Path::new("fuzz.gguf"), data) else {
        return;
    };
    for t in &f.header.tensors {
        assert_eq!(t.offset % f.header.alignment, 0);
        let bytes = f.data(t);
        assert_eq!(bytes.len() as u64, t.bytes);
        // Dequantize small tensors of supported types (bounded work per input).
        if dequant::supported(t.ty) && t.numel() <= 1 << 16 {
            let mut out = vec![0f32; t.numel() as usize];
            dequant::dequantize(t.ty, bytes, &mut out).expect("sizes were checked by the parser");
        }
    }
    for (k, _) in &f.header.kv {
        let _ = f.opt_u32(k);
        let _ = f.opt_str(k);
    }
});
