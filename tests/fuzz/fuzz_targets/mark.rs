//! The reader of deletion marks (gc/pending/, clear, written by purge):
//! never panics; an accepted mark names only keys under blobs/; every error
//! is one line naming the key.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let key = "gc/pending/2026-11-23T083015Z-0011223344556677.json";
    match vaultik::gc::Mark::from_bytes(key, data) {
        Ok(m) => {
            for k in &m.blobs {
                assert!(k.starts_with("blobs/") && !k.contains(".."), "{k}");
            }
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(!msg.contains('\n') && !msg.contains('\r'), "{msg:?}");
            assert!(msg.contains(key), "{msg}");
        }
    }
});
