//! age keys: the public recipients a backup encrypts to, and the private
//! identity a restore needs (from `VAULTIK_PRIVATE_KEY` or an identity file).
//! The identity is never logged or echoed. And the bound on the age header
//! of anything read from the store (`header_len`).

use std::io::Read;
use std::path::Path;
use std::str::FromStr;

use age::x25519;

use crate::error::{Error, IoContext, Result};

/// Recipients a backup may encrypt to: each adds 98 bytes to every age
/// header, which a reader bounds (`HEADER_MAX`).
pub const MAX_RECIPIENTS: usize = 64;

pub fn parse_recipients(list: &[String], config: &Path) -> Result<Vec<x25519::Recipient>> {
    if list.is_empty() {
        return Err(Error::Setup(format!(
            "{}: no `age_recipient` configured (generate a key pair with `vaultik keygen` or age-keygen)",
            config.display()
        )));
    }
    if list.len() > MAX_RECIPIENTS {
        return Err(Error::Setup(format!(
            "{}: {} `age_recipient`s; at most {MAX_RECIPIENTS} are allowed",
            config.display(),
            list.len()
        )));
    }
    list.iter()
        .map(|r| {
            x25519::Recipient::from_str(r).map_err(|e| {
                Error::Setup(format!("{}: age_recipient `{r}`: {e}", config.display()))
            })
        })
        .collect()
}

/// The identities in an age identity file.
pub fn identities_from_file(path: &Path) -> Result<Vec<x25519::Identity>> {
    let text = std::fs::read_to_string(path).at("read identity file", path)?;
    let ids: Vec<_> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            x25519::Identity::from_str(l).map_err(|_| {
                Error::Key(format!(
                    "{}: not an age identity file (expected AGE-SECRET-KEY-1... lines)",
                    path.display()
                ))
            })
        })
        .collect::<Result<_>>()?;
    if ids.is_empty() {
        return Err(Error::Key(format!(
            "{}: no AGE-SECRET-KEY-1... line found",
            path.display()
        )));
    }
    Ok(ids)
}

/// The identity given in `VAULTIK_PRIVATE_KEY`.
pub fn identity_from_env(key: &str) -> Result<Vec<x25519::Identity>> {
    let id = x25519::Identity::from_str(key).map_err(|_| {
        Error::Key(
            "VAULTIK_PRIVATE_KEY is not an age secret key (expected AGE-SECRET-KEY-1...)".into(),
        )
    })?;
    Ok(vec![id])
}

pub fn as_recipients(r: &[x25519::Recipient]) -> impl Iterator<Item = &dyn age::Recipient> {
    r.iter().map(|r| r as &dyn age::Recipient)
}

pub fn as_identities(i: &[x25519::Identity]) -> impl Iterator<Item = &dyn age::Identity> {
    i.iter().map(|i| i as &dyn age::Identity)
}

/// A new identity in age-keygen's file format, and its public key.
pub fn generate() -> (String, String) {
    use age::secrecy::ExposeSecret;
    let id = x25519::Identity::generate();
    let public = id.to_public().to_string();
    let file = format!(
        "# created by vaultik {}\n# public key: {public}\n{}\n",
        env!("CARGO_PKG_VERSION"),
        id.to_string().expose_secret()
    );
    (file, public)
}

/// The longest age header read from the store. age writes 22 bytes of
/// version line, 98 per X25519 recipient, one "grease" stanza of at most
/// 190 bytes, and 48 of MAC line: 6,532 bytes for `MAX_RECIPIENTS`.
/// Anything longer is refused before age sees it: age 0.12 (and 0.13)
/// parses a header again from its start for each byte it reads, so a long
/// one (a junk stanza) costs quadratic time: minutes for a megabyte.
pub const HEADER_MAX: usize = 8 << 10;

const VERSION_LINE: &[u8] = b"age-encryption.org/v1\n";

/// The length of the age header at the start of `data`, once `data`
/// holds all of it: its version line, then up to the MAC line (`--- `
/// and 43 base64 characters), within `HEADER_MAX` bytes. `Ok(None)`: not
/// complete yet; an error: not an age header vaultik reads.
pub fn header_len(data: &[u8]) -> std::result::Result<Option<usize>, &'static str> {
    let head = &data[..data.len().min(VERSION_LINE.len())];
    if !VERSION_LINE.starts_with(head) {
        return Err("not an age v1 header");
    }
    // Stanza lines start with "-> ", body lines are base64: "\n--- "
    // begins the MAC line and nothing else.
    let Some(mac) = data.windows(5).position(|w| w == b"\n--- ") else {
        return if data.len() > HEADER_MAX {
            Err("age header longer than any vaultik writes")
        } else {
            Ok(None)
        };
    };
    let start = mac + 5;
    let end = start + 43 + 1;
    if end > HEADER_MAX {
        return Err("age header longer than any vaultik writes");
    }
    let Some(line) = data.get(start..end) else {
        return Ok(None);
    };
    let b64 = |c: &u8| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/';
    if line[..43].iter().all(b64) && line[43] == b'\n' {
        Ok(Some(end))
    } else {
        Err("malformed age header MAC line")
    }
}

/// Read from `r` until the age header is complete (see `header_len`):
/// what was read (which may go on past the header) and the header's
/// length.
pub fn read_header(r: &mut dyn Read) -> std::io::Result<(Vec<u8>, usize)> {
    let bad = |why: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, why.to_string());
    let mut buf = Vec::with_capacity(1024);
    let mut piece = [0u8; 4096];
    // Each byte is searched once (a reader may hand out one at a time).
    let (mut searched, mut mac_seen) = (0usize, false);
    loop {
        mac_seen |= buf[searched.saturating_sub(4)..]
            .windows(5)
            .any(|w| w == b"\n--- ");
        searched = buf.len();
        let version = &buf[..buf.len().min(VERSION_LINE.len())];
        if mac_seen || buf.len() > HEADER_MAX || !VERSION_LINE.starts_with(version) {
            if let Some(n) = header_len(&buf).map_err(bad)? {
                return Ok((buf, n));
            }
        }
        let n = match r.read(&mut piece) {
            Ok(0) => return Err(bad("age header cut short")),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        buf.extend_from_slice(&piece[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn sealed(recipients: usize, plain: &[u8]) -> Vec<u8> {
        let rs: Vec<x25519::Recipient> = (0..recipients)
            .map(|_| x25519::Identity::generate().to_public())
            .collect();
        let enc = age::Encryptor::with_recipients(as_recipients(&rs)).unwrap();
        let mut out = Vec::new();
        let mut w = enc.wrap_output(&mut out).unwrap();
        w.write_all(plain).unwrap();
        w.finish().unwrap();
        out
    }

    /// Headers age writes are found, for up to `MAX_RECIPIENTS`, read in
    /// any pieces; what follows is kept.
    #[test]
    fn real_headers_are_found_whole() {
        for n in [1, 2, 7, MAX_RECIPIENTS] {
            let data = sealed(n, b"payload");
            let (got, len) = read_header(&mut &data[..]).unwrap();
            assert!(len <= HEADER_MAX && len > 70 + 98 * n, "{n}: {len}");
            assert_eq!(&data[len - 48..len - 44], b"--- ");
            assert_eq!(got[..], data[..got.len()]);
            for cut in [0, 1, len - 1] {
                assert_eq!(header_len(&data[..cut]), Ok(None), "{n} cut at {cut}");
            }
            assert_eq!(header_len(&data), Ok(Some(len)));
        }
    }

    /// Long, junk, truncated and padded headers are refused after reading
    /// at most `HEADER_MAX` and a piece, and quickly.
    #[test]
    fn long_or_malformed_headers_are_refused_at_once() {
        let started = std::time::Instant::now();
        let mut long = b"age-encryption.org/v1\n-> junk\n".to_vec();
        for _ in 0..100_000 {
            long.extend_from_slice(&[b'A'; 64]);
            long.push(b'\n');
        }
        long.extend_from_slice(b"--- AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n");
        let mut r = &long[..];
        let e = read_header(&mut r).unwrap_err();
        assert!(e.to_string().contains("longer than"), "{e}");
        assert!(long.len() - r.len() <= HEADER_MAX + 4096);
        for (bad, why) in [
            (&b"not age at all"[..], "not an age"),
            (b"age-encryption.org/v2\n", "not an age"),
            (b"age-encryption.org/v1\n--- short\nxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", "malformed"),
            (b"age-encryption.org/v1\n-> X25519 abc\n", "cut short"),
            (b"", "cut short"),
        ] {
            let e = read_header(&mut &bad[..]).unwrap_err().to_string();
            assert!(e.contains(why), "{}: {e}", String::from_utf8_lossy(bad));
        }
        assert!(started.elapsed().as_secs() < 2);
    }
}
