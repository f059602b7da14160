//! The clear manifest reader (anyone with write access to the bucket controls
//! its input): never panics; an accepted manifest has the id of its key and
//! names only blob keys of the layout; every error is one line naming the key.
//! The first byte chooses the input: odd, the rest is JSON that is
//! compressed here (reaches the parser); even, the rest is the stored bytes
//! as they are (reaches the decoder).
#![no_main]

use libfuzzer_sys::fuzz_target;

const ID: &str = "web1_etc_2026-11-23T083015Z";

fuzz_target!(|data: &[u8]| {
    let Some((mode, rest)) = data.split_first() else {
        return;
    };
    let stored = if mode % 2 == 1 {
        zstd::stream::encode_all(rest, 1).expect("compress in memory")
    } else {
        rest.to_vec()
    };
    let key = format!("metadata/{ID}/manifest.json.zst");
    match vaultik::manifest::Manifest::from_bytes(&key, &stored) {
        Ok(m) => {
            assert_eq!(m.id, ID);
            for (k, _) in &m.blobs {
                assert!(vaultik::layout::is_blob(k), "{k}");
            }
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(!msg.contains('\n') && !msg.contains('\r'), "{msg:?}");
            assert!(msg.contains(&key), "{msg}");
        }
    }
});
