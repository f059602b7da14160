//! age keys: the public recipients a backup encrypts to, and the private
//! identity a restore needs (from `VAULTIK_PRIVATE_KEY` or an identity file).
//! The identity is never logged or echoed.

use std::path::Path;
use std::str::FromStr;

use age::x25519;

use crate::error::{Error, IoContext, Result};

pub fn parse_recipients(list: &[String], config: &Path) -> Result<Vec<x25519::Recipient>> {
    if list.is_empty() {
        return Err(Error::Setup(format!(
            "{}: no `age_recipient` configured (generate a key pair with `vaultik keygen` or age-keygen)",
            config.display()
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
