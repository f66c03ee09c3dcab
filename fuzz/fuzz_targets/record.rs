//! The omex tensor record parser on arbitrary bytes: never panics; a record that parses re-encodes to the
//! same descriptor, and its sections lie inside the record and the file.
#![no_main]

use libfuzzer_sys::fuzz_target;
use omex::format::Record;

fuzz_target!(|data: &[u8]| {
    let Ok(rec) = Record::decode(data) else {
        return;
    };
    assert!(rec.record_bytes <= data.len() as u64);
    for s in &rec.sections {
        let end = s.offset.checked_add(s.bytes).expect("no overflow");
        assert!(end <= rec.record_bytes);
        let _ = &data[s.offset as usize..end as usize];
    }
    let enc = rec.encode();
    assert_eq!(
        &data[..enc.len()],
        enc.as_slice(),
        "decode then encode changed the descriptor"
    );
    assert_eq!(Record::decode(data).unwrap(), rec);
});
