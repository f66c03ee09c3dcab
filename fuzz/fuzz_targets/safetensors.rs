//! The safetensors header parser on arbitrary bytes: never panics; every tensor it accepts lies inside the
//! file with exactly the bytes its dtype and shape need.
#![no_main]

use libfuzzer_sys::fuzz_target;
use omex::import::safetensors::{dtype_size, Header};

fuzz_target!(|data: &[u8]| {
    let Ok(h) = Header::parse(data) else { return };
    for t in &h.tensors {
        let end = t.offset.checked_add(t.bytes).expect("no overflow");
        assert!(end <= data.len() as u64);
        assert!(t.offset >= h.data_offset);
        let size = dtype_size(&t.dtype).expect("known dtype");
        assert_eq!(
            t.shape.iter().try_fold(size, |a, &d| a.checked_mul(d)),
            Some(t.bytes)
        );
        let _ = &data[t.offset as usize..end as usize];
    }
});
