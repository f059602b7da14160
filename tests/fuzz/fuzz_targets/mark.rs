//! The reader of deletion marks (gc/pending/, clear, written by purge):
//! never panics; an accepted mark names only blob keys of the layout; every error
//! is one line naming the key.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let key = "gc/pending/2026-11-23T083015Z-0011223344556677.json";
    match vaultik::gc::Mark::from_bytes(key, data) {
        Ok(m) => {
            for k in &m.blobs {
                assert!(vaultik::layout::is_blob(k), "{k}");
            }
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(!msg.contains('\n') && !msg.contains('\r'), "{msg:?}");
            assert!(msg.contains(key), "{msg}");
        }
    }
});
