//! What a PUT carries (its SHA-256 checksum, a storage class) and what a
//! HEAD says of an object, read defensively; S3's base64.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use sha2::{Digest, Sha256};

use super::Headers;
use super::transport::shown;
use crate::error::{Error, Result};
use crate::store::class::StorageClass;
use crate::store::settings::Checksum;
use crate::store::{ObjectMeta, ThawState};

/// The headers of a PUT: its checksum, as `checksum` says (SHA-256: the
/// server checks it and keeps it; some servers, moto among them, keep it
/// only when the algorithm is named too, as the AWS SDKs do; MD5: checked,
/// `Content-MD5`), and, past STANDARD, the storage class.
pub(super) fn put_headers(
    checksum: Checksum,
    sha256: [u8; 32],
    md5: Option<[u8; 16]>,
    class: StorageClass,
) -> Headers {
    let mut h = Vec::new();
    match checksum {
        Checksum::Sha256 => {
            h.push(("x-amz-checksum-sha256", base64(&sha256)));
            h.push(("x-amz-sdk-checksum-algorithm", "SHA256".to_string()));
        }
        Checksum::Md5 => {
            if let Some(m) = md5 {
                h.push(("content-md5", base64(&m)));
            }
        }
        Checksum::None => {}
    }
    if class != StorageClass::Standard {
        h.push(("x-amz-storage-class", class.name().to_string()));
    }
    h
}

/// The SHA-256 of the file at `path` (a run's own temporary file).
pub(super) fn file_sha256(path: &Path) -> Result<[u8; 32]> {
    file_digest::<Sha256>(path).map(Into::into)
}

/// The MD5 of the file at `path`, for `Content-MD5`.
pub(super) fn file_md5(path: &Path) -> Result<[u8; 16]> {
    file_digest::<md5::Md5>(path).map(Into::into)
}

fn file_digest<D: Digest>(path: &Path) -> Result<sha2::digest::Output<D>> {
    let mut f = File::open(path).map_err(|e| Error::Io {
        op: "open",
        path: path.to_path_buf(),
        source: e,
    })?;
    let mut h = D::new();
    let mut buf = vec![0u8; 256 << 10];
    loop {
        match f.read(&mut buf) {
            Ok(0) => return Ok(h.finalize()),
            Ok(n) => h.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(Error::Io {
                    op: "read",
                    path: path.to_path_buf(),
                    source: e,
                });
            }
        }
    }
}

/// What a HEAD's headers say: the size (required), the class (absent:
/// STANDARD), where a thaw stands, the stored SHA-256. The server chose
/// every byte: values that cannot be read are errors (the size) or left
/// out (a checksum that is not 32 bytes of base64 is none).
pub(super) fn object_meta(h: &ureq::http::HeaderMap) -> std::result::Result<ObjectMeta, String> {
    let get = |name: &str| h.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    let len = h.get("content-length");
    let size = get("content-length")
        .and_then(|v| v.parse::<u64>().ok())
        .ok_or_else(|| match len {
            None => "answer without a Content-Length".to_string(),
            Some(v) => format!(
                "answer with an unreadable Content-Length `{}`",
                shown(&String::from_utf8_lossy(v.as_bytes()))
            ),
        })?;
    let class = StorageClass::from_server(get("x-amz-storage-class"));
    let archived = matches!(
        get("x-amz-archive-status"),
        Some("ARCHIVE_ACCESS" | "DEEP_ARCHIVE_ACCESS")
    );
    let thaw = match get("x-amz-restore") {
        Some(r) if r.contains("ongoing-request=\"true\"") => ThawState::Ongoing,
        Some(r) if r.contains("ongoing-request=\"false\"") => ThawState::Thawed,
        _ if class.is_cold() || archived => ThawState::Frozen,
        _ => ThawState::NotNeeded,
    };
    let sha256 = get("x-amz-checksum-sha256")
        .and_then(unbase64)
        .and_then(|b| <[u8; 32]>::try_from(b).ok());
    let locked_until = get("x-amz-object-lock-retain-until-date").and_then(crate::time::parse_s3);
    let version = get("x-amz-version-id")
        .filter(|v| crate::store::versions::is_version_id(v) && *v != "null")
        .map(str::to_string);
    Ok(ObjectMeta {
        size,
        class,
        thaw,
        sha256,
        locked_until,
        version,
    })
}

pub(super) const B64: &[u8; 64] =
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding (S3's checksum headers).
pub fn base64(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(B64[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The bytes of standard base64 with padding, or None.
pub fn unbase64(s: &str) -> Option<Vec<u8>> {
    let s = s.as_bytes();
    if s.len() % 4 != 0 || s.len() > 4096 {
        return None;
    }
    let val = |c: u8| B64.iter().position(|b| *b == c).map(|v| v as u32);
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    for (i, q) in s.chunks(4).enumerate() {
        let last = i + 1 == s.len() / 4;
        let pad = q.iter().rev().take_while(|c| **c == b'=').count();
        if pad > 2 || (pad > 0 && !last) {
            return None;
        }
        let mut n = 0u32;
        for &c in &q[..4 - pad] {
            n = (n << 6) | val(c)?;
        }
        n <<= 6 * pad as u32;
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..3 - pad]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;
    use crate::store::s3::fake::*;

    #[test]
    fn what_a_head_says_is_read_defensively() {
        let stat = |headers: &[&str]| {
            let (s, _) = fake(vec![with_headers(headers)]);
            s.stat(K, true)
                .unwrap_or_else(|e| panic!("{headers:?}: {e}"))
                .unwrap()
        };
        let m = stat(&[]);
        assert_eq!(
            (m.size, m.class, m.thaw, m.sha256),
            (5, StorageClass::Standard, ThawState::NotNeeded, None)
        );
        let m = stat(&["x-amz-storage-class: DEEP_ARCHIVE"]);
        assert_eq!(
            (m.class, m.thaw),
            (StorageClass::DeepArchive, ThawState::Frozen)
        );
        let m = stat(&[
            "x-amz-storage-class: GLACIER",
            "x-amz-restore: ongoing-request=\"true\"",
        ]);
        assert_eq!(m.thaw, ThawState::Ongoing);
        let m = stat(&[
            "x-amz-storage-class: GLACIER",
            "x-amz-restore: ongoing-request=\"false\", expiry-date=\"Fri, 21 Dec 2012 00:00:00 GMT\"",
        ]);
        assert_eq!(m.thaw, ThawState::Thawed);
        let m = stat(&[
            "x-amz-storage-class: INTELLIGENT_TIERING",
            "x-amz-archive-status: DEEP_ARCHIVE_ACCESS",
        ]);
        assert_eq!(m.thaw, ThawState::Frozen);
        // A class vaultik does not know, a restore header that says
        // nothing: readable, as a GET will tell otherwise.
        let m = stat(&[
            "x-amz-storage-class: REDUCED_REDUNDANCY",
            "x-amz-restore: maybe",
        ]);
        assert_eq!(
            (m.class, m.thaw),
            (StorageClass::Standard, ThawState::NotNeeded)
        );
        // A header that paints the terminal: the answer is refused whole.
        let (s, _) = fake(vec![with_headers(&[
            "x-amz-storage-class: \u{1b}[31mPAINT",
        ])]);
        assert!(s.stat(K, true).is_err());
        // Checksums: 32 bytes of base64, or none.
        let sum = base64(&[7u8; 32]);
        assert_eq!(
            stat(&[&format!("x-amz-checksum-sha256: {sum}")]).sha256,
            Some([7u8; 32])
        );
        for bad in [
            "x-amz-checksum-sha256: not base64!".to_string(),
            format!("x-amz-checksum-sha256: {}", base64(&[7u8; 31])),
            format!("x-amz-checksum-sha256: {sum}-3"),
            format!("x-amz-checksum-sha256: {}", "A".repeat(4000)),
        ] {
            assert_eq!(stat(&[&bad]).sha256, None, "{bad}");
        }
        // A header past what the HTTP client takes: an error, never a value.
        let (s, _) = fake(vec![with_headers(&[&format!(
            "x-amz-checksum-sha256: {}",
            "A".repeat(100_000)
        )])]);
        assert!(s.stat(K, true).is_err());
    }

    #[test]
    fn base64_round_trips() {
        for n in 0..70 {
            let data: Vec<u8> = (0..n as u8).map(|i| i.wrapping_mul(37)).collect();
            assert_eq!(unbase64(&base64(&data)).unwrap(), data, "{n}");
        }
        assert_eq!(base64(b"hello"), "aGVsbG8=");
        for bad in ["a", "aGVsbG8", "aGV=bG8=", "a===", "aGVsbG8*"] {
            assert_eq!(unbase64(bad), None, "{bad}");
        }
    }
}
