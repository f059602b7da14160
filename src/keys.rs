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

/// An identity file is small: a few lines per key.
const IDENTITY_FILE_MAX: u64 = 1 << 20;

/// The most scrypt work a passphrase-protected identity file may ask for:
/// 2^20 (1 GiB of memory, a few seconds). age picks about a second's worth
/// when it writes one (2^18 on this kind of machine); vaultik writes 2^18.
pub const SCRYPT_MAX_WORK: u8 = 20;
const SCRYPT_WORK: u8 = 18;

/// The identities in an age identity file: plain (`AGE-SECRET-KEY-1...`
/// lines, as age-keygen and `vaultik keygen` write them) or protected by a
/// passphrase (an age file encrypted with `age -p`, armored or not, as
/// `vaultik keygen --passphrase` writes), whose passphrase is asked of
/// `pass`.
pub fn identities_from_file(
    path: &Path,
    pass: crate::passphrase::Source,
) -> Result<Vec<x25519::Identity>> {
    let f = std::fs::File::open(path).at("read identity file", path)?;
    let bytes = crate::store::read_bounded(f, IDENTITY_FILE_MAX)
        .at("read identity file", path)?
        .ok_or_else(|| {
            Error::Key(format!(
                "{}: larger than {IDENTITY_FILE_MAX} bytes; not an identity file",
                path.display()
            ))
        })?;
    let text = if is_encrypted(&bytes) {
        decrypt_identity_file(&bytes, path, pass)?
    } else {
        String::from_utf8(bytes).map_err(|_| {
            Error::Key(format!(
                "{}: not an age identity file (not text)",
                path.display()
            ))
        })?
    };
    parse_identities(&text, path)
}

/// An age file, binary or armored (leading blank lines allowed).
fn is_encrypted(bytes: &[u8]) -> bool {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    let b = &bytes[start..];
    b.starts_with(VERSION_LINE) || b.starts_with(b"-----BEGIN AGE ENCRYPTED FILE-----")
}

fn decrypt_identity_file(
    bytes: &[u8],
    path: &Path,
    pass: crate::passphrase::Source,
) -> Result<String> {
    let name = path.display();
    let bad = |m: String| Error::Key(format!("{name}: {m}"));
    let dec = age::Decryptor::new(age::armor::ArmoredReader::new(bytes))
        .map_err(|e| bad(format!("not a readable age file ({e})")))?;
    if !dec.is_scrypt() {
        return Err(bad(
            "encrypted to a key, not with a passphrase: not an identity file vaultik can open"
                .into(),
        ));
    }
    let passphrase = crate::passphrase::read(pass, &name.to_string(), false)?;
    let mut id = age::scrypt::Identity::new(passphrase);
    id.set_max_work_factor(SCRYPT_MAX_WORK);
    let mut r = dec
        .decrypt(std::iter::once(&id as &dyn age::Identity))
        .map_err(|e| match e {
            age::DecryptError::ExcessiveWork { required, .. } => bad(format!(
                "asks for scrypt work 2^{required}, more than 2^{SCRYPT_MAX_WORK}"
            )),
            age::DecryptError::DecryptionFailed | age::DecryptError::NoMatchingKeys => {
                bad("wrong passphrase".into())
            }
            e => bad(format!("cannot be decrypted ({e})")),
        })?;
    let mut plain = Vec::new();
    (&mut r)
        .take(IDENTITY_FILE_MAX + 1)
        .read_to_end(&mut plain)
        .map_err(|e| bad(format!("cannot be decrypted ({e})")))?;
    if plain.len() as u64 > IDENTITY_FILE_MAX {
        return Err(bad(format!(
            "decrypts to more than {IDENTITY_FILE_MAX} bytes"
        )));
    }
    String::from_utf8(plain).map_err(|_| bad("decrypts to something that is not text".into()))
}

fn parse_identities(text: &str, path: &Path) -> Result<Vec<x25519::Identity>> {
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

/// `file` (an identity file's text) encrypted with `passphrase`, armored:
/// what `age -p -a` writes, which age and `identities_from_file` read.
pub fn protect(file: &str, passphrase: age::secrecy::SecretString) -> Result<String> {
    use std::io::Write;
    let mut recipient = age::scrypt::Recipient::new(passphrase);
    recipient.set_work_factor(SCRYPT_WORK);
    let enc = age::Encryptor::with_recipients(std::iter::once(&recipient as &dyn age::Recipient))
        .map_err(|e| Error::Key(format!("encrypting the identity: {e}")))?;
    let mut out = Vec::new();
    let fail = |e: std::io::Error| Error::Key(format!("encrypting the identity: {e}"));
    let armor = age::armor::ArmoredWriter::wrap_output(&mut out, age::armor::Format::AsciiArmor)
        .map_err(fail)?;
    let mut w = enc.wrap_output(armor).map_err(fail)?;
    w.write_all(file.as_bytes()).map_err(fail)?;
    w.finish().and_then(|a| a.finish()).map_err(fail)?;
    String::from_utf8(out).map_err(|_| Error::Key("the armor is not text".into()))
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

/// The recipient set a blob is sealed to, as the index records it: the
/// SHA-256 of the sorted public keys, one per line, in hex. The same set in
/// any order, or with a key repeated, is the same set.
pub fn set_fingerprint(recipients: &[x25519::Recipient]) -> String {
    use sha2::{Digest, Sha256};
    let mut keys: Vec<String> = recipients.iter().map(|r| r.to_string()).collect();
    keys.sort();
    keys.dedup();
    crate::chunk::hex(&Sha256::digest(keys.join("\n").as_bytes()))
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

    /// A descriptor holding `text` (left open: a test process).
    fn fd_with(text: &str) -> crate::passphrase::Source {
        let r = crate::passphrase::tests::pipe_with(text.as_bytes());
        crate::passphrase::Source::Fd(std::os::fd::IntoRawFd::into_raw_fd(r))
    }

    /// A protected identity reads back with its passphrase, and only with
    /// it; files that are not one are refused by name.
    #[test]
    fn protected_identity_files() {
        use age::secrecy::SecretString;
        let d = tempfile::tempdir().unwrap();
        let (file, public) = generate();
        let armored = protect(&file, SecretString::from("pw".to_string())).unwrap();
        let path = d.path().join("key.age");
        std::fs::write(&path, &armored).unwrap();
        let ids = identities_from_file(&path, fd_with("pw\n")).unwrap();
        assert_eq!(ids[0].to_public().to_string(), public);
        let e = identities_from_file(&path, fd_with("nope\n"))
            .err()
            .expect("refused")
            .to_string();
        assert!(e.ends_with("key.age: wrong passphrase"), "{e}");
        // Encrypted to a key, not a passphrase.
        let other = d.path().join("to-key.age");
        std::fs::write(&other, sealed(1, file.as_bytes())).unwrap();
        let e = identities_from_file(&other, fd_with("pw\n"))
            .err()
            .expect("refused")
            .to_string();
        assert!(e.contains("not with a passphrase"), "{e}");
        // Asking for more scrypt work than a rescue machine can give: refused
        // before any is done.
        let rec = age::scrypt::Recipient::new(SecretString::from("pw".to_string()));
        let enc =
            age::Encryptor::with_recipients(std::iter::once(&rec as &dyn age::Recipient)).unwrap();
        let mut raw = Vec::new();
        let mut w = enc.wrap_output(&mut raw).unwrap();
        w.write_all(file.as_bytes()).unwrap();
        w.finish().unwrap();
        let head = String::from_utf8_lossy(&raw[..80]).to_string();
        let line = head
            .lines()
            .find(|l| l.starts_with("-> scrypt "))
            .unwrap()
            .to_string();
        let work = line.rsplit(' ').next().unwrap().to_string();
        let forged = String::from_utf8_lossy(&raw).replacen(
            &line,
            &line.replace(&format!(" {work}"), " 30"),
            1,
        );
        let heavy = d.path().join("heavy.age");
        std::fs::write(&heavy, forged.as_bytes()).unwrap();
        let t = std::time::Instant::now();
        let e = identities_from_file(&heavy, fd_with("pw\n"))
            .err()
            .expect("refused")
            .to_string();
        assert!(e.contains("scrypt work 2^30"), "{e}");
        assert!(t.elapsed().as_secs() < 2);
        // Too big to be one; not text.
        let big = d.path().join("big");
        std::fs::write(&big, vec![b'#'; (IDENTITY_FILE_MAX + 1) as usize]).unwrap();
        let e = identities_from_file(&big, fd_with(""))
            .err()
            .expect("refused")
            .to_string();
        assert!(e.contains("larger than"), "{e}");
        let bin = d.path().join("bin");
        std::fs::write(&bin, [0xff, 0xfe, 0]).unwrap();
        let e = identities_from_file(&bin, fd_with(""))
            .err()
            .expect("refused")
            .to_string();
        assert!(e.contains("not text"), "{e}");
    }

    #[test]
    fn a_recipient_set_is_the_same_in_any_order_or_repeated() {
        let a = x25519::Identity::generate().to_public();
        let b = x25519::Identity::generate().to_public();
        let f = set_fingerprint(&[a.clone(), b.clone()]);
        assert_eq!(f, set_fingerprint(&[b.clone(), a.clone(), b.clone()]));
        assert_ne!(f, set_fingerprint(std::slice::from_ref(&a)));
        assert_eq!(f.len(), 64);
    }
}
