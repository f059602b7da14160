//! Command-line parsing with lexopt into plain structs; no I/O here. Global
//! flags may come before or after the command words.

use std::ffi::OsString;
use std::path::PathBuf;

use ArgRef::{Long, Short, Value};

use crate::browse::find::When;
use crate::error::{Error, Result};
use crate::manifest::Narrow;
use crate::restore::{Controls, Overwrite};
use crate::store::class::Tier;
pub use crate::thaw::ThawArgs;

pub const USAGE: &str = "\
vaultik - encrypted, deduplicating, incremental backups to S3

Usage:
  vaultik [GLOBAL FLAGS] snapshot create [--cron] [--prune] [--skip-errors] [--json] [--progress]
                                         [NAME...]
  vaultik [GLOBAL FLAGS] snapshot create --stdin NAME [--cron] [--prune] [--json] [--progress]
  vaultik [GLOBAL FLAGS] snapshot create --daemon [--cron]
  vaultik [GLOBAL FLAGS] snapshot list [--versions] [--json]
  vaultik [GLOBAL FLAGS] snapshot verify SNAPSHOT [--checksums | --deep [THAW FLAGS]]
                                         [--identity FILE] [--json] [LATEST FLAGS]
  vaultik [GLOBAL FLAGS] snapshot purge RULES [--name NAME] [--dry-run] [--force] [--json]
  vaultik [GLOBAL FLAGS] snapshot remove SNAPSHOT...
  vaultik [GLOBAL FLAGS] prune [--dry-run] [--json]
  vaultik [GLOBAL FLAGS] store info [--json]
  vaultik [GLOBAL FLAGS] store check [--json]
  vaultik [GLOBAL FLAGS] restore SNAPSHOT --target DIR [--identity FILE] [THAW FLAGS]
                                [LATEST FLAGS] [RESTORE CONTROLS] [--rebuild-index] [PATH...]
  vaultik [GLOBAL FLAGS] restore SNAPSHOT --stdout [--identity FILE] [THAW FLAGS]
                                [LATEST FLAGS] [PATH]
  vaultik [GLOBAL FLAGS] ls SNAPSHOT [PATH...] [--recursive] [--json] [--identity FILE]
                           [LATEST FLAGS]
  vaultik [GLOBAL FLAGS] find PATTERN [--snapshot ID]... [--host HOST] [--name NAME]
                             [--newer TIME] [--older TIME] [--json] [--identity FILE]
  vaultik [GLOBAL FLAGS] diff SNAPSHOT_A SNAPSHOT_B [PATH] [--json] [--identity FILE]
                             [LATEST FLAGS]
  vaultik [GLOBAL FLAGS] copy SNAPSHOT... | --all  --to STORE | --to-config FILE
                             [--host HOST] [--name NAME] [THAW FLAGS]
  vaultik [GLOBAL FLAGS] index rebuild [--identity FILE] [--index PATH] [--host HOST]
                                     [--name NAME] [--all] [--force]
  vaultik [GLOBAL FLAGS] repack [--max-unused PERCENT] [--dry-run] [--json] [--identity FILE]
  vaultik keygen [--output FILE] [--passphrase]
  vaultik help [COMMAND]

Only restore, ls, find, diff, `index rebuild`, repack and `snapshot verify --deep` need
the private key.
SNAPSHOT is a full id or `latest`: the newest snapshot of any host and name.
Latest flags narrow it: --host HOST (HOST's newest), --name NAME.
Thaw flags, for blobs in GLACIER or DEEP_ARCHIVE: --thaw[=TIER] --thaw-days N --wait
(see `vaultik help restore`). Restore controls: --include GLOB, --exclude GLOB,
--overwrite MODE, --verify-existing, --delete, --dry-run (see `vaultik help restore`).

Global flags:
  --config PATH      config file (default: $VAULTIK_CONFIG, else /etc/vaultik/vaultik.conf)
  --store STORE      s3://BUCKET/PREFIX or a directory; overrides the config ($VAULTIK_STORE)
  --endpoint URL     S3 endpoint; overrides the config ($VAULTIK_S3_ENDPOINT)
  --region REGION    S3 region; overrides the config ($VAULTIK_S3_REGION, default us-east-1)
  --retry-for DURATION
                     how long a store request is tried through an outage (default 15m)
  --limit-upload RATE, --limit-download RATE
                     bytes per second to and from the store, all threads (10MB, 5MiB/s)
  --connections N    store requests in flight at most, all threads
  --passphrase-fd N  the passphrase of a protected identity file, from file
                     descriptor N (else asked at the terminal)
  --signer KEY       trust snapshots signed by this host key (ed25519:...), as
                     trusted_signers: latest, restore and retention take no other
  -h, --help         print help and exit
  -V, --version      print the version and exit

Environment: VAULTIK_CONFIG, VAULTIK_PRIVATE_KEY, VAULTIK_STORE, VAULTIK_S3_ENDPOINT,
VAULTIK_S3_REGION, VAULTIK_CA_FILE, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY. See vaultik(1).
";

pub const USAGE_CREATE: &str = "\
Usage: vaultik [GLOBAL FLAGS] snapshot create [--cron] [--prune] [--skip-errors] [--json] [--progress]
                                              [NAME...]
       vaultik [GLOBAL FLAGS] snapshot create --stdin NAME [--cron] [--prune] [--json] [--progress]
       vaultik [GLOBAL FLAGS] snapshot create --daemon [--cron]

Back up every configured snapshot (walks of `path`s and `command`s), or only
the NAMEs given.

  --stdin NAME    back up standard input as the one file /stdin/NAME of
                  snapshot NAME (zfs send ... | vaultik snapshot create
                  --stdin NAME); no [snapshot NAME] section is needed
  --daemon        stay in the foreground: back up everything once, then watch
                  the configured paths with inotify and snapshot the names
                  whose paths changed (see backup_interval, settle_delay,
                  min_time_between_run, full_scan_interval, stop_timeout);
                  `command` snapshots run every full_scan_interval
  --cron          print nothing unless there is a warning or an error
  --prune         afterwards, purge this host's snapshots by the configured
                  retention (keep_latest, keep_within, keep_hourly,
                  keep_daily, keep_weekly, keep_monthly, keep_yearly) and
                  collect garbage
  --skip-errors   warn about unreadable files and go on (exit code 1); the
                  config's skip_errors = yes does the same
  --json          print one JSON object per snapshot (and one for --prune)
                  instead of the text summary, even with --cron: id, status,
                  exit, files new/changed/unchanged/skipped, bytes, blobs,
                  requests, duration (see vaultik(1))
  --progress      show progress even when standard error is not a terminal;
                  with --json, as JSON lines ({\"progress\": {...}}) on
                  standard error, once a second

Hooks (hook_before, hook_after, hook_on_error), health pings (ping_url) and
the Prometheus textfile (metrics_file) are configured in the config file.

Exit codes: 0 ok, 1 completed with skipped files, 2 failed.
";

pub const USAGE_VERIFY: &str = "\
Usage: vaultik [GLOBAL FLAGS] snapshot verify SNAPSHOT [--checksums | --deep [THAW FLAGS]]
                                              [--identity FILE] [--json]
                                              [--host HOST] [--name NAME]

Check a snapshot (a full id, or `latest`: the newest of any host). Without --deep (no private key):
every blob its manifest lists is in the store with the recorded size, and its
metadata exists. With --checksums (no private key, nothing downloaded, works
on cold blobs): also the SHA-256 the server stored for each blob matches the
blob's name. With --deep (needs the private key): download and decrypt
everything and check every chunk's SHA-256; report failing blobs and the
files they affect (blobs in GLACIER or DEEP_ARCHIVE: see the thaw flags of
`vaultik help restore`). Exit code 2 when anything is wrong, 3 while a thaw
is under way.

  --checksums       compare the server's stored SHA-256 of every blob with its key
  --deep            download and check every chunk
  --thaw[=TIER] --thaw-days N --wait
                    as for restore
  --identity FILE   age identity file (else $VAULTIK_PRIVATE_KEY), for --deep
  --json            print the report as JSON
  --host HOST       `latest` is the newest snapshot of HOST (a full id must be of it)
  --name NAME       `latest` is the newest snapshot named NAME
";

pub const USAGE_PURGE: &str = "\
Usage: vaultik [GLOBAL FLAGS] snapshot purge RULES [--name NAME] [--dry-run] [--force] [--json]

Remove snapshots (no private key needed), per host and snapshot name, then
delete the blobs no remaining snapshot needs. A snapshot is kept when any of
the RULES keeps it; the newest snapshot of each host and name is always kept.
Blobs younger than grace_period (default 24h) are never deleted; older
unreferenced blobs are marked, and deleted by a purge at least grace_period
later. Asks for confirmation on a terminal unless --force. --dry-run shows,
for every snapshot, whether it is kept and by which rule.

RULES, at least one:
  --keep-latest N          keep the N newest snapshots of each host and name
                           (as keep_latest = N)
  --older-than DURATION    remove snapshots older than DURATION (30d, 6mo, 1y...;
                           as keep_within = DURATION)
  --keep-hourly N          keep the newest snapshot of each of the last N hours
  --keep-daily N           ... days,
  --keep-weekly N          ... ISO weeks (Monday to Sunday),
  --keep-monthly N         ... months,
  --keep-yearly N          ... years that have snapshots
  --timezone ZONE          take hours, days... in ZONE (e.g. Europe/Berlin; default
                           the config's retention_timezone, else UTC)

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

pub const USAGE_CHECK: &str = "\
Usage: vaultik [GLOBAL FLAGS] store check [--json]

Try the store once before trusting it with backups: write, read (whole and
ranged), list and delete two probe objects under its own key (check/), ask
for versioning and Object Lock, read the server's clock, and report what
worked, the checksums kept, the clock skew, and the latency and throughput
seen (no private key needed).

  --json      print the report as JSON
";

pub const USAGE_LIST: &str = "\
Usage: vaultik [GLOBAL FLAGS] snapshot list [--versions] [--json]

List the complete snapshots in the store, oldest first (no private key
needed): ID, TIME (UTC) and SIZE. SIZE is what restoring the snapshot would
fetch: the blobs it uses plus its metadata, shared blobs counted in full.
Snapshots share blobs (deduplication), so an unchanged second snapshot shows
about the same SIZE as the first (only its metadata differs) while it added
almost nothing to the store; what the store holds in all is in `vaultik store
info`. A store never backed up to lists nothing, with a warning.

  --versions      also list, flagged deleted, the snapshots whose current
                  objects were deleted from a versioned bucket while versions
                  of them remain (restore and verify take their ids)
  --json          print a JSON array (time in RFC 3339, e.g. 2026-12-07T11:45:29Z)
";

pub const USAGE_RESTORE: &str = "\
Usage: vaultik [GLOBAL FLAGS] restore SNAPSHOT --target DIR [--identity FILE] [THAW FLAGS]
                                     [--no-xattrs] [--host HOST] [--name NAME] [CONTROLS]
                                     [--rebuild-index] [PATH...]
       vaultik [GLOBAL FLAGS] restore SNAPSHOT --stdout [--identity FILE] [THAW FLAGS]
                                     [--host HOST] [--name NAME] [PATH]

Restore a snapshot (a full id, or `latest`: the newest of any host) into DIR, or only the PATHs given
(source paths such as /etc/hosts or /home/alice); or write one file's content
to standard output (PATH may be left out for a snapshot of one file, such as
a stream's). Needs the private key: $VAULTIK_PRIVATE_KEY, or --identity FILE.

Blobs in GLACIER or DEEP_ARCHIVE must be thawed first: the restore prints
its plan (blobs, bytes, time and estimated cost per tier) and, with --thaw,
asks S3 to thaw exactly the blobs it needs. Without --wait it then exits
with code 3; run the same command again later to go on.

  --target DIR        where to restore (created if missing)
  --stdout            write the file's content to standard output, in order,
                      every chunk checked; a chunk that fails its check stops
                      the stream (exit code 2: the reader got a truncated stream)
  --identity FILE     age identity file (as written by age-keygen or vaultik keygen)
  --no-xattrs         do not restore extended attributes, ACLs and inode flags
                      (for a target file system that cannot hold them; a
                      warning counts the entries that had some)
  --thaw[=TIER]       request the thaw of the cold blobs needed: TIER is
                      Expedited, Standard (the default) or Bulk
  --thaw-days N       keep thawed copies readable N days (default 7)
  --wait              wait until every needed blob is readable, then go on
  --json              print the thaw plan as JSON (on standard error with --stdout)
  --host HOST         `latest` is the newest snapshot of HOST (a full id must be of it)
  --name NAME         `latest` is the newest snapshot named NAME
  --rebuild-index     after the restore, rebuild the local index (the config's
                      index_path, or the default) from the latest snapshot of
                      each name of the restored snapshot's host, as
                      `vaultik index rebuild` does (see `vaultik help index`);
                      an index that knows this store is left alone unless
                      it is empty

Controls (with --target):
  --include GLOB      restore only what matches GLOB and what is below it
                      (repeatable); the directories above are made as parents.
                      GLOB as for excludes: without a / it matches a name at any
                      depth (*.conf), with a / the whole path (/etc/nginx)
  --exclude GLOB      leave out what matches GLOB and what is below it (repeatable)
  --overwrite MODE    what to do with a file DIR already has: always (the
                      default) replace it; if-changed: keep it if its size and
                      mtime are the snapshot's (then set its owner, mode and
                      times); if-newer: replace it if the snapshot's mtime is
                      newer; never: keep it
  --verify-existing   with if-changed: compare contents (each chunk's SHA-256),
                      not mtimes
  --delete            remove from each directory restored what the snapshot does
                      not have in it (only inside DIR, never through a symlink,
                      never what --exclude matches)
  --dry-run           print what would be created, written, replaced, kept and
                      deleted, and why; write nothing, fetch no file content
                      (the key is still needed: the snapshot's metadata is read).
                      With --json: one JSON object per action, then a summary

A restore that was interrupted, run again with --overwrite if-changed, fetches
only what is still missing.

Exit codes: 0 ok, 2 failed, 3 thaw requested or under way (run again later).
";

pub const USAGE_LS: &str = "\
Usage: vaultik [GLOBAL FLAGS] ls SNAPSHOT [PATH...] [--recursive] [--json]
                                [--identity FILE] [--host HOST] [--name NAME]

List a snapshot's entries like `ls -l`, without restoring anything: type and
mode, owner and group (numeric, as recorded), size, mtime (UTC) and path, with
symlink targets and hard links. PATH (default /) is a source path such as
/etc: a directory's entries are listed, anything else is shown itself;
directories the snapshot only implies (the parents of a backed-up path) show
as d?????????. Needs the private key. Memory stays flat whatever the size of
the snapshot.

  -R, --recursive     everything below PATH, PATH included, in path order
  --json              one JSON object per entry, one per line
  --identity FILE     age identity file (else $VAULTIK_PRIVATE_KEY)
  --host HOST         `latest` is the newest snapshot of HOST
  --name NAME         `latest` is the newest snapshot named NAME
";

pub const USAGE_FIND: &str = "\
Usage: vaultik [GLOBAL FLAGS] find PATTERN [--snapshot ID]... [--host HOST] [--name NAME]
                                  [--newer TIME] [--older TIME] [--json] [--identity FILE]

Which snapshots hold a path matching PATTERN, newest first, with each hit's
size and mtime. PATTERN is a glob, as for excludes: without a / it matches a
name at any depth (nginx.conf, *.key), with a / the whole path
(/etc/nginx/*.conf, /home/**/id_rsa); * never matches a /. Every snapshot in
the store is searched (never one dated ahead, unless named), or only those
the flags leave. Needs the private key.

  --snapshot ID     search only this snapshot (repeatable; `latest` allowed)
  --host HOST       only snapshots of HOST
  --name NAME       only snapshots named NAME
  --newer TIME      only snapshots made at or after TIME
  --older TIME      only snapshots made before TIME
  --json            one JSON object per hit, one per line
  --identity FILE   age identity file (else $VAULTIK_PRIVATE_KEY)

TIME: a day (2026-11-20, its midnight UTC), a time (2026-11-20T08:00, UTC) or a
duration that long ago (7d, 12h, 2w).
Exit codes: 0 something matched, 1 nothing matched (or a snapshot could not be
read: named in a warning, the others searched), 2 failed.
";

pub const USAGE_DIFF: &str = "\
Usage: vaultik [GLOBAL FLAGS] diff SNAPSHOT_A SNAPSHOT_B [PATH] [--json] [--identity FILE]
                                  [--host HOST] [--name NAME]

What changed from SNAPSHOT_A to SNAPSHOT_B (below PATH, if given), in path
order: `+ PATH` added, `- PATH` removed, `M PATH (what)` changed (type,
content, size, mode, owner, symlink target, device, mtime; a directory's mtime
alone is not a change), then a summary line. Needs the private key. Exit code
0 whether or not anything changed.

  --json              one JSON object per difference, one per line, then a summary
  --identity FILE     age identity file (else $VAULTIK_PRIVATE_KEY)
  --host HOST         `latest` is the newest snapshot of HOST
  --name NAME         `latest` is the newest snapshot named NAME
";

pub const USAGE_COPY: &str = "\
Usage: vaultik [GLOBAL FLAGS] copy SNAPSHOT... | --all  --to STORE | --to-config FILE
                              [--host HOST] [--name NAME] [THAW FLAGS]

Copy snapshots from the store (the global flags and config name it) to a
second store, without any key: the blobs the destination lacks, then each
snapshot's metadata, its manifest last. Run it again after an interruption:
it copies only what is missing.

  --to STORE        the destination: s3://BUCKET/PREFIX (at the source's endpoint,
                    with its credentials, unless --to-config says otherwise) or a
                    directory (created if missing)
  --to-config FILE  a second config file whose [s3] or [local] section is the
                    destination (its credentials, storage_class, object_lock);
                    with --to, only its bucket and prefix are replaced
  --all             every snapshot of the source (of HOST and NAME when given)
  --host HOST       only HOST's snapshots (`latest`: HOST's newest)
  --name NAME       only snapshots named NAME (`latest`: the newest so named)
  --thaw[=TIER] --thaw-days N --wait
                    as for restore, for source blobs in GLACIER or DEEP_ARCHIVE
";

pub const USAGE_REPACK: &str = "\
Usage: vaultik [GLOBAL FLAGS] repack [--max-unused PERCENT] [--dry-run] [--json] [--identity FILE]

Give back the space held by partly used blobs: GC deletes whole blobs only,
so data purged from every snapshot stays while a kept snapshot uses another
chunk of its blob. Moves the chunks still used out of every blob whose
unused share is above --max-unused into new blobs, rewrites the snapshots
that used them (each stays whole and signed at every step), and marks the
old blobs for deletion: the next prune deletes them once the grace period
has passed (at once with grace_period = 0s). Needs the private key and the
config (its age_recipient, blob_size_limit and storage_class).

A rewritten snapshot that was signed by a key this run trusts (its config's
trusted_signers, --signer, or this host's own) is signed again with this
host's key: add this host's key (`store info`) to trusted_signers where
snapshots are restored. Snapshots signed by another key, unsigned ones under
trusted signers too are left alone, with the blobs they use. Each host's
next backup uploads again what it still has of the replaced blobs.

  --max-unused PERCENT  repack blobs with more than this unused (default 10%)
  --dry-run             say what would be rewritten and freed; write nothing
  --json                one JSON object: the summary
  --identity FILE       age identity file (else $VAULTIK_PRIVATE_KEY)
";

pub const USAGE_INDEX: &str = "\
Usage: vaultik [GLOBAL FLAGS] index rebuild [--identity FILE] [--index PATH] [--host HOST]
                                           [--name NAME] [--all] [--force]

Rebuild this host's local index (a cache of what the store holds) from the
snapshots in the store, after it was lost (a new disk, a reinstall), so
that the next backup uploads only what changed instead of everything.
Needs the private key ($VAULTIK_PRIVATE_KEY, or --identity FILE): run it
once, as an admin, with the host's config. It takes the run lock of
`snapshot create` (it never runs beside a backup) and writes the new index
beside the old place, renamed in once complete.

Only blobs the store lists, with the size listed, are recorded, and only
chunks that lie within them. Snapshots do not hold what change detection
needs (ctime, inode, device), so the next backup reads every file again,
once, but uploads only what changed.

  --identity FILE     age identity file (else $VAULTIK_PRIVATE_KEY)
  --index PATH        the index to write (default: the config's index_path,
                      else /var/lib/vaultik/index.sqlite as root,
                      ~/.local/state/vaultik/index.sqlite otherwise)
  --host HOST         whose snapshots (default: this host, the config's
                      hostname or the system's)
  --name NAME         only the snapshots named NAME
  --all               every snapshot of the host (and name), not only the
                      latest of each name
  --force             replace an index that already knows this store (by
                      default one that holds anything is left alone)
";

pub const USAGE_KEYGEN: &str = "\
Usage: vaultik keygen [--output FILE] [--passphrase]

Generate an age key pair. The identity (private key) goes to FILE (created
mode 0600, never overwritten) or to standard output; the public key, for
`age_recipient`, is printed to standard output (to standard error when the
protected identity goes there).

  -o, --output FILE   write the identity to FILE
  --passphrase        encrypt the identity with a passphrase (age -p, armored),
                      asked twice at the terminal or read once from
                      --passphrase-fd N; --identity FILE then asks for it
";

#[derive(Debug, Default, Clone, PartialEq)]
pub struct Global {
    pub config: Option<PathBuf>,
    pub store: Option<String>,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    /// `--retry-for DURATION`: how long a store request is tried through
    /// an outage (the config's `retry_for`).
    pub retry_for: Option<std::time::Duration>,
    /// `--limit-upload`, `--limit-download` (bytes per second) and
    /// `--connections`, over the config's keys.
    pub limit_upload: Option<u64>,
    pub limit_download: Option<u64>,
    pub connections: Option<usize>,
    /// `--passphrase-fd N`: where the passphrase of a protected identity
    /// file comes from (else the terminal).
    pub passphrase_fd: Option<i32>,
    /// `--signer KEY`, repeated: host signing keys trusted, beside the
    /// config's `trusted_signers`.
    pub signers: Vec<[u8; 32]>,
}

/// `snapshot create`
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CreateArgs {
    pub names: Vec<String>,
    pub skip_errors: bool,
    pub cron: bool,
    pub prune: bool,
    pub daemon: bool,
    /// `--stdin NAME`: standard input as snapshot NAME's one file.
    pub stdin: Option<String>,
    /// `--json`: one JSON object per snapshot instead of the text summary.
    pub json: bool,
    /// `--progress`: progress even when standard error is no terminal
    /// (JSON lines with `--json`).
    pub progress: bool,
}

/// `snapshot verify`
#[derive(Debug, Clone, PartialEq)]
pub struct VerifyArgs {
    pub snapshot: String,
    pub deep: bool,
    pub checksums: bool,
    pub identity: Option<PathBuf>,
    pub json: bool,
    pub thaw: ThawArgs,
    /// `--host`, `--name`: which `latest`.
    pub narrow: Narrow,
}

/// `snapshot purge`
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PurgeArgs {
    pub keep_latest: Option<usize>,
    pub older_than: Option<u64>,
    pub keep_hourly: Option<usize>,
    pub keep_daily: Option<usize>,
    pub keep_weekly: Option<usize>,
    pub keep_monthly: Option<usize>,
    pub keep_yearly: Option<usize>,
    pub timezone: Option<String>,
    pub name: Option<String>,
    pub dry_run: bool,
    pub force: bool,
    pub json: bool,
}

/// `restore`
#[derive(Debug, Clone, PartialEq)]
pub struct RestoreArgs {
    pub snapshot: String,
    pub to: RestoreTo,
    pub paths: Vec<String>,
    pub identity: Option<PathBuf>,
    pub thaw: ThawArgs,
    pub json: bool,
    /// `--host`, `--name`: which `latest`.
    pub narrow: Narrow,
    /// `--include`, `--exclude`, `--overwrite`, `--verify-existing`,
    /// `--delete`, `--dry-run`.
    pub controls: Controls,
    /// `--no-xattrs`: extended attributes, ACLs and inode flags are not
    /// restored.
    pub no_xattrs: bool,
    /// `--rebuild-index`: afterwards, rebuild the local index.
    pub rebuild_index: bool,
}

/// `index rebuild`
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RebuildArgs {
    pub identity: Option<PathBuf>,
    /// `--index PATH`: instead of the config's index_path.
    pub index: Option<PathBuf>,
    /// `--host`, `--name`: whose snapshots (the host defaults to this one).
    pub narrow: Narrow,
    /// `--all`: every snapshot, not only the latest of each name.
    pub all: bool,
    /// `--force`: replace an index that knows this store.
    pub force: bool,
}

/// `repack`
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RepackArgs {
    pub identity: Option<PathBuf>,
    /// `--max-unused PERCENT`, as a share (0 to 1).
    pub max_unused: f64,
    pub dry_run: bool,
    pub json: bool,
}

/// `ls`
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LsArgs {
    pub snapshot: String,
    /// Source paths, as given (bytes: a name need not be UTF-8).
    pub paths: Vec<Vec<u8>>,
    pub recursive: bool,
    pub json: bool,
    pub identity: Option<PathBuf>,
    pub narrow: Narrow,
}

/// `find`
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FindArgs {
    pub pattern: String,
    /// `--snapshot ID`, repeatable.
    pub snapshots: Vec<String>,
    /// `--host`, `--name`: which snapshots (and which `latest`).
    pub narrow: Narrow,
    pub newer: Option<When>,
    pub older: Option<When>,
    pub json: bool,
    pub identity: Option<PathBuf>,
}

/// `diff`
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DiffArgs {
    pub a: String,
    pub b: String,
    pub path: Option<Vec<u8>>,
    pub json: bool,
    pub identity: Option<PathBuf>,
    pub narrow: Narrow,
}

/// `copy`
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CopyArgs {
    /// Ids, or `latest`.
    pub snapshots: Vec<String>,
    pub all: bool,
    /// `--to STORE`: `s3://BUCKET/PREFIX` or a directory.
    pub to: Option<String>,
    /// `--to-config FILE`
    pub to_config: Option<PathBuf>,
    /// `--host`, `--name`: which snapshots (and which `latest`).
    pub narrow: Narrow,
    /// Source blobs in a cold storage class.
    pub thaw: ThawArgs,
}

/// Where a restore writes.
#[derive(Debug, Clone, PartialEq)]
pub enum RestoreTo {
    /// `--target DIR`
    Target(PathBuf),
    /// `--stdout`: one file's content.
    Stdout,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Help(&'static str),
    /// No command given: the usage on standard error, exit code 2.
    Missing,
    Version,
    SnapshotCreate(CreateArgs),
    SnapshotList {
        json: bool,
        versions: bool,
    },
    SnapshotVerify(VerifyArgs),
    SnapshotPurge(PurgeArgs),
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
    StoreCheck {
        json: bool,
    },
    Restore(RestoreArgs),
    Ls(LsArgs),
    Find(FindArgs),
    Diff(DiffArgs),
    Copy(CopyArgs),
    IndexRebuild(RebuildArgs),
    Repack(RepackArgs),
    Keygen {
        output: Option<PathBuf>,
        /// `--passphrase`: the identity encrypted with a passphrase.
        passphrase: bool,
    },
}

impl Command {
    /// The command words, for the help a usage error points to (None
    /// where `vaultik --help` is that help).
    pub fn name(&self) -> Option<&'static str> {
        Some(match self {
            Command::Help(_) | Command::Missing | Command::Version => return None,
            Command::SnapshotCreate(_) => "snapshot create",
            Command::SnapshotList { .. } => "snapshot list",
            Command::SnapshotVerify(_) => "snapshot verify",
            Command::SnapshotPurge(_) => "snapshot purge",
            Command::SnapshotRemove { .. } => "snapshot remove",
            Command::Prune { .. } => "prune",
            Command::StoreInfo { .. } => "store info",
            Command::StoreCheck { .. } => "store check",
            Command::Restore(_) => "restore",
            Command::Ls(_) => "ls",
            Command::Find(_) => "find",
            Command::Diff(_) => "diff",
            Command::Copy(_) => "copy",
            Command::IndexRebuild(_) => "index rebuild",
            Command::Repack(_) => "repack",
            Command::Keygen { .. } => "keygen",
        })
    }
}

/// `--identity` given to a command that reads no file contents.
fn needs_no_key(command: &str) -> Error {
    Error::Usage(format!(
        "{command} needs no private key: --identity is for restore, ls, find, diff, \
         `index rebuild`, repack and `snapshot verify --deep`"
    ))
}

fn usage(e: lexopt::Error) -> Error {
    Error::Usage(e.to_string())
}

fn string(v: OsString, what: &str) -> Result<String> {
    v.into_string()
        .map_err(|_| Error::Usage(format!("{what} is not valid UTF-8")))
}

const GLOBAL_FLAGS: [&str; 10] = [
    "config",
    "store",
    "endpoint",
    "region",
    "retry-for",
    "limit-upload",
    "limit-download",
    "connections",
    "passphrase-fd",
    "signer",
];

/// An argument that is not a global flag, owned (so that the parser can
/// be asked for an option's value while it is matched).
enum Arg {
    /// `-h` or `--help`, for any command.
    Help,
    Short(char),
    Long(String),
    Value(OsString),
}

/// An `Arg` to match on (`Long("json")`).
enum ArgRef<'a> {
    Help,
    Short(char),
    Long(&'a str),
    Value(&'a std::ffi::OsStr),
}

impl Arg {
    fn get(&self) -> ArgRef<'_> {
        match self {
            Arg::Help => ArgRef::Help,
            Arg::Short(c) => ArgRef::Short(*c),
            Arg::Long(l) => ArgRef::Long(l),
            Arg::Value(v) => ArgRef::Value(v),
        }
    }

    fn unexpected(&self) -> Error {
        usage(match self {
            Arg::Help => lexopt::Error::UnexpectedOption("--help".into()),
            Arg::Short(c) => lexopt::Error::UnexpectedOption(format!("-{c}")),
            Arg::Long(l) => lexopt::Error::UnexpectedOption(format!("--{l}")),
            Arg::Value(v) => lexopt::Error::UnexpectedArgument(v.clone()),
        })
    }
}

/// The next argument that is not a global flag: those may come anywhere,
/// before or after the command words, and are read into `g` on the way.
fn next(p: &mut lexopt::Parser, g: &mut Global) -> Result<Option<Arg>> {
    loop {
        let arg = match p.next().map_err(usage)? {
            None => return Ok(None),
            Some(lexopt::Arg::Short('h')) | Some(lexopt::Arg::Long("help")) => Arg::Help,
            Some(lexopt::Arg::Short(c)) => Arg::Short(c),
            Some(lexopt::Arg::Long(l)) => Arg::Long(l.to_string()),
            Some(lexopt::Arg::Value(v)) => Arg::Value(v),
        };
        let global = match &arg {
            Arg::Long(l) => GLOBAL_FLAGS.iter().find(|g| *g == l).copied(),
            _ => None,
        };
        let Some(name) = global else {
            return Ok(Some(arg));
        };
        let v = p.value().map_err(usage)?;
        match name {
            "config" => g.config = Some(v.into()),
            "store" => g.store = Some(string(v, "--store")?),
            "endpoint" => g.endpoint = Some(string(v, "--endpoint")?),
            "retry-for" => {
                let v = string(v, "--retry-for")?;
                g.retry_for = Some(crate::config::parse_duration(&v).ok_or_else(|| {
                    Error::Usage(format!(
                        "--retry-for: expected a duration like 15m, found `{v}`"
                    ))
                })?);
            }
            "limit-upload" | "limit-download" => {
                let flag = format!("--{name}");
                let v = string(v, &flag)?;
                let rate = crate::config::parse_rate(&v).ok_or_else(|| {
                    Error::Usage(format!(
                        "{flag}: expected bytes per second like 10MB or 5MiB/s, at least {}, \
                         found `{v}`",
                        crate::config::RATE_MIN
                    ))
                })?;
                if name == "limit-upload" {
                    g.limit_upload = Some(rate);
                } else {
                    g.limit_download = Some(rate);
                }
            }
            "connections" => {
                let v = string(v, "--connections")?;
                let max = crate::config::CONNECTIONS_MAX;
                g.connections = Some(
                    v.parse()
                        .ok()
                        .filter(|n| (1..=max).contains(n))
                        .ok_or_else(|| {
                            Error::Usage(format!(
                                "--connections: expected a number from 1 to {max}, found `{v}`"
                            ))
                        })?,
                );
            }
            "signer" => {
                let v = string(v, "--signer")?;
                g.signers.push(crate::signing::parse_signer(&v).ok_or_else(|| {
                    Error::Usage(format!(
                        "--signer: expected a host signing key (ed25519:<64 hex digits>), found `{v}`"
                    ))
                })?);
            }
            "passphrase-fd" => {
                let v = string(v, "--passphrase-fd")?;
                g.passphrase_fd = Some(v.parse().ok().filter(|n| *n >= 0).ok_or_else(|| {
                    Error::Usage(format!(
                        "--passphrase-fd: expected a file descriptor number, found `{v}`"
                    ))
                })?);
            }
            _ => g.region = Some(string(v, "--region")?),
        }
    }
}

/// The value of the option just read.
fn value(p: &mut lexopt::Parser, what: &str) -> Result<String> {
    string(p.value().map_err(usage)?, what)
}

fn path_value(p: &mut lexopt::Parser) -> Result<PathBuf> {
    Ok(PathBuf::from(p.value().map_err(usage)?))
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
        ["store", "check"] | ["check"] => USAGE_CHECK,
        ["restore"] => USAGE_RESTORE,
        ["ls"] => USAGE_LS,
        ["find"] => USAGE_FIND,
        ["diff"] => USAGE_DIFF,
        ["copy"] => USAGE_COPY,
        ["keygen"] => USAGE_KEYGEN,
        ["index"] | ["index", "rebuild"] => USAGE_INDEX,
        ["repack"] => USAGE_REPACK,
        _ => {
            return Err(Error::Usage(format!(
                "unknown command `{}`",
                words.join(" ")
            )));
        }
    })
}

/// The word after `snapshot` or `store` (`help` is that group's help).
fn sub_command(
    p: &mut lexopt::Parser,
    g: &mut Global,
    group: &str,
    help: &'static str,
) -> Result<std::result::Result<String, Command>> {
    match next(p, g)? {
        None => Err(Error::Usage(format!(
            "missing command after `{group}` ({})",
            if group == "store" {
                "info or check"
            } else {
                "create, list, verify, purge or remove"
            }
        ))),
        Some(Arg::Help) => Ok(Err(Command::Help(help))),
        Some(Arg::Value(v)) => Ok(Ok(string(v, "command")?)),
        Some(a) => Err(a.unexpected()),
    }
}

pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<(Global, Command)> {
    let mut p = lexopt::Parser::from_args(args);
    let mut g = Global::default();
    let Some(first) = next(&mut p, &mut g)? else {
        return Ok((g, Command::Missing));
    };
    let cmd = match first.get() {
        ArgRef::Help => return Ok((g, Command::Help(USAGE))),
        Short('V') | Long("version") => return Ok((g, Command::Version)),
        Value(v) => string(v.to_os_string(), "command")?,
        _ => return Err(first.unexpected()),
    };
    let p = &mut p;
    let command = match cmd.as_str() {
        "help" => {
            let mut words = Vec::new();
            while let Some(arg) = next(p, &mut g)? {
                match arg {
                    Arg::Value(v) => words.push(string(v, "command")?),
                    a => return Err(a.unexpected()),
                }
            }
            Command::Help(help_for(&words)?)
        }
        "snapshot" => match sub_command(p, &mut g, "snapshot", USAGE)? {
            Err(help) => help,
            Ok(sub) => match sub.as_str() {
                "create" => parse_create(p, &mut g).map_err(|e| e.usage_in("snapshot create"))?,
                "list" => parse_list(p, &mut g).map_err(|e| e.usage_in("snapshot list"))?,
                "verify" => parse_verify(p, &mut g).map_err(|e| e.usage_in("snapshot verify"))?,
                "purge" => parse_purge(p, &mut g).map_err(|e| e.usage_in("snapshot purge"))?,
                "remove" => parse_remove(p, &mut g).map_err(|e| e.usage_in("snapshot remove"))?,
                other => return Err(Error::Usage(format!("unknown command `snapshot {other}`"))),
            },
        },
        "store" => match sub_command(p, &mut g, "store", USAGE_INFO)? {
            Err(help) => help,
            Ok(sub) => match sub.as_str() {
                "info" => parse_info(p, &mut g).map_err(|e| e.usage_in("store info"))?,
                "check" => match parse_flags(p, &mut g, USAGE_CHECK, false)
                    .map_err(|e| e.usage_in("store check"))?
                {
                    Ok((_, json)) => Command::StoreCheck { json },
                    Err(help) => help,
                },
                other => return Err(Error::Usage(format!("unknown command `store {other}`"))),
            },
        },
        "prune" => parse_prune(p, &mut g).map_err(|e| e.usage_in("prune"))?,
        "restore" => parse_restore(p, &mut g).map_err(|e| e.usage_in("restore"))?,
        "ls" => parse_ls(p, &mut g).map_err(|e| e.usage_in("ls"))?,
        "find" => parse_find(p, &mut g).map_err(|e| e.usage_in("find"))?,
        "diff" => parse_diff(p, &mut g).map_err(|e| e.usage_in("diff"))?,
        "copy" => parse_copy(p, &mut g).map_err(|e| e.usage_in("copy"))?,
        "keygen" => parse_keygen(p, &mut g).map_err(|e| e.usage_in("keygen"))?,
        "repack" => parse_repack(p, &mut g).map_err(|e| e.usage_in("repack"))?,
        "index" => match next(p, &mut g)? {
            None => {
                return Err(Error::Usage(
                    "missing command after `index` (rebuild)".into(),
                ));
            }
            Some(Arg::Help) => Command::Help(USAGE_INDEX),
            Some(Arg::Value(v)) => match string(v, "command")?.as_str() {
                "rebuild" => parse_rebuild(p, &mut g).map_err(|e| e.usage_in("index rebuild"))?,
                other => return Err(Error::Usage(format!("unknown command `index {other}`"))),
            },
            Some(a) => return Err(a.unexpected()),
        },
        other => return Err(Error::Usage(format!("unknown command `{other}`"))),
    };
    Ok((g, command))
}

fn parse_create(p: &mut lexopt::Parser, g: &mut Global) -> Result<Command> {
    let mut a = CreateArgs::default();
    while let Some(arg) = next(p, g)? {
        match arg.get() {
            ArgRef::Help => return Ok(Command::Help(USAGE_CREATE)),
            Long("skip-errors") => a.skip_errors = true,
            Long("cron") => a.cron = true,
            Long("prune") => a.prune = true,
            Long("daemon") => a.daemon = true,
            Long("json") => a.json = true,
            Long("progress") => a.progress = true,
            Long("stdin") => {
                let name = value(p, "--stdin")?;
                crate::config::check_snapshot_name(&name)
                    .map_err(|m| Error::Usage(format!("--stdin: {m}")))?;
                a.stdin = Some(name);
            }
            Value(v) => a.names.push(string(v.to_os_string(), "snapshot name")?),
            _ => return Err(arg.unexpected()),
        }
    }
    if a.daemon && (a.prune || a.json || !a.names.is_empty() || a.stdin.is_some()) {
        return Err(Error::Usage(
            "snapshot create --daemon backs up every configured snapshot and takes no NAME, --stdin, --prune or --json".into(),
        ));
    }
    if a.stdin.is_some() && (!a.names.is_empty() || a.skip_errors) {
        return Err(Error::Usage(
            "snapshot create --stdin NAME backs up standard input only: no other NAME, no --skip-errors".into(),
        ));
    }
    Ok(Command::SnapshotCreate(a))
}

/// `--thaw[=TIER]`, `--thaw-days N` and `--wait` into `t`: false when
/// `arg` is none of them.
fn thaw_flag(p: &mut lexopt::Parser, arg: &Arg, t: &mut ThawArgs) -> Result<bool> {
    match arg.get() {
        Long("thaw") => {
            t.tier = Some(match p.optional_value() {
                None => Tier::default(),
                Some(v) => {
                    let v = string(v, "--thaw")?;
                    Tier::parse(&v).ok_or_else(|| {
                        Error::Usage(format!("--thaw={v}: expected Expedited, Standard or Bulk"))
                    })?
                }
            });
        }
        Long("thaw-days") => {
            let v = value(p, "--thaw-days")?;
            t.days = v
                .parse()
                .ok()
                .filter(|d| (1..=3650).contains(d))
                .ok_or_else(|| {
                    Error::Usage(format!("--thaw-days `{v}`: expected days from 1 to 3650"))
                })?;
        }
        Long("wait") => t.wait = true,
        _ => return Ok(false),
    }
    Ok(true)
}

/// `--host HOST` and `--name NAME` into `n`: false when `arg` is neither.
fn narrow_flag(p: &mut lexopt::Parser, arg: &Arg, n: &mut Narrow) -> Result<bool> {
    match arg.get() {
        Long("host") => n.host = Some(value(p, "--host")?),
        Long("name") => n.name = Some(value(p, "--name")?),
        _ => return Ok(false),
    }
    Ok(true)
}

fn parse_verify(p: &mut lexopt::Parser, g: &mut Global) -> Result<Command> {
    let mut snapshot = None;
    let (mut deep, mut checksums, mut json, mut identity) = (false, false, false, None);
    let mut thaw = ThawArgs::default();
    let mut narrow = Narrow::default();
    while let Some(arg) = next(p, g)? {
        if thaw_flag(p, &arg, &mut thaw)? || narrow_flag(p, &arg, &mut narrow)? {
            continue;
        }
        match arg.get() {
            ArgRef::Help => return Ok(Command::Help(USAGE_VERIFY)),
            Long("deep") => deep = true,
            Long("checksums") => checksums = true,
            Long("json") => json = true,
            Long("identity") => identity = Some(path_value(p)?),
            Value(v) if snapshot.is_none() => {
                snapshot = Some(string(v.to_os_string(), "SNAPSHOT")?)
            }
            _ => return Err(arg.unexpected()),
        }
    }
    if deep && checksums {
        return Err(Error::Usage(
            "snapshot verify: --checksums and --deep are two different checks; give one".into(),
        ));
    }
    if !deep && thaw != ThawArgs::default() {
        return Err(Error::Usage(
            "snapshot verify: --thaw, --thaw-days and --wait go with --deep".into(),
        ));
    }
    Ok(Command::SnapshotVerify(VerifyArgs {
        snapshot: snapshot
            .ok_or_else(|| Error::Usage("snapshot verify: missing SNAPSHOT argument".into()))?,
        deep,
        checksums,
        identity,
        json,
        thaw,
        narrow,
    }))
}

fn parse_purge(p: &mut lexopt::Parser, g: &mut Global) -> Result<Command> {
    let mut a = PurgeArgs::default();
    let count = |p: &mut lexopt::Parser, flag: &str| -> Result<Option<usize>> {
        let v = value(p, flag)?;
        v.parse()
            .ok()
            .filter(|n| *n >= 1)
            .map(Some)
            .ok_or_else(|| Error::Usage(format!("{flag} `{v}`: expected a number, at least 1")))
    };
    while let Some(arg) = next(p, g)? {
        match arg.get() {
            ArgRef::Help => return Ok(Command::Help(USAGE_PURGE)),
            Long("identity") => return Err(needs_no_key("snapshot purge")),
            Long("keep-latest") => a.keep_latest = count(p, "--keep-latest")?,
            Long("older-than") => {
                let v = value(p, "--older-than")?;
                let d = crate::config::parse_duration(&v).ok_or_else(|| {
                    Error::Usage(format!(
                        "--older-than `{v}`: expected a duration like 30d, 6mo or 1y"
                    ))
                })?;
                a.older_than = Some(d.as_secs());
            }
            Long("keep-hourly") => a.keep_hourly = count(p, "--keep-hourly")?,
            Long("keep-daily") => a.keep_daily = count(p, "--keep-daily")?,
            Long("keep-weekly") => a.keep_weekly = count(p, "--keep-weekly")?,
            Long("keep-monthly") => a.keep_monthly = count(p, "--keep-monthly")?,
            Long("keep-yearly") => a.keep_yearly = count(p, "--keep-yearly")?,
            Long("timezone") => a.timezone = Some(value(p, "--timezone")?),
            Long("name") => a.name = Some(value(p, "--name")?),
            Long("dry-run") => a.dry_run = true,
            Long("force") => a.force = true,
            Long("json") => a.json = true,
            _ => return Err(arg.unexpected()),
        }
    }
    let calendar = [
        a.keep_hourly,
        a.keep_daily,
        a.keep_weekly,
        a.keep_monthly,
        a.keep_yearly,
    ]
    .iter()
    .any(Option::is_some);
    if !(a.keep_latest.is_some() || a.older_than.is_some() || calendar) {
        return Err(Error::Usage(
            "snapshot purge: give a rule: --keep-latest N, --older-than DURATION, or \
             --keep-hourly/--keep-daily/--keep-weekly/--keep-monthly/--keep-yearly N"
                .into(),
        ));
    }
    Ok(Command::SnapshotPurge(a))
}

fn parse_copy(p: &mut lexopt::Parser, g: &mut Global) -> Result<Command> {
    let mut a = CopyArgs::default();
    while let Some(arg) = next(p, g)? {
        if narrow_flag(p, &arg, &mut a.narrow)? || thaw_flag(p, &arg, &mut a.thaw)? {
            continue;
        }
        match arg.get() {
            ArgRef::Help => return Ok(Command::Help(USAGE_COPY)),
            Long("identity") => return Err(needs_no_key("copy")),
            Long("all") => a.all = true,
            Long("to") => a.to = Some(value(p, "--to")?),
            Long("to-config") => a.to_config = Some(path_value(p)?),
            Value(v) => a.snapshots.push(string(v.to_os_string(), "SNAPSHOT")?),
            _ => return Err(arg.unexpected()),
        }
    }
    if a.all != a.snapshots.is_empty() {
        return Err(Error::Usage(
            "copy: give the snapshots to copy (ids or `latest`) or --all, not both".into(),
        ));
    }
    if a.to.is_none() && a.to_config.is_none() {
        return Err(Error::Usage(
            "copy: missing the destination: --to STORE or --to-config FILE".into(),
        ));
    }
    Ok(Command::Copy(a))
}

fn parse_remove(p: &mut lexopt::Parser, g: &mut Global) -> Result<Command> {
    let mut snapshots = Vec::new();
    while let Some(arg) = next(p, g)? {
        match arg.get() {
            ArgRef::Help => return Ok(Command::Help(USAGE_REMOVE)),
            Long("identity") => return Err(needs_no_key("snapshot remove")),
            Value(v) => snapshots.push(string(v.to_os_string(), "SNAPSHOT")?),
            _ => return Err(arg.unexpected()),
        }
    }
    if snapshots.is_empty() {
        return Err(Error::Usage(
            "snapshot remove: missing SNAPSHOT argument".into(),
        ));
    }
    Ok(Command::SnapshotRemove { snapshots })
}

/// Commands whose only options are some of `--dry-run` and `--json`.
fn parse_flags(
    p: &mut lexopt::Parser,
    g: &mut Global,
    help: &'static str,
    dry_run_too: bool,
) -> Result<std::result::Result<(bool, bool), Command>> {
    let (mut dry_run, mut json) = (false, false);
    while let Some(arg) = next(p, g)? {
        match arg.get() {
            ArgRef::Help => return Ok(Err(Command::Help(help))),
            Long("identity") => {
                return Err(needs_no_key(if dry_run_too {
                    "prune"
                } else {
                    "store info"
                }));
            }
            Long("dry-run") if dry_run_too => dry_run = true,
            Long("json") => json = true,
            _ => return Err(arg.unexpected()),
        }
    }
    Ok(Ok((dry_run, json)))
}

fn parse_prune(p: &mut lexopt::Parser, g: &mut Global) -> Result<Command> {
    Ok(match parse_flags(p, g, USAGE_PRUNE, true)? {
        Ok((dry_run, json)) => Command::Prune { dry_run, json },
        Err(help) => help,
    })
}

fn parse_list(p: &mut lexopt::Parser, g: &mut Global) -> Result<Command> {
    let (mut json, mut versions) = (false, false);
    while let Some(arg) = next(p, g)? {
        match arg.get() {
            ArgRef::Help => return Ok(Command::Help(USAGE_LIST)),
            Long("identity") => return Err(needs_no_key("snapshot list")),
            Long("json") => json = true,
            Long("versions") => versions = true,
            _ => return Err(arg.unexpected()),
        }
    }
    Ok(Command::SnapshotList { json, versions })
}

fn parse_info(p: &mut lexopt::Parser, g: &mut Global) -> Result<Command> {
    Ok(match parse_flags(p, g, USAGE_INFO, false)? {
        Ok((_, json)) => Command::StoreInfo { json },
        Err(help) => help,
    })
}

fn parse_restore(p: &mut lexopt::Parser, g: &mut Global) -> Result<Command> {
    let (mut snapshot, mut target, mut identity) = (None, None, None);
    let (mut stdout, mut json, mut no_xattrs, mut rebuild_index) = (false, false, false, false);
    let mut thaw = ThawArgs::default();
    let mut narrow = Narrow::default();
    let mut paths = Vec::new();
    let mut controls = Controls::default();
    // The first control given, for `--stdout`'s error.
    let mut control: Option<&str> = None;
    while let Some(arg) = next(p, g)? {
        if thaw_flag(p, &arg, &mut thaw)? || narrow_flag(p, &arg, &mut narrow)? {
            continue;
        }
        match arg.get() {
            ArgRef::Help => return Ok(Command::Help(USAGE_RESTORE)),
            Long("target") => target = Some(path_value(p)?),
            Long("stdout") => stdout = true,
            Long("json") => json = true,
            Long("no-xattrs") => no_xattrs = true,
            Long("rebuild-index") => {
                rebuild_index = true;
                control.get_or_insert("--rebuild-index");
            }
            Long("identity") => identity = Some(path_value(p)?),
            Long("include") => {
                controls.include.push(glob_value(p, "--include")?);
                control.get_or_insert("--include");
            }
            Long("exclude") => {
                controls.exclude.push(glob_value(p, "--exclude")?);
                control.get_or_insert("--exclude");
            }
            Long("overwrite") => {
                let v = value(p, "--overwrite")?;
                controls.overwrite = Overwrite::parse(&v).ok_or_else(|| {
                    Error::Usage(format!(
                        "--overwrite `{v}`: expected always, if-changed, if-newer or never"
                    ))
                })?;
                control.get_or_insert("--overwrite");
            }
            Long("verify-existing") => {
                controls.verify_existing = true;
                control.get_or_insert("--verify-existing");
            }
            Long("delete") => {
                controls.delete = true;
                control.get_or_insert("--delete");
            }
            Long("dry-run") => {
                controls.dry_run = true;
                control.get_or_insert("--dry-run");
            }
            Value(v) if snapshot.is_none() => {
                snapshot = Some(string(v.to_os_string(), "SNAPSHOT")?)
            }
            Value(v) => paths.push(string(v.to_os_string(), "PATH")?),
            _ => return Err(arg.unexpected()),
        }
    }
    let to = match (target, stdout) {
        (Some(t), false) => RestoreTo::Target(t),
        (None, true) if paths.len() <= 1 => RestoreTo::Stdout,
        (None, true) => {
            return Err(Error::Usage(
                "restore --stdout writes one file: give at most one PATH".into(),
            ));
        }
        (Some(_), true) => {
            return Err(Error::Usage(
                "restore: give either --target DIR or --stdout, not both".into(),
            ));
        }
        (None, false) => {
            return Err(Error::Usage(
                "restore: missing --target DIR (or --stdout for one file)".into(),
            ));
        }
    };
    if let (RestoreTo::Stdout, Some(flag)) = (&to, control) {
        return Err(Error::Usage(format!(
            "restore --stdout writes one file's content: {flag} goes with --target DIR"
        )));
    }
    if rebuild_index && controls.dry_run {
        return Err(Error::Usage(
            "restore: --rebuild-index writes the local index: not with --dry-run".into(),
        ));
    }
    if controls.verify_existing && controls.overwrite != Overwrite::IfChanged {
        return Err(Error::Usage(
            "restore: --verify-existing goes with --overwrite if-changed".into(),
        ));
    }
    Ok(Command::Restore(RestoreArgs {
        snapshot: snapshot
            .ok_or_else(|| Error::Usage("restore: missing SNAPSHOT argument".into()))?,
        to,
        paths,
        identity,
        thaw,
        json,
        narrow,
        controls,
        no_xattrs,
        rebuild_index,
    }))
}

/// A glob (`--include`, `--exclude`), checked as the backup checks its
/// excludes.
fn glob_value(p: &mut lexopt::Parser, flag: &str) -> Result<String> {
    let v = value(p, flag)?;
    glob::Pattern::new(&v).map_err(|e| Error::Usage(format!("{flag} `{v}`: {e}")))?;
    Ok(v)
}

/// A PATH argument as bytes (a name in a snapshot need not be UTF-8).
fn path_bytes(v: &std::ffi::OsStr) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    v.as_bytes().to_vec()
}

fn parse_ls(p: &mut lexopt::Parser, g: &mut Global) -> Result<Command> {
    let mut a = LsArgs::default();
    let mut snapshot = None;
    while let Some(arg) = next(p, g)? {
        if narrow_flag(p, &arg, &mut a.narrow)? {
            continue;
        }
        match arg.get() {
            ArgRef::Help => return Ok(Command::Help(USAGE_LS)),
            Long("recursive") | Short('R') => a.recursive = true,
            Long("json") => a.json = true,
            Long("identity") => a.identity = Some(path_value(p)?),
            Value(v) if snapshot.is_none() => {
                snapshot = Some(string(v.to_os_string(), "SNAPSHOT")?)
            }
            Value(v) => a.paths.push(path_bytes(v)),
            _ => return Err(arg.unexpected()),
        }
    }
    a.snapshot = snapshot.ok_or_else(|| Error::Usage("ls: missing SNAPSHOT argument".into()))?;
    Ok(Command::Ls(a))
}

/// `--newer TIME`, `--older TIME`
fn time_value(p: &mut lexopt::Parser, flag: &str) -> Result<When> {
    let v = value(p, flag)?;
    When::parse(&v).ok_or_else(|| {
        Error::Usage(format!(
            "{flag} `{v}`: expected a day (2026-11-20), a time (2026-11-20T08:00, UTC) \
             or a duration (7d, 12h)"
        ))
    })
}

fn parse_find(p: &mut lexopt::Parser, g: &mut Global) -> Result<Command> {
    let mut a = FindArgs::default();
    let mut pattern = None;
    while let Some(arg) = next(p, g)? {
        if narrow_flag(p, &arg, &mut a.narrow)? {
            continue;
        }
        match arg.get() {
            ArgRef::Help => return Ok(Command::Help(USAGE_FIND)),
            Long("snapshot") => a.snapshots.push(value(p, "--snapshot")?),
            Long("newer") => a.newer = Some(time_value(p, "--newer")?),
            Long("older") => a.older = Some(time_value(p, "--older")?),
            Long("json") => a.json = true,
            Long("identity") => a.identity = Some(path_value(p)?),
            Value(v) if pattern.is_none() => pattern = Some(string(v.to_os_string(), "PATTERN")?),
            _ => return Err(arg.unexpected()),
        }
    }
    a.pattern = pattern.ok_or_else(|| Error::Usage("find: missing PATTERN argument".into()))?;
    Ok(Command::Find(a))
}

fn parse_diff(p: &mut lexopt::Parser, g: &mut Global) -> Result<Command> {
    let mut a = DiffArgs::default();
    let mut snapshots = Vec::new();
    while let Some(arg) = next(p, g)? {
        if narrow_flag(p, &arg, &mut a.narrow)? {
            continue;
        }
        match arg.get() {
            ArgRef::Help => return Ok(Command::Help(USAGE_DIFF)),
            Long("json") => a.json = true,
            Long("identity") => a.identity = Some(path_value(p)?),
            Value(v) if snapshots.len() < 2 => {
                snapshots.push(string(v.to_os_string(), "SNAPSHOT")?)
            }
            Value(v) if a.path.is_none() => a.path = Some(path_bytes(v)),
            _ => return Err(arg.unexpected()),
        }
    }
    let [x, y]: [String; 2] = snapshots
        .try_into()
        .map_err(|_| Error::Usage("diff: give two snapshots, SNAPSHOT_A and SNAPSHOT_B".into()))?;
    (a.a, a.b) = (x, y);
    Ok(Command::Diff(a))
}

fn parse_rebuild(p: &mut lexopt::Parser, g: &mut Global) -> Result<Command> {
    let mut a = RebuildArgs::default();
    while let Some(arg) = next(p, g)? {
        if narrow_flag(p, &arg, &mut a.narrow)? {
            continue;
        }
        match arg.get() {
            ArgRef::Help => return Ok(Command::Help(USAGE_INDEX)),
            Long("identity") => a.identity = Some(path_value(p)?),
            Long("index") => a.index = Some(path_value(p)?),
            Long("all") => a.all = true,
            Long("force") => a.force = true,
            _ => return Err(arg.unexpected()),
        }
    }
    Ok(Command::IndexRebuild(a))
}

fn parse_repack(p: &mut lexopt::Parser, g: &mut Global) -> Result<Command> {
    let mut a = RepackArgs {
        max_unused: crate::repack::DEFAULT_MAX_UNUSED,
        ..RepackArgs::default()
    };
    while let Some(arg) = next(p, g)? {
        match arg.get() {
            ArgRef::Help => return Ok(Command::Help(USAGE_REPACK)),
            Long("identity") => a.identity = Some(path_value(p)?),
            Long("max-unused") => {
                let v: String = value(p, "--max-unused")?;
                a.max_unused = crate::repack::parse_share(&v)
                    .map_err(|e| Error::Usage(format!("--max-unused: {e}")))?;
            }
            Long("dry-run") => a.dry_run = true,
            Long("json") => a.json = true,
            _ => return Err(arg.unexpected()),
        }
    }
    Ok(Command::Repack(a))
}

fn parse_keygen(p: &mut lexopt::Parser, g: &mut Global) -> Result<Command> {
    let mut output = None;
    let mut passphrase = false;
    while let Some(arg) = next(p, g)? {
        match arg.get() {
            ArgRef::Help => return Ok(Command::Help(USAGE_KEYGEN)),
            Long("output") => output = Some(path_value(p)?),
            Short('o') => output = Some(path_value(p)?),
            Long("passphrase") => passphrase = true,
            _ => return Err(arg.unexpected()),
        }
    }
    Ok(Command::Keygen { output, passphrase })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(s: &str) -> Result<(Global, Command)> {
        parse(s.split_whitespace().map(OsString::from))
    }

    #[test]
    fn store_transport_flags() {
        let (g, _) = parse_str("store info --retry-for 2h").unwrap();
        assert_eq!(g.retry_for, Some(std::time::Duration::from_secs(7200)));
        let (g, _) =
            parse_str("--limit-upload 2MiB/s store info --limit-download 1MB --connections 3")
                .unwrap();
        assert_eq!(
            (g.limit_upload, g.limit_download, g.connections),
            (Some(2 << 20), Some(1_000_000), Some(3))
        );
        for (args, want) in [
            (
                "--limit-upload 1 store info",
                "--limit-upload: expected bytes per second",
            ),
            (
                "--connections 99 store info",
                "--connections: expected a number from 1 to 64",
            ),
        ] {
            let e = parse_str(args).unwrap_err().to_string();
            assert!(e.contains(want), "{args}: {e}");
        }
        let e = parse_str("--retry-for later store info")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--retry-for: expected a duration like 15m, found `later`"),
            "{e}"
        );
    }

    #[test]
    fn commands_and_flags() {
        let (g, c) = parse_str("--config /c snapshot create --skip-errors etc home").unwrap();
        assert_eq!(g.config, Some(PathBuf::from("/c")));
        assert_eq!(
            c,
            Command::SnapshotCreate(CreateArgs {
                names: vec!["etc".into(), "home".into()],
                skip_errors: true,
                cron: false,
                prune: false,
                daemon: false,
                stdin: None,
                json: false,
                progress: false,
            })
        );
        let (_, c) = parse_str("snapshot create --stdin db --cron").unwrap();
        assert_eq!(
            c,
            Command::SnapshotCreate(CreateArgs {
                stdin: Some("db".into()),
                cron: true,
                ..CreateArgs::default()
            })
        );
        assert!(parse_str("snapshot create --stdin db etc").is_err());
        assert!(parse_str("snapshot create --stdin a_b").is_err());
        assert!(parse_str("snapshot create --daemon --stdin db").is_err());
        let (_, c) = parse_str("snapshot create --daemon --cron").unwrap();
        assert!(matches!(
            c,
            Command::SnapshotCreate(CreateArgs {
                daemon: true,
                cron: true,
                ..
            })
        ));
        assert!(parse_str("snapshot create --daemon etc").is_err());
        let (_, c) = parse_str("snapshot create --cron --prune").unwrap();
        assert!(matches!(
            c,
            Command::SnapshotCreate(CreateArgs {
                cron: true,
                prune: true,
                ..
            })
        ));
        let (_, c) =
            parse_str("snapshot purge --older-than 30d --name etc --dry-run --force --json")
                .unwrap();
        assert_eq!(
            c,
            Command::SnapshotPurge(PurgeArgs {
                older_than: Some(30 * 86400),
                name: Some("etc".into()),
                dry_run: true,
                force: true,
                json: true,
                ..PurgeArgs::default()
            })
        );
        let (_, c) =
            parse_str("snapshot purge --keep-daily 7 --keep-weekly 4 --timezone Europe/Berlin")
                .unwrap();
        assert_eq!(
            c,
            Command::SnapshotPurge(PurgeArgs {
                keep_daily: Some(7),
                keep_weekly: Some(4),
                timezone: Some("Europe/Berlin".into()),
                ..PurgeArgs::default()
            })
        );
        assert!(parse_str("snapshot purge --keep-daily 0").is_err());
        // As `keep_latest = N`.
        let (_, c) = parse_str("snapshot purge --keep-latest 3").unwrap();
        assert_eq!(
            c,
            Command::SnapshotPurge(PurgeArgs {
                keep_latest: Some(3),
                ..PurgeArgs::default()
            })
        );
        let e = parse_str("snapshot purge --keep-latest --force")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--keep-latest `--force`: expected a number"),
            "{e}"
        );
        assert!(parse_str("snapshot purge --dry-run").is_err());
        let (_, c) = parse_str("snapshot verify latest --deep --identity /k --json").unwrap();
        assert_eq!(
            c,
            Command::SnapshotVerify(VerifyArgs {
                snapshot: "latest".into(),
                deep: true,
                checksums: false,
                identity: Some("/k".into()),
                json: true,
                thaw: ThawArgs::default(),
                narrow: Narrow::default(),
            })
        );
        let (_, c) = parse_str("snapshot verify latest --deep --thaw=bulk --wait").unwrap();
        let Command::SnapshotVerify(v) = c else {
            panic!("{c:?}")
        };
        assert_eq!(
            v.thaw,
            ThawArgs {
                tier: Some(Tier::Bulk),
                days: 7,
                wait: true
            }
        );
        assert!(parse_str("snapshot verify latest --checksums --deep").is_err());
        assert!(parse_str("snapshot verify latest --thaw").is_err());
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
        assert_eq!(
            c,
            Command::SnapshotList {
                json: true,
                versions: false
            }
        );
        let (_, c) = parse_str("snapshot list --versions").unwrap();
        assert_eq!(
            c,
            Command::SnapshotList {
                json: false,
                versions: true
            }
        );
        let (_, c) = parse_str("restore latest --target /t /etc/hosts --identity /k").unwrap();
        assert_eq!(
            c,
            Command::Restore(RestoreArgs {
                snapshot: "latest".into(),
                to: RestoreTo::Target("/t".into()),
                paths: vec!["/etc/hosts".into()],
                identity: Some("/k".into()),
                thaw: ThawArgs::default(),
                json: false,
                narrow: Narrow::default(),
                controls: Controls::default(),
                no_xattrs: false,
                rebuild_index: false,
            })
        );
        let (_, c) = parse_str("restore latest --target /t --no-xattrs").unwrap();
        let Command::Restore(r) = c else { panic!() };
        assert!(r.no_xattrs);
        let (_, c) = parse_str("restore latest --stdout --thaw --thaw-days 3").unwrap();
        assert_eq!(
            c,
            Command::Restore(RestoreArgs {
                snapshot: "latest".into(),
                to: RestoreTo::Stdout,
                paths: vec![],
                identity: None,
                thaw: ThawArgs {
                    tier: Some(Tier::Standard),
                    days: 3,
                    wait: false
                },
                json: false,
                narrow: Narrow::default(),
                controls: Controls::default(),
                no_xattrs: false,
                rebuild_index: false,
            })
        );
        assert!(parse_str("restore latest --stdout /a /b").is_err());
        assert!(parse_str("restore latest --stdout --target /t").is_err());
        assert!(parse_str("restore latest --target /t --thaw=Slow").is_err());
        assert!(parse_str("restore latest --target /t --thaw-days 0").is_err());
    }

    fn controls_of(line: &str) -> Controls {
        match parse_str(line).unwrap().1 {
            Command::Restore(r) => r.controls,
            other => panic!("{line}: {other:?}"),
        }
    }

    #[test]
    fn restore_include_and_exclude_repeat() {
        let c = controls_of(
            "restore latest --target /t --include /etc --include *.conf --exclude /etc/ssl /etc",
        );
        assert_eq!(c.include, ["/etc", "*.conf"]);
        assert_eq!(c.exclude, ["/etc/ssl"]);
        let e = parse_str("restore latest --target /t --include [").unwrap_err();
        assert!(e.to_string().starts_with("--include `[`: "), "{e}");
        let e = parse_str("restore latest --target /t --exclude").unwrap_err();
        assert!(e.to_string().contains("--exclude"), "{e}");
    }

    #[test]
    fn restore_overwrite_modes() {
        assert_eq!(
            controls_of("restore latest --target /t").overwrite,
            Overwrite::Always
        );
        for (word, mode) in [
            ("always", Overwrite::Always),
            ("if-changed", Overwrite::IfChanged),
            ("if-newer", Overwrite::IfNewer),
            ("never", Overwrite::Never),
        ] {
            let c = controls_of(&format!("restore latest --target /t --overwrite {word}"));
            assert_eq!(c.overwrite, mode);
        }
        let e = parse_str("restore latest --target /t --overwrite sometimes").unwrap_err();
        assert!(
            e.to_string().starts_with(
                "--overwrite `sometimes`: expected always, if-changed, if-newer or never"
            ),
            "{e}"
        );
    }

    #[test]
    fn copy_takes_snapshots_or_all_and_a_destination() {
        let (g, c) =
            parse_str("copy latest web1_etc_2026-11-23T083015Z --to /usb --host web1 --store /s")
                .unwrap();
        assert_eq!(g.store.as_deref(), Some("/s"));
        assert_eq!(
            c,
            Command::Copy(CopyArgs {
                snapshots: vec!["latest".into(), "web1_etc_2026-11-23T083015Z".into()],
                to: Some("/usb".into()),
                narrow: Narrow {
                    host: Some("web1".into()),
                    name: None
                },
                ..CopyArgs::default()
            })
        );
        let (_, c) = parse_str("copy --all --to-config /etc/offsite.conf").unwrap();
        assert_eq!(
            c,
            Command::Copy(CopyArgs {
                all: true,
                to_config: Some("/etc/offsite.conf".into()),
                ..CopyArgs::default()
            })
        );
        for (bad, says) in [
            ("copy --to /usb", "give the snapshots to copy"),
            ("copy latest --all --to /usb", "not both"),
            ("copy latest", "--to STORE or --to-config FILE"),
            (
                "copy latest --to /usb --identity /k",
                "needs no private key",
            ),
        ] {
            let e = parse_str(bad).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
        assert_eq!(parse_str("help copy").unwrap().1, Command::Help(USAGE_COPY));
    }

    #[test]
    fn restore_verify_existing_goes_with_if_changed() {
        let c = controls_of("restore latest --target /t --overwrite if-changed --verify-existing");
        assert!(c.verify_existing);
        for bad in [
            "restore latest --target /t --verify-existing",
            "restore latest --target /t --verify-existing --overwrite never",
        ] {
            let e = parse_str(bad).unwrap_err().to_string();
            assert!(e.contains("--verify-existing"), "{e}");
        }
    }

    #[test]
    fn restore_delete_and_dry_run() {
        let c = controls_of("restore latest --target /t --delete");
        assert!(c.delete && !c.dry_run);
        let c = controls_of("restore latest --target /t --dry-run --json");
        assert!(c.dry_run && !c.delete);
        let Command::Restore(r) = parse_str("restore latest --target /t --dry-run --json")
            .unwrap()
            .1
        else {
            panic!()
        };
        assert!(r.json);
    }

    #[test]
    fn index_rebuild_and_restore_rebuild_index() {
        let Command::IndexRebuild(a) = parse_str(
            "index rebuild --identity /k --index /i --host web1 --name etc --all --force",
        )
        .unwrap()
        .1
        else {
            panic!()
        };
        assert_eq!(a.identity.as_deref(), Some(std::path::Path::new("/k")));
        assert_eq!(a.index.as_deref(), Some(std::path::Path::new("/i")));
        assert_eq!(a.narrow.host.as_deref(), Some("web1"));
        assert_eq!(a.narrow.name.as_deref(), Some("etc"));
        assert!(a.all && a.force);
        assert_eq!(
            parse_str("index rebuild").unwrap().1,
            Command::IndexRebuild(RebuildArgs::default())
        );
        assert_eq!(
            parse_str("help index").unwrap().1,
            Command::Help(USAGE_INDEX)
        );
        assert_eq!(
            parse_str("index --help").unwrap().1,
            Command::Help(USAGE_INDEX)
        );
        for bad in ["index", "index rebuilt", "index rebuild --keep"] {
            assert!(parse_str(bad).is_err(), "{bad}");
        }
        let Command::Restore(r) = parse_str("restore latest --target /t --rebuild-index")
            .unwrap()
            .1
        else {
            panic!()
        };
        assert!(r.rebuild_index);
        let e = parse_str("restore latest --target /t --rebuild-index --dry-run")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--rebuild-index") && e.contains("--dry-run"),
            "{e}"
        );
    }

    #[test]
    fn restore_controls_need_a_target() {
        for flag in [
            "--include /a",
            "--exclude /a",
            "--overwrite never",
            "--delete",
            "--dry-run",
            "--rebuild-index",
        ] {
            let e = parse_str(&format!("restore latest --stdout {flag}"))
                .unwrap_err()
                .to_string();
            let name = flag.split(' ').next().unwrap();
            assert!(e.contains(name) && e.contains("--target"), "{flag}: {e}");
        }
    }

    #[test]
    fn browsing_commands_and_latest_narrowed() {
        let (_, c) = parse_str("ls latest /etc -R --json --host web1 --name etc /var").unwrap();
        assert_eq!(
            c,
            Command::Ls(LsArgs {
                snapshot: "latest".into(),
                paths: vec![b"/etc".to_vec(), b"/var".to_vec()],
                recursive: true,
                json: true,
                identity: None,
                narrow: Narrow {
                    host: Some("web1".into()),
                    name: Some("etc".into()),
                },
            })
        );
        let (_, c) = parse_str(
            "find nginx.conf --snapshot a --snapshot latest --newer 2026-11-20 --older 7d --json",
        )
        .unwrap();
        assert_eq!(
            c,
            Command::Find(FindArgs {
                pattern: "nginx.conf".into(),
                snapshots: vec!["a".into(), "latest".into()],
                newer: Some(When::At(1_795_132_800)),
                older: Some(When::Ago(7 * 86_400)),
                json: true,
                ..FindArgs::default()
            })
        );
        let (_, c) = parse_str("diff a latest /etc --host h --identity /k").unwrap();
        assert_eq!(
            c,
            Command::Diff(DiffArgs {
                a: "a".into(),
                b: "latest".into(),
                path: Some(b"/etc".to_vec()),
                json: false,
                identity: Some("/k".into()),
                narrow: Narrow {
                    host: Some("h".into()),
                    name: None
                },
            })
        );
        let (_, c) = parse_str("restore latest --target /t --host web2 --name etc").unwrap();
        let Command::Restore(r) = c else { panic!() };
        assert_eq!(r.narrow.host.as_deref(), Some("web2"));
        assert_eq!(r.narrow.name.as_deref(), Some("etc"));
        let (_, c) = parse_str("snapshot verify latest --host web2").unwrap();
        let Command::SnapshotVerify(v) = c else {
            panic!()
        };
        assert_eq!(v.narrow.host.as_deref(), Some("web2"));
        for (bad, says) in [
            ("ls", "SNAPSHOT"),
            ("find", "PATTERN"),
            ("find x y", "unexpected argument"),
            ("find x --newer soon", "--newer `soon`"),
            ("diff a", "two snapshots"),
            ("diff a b /x /y", "unexpected argument"),
            ("ls latest --host", "--host"),
        ] {
            let e = parse_str(bad).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
        assert_eq!(parse_str("help ls").unwrap().1, Command::Help(USAGE_LS));
        assert_eq!(
            parse_str("find --help").unwrap().1,
            Command::Help(USAGE_FIND)
        );
        assert_eq!(parse_str("diff -h").unwrap().1, Command::Help(USAGE_DIFF));
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
            USAGE_CHECK,
            USAGE_RESTORE,
            USAGE_LS,
            USAGE_FIND,
            USAGE_DIFF,
            USAGE_COPY,
            USAGE_KEYGEN,
            USAGE_INDEX,
            USAGE_REPACK,
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

    /// Flags the man page and README mention that are not vaultik's: GNU
    /// tar's `--exclude-tag`, restic's `--keep-*`, the AWS CLI's, systemctl's,
    /// cargo's, node_exporter's, and those of the test and benchmark
    /// scripts.
    const NOT_VAULTIK: [&str; 20] = [
        "--exclude-tag",
        "--keep-",
        "--bucket",
        "--create-bucket-configuration",
        "--lifecycle-configuration",
        "--object-lock-enabled-for-bucket",
        "--public-access-block-configuration",
        "--now",
        "--check",
        "--release",
        "--test",
        "--fuzz-dir",
        "--garage",
        "--rustic",
        "--scale",
        "--files",
        "--quick",
        // tests/bench_stream.sh --gib N
        "--gib",
        "--collector",
        // aws sso login --profile NAME
        "--profile",
    ];

    /// The `--flags` of a text (roff's `\-` and font escapes undone).
    fn flags_in(text: &str) -> std::collections::BTreeSet<String> {
        let text = text
            .replace("\\-", "-")
            .replace("\\fB", " ")
            .replace("\\fI", " ")
            .replace("\\fR", " ")
            .replace("\\fP", " ");
        text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
            .filter(|w| {
                w.starts_with("--") && w[2..].starts_with(|c: char| c.is_ascii_alphanumeric())
            })
            .filter(|w| !NOT_VAULTIK.contains(w))
            .map(str::to_string)
            .collect()
    }

    /// The part of `text` from the line starting with `from` to the next
    /// line starting with `to`.
    fn section<'t>(text: &'t str, from: &str, to: &str) -> &'t str {
        let start = text.find(from).unwrap_or_else(|| panic!("no {from}"));
        let rest = &text[start + from.len()..];
        &rest[..rest
            .find(to)
            .unwrap_or_else(|| panic!("no {to} after {from}"))]
    }

    /// The usage texts, the man page and the README name the same flags,
    /// and the synopses (`vaultik --help`, the man page's SYNOPSIS, the
    /// README's Commands) show every flag of the main usage text.
    #[test]
    fn usage_texts_man_page_and_readme_name_the_same_flags() {
        let usage: std::collections::BTreeSet<String> = usage_flags().into_iter().collect();
        let man = include_str!("../man/vaultik.1");
        let readme = include_str!("../README.md");
        for (name, text) in [("man/vaultik.1", man), ("README.md", readme)] {
            let doc = flags_in(text);
            let missing: Vec<_> = usage.difference(&doc).collect();
            assert!(missing.is_empty(), "{name} does not mention {missing:?}");
            let unknown: Vec<_> = doc.difference(&usage).collect();
            assert!(
                unknown.is_empty(),
                "{name} mentions {unknown:?}, which no usage text has"
            );
        }
        let synopsis = flags_in(section(USAGE, "Usage:", "Only restore"));
        assert!(synopsis.contains("--versions"), "{synopsis:?}");
        for (name, part) in [
            (
                "man/vaultik.1 SYNOPSIS",
                section(man, ".SH SYNOPSIS", ".SH "),
            ),
            (
                "README.md Commands",
                section(readme, "## Commands\n\n```", "```"),
            ),
        ] {
            let shown = flags_in(part);
            let missing: Vec<_> = synopsis.difference(&shown).collect();
            assert!(missing.is_empty(), "{name} does not show {missing:?}");
        }
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
