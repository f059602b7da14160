//! Streams backed up as a snapshot's one file: standard input
//! (`snapshot create --stdin NAME`) or a configured command's standard
//! output (`command = pg_dumpall -U postgres`), run without a shell.
//!
//! A stream that fails must never look like a good backup: `finish` is
//! asked once the stream has ended, and fails when the command exited
//! non-zero or was killed, with its status and the last lines of its
//! standard error. (A pipe's producer is out of sight: vaultik reads an
//! end of file whether `zfs send` finished or died; see README.)

use std::collections::VecDeque;
use std::io::{self, BufRead, BufReader, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::thread::JoinHandle;

use crate::error::{Error, Result};

/// The lines of a command's standard error kept (the last ones), and the
/// bytes kept of each.
const TAIL_LINES: usize = 5;
const TAIL_LINE_MAX: usize = 300;

/// Where a stream's file is in its snapshot: `/stdin/NAME`.
pub fn entry_path(name: &str) -> String {
    format!("/stdin/{name}")
}

/// Split `s` into words as a POSIX shell would, without expanding
/// anything: whitespace separates words; `'...'` keeps everything;
/// `"..."` keeps everything but `\"`, `\\`, `\$` and `` \` ``; a
/// backslash outside quotes keeps the next character.
pub fn split_command(s: &str) -> std::result::Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => word.push(c),
                        None => return Err("unterminated ' quote".into()),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => word.push(c),
                            Some(c) => {
                                word.push('\\');
                                word.push(c);
                            }
                            None => return Err("unterminated \" quote".into()),
                        },
                        Some(c) => word.push(c),
                        None => return Err("unterminated \" quote".into()),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some(c) => word.push(c),
                    None => return Err("a lone \\ at the end".into()),
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    if words.is_empty() {
        return Err("expected a command".into());
    }
    Ok(words)
}

/// The command as it would be typed, for messages.
pub fn shown(argv: &[String]) -> String {
    let words: Vec<String> = argv
        .iter()
        .map(|w| {
            if !w.is_empty()
                && w.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,@%+".contains(&b))
            {
                w.clone()
            } else {
                format!("'{}'", w.replace('\'', "'\\''"))
            }
        })
        .collect();
    crate::error::one_line(words.join(" "))
}

/// One stream being read.
pub struct Stream {
    /// What it is, for messages: `standard input` or `command `...``.
    pub what: String,
    input: Input,
}

enum Input {
    Stdin(io::Stdin),
    Command {
        child: Child,
        stdout: ChildStdout,
        /// The last lines of its standard error, once it closes it.
        stderr: Option<JoinHandle<Tail>>,
        done: bool,
    },
}

/// The end of a command's standard error.
#[derive(Debug, Default)]
struct Tail {
    lines: VecDeque<String>,
}

impl Tail {
    fn read(r: impl Read) -> Tail {
        let mut tail = Tail::default();
        let mut r = BufReader::new(r);
        let mut line = Vec::new();
        loop {
            line.clear();
            // A line is read whole but only its start is kept: at most a
            // buffer's worth more is held at a time.
            match read_line_capped(&mut r, &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let text = String::from_utf8_lossy(&line);
                    let text = text.trim_end();
                    if text.is_empty() {
                        continue;
                    }
                    if tail.lines.len() == TAIL_LINES {
                        tail.lines.pop_front();
                    }
                    tail.lines
                        .push_back(crate::error::one_line(text.to_string()));
                }
            }
        }
        tail
    }
}

/// Read one line into `out`, keeping at most `TAIL_LINE_MAX` bytes of it;
/// returns the bytes consumed (0 at the end).
fn read_line_capped(r: &mut impl BufRead, out: &mut Vec<u8>) -> io::Result<usize> {
    let mut consumed = 0;
    loop {
        let buf = r.fill_buf()?;
        if buf.is_empty() {
            return Ok(consumed);
        }
        let (piece, end) = match buf.iter().position(|b| *b == b'\n') {
            Some(i) => (&buf[..i], i + 1),
            None => (buf, buf.len()),
        };
        let room = TAIL_LINE_MAX.saturating_sub(out.len());
        out.extend_from_slice(&piece[..piece.len().min(room)]);
        let newline = end > piece.len();
        r.consume(end);
        consumed += end;
        if newline {
            return Ok(consumed);
        }
    }
}

impl Stream {
    /// Standard input; refused when it is a terminal (nothing was piped in).
    pub fn stdin() -> Result<Stream> {
        // SAFETY: isatty has no preconditions.
        if unsafe { libc::isatty(0) } == 1 {
            return Err(Error::Usage(
                "--stdin: standard input is a terminal; pipe the stream in \
                 (zfs send ... | vaultik snapshot create --stdin NAME)"
                    .into(),
            ));
        }
        let stdin = io::stdin();
        widen_pipe(stdin.as_fd());
        Ok(Stream {
            what: "standard input".into(),
            input: Input::Stdin(stdin),
        })
    }

    /// Start `argv` (no shell), its standard output to be read.
    pub fn spawn(argv: &[String]) -> Result<Stream> {
        let what = format!("command `{}`", shown(argv));
        let (program, args) = argv
            .split_first()
            .ok_or_else(|| Error::Setup(format!("{what}: empty command")))?;
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| Error::Stream {
                what: what.clone(),
                msg: format!("cannot start it: {e}"),
            })?;
        let stdout = child.stdout.take().expect("piped above");
        widen_pipe(stdout.as_fd());
        let stderr = child.stderr.take().expect("piped above");
        let stderr = std::thread::Builder::new()
            .name("command stderr".into())
            .spawn(move || Tail::read(stderr))
            .map_err(|e| Error::System {
                op: "start a thread",
                source: Box::new(e),
            })?;
        Ok(Stream {
            what,
            input: Input::Command {
                child,
                stdout,
                stderr: Some(stderr),
                done: false,
            },
        })
    }

    /// The stream has been read to its end: did it end well? For a
    /// command, its exit status (an error unless 0) and what it said on
    /// standard error (returned, to be shown as warnings, when it
    /// succeeded).
    pub fn finish(mut self) -> Result<Vec<String>> {
        let Input::Command {
            child,
            stderr,
            done,
            ..
        } = &mut self.input
        else {
            return Ok(Vec::new());
        };
        let status = child.wait().map_err(|e| Error::Stream {
            what: self.what.clone(),
            msg: format!("cannot wait for it: {e}"),
        })?;
        *done = true;
        let tail = stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        let lines: Vec<String> = tail.lines.into_iter().collect();
        if status.success() {
            return Ok(lines);
        }
        let how = match (status.code(), status.signal()) {
            (Some(code), _) => format!("exited with status {code}"),
            (None, Some(sig)) => format!("was killed by signal {sig}"),
            (None, None) => format!("failed ({status})"),
        };
        let said = if lines.is_empty() {
            "; it wrote nothing on standard error".to_string()
        } else {
            format!("; its standard error ended with: {}", lines.join(" | "))
        };
        Err(Error::Stream {
            what: self.what.clone(),
            msg: format!("{how}{said}; no snapshot was made"),
        })
    }
}

/// Pipe capacity asked for (Linux's default is 64 KiB; an unprivileged
/// process may raise it to /proc/sys/fs/pipe-max-size, 1 MiB by default).
const PIPE_SIZE: libc::c_int = 1 << 20;

/// A larger pipe when `fd` is one: the producer and vaultik then trade a
/// few large transfers instead of many small ones, each a wakeup of both
/// (on two cores, that system time is taken from chunking and hashing).
/// Not a pipe, or refused: left as it is.
fn widen_pipe(fd: BorrowedFd<'_>) {
    // SAFETY: F_SETPIPE_SZ on a valid descriptor; a non-pipe gets EBADF/EINVAL.
    unsafe {
        libc::fcntl(fd.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_SIZE);
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &mut self.input {
            Input::Stdin(s) => s.read(buf),
            Input::Command { stdout, .. } => stdout.read(buf),
        }
    }
}

impl Drop for Stream {
    /// A stream abandoned (the backup failed) takes its command with it.
    fn drop(&mut self) {
        if let Input::Command { child, done, .. } = &mut self.input {
            if !*done {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_split_like_a_shell() {
        let ok = |s: &str| split_command(s).unwrap();
        assert_eq!(
            ok("pg_dumpall -U postgres"),
            ["pg_dumpall", "-U", "postgres"]
        );
        assert_eq!(ok("  tar  -cf - /srv  "), ["tar", "-cf", "-", "/srv"]);
        assert_eq!(
            ok("sh -c 'echo $HOME; exit 3'"),
            ["sh", "-c", "echo $HOME; exit 3"]
        );
        assert_eq!(ok(r#"a "b c" d"#), ["a", "b c", "d"]);
        assert_eq!(ok(r#"a "x\"y\\z\n""#), ["a", r#"x"y\z\n"#]);
        assert_eq!(ok(r"a\ b c"), ["a b", "c"]);
        assert_eq!(ok("a''b \"\""), ["ab", ""]);
        assert_eq!(ok(r#"it"'"s' 'ok"#), ["it's ok"]);
        for bad in ["", "   ", "'open", "\"open", "trail\\"] {
            assert!(split_command(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            shown(&["sh".into(), "-c".into(), "exit 3".into()]),
            "sh -c 'exit 3'"
        );
    }

    fn read_all(s: &mut Stream) -> Vec<u8> {
        let mut v = Vec::new();
        s.read_to_end(&mut v).unwrap();
        v
    }

    #[test]
    fn a_command_that_fails_says_how_and_what_it_said() {
        let argv = split_command("sh -c 'echo out; echo one >&2; echo two >&2; exit 3'").unwrap();
        let mut s = Stream::spawn(&argv).unwrap();
        assert_eq!(read_all(&mut s), b"out\n");
        let e = s.finish().unwrap_err().to_string();
        assert!(e.contains("exited with status 3"), "{e}");
        assert!(e.contains("one | two"), "{e}");
        assert!(e.contains("no snapshot was made"), "{e}");

        let argv = split_command("sh -c 'kill -9 $$'").unwrap();
        let mut s = Stream::spawn(&argv).unwrap();
        read_all(&mut s);
        let e = s.finish().unwrap_err().to_string();
        assert!(e.contains("killed by signal 9"), "{e}");

        let e = Stream::spawn(&["/nonexistent/dump".into()])
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("cannot start it"), "{e}");
    }

    #[test]
    fn a_command_that_succeeds_passes_on_its_last_words() {
        let script = "for i in 1 2 3 4 5 6 7; do echo warning $i >&2; done; \
                      head -c 100000 /dev/zero | tr '\\0' x >&2; echo >&2; printf data";
        let mut s = Stream::spawn(&["sh".into(), "-c".into(), script.into()]).unwrap();
        assert_eq!(read_all(&mut s), b"data");
        let said = s.finish().unwrap();
        assert_eq!(said.len(), TAIL_LINES);
        assert_eq!(said[0], "warning 4");
        assert_eq!(said[4].len(), TAIL_LINE_MAX, "a long line is cut");
    }

    #[test]
    fn an_abandoned_command_is_killed() {
        let s = Stream::spawn(&["sleep".into(), "600".into()]).unwrap();
        let started = std::time::Instant::now();
        drop(s);
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }
}
