//! Command-line parsing with lexopt into plain structs; no I/O here. Global
//! flags may come before or after the command words.

use std::ffi::OsString;
use std::path::PathBuf;

use lexopt::prelude::*;

use crate::error::{Error, Result};

pub const USAGE: &str = "\
vaultik - encrypted, deduplicating, incremental backups to S3

Usage:
  vaultik [GLOBAL FLAGS] snapshot create [--skip-errors] [NAME...]
  vaultik [GLOBAL FLAGS] snapshot list [--json]
  vaultik [GLOBAL FLAGS] restore SNAPSHOT --target DIR [--identity FILE] [PATH...]
  vaultik keygen [--output FILE]
  vaultik help [COMMAND]

Global flags:
  --config PATH      config file (default: $VAULTIK_CONFIG, else /etc/vaultik/vaultik.conf)
  --store STORE      s3://BUCKET/PREFIX or a directory; overrides the config ($VAULTIK_STORE)
  --endpoint URL     S3 endpoint for --store s3://... ($VAULTIK_S3_ENDPOINT)
  --region REGION    S3 region for --store s3://... ($VAULTIK_S3_REGION, default us-east-1)
  -h, --help         print help and exit
  -V, --version      print the version and exit

Environment: VAULTIK_CONFIG, VAULTIK_PRIVATE_KEY, VAULTIK_STORE, VAULTIK_S3_ENDPOINT,
VAULTIK_S3_REGION, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY. See vaultik(1).
";

pub const USAGE_CREATE: &str = "\
Usage: vaultik [GLOBAL FLAGS] snapshot create [--skip-errors] [NAME...]

Back up every configured snapshot, or only the NAMEs given.

  --skip-errors   warn about unreadable files and go on (exit code 1)
";

pub const USAGE_LIST: &str = "\
Usage: vaultik [GLOBAL FLAGS] snapshot list [--json]

List the complete snapshots in the store (no private key needed).

  --json          print a JSON array
";

pub const USAGE_RESTORE: &str = "\
Usage: vaultik [GLOBAL FLAGS] restore SNAPSHOT --target DIR [--identity FILE] [PATH...]

Restore a snapshot (a full id, or `latest`) into DIR, or only the PATHs given
(source paths such as /etc/hosts or /home/alice). Needs the private key:
$VAULTIK_PRIVATE_KEY, or --identity FILE.

  --target DIR        where to restore (created if missing)
  --identity FILE     age identity file (as written by age-keygen or vaultik keygen)
";

pub const USAGE_KEYGEN: &str = "\
Usage: vaultik keygen [--output FILE]

Generate an age key pair. The identity (private key) goes to FILE (created
mode 0600, never overwritten) or to standard output; the public key, for
`age_recipient`, is printed to standard output.

  --output FILE   write the identity to FILE
";

#[derive(Debug, Default, Clone, PartialEq)]
pub struct Global {
    pub config: Option<PathBuf>,
    pub store: Option<String>,
    pub endpoint: Option<String>,
    pub region: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Help(&'static str),
    Version,
    SnapshotCreate {
        names: Vec<String>,
        skip_errors: bool,
    },
    SnapshotList {
        json: bool,
    },
    Restore {
        snapshot: String,
        target: PathBuf,
        paths: Vec<String>,
        identity: Option<PathBuf>,
    },
    Keygen {
        output: Option<PathBuf>,
    },
}

fn usage(e: lexopt::Error) -> Error {
    Error::Usage(e.to_string())
}

fn string(v: OsString, what: &str) -> Result<String> {
    v.into_string()
        .map_err(|_| Error::Usage(format!("{what} is not valid UTF-8")))
}

const GLOBAL_FLAGS: [&str; 4] = ["config", "store", "endpoint", "region"];

/// The long name of `arg` when it is a global flag.
fn global_name(arg: &lexopt::Arg<'_>) -> Option<&'static str> {
    match arg {
        Long(n) => GLOBAL_FLAGS.iter().find(|g| *g == n).copied(),
        _ => None,
    }
}

/// Read the value of global flag `name`, wherever it appears.
fn global_flag(name: &str, p: &mut lexopt::Parser, g: &mut Global) -> Result<()> {
    let v = p.value().map_err(usage)?;
    match name {
        "config" => g.config = Some(v.into()),
        "store" => g.store = Some(string(v, "--store")?),
        "endpoint" => g.endpoint = Some(string(v, "--endpoint")?),
        _ => g.region = Some(string(v, "--region")?),
    }
    Ok(())
}

fn help_for(words: &[String]) -> Result<&'static str> {
    let w: Vec<&str> = words.iter().map(String::as_str).collect();
    Ok(match w.as_slice() {
        [] => USAGE,
        ["snapshot"] => USAGE,
        ["snapshot", "create"] | ["create"] => USAGE_CREATE,
        ["snapshot", "list"] | ["list"] => USAGE_LIST,
        ["restore"] => USAGE_RESTORE,
        ["keygen"] => USAGE_KEYGEN,
        _ => {
            return Err(Error::Usage(format!(
                "unknown command `{}`",
                words.join(" ")
            )));
        }
    })
}

pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<(Global, Command)> {
    let mut p = lexopt::Parser::from_args(args);
    let mut g = Global::default();
    let cmd = loop {
        let Some(arg) = p.next().map_err(usage)? else {
            return Ok((g, Command::Help(USAGE)));
        };
        if let Some(name) = global_name(&arg) {
            global_flag(name, &mut p, &mut g)?;
            continue;
        }
        match arg {
            Short('h') | Long("help") => return Ok((g, Command::Help(USAGE))),
            Short('V') | Long("version") => return Ok((g, Command::Version)),
            Value(v) => break string(v, "command")?,
            _ => return Err(usage(arg.unexpected())),
        }
    };
    let command = match cmd.as_str() {
        "help" => {
            let mut words = Vec::new();
            while let Some(arg) = p.next().map_err(usage)? {
                match arg {
                    Value(v) => words.push(string(v, "command")?),
                    _ => return Err(usage(arg.unexpected())),
                }
            }
            Command::Help(help_for(&words)?)
        }
        "snapshot" => {
            let sub = loop {
                match p.next().map_err(usage)? {
                    None => {
                        return Err(Error::Usage(
                            "missing command after `snapshot` (create or list)".into(),
                        ));
                    }
                    Some(arg) => {
                        if let Some(name) = global_name(&arg) {
                            global_flag(name, &mut p, &mut g)?;
                            continue;
                        }
                        match arg {
                            Short('h') | Long("help") => return Ok((g, Command::Help(USAGE))),
                            Value(v) => break string(v, "command")?,
                            _ => return Err(usage(arg.unexpected())),
                        }
                    }
                }
            };
            match sub.as_str() {
                "create" => parse_create(&mut p, &mut g)?,
                "list" => parse_list(&mut p, &mut g)?,
                other => return Err(Error::Usage(format!("unknown command `snapshot {other}`"))),
            }
        }
        "restore" => parse_restore(&mut p, &mut g)?,
        "keygen" => parse_keygen(&mut p, &mut g)?,
        other => return Err(Error::Usage(format!("unknown command `{other}`"))),
    };
    Ok((g, command))
}

fn parse_create(p: &mut lexopt::Parser, g: &mut Global) -> Result<Command> {
    let mut names = Vec::new();
    let mut skip_errors = false;
    while let Some(arg) = p.next().map_err(usage)? {
        if let Some(name) = global_name(&arg) {
            global_flag(name, p, g)?;
            continue;
        }
        match arg {
            Short('h') | Long("help") => return Ok(Command::Help(USAGE_CREATE)),
            Long("skip-errors") => skip_errors = true,
            Value(v) => names.push(string(v, "snapshot name")?),
            _ => return Err(usage(arg.unexpected())),
        }
    }
    Ok(Command::SnapshotCreate { names, skip_errors })
}

fn parse_list(p: &mut lexopt::Parser, g: &mut Global) -> Result<Command> {
    let mut json = false;
    while let Some(arg) = p.next().map_err(usage)? {
        if let Some(name) = global_name(&arg) {
            global_flag(name, p, g)?;
            continue;
        }
        match arg {
            Short('h') | Long("help") => return Ok(Command::Help(USAGE_LIST)),
            Long("json") => json = true,
            _ => return Err(usage(arg.unexpected())),
        }
    }
    Ok(Command::SnapshotList { json })
}

fn parse_restore(p: &mut lexopt::Parser, g: &mut Global) -> Result<Command> {
    let mut snapshot = None;
    let mut target = None;
    let mut identity = None;
    let mut paths = Vec::new();
    while let Some(arg) = p.next().map_err(usage)? {
        if let Some(name) = global_name(&arg) {
            global_flag(name, p, g)?;
            continue;
        }
        match arg {
            Short('h') | Long("help") => return Ok(Command::Help(USAGE_RESTORE)),
            Long("target") => target = Some(PathBuf::from(p.value().map_err(usage)?)),
            Long("identity") => identity = Some(PathBuf::from(p.value().map_err(usage)?)),
            Value(v) if snapshot.is_none() => snapshot = Some(string(v, "SNAPSHOT")?),
            Value(v) => paths.push(string(v, "PATH")?),
            _ => return Err(usage(arg.unexpected())),
        }
    }
    Ok(Command::Restore {
        snapshot: snapshot
            .ok_or_else(|| Error::Usage("restore: missing SNAPSHOT argument".into()))?,
        target: target.ok_or_else(|| Error::Usage("restore: missing --target DIR".into()))?,
        paths,
        identity,
    })
}

fn parse_keygen(p: &mut lexopt::Parser, g: &mut Global) -> Result<Command> {
    let mut output = None;
    while let Some(arg) = p.next().map_err(usage)? {
        if let Some(name) = global_name(&arg) {
            global_flag(name, p, g)?;
            continue;
        }
        match arg {
            Short('h') | Long("help") => return Ok(Command::Help(USAGE_KEYGEN)),
            Long("output") | Short('o') => output = Some(PathBuf::from(p.value().map_err(usage)?)),
            _ => return Err(usage(arg.unexpected())),
        }
    }
    Ok(Command::Keygen { output })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(s: &str) -> Result<(Global, Command)> {
        parse(s.split_whitespace().map(OsString::from))
    }

    #[test]
    fn commands_and_flags() {
        let (g, c) = parse_str("--config /c snapshot create --skip-errors etc home").unwrap();
        assert_eq!(g.config, Some(PathBuf::from("/c")));
        assert_eq!(
            c,
            Command::SnapshotCreate {
                names: vec!["etc".into(), "home".into()],
                skip_errors: true
            }
        );
        let (g, c) = parse_str("snapshot list --json --store /s").unwrap();
        assert_eq!(g.store.as_deref(), Some("/s"));
        assert_eq!(c, Command::SnapshotList { json: true });
        let (_, c) = parse_str("restore latest --target /t /etc/hosts --identity /k").unwrap();
        assert_eq!(
            c,
            Command::Restore {
                snapshot: "latest".into(),
                target: "/t".into(),
                paths: vec!["/etc/hosts".into()],
                identity: Some("/k".into())
            }
        );
    }

    #[test]
    fn help_and_version() {
        assert_eq!(parse_str("--help").unwrap().1, Command::Help(USAGE));
        assert_eq!(parse_str("-V").unwrap().1, Command::Version);
        assert_eq!(
            parse_str("help restore").unwrap().1,
            Command::Help(USAGE_RESTORE)
        );
        assert_eq!(
            parse_str("snapshot create --help").unwrap().1,
            Command::Help(USAGE_CREATE)
        );
    }

    #[test]
    fn errors_name_the_culprit() {
        let e = parse_str("snapshot create --bogus")
            .unwrap_err()
            .to_string();
        assert!(e.contains("--bogus"), "{e}");
        let e = parse_str("frobnicate").unwrap_err().to_string();
        assert!(e.contains("frobnicate"), "{e}");
        let e = parse_str("restore latest").unwrap_err().to_string();
        assert!(e.contains("--target"), "{e}");
        let e = parse_str("snapshot list --config").unwrap_err().to_string();
        assert!(e.contains("--config"), "{e}");
    }
}
