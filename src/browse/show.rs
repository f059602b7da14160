//! How an entry is shown: an `ls -l`-like line, or a JSON object. Every
//! value may be forged: names are shown lossily as UTF-8 with control
//! characters escaped (`error::one_line`), and JSON carries the exact
//! bytes in hex beside a name that is not UTF-8.

use serde_json::{Value, json};

use super::Entry;
use crate::snapshot::Kind;

/// A name or path from a snapshot, for a terminal: lossy UTF-8, control
/// characters escaped.
pub fn shown(b: &[u8]) -> String {
    crate::error::one_line(String::from_utf8_lossy(b).into_owned())
}

/// The `type` of an entry in JSON.
pub fn kind_name(kind: Option<Kind>) -> &'static str {
    match kind {
        Some(Kind::Dir) => "dir",
        Some(Kind::File) => "file",
        Some(Kind::Symlink) => "symlink",
        Some(Kind::Fifo) => "fifo",
        Some(Kind::CharDev) => "chardev",
        Some(Kind::BlockDev) => "blockdev",
        Some(Kind::Socket) => "socket",
        None => "unknown",
    }
}

fn type_char(kind: Option<Kind>) -> char {
    match kind {
        Some(Kind::Dir) => 'd',
        Some(Kind::File) => '-',
        Some(Kind::Symlink) => 'l',
        Some(Kind::Fifo) => 'p',
        Some(Kind::CharDev) => 'c',
        Some(Kind::BlockDev) => 'b',
        Some(Kind::Socket) => 's',
        None => '?',
    }
}

/// `drwxr-xr-x`, `-rwsr-x--T`: the type letter and the permission bits.
pub fn mode_string(kind: Option<Kind>, mode: u32) -> String {
    let mut s = String::with_capacity(10);
    s.push(type_char(kind));
    // (read, write, execute bits, the special bit of this triple, its letter)
    for (shift, special, letter) in [(6, 0o4000, 's'), (3, 0o2000, 's'), (0, 0o1000, 't')] {
        let bits = (mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(match (bits & 1 != 0, mode & special != 0) {
            (true, true) => letter,
            (false, true) => letter.to_ascii_uppercase(),
            (true, false) => 'x',
            (false, false) => '-',
        });
    }
    s
}

fn is_device(kind: Option<Kind>) -> bool {
    matches!(kind, Some(Kind::CharDev | Kind::BlockDev))
}

/// `major, minor` of a device number.
fn device(rdev: u64) -> (u32, u32) {
    (rustix::fs::major(rdev), rustix::fs::minor(rdev))
}

/// After the mode, as `ls -l` marks an entry with an ACL: `+` for a POSIX
/// ACL (access or default), `@` for other extended attributes (as macOS's
/// `ls` does), a space for none.
fn attr_marker(e: &Entry) -> char {
    if crate::xattrs::has_acl(&e.attrs.xattrs) {
        '+'
    } else if !e.attrs.xattrs.is_empty() {
        '@'
    } else {
        ' '
    }
}

/// A file capability as getcap shows it, if the entry has one.
fn capability(e: &Entry) -> Option<String> {
    let list = crate::xattrs::decode(&e.attrs.xattrs).ok()?;
    let (_, v) = list
        .into_iter()
        .find(|(n, _)| *n == crate::xattrs::CAPABILITY)?;
    Some(crate::xattrs::capability_text(v).unwrap_or_else(|| "capabilities?".into()))
}

/// `-rw-r--r--      0/0         13 2026-11-23 08:30 /etc/hostname`, with
/// ` -> TARGET` for a symlink and `(hard link of PATH)` for a further
/// hard link; a device shows `major, minor` for its size. An ACL or
/// extended attributes mark the mode (`attr_marker`); a file capability
/// (`[cap_net_raw=ep]`) and inode flags (`[chattr +ia]`) follow the path.
pub fn entry_line(e: &Entry) -> String {
    let size = if is_device(e.kind) {
        let (major, minor) = device(e.rdev);
        format!("{major}, {minor}")
    } else {
        e.size.to_string()
    };
    let mut s = format!(
        "{}{} {:>10} {:>12} {} {}",
        mode_string(e.kind, e.mode),
        attr_marker(e),
        format!("{}/{}", e.uid, e.gid),
        size,
        crate::time::minute(e.mtime()),
        shown(&e.path)
    );
    if let (Some(Kind::Symlink), Some(t)) = (e.kind, &e.target) {
        s.push_str(" -> ");
        s.push_str(&shown(t));
    }
    if let (Some(Kind::File), Some(l)) = (e.kind, &e.link) {
        s.push_str(&format!(" (hard link of {})", shown(l)));
    }
    if let Some(caps) = capability(e) {
        s.push_str(&format!(" [{caps}]"));
    }
    if e.attrs.flags != 0 {
        s.push_str(&format!(
            " [chattr +{}]",
            crate::xattrs::flag_letters(e.attrs.flags)
        ));
    }
    s
}

/// A directory the snapshot does not record but holds entries below (the
/// parents of a backed-up path: `/home` of `/home/alice`).
pub fn implied_line(path: &[u8]) -> String {
    format!(
        "d????????? {:>11} {:>12} {:<16} {}",
        "-",
        "-",
        "-",
        shown(path)
    )
}

/// A JSON value on one line, with every control character escaped:
/// serde_json escapes those below U+0020 but leaves DEL and the C1
/// controls (U+0080 to U+009F; U+009B starts an escape sequence on some
/// terminals) as they are. They can only be inside strings, where
/// `\u00XX` means the same.
pub fn json_line(v: &Value) -> String {
    let text = v.to_string();
    if !text.chars().any(char::is_control) {
        return text;
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if c.is_control() {
            out.push_str(&format!("\\u{:04x}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    out
}

/// `"path"` lossy, and `"path_hex"` with the exact bytes when they are
/// not UTF-8 (likewise for `target` and `link`).
pub fn put_bytes(v: &mut Value, key: &str, b: &[u8]) {
    v[key] = Value::String(String::from_utf8_lossy(b).into_owned());
    if std::str::from_utf8(b).is_err() {
        v[format!("{key}_hex")] = Value::String(crate::chunk::hex(b));
    }
}

/// One entry as a JSON object: `path`, `type`, `mode`, `uid`, `gid`,
/// `size`, `mtime`, `mtime_ns`; `target` for a symlink, `link` for a
/// further hard link, `major` and `minor` for a device, `kind` (the
/// number) for a kind this build does not know; `xattrs` (the names of
/// its extended attributes, lossy), `acl` (true), `capabilities` (as
/// getcap shows them) and `flags` (their names) when it has any.
pub fn entry_json(e: &Entry) -> Value {
    let mut v = json!({
        "type": kind_name(e.kind),
        "mode": e.mode,
        "uid": e.uid,
        "gid": e.gid,
        "size": e.size,
        "mtime": e.mtime(),
        "mtime_ns": e.mtime_ns,
    });
    put_bytes(&mut v, "path", &e.path);
    if let (Some(Kind::Symlink), Some(t)) = (e.kind, &e.target) {
        put_bytes(&mut v, "target", t);
    }
    if let (Some(Kind::File), Some(l)) = (e.kind, &e.link) {
        put_bytes(&mut v, "link", l);
    }
    if is_device(e.kind) {
        let (major, minor) = device(e.rdev);
        v["major"] = major.into();
        v["minor"] = minor.into();
    }
    if e.kind.is_none() {
        v["kind"] = e.kind_raw.into();
    }
    let names = crate::xattrs::names(&e.attrs.xattrs);
    if !names.is_empty() {
        v["xattrs"] = names
            .iter()
            .map(|n| Value::String(String::from_utf8_lossy(n).into_owned()))
            .collect();
    }
    if crate::xattrs::has_acl(&e.attrs.xattrs) {
        v["acl"] = true.into();
    }
    if let Some(caps) = capability(e) {
        v["capabilities"] = caps.into();
    }
    if e.attrs.flags != 0 {
        v["flags"] = crate::xattrs::flag_names(e.attrs.flags).into();
    }
    v
}

/// A directory only implied by the entries below it, as JSON.
pub fn implied_json(path: &[u8]) -> Value {
    let mut v = json!({"type": "dir", "implied": true});
    put_bytes(&mut v, "path", path);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &[u8], kind: Kind, mode: u32) -> Entry {
        Entry {
            path: path.to_vec(),
            kind: Some(kind),
            kind_raw: kind as i64,
            mode,
            uid: 0,
            gid: 0,
            size: 0,
            mtime_ns: 1_795_422_615_123_456_789,
            rdev: 0,
            target: None,
            link: None,
            content: None,
            attrs: Default::default(),
        }
    }

    #[test]
    fn modes() {
        assert_eq!(mode_string(Some(Kind::Dir), 0o755), "drwxr-xr-x");
        assert_eq!(mode_string(Some(Kind::File), 0o644), "-rw-r--r--");
        assert_eq!(mode_string(Some(Kind::File), 0o4755), "-rwsr-xr-x");
        assert_eq!(mode_string(Some(Kind::File), 0o2644), "-rw-r-Sr--");
        assert_eq!(mode_string(Some(Kind::Dir), 0o1777), "drwxrwxrwt");
        assert_eq!(mode_string(Some(Kind::Dir), 0o1776), "drwxrwxrwT");
        assert_eq!(mode_string(Some(Kind::Symlink), 0o777), "lrwxrwxrwx");
        assert_eq!(mode_string(None, 0), "?---------");
        for (k, c) in [
            (Kind::Fifo, 'p'),
            (Kind::CharDev, 'c'),
            (Kind::BlockDev, 'b'),
            (Kind::Socket, 's'),
        ] {
            assert!(mode_string(Some(k), 0o600).starts_with(c));
        }
    }

    #[test]
    fn lines_and_objects() {
        let mut f = entry(b"/etc/hostname", Kind::File, 0o644);
        f.size = 13;
        f.uid = 1000;
        f.gid = 100;
        assert_eq!(
            entry_line(&f),
            "-rw-r--r--    1000/100           13 2026-11-23 08:30 /etc/hostname"
        );
        // An ACL, other attributes, a capability, flags.
        let pair = |n: &str, v: &[u8]| (n.as_bytes().to_vec(), v.to_vec());
        let mut cap = 0x0200_0001u32.to_le_bytes().to_vec();
        cap.extend_from_slice(&(1u32 << 13).to_le_bytes());
        cap.extend_from_slice(&[0; 12]);
        let mut x = f.clone();
        x.attrs.xattrs = crate::xattrs::encode(vec![
            pair("security.capability", &cap),
            pair("user.a", b"1"),
        ])
        .unwrap();
        x.attrs.flags = crate::xattrs::IMMUTABLE | crate::xattrs::NODUMP;
        assert_eq!(
            entry_line(&x),
            "-rw-r--r--@   1000/100           13 2026-11-23 08:30 /etc/hostname \
             [cap_net_raw=ep] [chattr +id]"
        );
        let v = entry_json(&x);
        assert_eq!(v["xattrs"], json!(["security.capability", "user.a"]));
        assert_eq!(v["capabilities"], "cap_net_raw=ep");
        assert_eq!(v["flags"], json!(["immutable", "nodump"]));
        assert!(v.get("acl").is_none());
        x.attrs.xattrs =
            crate::xattrs::encode(vec![pair("system.posix_acl_access", b"\x02")]).unwrap();
        assert!(entry_line(&x).starts_with("-rw-r--r--+ "));
        assert_eq!(entry_json(&x)["acl"], true);
        let v = entry_json(&f);
        assert_eq!(v["path"], "/etc/hostname");
        assert_eq!(v["type"], "file");
        assert_eq!(v["mode"], 0o644);
        assert_eq!(v["mtime"], 1_795_422_615);
        assert_eq!(v["mtime_ns"], 1_795_422_615_123_456_789i64);
        assert!(v.get("path_hex").is_none() && v.get("target").is_none());

        // Forged: control characters, a newline in a target, bytes that
        // are not UTF-8; escaped in text, exact in JSON.
        let mut l = entry(b"/x\x1b[31m\xff", Kind::Symlink, 0o777);
        l.target = Some(b"a\nb".to_vec());
        let line = entry_line(&l);
        assert!(line.ends_with("/x\\u{1b}[31m\u{fffd} -> a\\nb"), "{line}");
        assert!(!line.chars().any(char::is_control), "{line}");
        let v = entry_json(&l);
        assert_eq!(v["path_hex"], "2f781b5b33316dff");
        assert_eq!(v["target"], "a\nb");
        let text = json_line(&v);
        assert!(!text.chars().any(char::is_control), "{text}");
        // DEL and C1 controls too, which serde_json leaves raw.
        let c1 = entry_json(&entry("/a\u{9b}2J\u{7f}".as_bytes(), Kind::File, 0));
        let text = json_line(&c1);
        assert!(text.contains(r"/a\u009b2J\u007f"), "{text}");
        let back: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(back["path"], "/a\u{9b}2J\u{7f}");
        assert!(entry_line(&entry("/a\u{9b}".as_bytes(), Kind::File, 0)).ends_with(r"/a\u{9b}"));

        let mut d = entry(b"/dev/null", Kind::CharDev, 0o666);
        d.rdev = rustix::fs::makedev(1, 3);
        assert!(entry_line(&d).contains(" 1, 3 "), "{}", entry_line(&d));
        assert_eq!(
            (
                entry_json(&d)["major"].clone(),
                entry_json(&d)["minor"].clone()
            ),
            (1.into(), 3.into())
        );

        let mut h = entry(b"/b", Kind::File, 0o644);
        h.link = Some(b"/a".to_vec());
        assert!(entry_line(&h).ends_with("/b (hard link of /a)"));
        assert_eq!(entry_json(&h)["link"], "/a");

        let mut u = entry(b"/u", Kind::File, 0);
        u.kind = None;
        u.kind_raw = 99;
        assert_eq!(entry_json(&u)["kind"], 99);
        assert_eq!(entry_json(&u)["type"], "unknown");

        assert!(implied_line(b"/home").starts_with("d?????????"));
        assert!(implied_line(b"/home").ends_with(" /home"));
        assert_eq!(implied_json(b"/home")["implied"], true);
    }
}
