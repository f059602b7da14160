//! The config parser: never panics; every error is one line that names the
//! file.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Err(e) = vaultik::config::Config::parse(Path::new("/t/vaultik.conf"), &text) {
        let msg = e.to_string();
        assert!(!msg.contains('\n') && !msg.contains('\r'), "{msg:?}");
        assert!(msg.starts_with("/t/vaultik.conf"), "{msg}");
    }
});
