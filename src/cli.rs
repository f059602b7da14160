//! Command-line parsing with lexopt into plain structs; no I/O here. Global
//! flags may come before or after the command words.

use std::ffi::OsString;
use std::path::PathBuf;

use lexopt::prelude::*;

use crate::error::{Error, Result};

pub const USAGE: &str = "\
vaultik - encrypted, deduplicating, incremental backups to S3

Usage:
  vaultik [GLOBAL FLAGS] snapshot create [--cron] [--prune] [--skip-errors] [NAME...]
  vaultik [GLOBAL FLAGS] snapshot create --daemon [--cron]
  vaultik [GLOBAL FLAGS] snapshot list [--json]
  vaultik [GLOBAL FLAGS] snapshot verify SNAPSHOT [--deep] [--identity FILE] [--json]
  vaultik [GLOBAL FLAGS] snapshot purge (--keep-latest | --older-than DURATION)
                                        [--name NAME] [--dry-run] [--force] [--json]
  vaultik [GLOBAL FLAGS] snapshot remove SNAPSHOT...
  vaultik [GLOBAL FLAGS] prune [--dry-run] [--json]
  vaultik [GLOBAL FLAGS] store info [--json]
  vaultik [GLOBAL FLAGS] restore SNAPSHOT --target DIR [--identity FILE] [PATH...]
  vaultik keygen [--output FILE]
  vaultik help [COMMAND]

Only restore and `snapshot verify --deep` need the private key.

Global flags:
  --config PATH      config file (default: $VAULTIK_CONFIG, else /etc/vaultik/vaultik.conf)
  --store STORE      s3://BUCKET/PREFIX or a directory; overrides the config ($VAULTIK_STORE)
  --endpoint URL     S3 endpoint; overrides the config ($VAULTIK_S3_ENDPOINT)
  --region REGION    S3 region; overrides the config ($VAULTIK_S3_REGION, default us-east-1)
  -h, --help         print help and exit
  -V, --version      print the version and exit

Environment: VAULTIK_CONFIG, VAULTIK_PRIVATE_KEY, VAULTIK_STORE, VAULTIK_S3_ENDPOINT,
VAULTIK_S3_REGION, VAULTIK_CA_FILE, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY. See vaultik(1).
";

pub const USAGE_CREATE: &str = "\
Usage: vaultik [GLOBAL FLAGS] snapshot create [--cron] [--prune] [--skip-errors] [NAME...]
       vaultik [GLOBAL FLAGS] snapshot create --daemon [--cron]

Back up every configured snapshot, or only the NAMEs given.

  --daemon        stay in the foreground: back up everything once, then watch
                  the configured paths with inotify and snapshot the names
                  whose paths changed (see backup_interval, settle_delay,
                  min_time_between_run, full_scan_interval, stop_timeout)
  --cron          print nothing unless there is a warning or an error
  --prune         afterwards, purge this host's snapshots by the configured
                  retention (keep_latest, keep_within) and collect garbage
  --skip-errors   warn about unreadable files and go on (exit code 1)

Exit codes: 0 ok, 1 completed with skipped files, 2 failed.
";

pub const USAGE_VERIFY: &str = "\
Usage: vaultik [GLOBAL FLAGS] snapshot verify SNAPSHOT [--deep] [--identity FILE] [--json]

Check a snapshot (a full id, or `latest`). Without --deep (no private key):
every blob its manifest lists is in the store with the recorded size, and its
metadata exists. With --deep (needs the private key): download and decrypt
everything and check every chunk's SHA-256; report failing blobs and the
files they affect. Exit code 2 when anything is wrong.

  --deep            download and check every chunk
  --identity FILE   age identity file (else $VAULTIK_PRIVATE_KEY), for --deep
  --json            print the report as JSON
";

pub const USAGE_PURGE: &str = "\
Usage: vaultik [GLOBAL FLAGS] snapshot purge (--keep-latest | --older-than DURATION)
                                             [--name NAME] [--dry-run] [--force] [--json]

Remove snapshots (no private key needed), per host and snapshot name, then
delete the blobs no remaining snapshot needs. The newest snapshot of each
host and name is always kept. Blobs younger than grace_period (default 24h)
are never deleted; older unreferenced blobs are marked, and deleted by a
purge at least grace_period later. Asks for confirmation on a terminal
unless --force.

  --keep-latest            keep only the newest snapshot of each host and name
  --older-than DURATION    remove snapshots older than DURATION (30d, 6mo, 1y...)
  --name NAME              only snapshots named NAME
  --dry-run                show what would be removed, remove nothing
  --force                  do not ask for confirmation
  --json                   print the report as JSON
";

pub const USAGE_REMOVE: &str = "\
Usage: vaultik [GLOBAL FLAGS] snapshot remove SNAPSHOT...

Remove the named snapshots' metadata (no private key needed). Their blobs are
freed by `vaultik prune` or `vaultik snapshot purge` once nothing needs them.
";

pub const USAGE_PRUNE: &str = "\
Usage: vaultik [GLOBAL FLAGS] prune [--dry-run] [--json]

Delete blobs that no snapshot references and that are older than
grace_period (default 24h): marked first, deleted by a run at least
grace_period later. No private key needed.

  --dry-run   show what would be deleted, delete nothing
  --json      print the report as JSON
";

pub const USAGE_INFO: &str = "\
Usage: vaultik [GLOBAL FLAGS] store info [--json]

Show the store's location, its snapshots, blobs and their sizes, and the
unreferenced blobs (no private key needed).

  --json      print the report as JSON
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

  -o, --output FILE   write the identity to FILE
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
        cron: bool,
        prune: bool,
        daemon: bool,
    },
    SnapshotList {
        json: bool,
    },
    SnapshotVerify {
        snapshot: String,
        deep: bool,
        identity: Option<PathBuf>,
        json: bool,
    },
    SnapshotPurge {
        keep_latest: bool,
        older_than: Option<u64>,
        name: Option<String>,
        dry_run: bool,
        force: bool,
        json: bool,
    },
    SnapshotRemove {
        snapshots: Vec<String>,
    },
    Prune {
        dry_run: bool,
        json: bool,
    },
    StoreInfo {
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
        ["snapshot", "verify"] | ["verify"] => USAGE_VERIFY,
        ["snapshot", "purge"] | ["purge"] => USAGE_PURGE,
        ["snapshot", "remove"] | ["remove"] => USAGE_REMOVE,
        ["prune"] => USAGE_PRUNE,
        ["store"] | ["store", "info"] | ["info"] => USAGE_INFO,
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
                            "missing command after `snapshot` (create, list, verify, purge or remove)".into(),
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
                "verify" => parse_verify(&mut p, &mut g)?,
                "purge" => parse_purge(&mut p, &mut g)?,
                "remove" => parse_remove(&mut p, &mut g)?,
                other => return Err(Error::Usage(format!("unknown command `snapshot {other}`"))),
            }
        }
        "store" => {
            let sub = loop {
                match p.next().map_err(usage)? {
                    None => {
                        return Err(Error::Usage("missing command after `store` (info)".into()));
                    }
                    Some(arg) => {
                        if let Some(name) = global_name(&arg) {
                            global_flag(name, &mut p, &mut g)?;
                            continue;
                        }
                        match arg {
                            Short('h') | Long("help") => return Ok((g, Command::Help(USAGE_INFO))),
                            Value(v) => break string(v, "command")?,
                            _ => return Err(usage(arg.unexpected())),
                        }
                    }
                }
            };
            match sub.as_str() {
                "info" => {
                    let mut json = false;
                    while let Some(arg) = p.next().map_err(usage)? {
                        if let Some(name) = global_name(&arg) {
                            global_flag(name, &mut p, &mut g)?;
                            continue;
                        }
                        match arg {
                            Short('h') | Long("help") => return Ok((g, Command::Help(USAGE_INFO))),
                            Long("json") => json = true,
                            _ => return Err(usage(arg.unexpected())),
                        }
                    }
                    Command::StoreInfo { json }
                }
                other => return Err(Error::Usage(format!("unknown command `store {other}`"))),
            }
        }
        "prune" => parse_prune(&mut p, &mut g)?,
        "restore" => parse_restore(&mut p, &mut g)?,
        "keygen" => parse_keygen(&mut p, &mut g)?,
        other => return Err(Error::Usage(format!("unknown command `{other}`"))),
    };
    Ok((g, command))
}

fn parse_create(p: &mut lexopt::Parser, g: &mut Global) -> Result<Command> {
    let mut names = Vec::new();
    let mut skip_errors = false;
    let mut cron = false;
    let mut prune = false;
    let mut daemon = false;
    while let Some(arg) = p.next().map_err(usage)? {
        if let Some(name) = global_name(&arg) {
            global_flag(name, p, g)?;
            continue;
        }
        match arg {
            Short('h') | Long("help") => return Ok(Command::Help(USAGE_CREATE)),
            Long("skip-errors") => skip_errors = true,
            Long("cron") => cron = true,
            Long("prune") => prune = true,
            Long("daemon") => daemon = true,
            Value(v) => names.push(string(v, "snapshot name")?),
            _ => return Err(usage(arg.unexpected())),
        }
    }
    if daemon && (prune || !names.is_empty()) {
        return Err(Error::Usage(
            "snapshot create --daemon backs up every configured snapshot and takes no NAME or --prune".into(),
        ));
    }
    Ok(Command::SnapshotCreate {
        names,
        skip_errors,
        cron,
        prune,
        daemon,
    })
}

fn parse_verify(p: &mut lexopt::Parser, g: &mut Global) -> Result<Command> {
    let mut snapshot = None;
    let mut deep = false;
    let mut json = false;
    let mut identity = None;
    while let Some(arg) = p.next().map_err(usage)? {
        if let Some(name) = global_name(&arg) {
            global_flag(name, p, g)?;
            continue;
        }
        match arg {
            Short('h') | Long("help") => return Ok(Command::Help(USAGE_VERIFY)),
            Long("deep") => deep = true,
            Long("json") => json = true,
            Long("identity") => identity = Some(PathBuf::from(p.value().map_err(usage)?)),
            Value(v) if snapshot.is_none() => snapshot = Some(string(v, "SNAPSHOT")?),
            _ => return Err(usage(arg.unexpected())),
        }
    }
    Ok(Command::SnapshotVerify {
        snapshot: snapshot
            .ok_or_else(|| Error::Usage("snapshot verify: missing SNAPSHOT argument".into()))?,
        deep,
        identity,
        json,
    })
}

fn parse_purge(p: &mut lexopt::Parser, g: &mut Global) -> Result<Command> {
    let mut keep_latest = false;
    let mut older_than = None;
    let mut name = None;
    let (mut dry_run, mut force, mut json) = (false, false, false);
    while let Some(arg) = p.next().map_err(usage)? {
        if let Some(n) = global_name(&arg) {
            global_flag(n, p, g)?;
            continue;
        }
        match arg {
            Short('h') | Long("help") => return Ok(Command::Help(USAGE_PURGE)),
            Long("keep-latest") => keep_latest = true,
            Long("older-than") => {
                let v = string(p.value().map_err(usage)?, "--older-than")?;
                let d = crate::config::parse_duration(&v).ok_or_else(|| {
                    Error::Usage(format!(
                        "--older-than `{v}`: expected a duration like 30d, 6mo or 1y"
                    ))
                })?;
                older_than = Some(d.as_secs());
            }
            Long("name") => name = Some(string(p.value().map_err(usage)?, "--name")?),
            Long("dry-run") => dry_run = true,
            Long("force") => force = true,
            Long("json") => json = true,
            _ => return Err(usage(arg.unexpected())),
        }
    }
    if keep_latest == older_than.is_some() {
        return Err(Error::Usage(
            "snapshot purge: give exactly one of --keep-latest and --older-than DURATION".into(),
        ));
    }
    Ok(Command::SnapshotPurge {
        keep_latest,
        older_than,
        name,
        dry_run,
        force,
        json,
    })
}

fn parse_remove(p: &mut lexopt::Parser, g: &mut Global) -> Result<Command> {
    let mut snapshots = Vec::new();
    while let Some(arg) = p.next().map_err(usage)? {
        if let Some(n) = global_name(&arg) {
            global_flag(n, p, g)?;
            continue;
        }
        match arg {
            Short('h') | Long("help") => return Ok(Command::Help(USAGE_REMOVE)),
            Value(v) => snapshots.push(string(v, "SNAPSHOT")?),
            _ => return Err(usage(arg.unexpected())),
        }
    }
    if snapshots.is_empty() {
        return Err(Error::Usage(
            "snapshot remove: missing SNAPSHOT argument".into(),
        ));
    }
    Ok(Command::SnapshotRemove { snapshots })
}

fn parse_prune(p: &mut lexopt::Parser, g: &mut Global) -> Result<Command> {
    let (mut dry_run, mut json) = (false, false);
    while let Some(arg) = p.next().map_err(usage)? {
        if let Some(n) = global_name(&arg) {
            global_flag(n, p, g)?;
            continue;
        }
        match arg {
            Short('h') | Long("help") => return Ok(Command::Help(USAGE_PRUNE)),
            Long("dry-run") => dry_run = true,
            Long("json") => json = true,
            _ => return Err(usage(arg.unexpected())),
        }
    }
    Ok(Command::Prune { dry_run, json })
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
                skip_errors: true,
                cron: false,
                prune: false,
                daemon: false,
            }
        );
        let (_, c) = parse_str("snapshot create --daemon --cron").unwrap();
        assert!(matches!(
            c,
            Command::SnapshotCreate {
                daemon: true,
                cron: true,
                ..
            }
        ));
        assert!(parse_str("snapshot create --daemon etc").is_err());
        let (_, c) = parse_str("snapshot create --cron --prune").unwrap();
        assert!(matches!(
            c,
            Command::SnapshotCreate {
                cron: true,
                prune: true,
                ..
            }
        ));
        let (_, c) =
            parse_str("snapshot purge --older-than 30d --name etc --dry-run --force --json")
                .unwrap();
        assert_eq!(
            c,
            Command::SnapshotPurge {
                keep_latest: false,
                older_than: Some(30 * 86400),
                name: Some("etc".into()),
                dry_run: true,
                force: true,
                json: true
            }
        );
        let (_, c) = parse_str("snapshot verify latest --deep --identity /k --json").unwrap();
        assert_eq!(
            c,
            Command::SnapshotVerify {
                snapshot: "latest".into(),
                deep: true,
                identity: Some("/k".into()),
                json: true
            }
        );
        let (_, c) = parse_str("snapshot remove a b").unwrap();
        assert_eq!(
            c,
            Command::SnapshotRemove {
                snapshots: vec!["a".into(), "b".into()]
            }
        );
        assert_eq!(
            parse_str("prune --dry-run --json").unwrap().1,
            Command::Prune {
                dry_run: true,
                json: true
            }
        );
        assert_eq!(
            parse_str("store info --json").unwrap().1,
            Command::StoreInfo { json: true }
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
        let e = parse_str("snapshot purge").unwrap_err().to_string();
        assert!(e.contains("--keep-latest"), "{e}");
        let e = parse_str("snapshot purge --older-than soon")
            .unwrap_err()
            .to_string();
        assert!(e.contains("--older-than `soon`"), "{e}");
        let e = parse_str("store explode").unwrap_err().to_string();
        assert!(e.contains("store explode"), "{e}");
    }
}

#[cfg(test)]
mod man_page {
    use super::*;

    /// Every `--flag` in the usage texts, which list every flag parsed above.
    fn usage_flags() -> Vec<String> {
        let all = [
            USAGE,
            USAGE_CREATE,
            USAGE_LIST,
            USAGE_VERIFY,
            USAGE_PURGE,
            USAGE_REMOVE,
            USAGE_PRUNE,
            USAGE_INFO,
            USAGE_RESTORE,
            USAGE_KEYGEN,
        ]
        .concat();
        let mut flags: Vec<String> = all
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
            .filter(|w| w.starts_with("--") && w.len() > 2)
            .map(str::to_string)
            .collect();
        flags.sort();
        flags.dedup();
        flags
    }

    #[test]
    fn every_flag_parses_and_is_in_the_man_page() {
        let man = include_str!("../man/vaultik.1").replace("\\-", "-");
        let flags = usage_flags();
        assert!(flags.len() >= 20, "{flags:?}");
        for f in &flags {
            assert!(
                man.contains(f.as_str()),
                "{f} is not documented in man/vaultik.1"
            );
        }
        // And the parser knows each of them somewhere.
        let src = include_str!("cli.rs");
        for f in &flags {
            let name = &f[2..];
            assert!(
                src.contains(&format!("Long(\"{name}\")")) || GLOBAL_FLAGS.contains(&name),
                "{f} is in the usage text but not parsed"
            );
        }
    }
}
