//! What a snapshot records of an entry beyond its stat: extended
//! attributes of every namespace the kernel gives (`user.*`, `trusted.*`,
//! `security.*` such as `security.capability` and `security.selinux`, and
//! POSIX ACLs as `system.posix_acl_access` / `system.posix_acl_default`,
//! all as the kernel hands them over, values untouched) and inode flags
//! (chattr's append-only, immutable, nodump...). This module owns how
//! they are read on backup, encoded into an entry (`Attrs`), bounded and
//! checked when read back from the store (`decode`, `check`), applied on
//! restore (`Apply`), and how what could not be read or set is reported:
//! one line per kind, counted (`Losses`), never a silent loss.
//!
//! Reading: a regular file or a directory is asked through the
//! descriptor the backup opened (`of_fd`: flistxattr, fgetxattr, the
//! FS_IOC_GETFLAGS ioctl). Symlinks, FIFOs, devices and sockets are never
//! opened (opening a device can do anything): their attributes are read
//! with the `l*` calls (which do not follow the last component) at
//! `/proc/self/fd/DIR/NAME`, that is through the descriptor of the
//! directory the walk listed them in (`beneath`), or at the walk's own
//! path where that is how the walk reached them (a configured path, or no
//! /proc). They have no inode flags a backup can ask for.
//!
//! Writing: through the descriptor of the object the restore made
//! (fsetxattr on a file or directory; for a symlink or special file, its
//! `O_PATH` descriptor as `/proc/self/fd/N`, which the kernel resolves to
//! that very object, never by name), after its owner (a chown clears
//! file capabilities and set-id bits) and before its mode and times; its
//! flags after everything else (an immutable file refuses later changes).

use std::collections::BTreeMap;
use std::ffi::{CStr, CString};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::Mutex;

use rustix::io::Errno;

/// The kernel's bounds (`XATTR_NAME_MAX`, `XATTR_SIZE_MAX`,
/// `XATTR_LIST_MAX`: the names of one object, each with its NUL), and
/// vaultik's own on an entry: how many attributes, and their encoding in
/// all. A backup records nothing over them (a warning says so); an entry
/// read back over them is malformed.
pub const NAME_MAX: usize = 255;
pub const VALUE_MAX: usize = 64 << 10;
pub const NAMES_MAX: usize = 64 << 10;
pub const COUNT_MAX: usize = 4096;
pub const ENTRY_MAX: usize = 1 << 20;

pub const ACL_ACCESS: &[u8] = b"system.posix_acl_access";
pub const ACL_DEFAULT: &[u8] = b"system.posix_acl_default";
pub const CAPABILITY: &[u8] = b"security.capability";

/// The namespaces the kernel has (a name must be in one, with something
/// after its dot).
const NAMESPACES: [&[u8]; 4] = [b"user.", b"trusted.", b"security.", b"system."];

pub const SECRM: u32 = 0x1;
pub const UNRM: u32 = 0x2;
pub const COMPR: u32 = 0x4;
pub const SYNC: u32 = 0x8;
pub const IMMUTABLE: u32 = 0x10;
pub const APPEND: u32 = 0x20;
pub const NODUMP: u32 = 0x40;
pub const NOATIME: u32 = 0x80;
pub const NOCOMP: u32 = 0x400;
pub const JOURNAL_DATA: u32 = 0x4000;
pub const NOTAIL: u32 = 0x8000;
pub const DIRSYNC: u32 = 0x1_0000;
pub const TOPDIR: u32 = 0x2_0000;
pub const NOCOW: u32 = 0x80_0000;
pub const DAX: u32 = 0x200_0000;
pub const PROJINHERIT: u32 = 0x2000_0000;
pub const CASEFOLD: u32 = 0x4000_0000;

/// The inode flags recorded and restored, in lsattr's order: (flag,
/// chattr letter, name). Left out are those that describe how a file
/// system lays out the inode (extents, inline data, an indexed directory)
/// or that no ioctl of this kind can set (encrypted, verity).
pub const FLAGS: [(u32, char, &str); 17] = [
    (SECRM, 's', "secure_deletion"),
    (UNRM, 'u', "undeletable"),
    (SYNC, 'S', "sync"),
    (DIRSYNC, 'D', "dirsync"),
    (IMMUTABLE, 'i', "immutable"),
    (APPEND, 'a', "append_only"),
    (NODUMP, 'd', "nodump"),
    (NOATIME, 'A', "noatime"),
    (COMPR, 'c', "compress"),
    (JOURNAL_DATA, 'j', "journal_data"),
    (NOTAIL, 't', "notail"),
    (TOPDIR, 'T', "topdir"),
    (NOCOW, 'C', "nocow"),
    (DAX, 'x', "dax"),
    (CASEFOLD, 'F', "casefold"),
    (PROJINHERIT, 'P', "project_inherit"),
    (NOCOMP, 'm', "nocompress"),
];

/// Every flag of `FLAGS`.
pub const KEPT: u32 = {
    let mut all = 0;
    let mut i = 0;
    while i < FLAGS.len() {
        all |= FLAGS[i].0;
        i += 1;
    }
    all
};

/// An entry's extended attributes (encoded: `encode`; empty when it has
/// none) and inode flags (of `KEPT`; 0 when none, or none to ask for).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attrs {
    pub xattrs: Vec<u8>,
    pub flags: u32,
}

impl Attrs {
    pub fn is_empty(&self) -> bool {
        self.xattrs.is_empty() && self.flags == 0
    }

    /// The columns of a snapshot entry: NULL for none.
    pub fn columns(&self) -> (Option<&[u8]>, Option<i64>) {
        (
            (!self.xattrs.is_empty()).then_some(self.xattrs.as_slice()),
            (self.flags != 0).then_some(i64::from(self.flags)),
        )
    }
}

/// `name` and `value` pairs, encoded: sorted by name, each as a byte of
/// name length, the name, four bytes (little-endian) of value length, the
/// value. Err when over a bound.
pub fn encode(mut list: Vec<(Vec<u8>, Vec<u8>)>) -> Result<Vec<u8>, Problem> {
    list.sort();
    list.dedup_by(|a, b| a.0 == b.0);
    let names: usize = list.iter().map(|(n, _)| n.len() + 1).sum();
    let total: usize = list.iter().map(|(n, v)| 5 + n.len() + v.len()).sum();
    if list.len() > COUNT_MAX || names > NAMES_MAX || total > ENTRY_MAX {
        return Err(Problem::TooBig);
    }
    let mut out = Vec::with_capacity(total);
    for (name, value) in &list {
        if !name_ok(name) || value.len() > VALUE_MAX {
            return Err(Problem::TooBig);
        }
        out.push(name.len() as u8);
        out.extend_from_slice(name);
        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
        out.extend_from_slice(value);
    }
    Ok(out)
}

/// A name a kernel would take: in a namespace, with something after its
/// dot, at most `NAME_MAX` bytes, no NUL.
fn name_ok(name: &[u8]) -> bool {
    name.len() <= NAME_MAX
        && !name.contains(&0)
        && NAMESPACES
            .iter()
            .any(|ns| name.len() > ns.len() && name.starts_with(ns))
}

/// Name and value pairs, borrowed from an encoding.
pub type Pairs<'a> = Vec<(&'a [u8], &'a [u8])>;

/// The pairs of an encoding, every bound checked: names in strictly
/// increasing order (no name twice), each a name a kernel would take,
/// values of at most `VALUE_MAX` bytes, at most `COUNT_MAX` of them and
/// `NAMES_MAX` bytes of names, the whole at most `ENTRY_MAX`. Err says
/// what is wrong (the encoding may be forged).
pub fn decode(b: &[u8]) -> Result<Pairs<'_>, String> {
    if b.len() > ENTRY_MAX {
        return Err(format!("{} bytes, more than {ENTRY_MAX}", b.len()));
    }
    let mut out: Pairs<'_> = Vec::new();
    let mut names = 0;
    let mut rest = b;
    while let Some((&n, after)) = rest.split_first() {
        let n = usize::from(n);
        if after.len() < n + 4 {
            return Err("cut short".into());
        }
        let (name, after) = after.split_at(n);
        let (len, after) = after.split_at(4);
        let len = u32::from_le_bytes(len.try_into().expect("split at 4")) as usize;
        if len > VALUE_MAX {
            return Err(format!("a value of {len} bytes, more than {VALUE_MAX}"));
        }
        if after.len() < len {
            return Err("cut short".into());
        }
        let (value, after) = after.split_at(len);
        if !name_ok(name) {
            return Err(format!("a name no kernel takes ({})", shown(name)));
        }
        if out.last().is_some_and(|(last, _)| *last >= name) {
            return Err(format!("names out of order or twice ({})", shown(name)));
        }
        names += n + 1;
        if out.len() == COUNT_MAX || names > NAMES_MAX {
            return Err(format!(
                "more than {COUNT_MAX} attributes or {NAMES_MAX} bytes of names"
            ));
        }
        out.push((name, value));
        rest = after;
    }
    Ok(out)
}

/// An entry's columns read back from the store, checked: its encoded
/// extended attributes and flags (anything a backup would not write is
/// Err, saying what).
pub fn check(xattrs: Option<&[u8]>, flags: Option<i64>) -> Result<Attrs, String> {
    if let Some(b) = xattrs {
        decode(b).map_err(|e| format!("malformed extended attributes: {e}"))?;
    }
    let flags = match flags {
        None => 0,
        Some(f) => match u32::try_from(f) {
            Ok(f) if f & !KEPT == 0 => f,
            _ => return Err(format!("inode flags {f:#x} are not what a backup records")),
        },
    };
    Ok(Attrs {
        xattrs: xattrs.map(<[u8]>::to_vec).unwrap_or_default(),
        flags,
    })
}

/// A name from an entry, for a message: lossy, on one line, short.
fn shown(name: &[u8]) -> String {
    let s: String = String::from_utf8_lossy(name).chars().take(60).collect();
    crate::error::one_line(s)
}

/// The names of an encoding that `decode` accepts (none for one it does
/// not: callers have checked it).
pub fn names(encoded: &[u8]) -> Vec<&[u8]> {
    decode(encoded)
        .map(|l| l.into_iter().map(|(n, _)| n).collect())
        .unwrap_or_default()
}

/// Whether an encoding holds a POSIX ACL (access or default).
pub fn has_acl(encoded: &[u8]) -> bool {
    names(encoded)
        .iter()
        .any(|n| *n == ACL_ACCESS || *n == ACL_DEFAULT)
}

/// chattr's letters of `flags` (`ia`), in lsattr's order.
pub fn flag_letters(flags: u32) -> String {
    FLAGS
        .iter()
        .filter(|(f, _, _)| flags & f != 0)
        .map(|(_, c, _)| *c)
        .collect()
}

/// The names of `flags` (`immutable`, `nodump`).
pub fn flag_names(flags: u32) -> Vec<&'static str> {
    FLAGS
        .iter()
        .filter(|(f, _, _)| flags & f != 0)
        .map(|(_, _, n)| *n)
        .collect()
}

/// Capability names by bit (as libcap names them).
const CAP_NAMES: [&str; 41] = [
    "cap_chown",
    "cap_dac_override",
    "cap_dac_read_search",
    "cap_fowner",
    "cap_fsetid",
    "cap_kill",
    "cap_setgid",
    "cap_setuid",
    "cap_setpcap",
    "cap_linux_immutable",
    "cap_net_bind_service",
    "cap_net_broadcast",
    "cap_net_admin",
    "cap_net_raw",
    "cap_ipc_lock",
    "cap_ipc_owner",
    "cap_sys_module",
    "cap_sys_rawio",
    "cap_sys_chroot",
    "cap_sys_ptrace",
    "cap_sys_pacct",
    "cap_sys_admin",
    "cap_sys_boot",
    "cap_sys_nice",
    "cap_sys_resource",
    "cap_sys_time",
    "cap_sys_tty_config",
    "cap_mknod",
    "cap_lease",
    "cap_audit_write",
    "cap_audit_control",
    "cap_setfcap",
    "cap_mac_override",
    "cap_mac_admin",
    "cap_syslog",
    "cap_wake_alarm",
    "cap_block_suspend",
    "cap_audit_read",
    "cap_perfmon",
    "cap_bpf",
    "cap_checkpoint_restore",
];

/// A `security.capability` value as getcap shows it (`cap_net_raw=ep`:
/// capabilities grouped by their sets), or None when it is not one (a
/// revision 2 or 3 value: a magic word, then permitted and inheritable
/// words, low then high).
pub fn capability_text(value: &[u8]) -> Option<String> {
    let word = |i: usize| -> Option<u32> {
        Some(u32::from_le_bytes(
            value.get(i * 4..i * 4 + 4)?.try_into().ok()?,
        ))
    };
    let magic = word(0)?;
    let revision = magic & 0xff00_0000;
    let ok_len = match revision {
        0x0200_0000 => value.len() == 20,
        0x0300_0000 => value.len() == 24,
        _ => false,
    };
    if !ok_len {
        return None;
    }
    let effective = magic & 1 != 0;
    let permitted = u64::from(word(1)?) | u64::from(word(3)?) << 32;
    let inheritable = u64::from(word(2)?) | u64::from(word(4)?) << 32;
    // (sets, names) in the order each set first appears.
    let mut groups: Vec<(String, Vec<String>)> = Vec::new();
    for bit in 0..64 {
        let (p, i) = (permitted >> bit & 1 == 1, inheritable >> bit & 1 == 1);
        if !p && !i {
            continue;
        }
        let mut sets = String::new();
        if effective {
            sets.push('e');
        }
        if i {
            sets.push('i');
        }
        if p {
            sets.push('p');
        }
        let name = CAP_NAMES
            .get(bit)
            .map_or_else(|| format!("cap_{bit}"), |n| n.to_string());
        match groups.iter_mut().find(|(s, _)| *s == sets) {
            Some((_, names)) => names.push(name),
            None => groups.push((sets, vec![name])),
        }
    }
    if groups.is_empty() {
        return Some("=".into());
    }
    Some(
        groups
            .iter()
            .map(|(sets, names)| format!("{}={sets}", names.join(",")))
            .collect::<Vec<_>>()
            .join(" "),
    )
}

/// What could not be read or set, by kind (errno numbers kept raw, to be
/// ordered and counted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Problem {
    /// Backup: extended attributes that could not be read (those that
    /// could are recorded).
    Unreadable(i32),
    /// Backup: inode flags that could not be read.
    FlagsUnreadable(i32),
    /// Backup: over the bounds above; none recorded.
    TooBig,
    /// Backup: names outside the kernel's namespaces (a FUSE file
    /// system's own), which no restore could set; left out.
    Foreign,
    /// Restore, not as root: `trusted.*` and `security.capability`.
    NeedsRoot,
    /// Restore: the target refused them (a file system without extended
    /// attributes, a security policy, a forged value the kernel refuses).
    Refused(i32),
    /// Restore, not as root: the immutable and append-only flags.
    FlagsNeedRoot,
    /// Restore: the target refused the flags.
    FlagsRefused(i32),
    /// Restore with `--no-xattrs`.
    Skipped,
    /// Restore: a symlink's or special file's, with no /proc to reach the
    /// object by its descriptor.
    NoProc,
    /// Restore: the flags the snapshot gives its `/` (or a restored
    /// PATH), left off the target directory itself, the admin's.
    TargetFlags,
}

fn errno_text(n: i32) -> String {
    std::io::Error::from_raw_os_error(n).to_string()
}

impl Problem {
    /// The warning for `count` entries with this problem, the first
    /// `first`.
    fn line(&self, count: u64, first: &str) -> String {
        let some = |what: &str| format!("{what} of {count} entr{}", plural(count));
        match self {
            Problem::Unreadable(e) => format!(
                "{} could not be read ({}), first {first}: the snapshot holds those it could read",
                some("extended attributes"),
                errno_text(*e)
            ),
            Problem::FlagsUnreadable(e) => format!(
                "{} could not be read ({}), first {first}: not in the snapshot",
                some("inode flags"),
                errno_text(*e)
            ),
            Problem::TooBig => format!(
                "{} are over vaultik's bounds (names of {NAME_MAX} bytes, values of 64 KiB, \
                 {COUNT_MAX} attributes, 64 KiB of names, 1 MiB in all), first {first}: not in \
                 the snapshot",
                some("extended attributes")
            ),
            Problem::Foreign => format!(
                "{} are outside the kernel's namespaces (user, trusted, security, system), \
                 first {first}: those are not in the snapshot",
                some("extended attributes")
            ),
            Problem::NeedsRoot => format!(
                "{} not restored, first {first}: trusted.* and security.capability can only be \
                 set by root",
                some("extended attributes")
            ),
            Problem::Refused(e) => format!(
                "{} refused by the target ({}), first {first}: not restored",
                some("extended attributes"),
                errno_text(*e)
            ),
            Problem::FlagsNeedRoot => format!(
                "{} not restored, first {first}: the immutable and append-only flags can only be \
                 set by root",
                some("inode flags")
            ),
            Problem::FlagsRefused(e) => format!(
                "{} refused by the target ({}), first {first}: not restored",
                some("inode flags"),
                errno_text(*e)
            ),
            Problem::Skipped => format!(
                "--no-xattrs: the extended attributes, ACLs and inode flags of {count} entr{} \
                 were not restored, first {first}",
                plural(count)
            ),
            Problem::NoProc => format!(
                "{} not restored, first {first}: symlinks and special files are reached by \
                 descriptor through /proc, which is not mounted",
                some("extended attributes")
            ),
            Problem::TargetFlags => format!(
                "inode flags of {first} not set on the target directory itself (the admin's)"
            ),
        }
    }
}

fn plural(n: u64) -> &'static str {
    if n == 1 { "y" } else { "ies" }
}

/// What could not be read or set, counted by kind, with the first entry
/// of each: one warning line per kind at the end of a run. Shared by the
/// threads of a run.
#[derive(Default)]
pub struct Losses(Mutex<BTreeMap<Problem, (u64, String)>>);

impl Losses {
    pub fn note(&self, p: Problem, path: &[u8]) {
        let mut m = self.0.lock().expect("losses lock");
        let e = m.entry(p).or_insert_with(|| (0, shown_path(path)));
        e.0 += 1;
    }

    /// How many (entry, kind) there were.
    pub fn count(&self) -> u64 {
        self.0
            .lock()
            .expect("losses lock")
            .values()
            .map(|v| v.0)
            .sum()
    }

    /// One warning per kind.
    pub fn lines(&self) -> Vec<String> {
        self.0
            .lock()
            .expect("losses lock")
            .iter()
            .map(|(p, (n, first))| p.line(*n, first))
            .collect()
    }
}

fn shown_path(p: &[u8]) -> String {
    crate::error::one_line(String::from_utf8_lossy(p).into_owned())
}

/// What reading an entry's attributes gave: what could be read, and the
/// first thing that could not.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Read {
    pub attrs: Attrs,
    pub problem: Option<Problem>,
}

/// Where attributes are read: an open descriptor, or a path whose last
/// component is not followed (the `l*` calls).
#[derive(Clone, Copy)]
enum Src<'a> {
    Fd(BorrowedFd<'a>),
    Path(&'a CStr),
}

impl Src<'_> {
    fn list(&self, buf: &mut [u8]) -> rustix::io::Result<usize> {
        match *self {
            Src::Fd(fd) if buf.is_empty() => rustix::fs::flistxattr_query(fd),
            Src::Fd(fd) => rustix::fs::flistxattr(fd, buf),
            Src::Path(p) if buf.is_empty() => rustix::fs::llistxattr_query(p),
            Src::Path(p) => rustix::fs::llistxattr(p, buf),
        }
    }

    fn get(&self, name: &CStr, buf: &mut [u8]) -> rustix::io::Result<usize> {
        match *self {
            Src::Fd(fd) if buf.is_empty() => rustix::fs::fgetxattr_query(fd, name),
            Src::Fd(fd) => rustix::fs::fgetxattr(fd, name, buf),
            Src::Path(p) if buf.is_empty() => rustix::fs::lgetxattr_query(p, name),
            Src::Path(p) => rustix::fs::lgetxattr(p, name, buf),
        }
    }
}

/// Tries at a list or value that keeps growing between its size and its
/// read.
const TRIES: usize = 4;

/// What a list or get call ended with.
enum Got {
    Bytes(Vec<u8>),
    /// Nothing to read (no attribute of that name any more, or a file
    /// system without extended attributes).
    Nothing,
    Failed(Problem),
}

/// Call `f` with a buffer large enough: first `first` bytes (most values
/// fit: one call), then the size asked, a few times over.
fn sized(first: usize, max: usize, f: impl Fn(&mut [u8]) -> rustix::io::Result<usize>) -> Got {
    let mut buf = vec![0u8; first];
    for _ in 0..TRIES {
        match f(&mut buf) {
            Ok(n) => {
                buf.truncate(n);
                return Got::Bytes(buf);
            }
            Err(Errno::RANGE) => match f(&mut []) {
                Ok(n) if n <= max => buf.resize(n.max(1), 0),
                Ok(_) => return Got::Failed(Problem::TooBig),
                Err(e) => return classify(e),
            },
            Err(Errno::TOOBIG) => return Got::Failed(Problem::TooBig),
            Err(e) => return classify(e),
        }
    }
    Got::Failed(Problem::Unreadable(Errno::RANGE.raw_os_error()))
}

fn classify(e: Errno) -> Got {
    match e {
        // Gone since it was listed; a file system without them (nothing
        // to lose); gone since the walk.
        Errno::NODATA | Errno::NOTSUP | Errno::NOENT => Got::Nothing,
        e => Got::Failed(Problem::Unreadable(e.raw_os_error())),
    }
}

fn read_xattrs(src: Src<'_>) -> (Vec<u8>, Option<Problem>) {
    // The size first: nearly every file has none, and a size query costs
    // the kernel no buffer.
    let list = match src.list(&mut []) {
        Ok(0) => return (Vec::new(), None),
        Ok(_) => match sized(1024, NAMES_MAX, |b| src.list(b)) {
            Got::Bytes(l) => l,
            Got::Nothing => return (Vec::new(), None),
            Got::Failed(p) => return (Vec::new(), Some(p)),
        },
        Err(e) => match classify(e) {
            Got::Failed(p) => return (Vec::new(), Some(p)),
            _ => return (Vec::new(), None),
        },
    };
    let mut problem = None;
    let mut pairs = Vec::new();
    for name in list.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        if !name_ok(name) {
            problem.get_or_insert(if name.len() > NAME_MAX {
                Problem::TooBig
            } else {
                Problem::Foreign
            });
            continue;
        }
        let Ok(c) = CString::new(name) else { continue };
        match sized(256, VALUE_MAX, |b| src.get(&c, b)) {
            Got::Bytes(v) => pairs.push((name.to_vec(), v)),
            Got::Nothing => {}
            Got::Failed(p) => {
                problem.get_or_insert(p);
            }
        }
    }
    match encode(pairs) {
        Ok(e) => (e, problem),
        Err(p) => (Vec::new(), Some(p)),
    }
}

/// The attributes of the regular file or directory open as `fd`.
pub fn of_fd(fd: BorrowedFd<'_>) -> Read {
    let (xattrs, mut problem) = read_xattrs(Src::Fd(fd));
    let flags = match rustix::fs::ioctl_getflags(fd) {
        Ok(f) => f.bits() & KEPT,
        // A file system without inode flags.
        Err(Errno::NOTTY | Errno::NOTSUP | Errno::INVAL | Errno::NOSYS) => 0,
        Err(e) => {
            problem.get_or_insert(Problem::FlagsUnreadable(e.raw_os_error()));
            0
        }
    };
    Read {
        attrs: Attrs { xattrs, flags },
        problem,
    }
}

/// The extended attributes of the symlink or special file at `path` (its
/// last component not followed).
pub fn of_path(path: &CStr) -> Read {
    let (xattrs, problem) = read_xattrs(Src::Path(path));
    Read {
        attrs: Attrs { xattrs, flags: 0 },
        problem,
    }
}

/// Whether /proc/self/fd is there (a rescue chroot may have no /proc).
fn have_proc() -> bool {
    static HAVE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAVE.get_or_init(|| std::path::Path::new("/proc/self/fd").is_dir())
}

/// `name` in the open directory `dir` as a path for the `l*` calls:
/// `/proc/self/fd/DIR/NAME`, resolved through the descriptor (whatever
/// was renamed or swapped above it since), its last component not
/// followed; None without /proc (the caller then uses its own path).
pub fn beneath(dir: BorrowedFd<'_>, name: &[u8]) -> Option<CString> {
    if !have_proc() {
        return None;
    }
    let mut p = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
    p.extend_from_slice(name);
    CString::new(p).ok()
}

/// How a restore sets attributes, and where it counts what it could not.
pub struct Apply<'a> {
    /// Not `--no-xattrs`.
    pub on: bool,
    pub as_root: bool,
    pub losses: &'a Losses,
}

/// What a restore sets attributes on.
#[derive(Clone, Copy)]
pub enum Obj<'a> {
    /// A regular file or directory, open.
    Fd(BorrowedFd<'a>),
    /// A symlink or special file, as an `O_PATH` descriptor.
    Path(BorrowedFd<'a>),
}

impl Apply<'_> {
    /// With `--no-xattrs`: count the entry `src` if it has attributes
    /// (once, whatever it has).
    pub fn skipped(&self, attrs: &Attrs, src: &[u8]) {
        if !self.on && !attrs.is_empty() {
            self.losses.note(Problem::Skipped, src);
        }
    }

    /// Set the extended attributes `encoded` (checked when planned) on
    /// `obj`, the entry `src`.
    pub fn xattrs(&self, obj: Obj<'_>, encoded: &[u8], src: &[u8]) {
        if encoded.is_empty() || !self.on {
            return;
        }
        let Ok(list) = decode(encoded) else {
            // Checked when the plan was made: not reached.
            self.losses
                .note(Problem::Refused(Errno::INVAL.raw_os_error()), src);
            return;
        };
        let path = match obj {
            Obj::Path(_) if !have_proc() => {
                self.losses.note(Problem::NoProc, src);
                return;
            }
            Obj::Path(fd) => CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).ok(),
            Obj::Fd(_) => None,
        };
        let mut noted: Vec<Problem> = Vec::new();
        let mut note = |p: Problem| {
            if !noted.contains(&p) {
                noted.push(p);
                self.losses.note(p, src);
            }
        };
        for (name, value) in list {
            if !self.as_root && (name.starts_with(b"trusted.") || name == CAPABILITY) {
                note(Problem::NeedsRoot);
                continue;
            }
            let Ok(name) = CString::new(name) else {
                continue;
            };
            let flags = rustix::fs::XattrFlags::empty();
            let set = match (obj, &path) {
                (Obj::Fd(fd), _) => rustix::fs::fsetxattr(fd, &name, value, flags),
                // The magic link of the descriptor: the object itself.
                (Obj::Path(_), Some(p)) => rustix::fs::setxattr(p, &name, value, flags),
                (Obj::Path(_), None) => Err(Errno::INVAL),
            };
            if let Err(e) = set {
                note(Problem::Refused(e.raw_os_error()));
            }
        }
    }

    /// Set the inode flags `want` (of `KEPT`) on the regular file or
    /// directory open as `fd`, the entry `src`; its other flags (how its
    /// file system lays it out) are kept.
    pub fn flags(&self, fd: BorrowedFd<'_>, want: u32, src: &[u8]) {
        let mut want = want & KEPT;
        if want == 0 || !self.on {
            // (A new object has none of them: the restore's own
            // directories get theirs last, after their entries are made.)
            return;
        }
        if !self.as_root && want & (IMMUTABLE | APPEND) != 0 {
            self.losses.note(Problem::FlagsNeedRoot, src);
            want &= !(IMMUTABLE | APPEND);
            if want == 0 {
                return;
            }
        }
        let set = rustix::fs::ioctl_getflags(fd).and_then(|cur| {
            let new = (cur.bits() & !KEPT) | want;
            if new == cur.bits() {
                Ok(())
            } else {
                rustix::fs::ioctl_setflags(fd, rustix::fs::IFlags::from_bits_retain(new))
            }
        });
        if let Err(e) = set {
            self.losses
                .note(Problem::FlagsRefused(e.raw_os_error()), src);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(l: &[(&str, &[u8])]) -> Vec<(Vec<u8>, Vec<u8>)> {
        l.iter()
            .map(|(n, v)| (n.as_bytes().to_vec(), v.to_vec()))
            .collect()
    }

    #[test]
    fn encodings_round_trip_sorted() {
        let e = encode(pairs(&[
            ("user.b", b"2"),
            ("security.x", b""),
            ("user.a", b"1"),
        ]))
        .unwrap();
        let d = decode(&e).unwrap();
        assert_eq!(
            d,
            vec![
                (&b"security.x"[..], &b""[..]),
                (&b"user.a"[..], &b"1"[..]),
                (&b"user.b"[..], &b"2"[..]),
            ]
        );
        assert!(encode(Vec::new()).unwrap().is_empty());
        assert_eq!(decode(&[]).unwrap(), vec![]);
        assert!(!has_acl(&e));
        let acl = encode(pairs(&[("system.posix_acl_default", b"x")])).unwrap();
        assert!(has_acl(&acl));
    }

    #[test]
    fn bounds_on_encoding() {
        let long = format!("user.{}", "n".repeat(NAME_MAX - 4));
        assert_eq!(
            encode(vec![(long.into_bytes(), vec![])]),
            Err(Problem::TooBig)
        );
        assert_eq!(
            encode(vec![(b"user.v".to_vec(), vec![0; VALUE_MAX + 1])]),
            Err(Problem::TooBig)
        );
        encode(vec![(b"user.v".to_vec(), vec![0; VALUE_MAX])]).unwrap();
        let many: Vec<_> = (0..=COUNT_MAX)
            .map(|i| (format!("user.{i:05}").into_bytes(), vec![]))
            .collect();
        assert_eq!(encode(many), Err(Problem::TooBig));
        let big: Vec<_> = (0..17)
            .map(|i| (format!("user.{i:02}").into_bytes(), vec![0; VALUE_MAX]))
            .collect();
        assert_eq!(encode(big), Err(Problem::TooBig));
        assert_eq!(
            encode(vec![(b"other.x".to_vec(), vec![])]),
            Err(Problem::TooBig)
        );
    }

    /// Every way a forged encoding can be wrong is refused, saying how.
    #[test]
    fn malformed_encodings_are_refused() {
        let rec = |name: &[u8], len: u32, value: &[u8]| {
            let mut b = vec![name.len() as u8];
            b.extend_from_slice(name);
            b.extend_from_slice(&len.to_le_bytes());
            b.extend_from_slice(value);
            b
        };
        let ok = rec(b"user.a", 1, b"x");
        decode(&ok).unwrap();
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (ok[..ok.len() - 1].to_vec(), "cut short"),
            (vec![6, b'u'], "cut short"),
            (rec(b"user.a", 70_000, &[0; 10]), "a value of 70000 bytes"),
            (rec(b"user.a", u32::MAX, b""), "a value of"),
            ([ok.clone(), ok.clone()].concat(), "twice"),
            (
                [rec(b"user.b", 0, b""), rec(b"user.a", 0, b"")].concat(),
                "out of order",
            ),
            (rec(b"user.", 0, b""), "no kernel takes"),
            (rec(b"evil.a", 0, b""), "no kernel takes"),
            (rec(b"user.a\0b", 0, b""), "no kernel takes"),
            (rec(b"", 0, b""), "no kernel takes"),
            (vec![0u8; ENTRY_MAX + 1], "more than"),
        ];
        for (b, why) in cases {
            let e = decode(&b).unwrap_err();
            assert!(e.contains(why), "{why}: {e}");
        }
        let many: Vec<u8> = (0..=COUNT_MAX)
            .flat_map(|i| rec(format!("user.{i:05}").as_bytes(), 0, b""))
            .collect();
        assert!(decode(&many).unwrap_err().contains("more than 4096"));
        assert!(check(None, Some(0x80000)).unwrap_err().contains("0x80000"));
        assert!(check(None, Some(-1)).is_err());
        assert!(check(None, Some(1 << 40)).is_err());
        assert_eq!(check(None, Some(0x10)).unwrap().flags, IMMUTABLE);
        assert!(
            check(Some(b"\x01"), None)
                .unwrap_err()
                .contains("malformed")
        );
    }

    #[test]
    fn flags_and_capabilities_are_shown() {
        assert_eq!(flag_letters(IMMUTABLE | NODUMP | APPEND), "iad");
        assert_eq!(flag_names(NODUMP), ["nodump"]);
        assert_eq!(KEPT & 0x80000, 0, "extents are the file system's");
        // setcap cap_net_raw+ep (revision 2), cap_net_admin,cap_net_raw+p
        let mut v = 0x0200_0001u32.to_le_bytes().to_vec();
        for w in [1u32 << 13, 0, 0, 0] {
            v.extend_from_slice(&w.to_le_bytes());
        }
        assert_eq!(capability_text(&v).as_deref(), Some("cap_net_raw=ep"));
        let mut v = 0x0300_0000u32.to_le_bytes().to_vec();
        for w in [(1u32 << 13) | (1 << 12), 0, 1, 0, 0] {
            v.extend_from_slice(&w.to_le_bytes());
        }
        assert_eq!(
            capability_text(&v).as_deref(),
            Some("cap_net_admin,cap_net_raw,cap_mac_override=p")
        );
        assert_eq!(capability_text(b"junk"), None);
    }

    #[test]
    fn losses_are_one_line_per_kind_counted() {
        let l = Losses::default();
        l.note(Problem::NeedsRoot, b"/a");
        l.note(Problem::NeedsRoot, b"/b");
        l.note(Problem::Refused(95), b"/c\n");
        assert_eq!(l.count(), 3);
        let lines = l.lines();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].contains("of 2 entries") && lines[0].contains("first /a"));
        assert!(lines[1].contains("first /c\\n") && !lines[1].contains('\n'));
    }

    /// A file's and a directory's attributes are read through their
    /// descriptors, a symlink's by a path through its directory's, and
    /// set back the same way (as root: trusted.* too).
    #[test]
    fn read_and_applied_through_descriptors() {
        let tmp = tempfile::tempdir().unwrap();
        let f = tmp.path().join("f");
        std::fs::write(&f, b"x").unwrap();
        let cf = CString::new(f.as_os_str().as_encoded_bytes()).unwrap();
        if rustix::fs::lsetxattr(
            cf.as_c_str(),
            c"user.t",
            b"v",
            rustix::fs::XattrFlags::empty(),
        )
        .is_err()
        {
            eprintln!(
                "SKIPPED: {} holds no user.* attributes",
                tmp.path().display()
            );
            return;
        }
        let file = std::fs::File::open(&f).unwrap();
        let r = of_fd(std::os::fd::AsFd::as_fd(&file));
        assert_eq!(r.problem, None);
        assert_eq!(
            decode(&r.attrs.xattrs).unwrap(),
            vec![(&b"user.t"[..], &b"v"[..])]
        );
        let g = tmp.path().join("g");
        std::fs::write(&g, b"").unwrap();
        let copy = std::fs::File::open(&g).unwrap();
        let losses = Losses::default();
        let apply = Apply {
            on: true,
            as_root: false,
            losses: &losses,
        };
        let with_trusted = encode(pairs(&[("trusted.t", b"1"), ("user.t", b"v")])).unwrap();
        apply.xattrs(
            Obj::Fd(std::os::fd::AsFd::as_fd(&copy)),
            &with_trusted,
            b"/g",
        );
        assert_eq!(losses.lines().len(), 1, "{:?}", losses.lines());
        assert!(losses.lines()[0].contains("only be set by root"));
        let back = of_fd(std::os::fd::AsFd::as_fd(&copy));
        assert_eq!(back.attrs, r.attrs);
        // A symlink, reached through its directory's descriptor.
        std::os::unix::fs::symlink("f", tmp.path().join("l")).unwrap();
        let dir = rustix::fs::open(
            tmp.path(),
            rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY,
            rustix::fs::Mode::empty(),
        )
        .unwrap();
        let p = beneath(std::os::fd::AsFd::as_fd(&dir), b"l").unwrap();
        let l = of_path(&p);
        assert_eq!(l.problem, None);
        assert!(l.attrs.is_empty(), "the symlink's own, not its target's");
    }
}
