//! Passphrases, for passphrase-protected identity files (`keys`): typed at
//! the terminal (`/dev/tty`, echo off, whatever standard input is), or read
//! from a file descriptor another program opened (`--passphrase-fd N`: a
//! pipe from a password manager, a file). Never from the command line or
//! the environment, where other users and logs can see them.

use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd};

use age::secrecy::SecretString;
use rustix::termios::{self, LocalModes, OptionalActions};

use crate::error::{Error, Result};

/// A passphrase is at most this long (age's own prompt has no limit; a
/// line of 1 KiB is more than any typed one).
const MAX: usize = 1024;

/// Where passphrases come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Source {
    /// Asked at the controlling terminal.
    #[default]
    Terminal,
    /// The first line of this file descriptor.
    Fd(i32),
}

/// A passphrase for `what` (a file name, said in the prompt and errors).
/// `confirm`: asked twice at a terminal (a new one).
pub fn read(source: Source, what: &str, confirm: bool) -> Result<SecretString> {
    let p = match source {
        Source::Fd(fd) => from_fd(fd, what)?,
        Source::Terminal => {
            let first = from_terminal(&format!("passphrase for {what}: "), what)?;
            if confirm {
                let again = from_terminal("the same passphrase again: ", what)?;
                if again != first {
                    return Err(Error::Key(format!(
                        "{what}: the two passphrases differ; nothing written"
                    )));
                }
            }
            first
        }
    };
    if p.is_empty() {
        return Err(Error::Key(format!("{what}: an empty passphrase")));
    }
    Ok(SecretString::from(p))
}

/// The first line of `fd` (without its line end), read a byte at a time
/// so that nothing past it is taken from a shared descriptor.
fn from_fd(fd: i32, what: &str) -> Result<String> {
    let bad = |m: String| Error::Key(format!("--passphrase-fd {fd}: {m}"));
    if fd < 0 {
        return Err(bad("not a file descriptor".into()));
    }
    // SAFETY: the descriptor is only borrowed for this call, and is checked
    // to be open first (fcntl fails with EBADF otherwise).
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    rustix::io::fcntl_getfd(borrowed).map_err(|e| bad(format!("{e}")))?;
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match rustix::io::read(borrowed, &mut byte) {
            Ok(0) => break,
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) => {
                if line.len() >= MAX {
                    return Err(bad(format!("a line longer than {MAX} bytes")));
                }
                line.push(byte[0]);
            }
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(bad(format!("{e}"))),
        }
    }
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    String::from_utf8(line).map_err(|_| bad(format!("the passphrase for {what} is not UTF-8")))
}

/// Echo off while the line is typed, back as it was after (also when
/// reading fails).
struct EchoOff<'a> {
    tty: BorrowedFd<'a>,
    saved: termios::Termios,
}

impl Drop for EchoOff<'_> {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(self.tty, OptionalActions::Now, &self.saved);
    }
}

fn from_terminal(prompt: &str, what: &str) -> Result<String> {
    let no_tty = || {
        Error::Key(format!(
            "{what} is protected by a passphrase and there is no terminal to ask it at: \
             pass --passphrase-fd N"
        ))
    };
    let mut tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .map_err(|_| no_tty())?;
    let saved = termios::tcgetattr(tty.as_fd()).map_err(|_| no_tty())?;
    let mut quiet = saved.clone();
    quiet.local_modes.remove(LocalModes::ECHO);
    quiet.local_modes.insert(LocalModes::ECHONL);
    let term = |e: std::io::Error| Error::Key(format!("the terminal: {e}"));
    let line = {
        let t = tty.try_clone().map_err(term)?;
        let fd = t.as_fd();
        // Echo off before the prompt: what is typed once it shows is never
        // echoed (and what was typed ahead of it is dropped).
        termios::tcsetattr(fd, OptionalActions::Flush, &quiet).map_err(|e| term(e.into()))?;
        let _restore = EchoOff { tty: fd, saved };
        tty.write_all(prompt.as_bytes()).map_err(term)?;
        tty.flush().map_err(term)?;
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        loop {
            match tty.read(&mut byte) {
                Ok(0) => break,
                Ok(_) if byte[0] == b'\n' => break,
                Ok(_) if line.len() >= MAX => {
                    return Err(Error::Key(format!("a passphrase longer than {MAX} bytes")));
                }
                Ok(_) => line.push(byte[0]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(term(e)),
            }
        }
        line
    };
    String::from_utf8(line).map_err(|_| Error::Key("the passphrase typed is not UTF-8".into()))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use age::secrecy::ExposeSecret;

    /// The read end of a pipe holding `text` (its write end closed).
    pub(crate) fn pipe_with(text: &[u8]) -> std::fs::File {
        let mut fds = [0; 2];
        // SAFETY: pipe fills two descriptors we then own.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: both descriptors are ours.
        let (r, mut w) = unsafe {
            use std::os::fd::FromRawFd;
            (
                std::fs::File::from_raw_fd(fds[0]),
                std::fs::File::from_raw_fd(fds[1]),
            )
        };
        // Bigger than a pipe's buffer: written by a thread.
        let text = text.to_vec();
        std::thread::spawn(move || {
            let _ = w.write_all(&text);
        });
        r
    }

    fn fd(f: &std::fs::File) -> Source {
        Source::Fd(std::os::fd::AsRawFd::as_raw_fd(f))
    }

    #[test]
    fn the_first_line_of_a_descriptor_and_no_more() {
        let mut r = pipe_with(b"correct horse\r\nsecond line\n");
        let p = read(fd(&r), "key.age", false).unwrap();
        assert_eq!(p.expose_secret(), "correct horse");
        // What follows stays in the pipe.
        let mut rest = Vec::new();
        r.read_to_end(&mut rest).unwrap();
        assert_eq!(rest, b"second line\n");
    }

    #[test]
    fn bad_descriptors_and_lines_are_named() {
        let e = read(Source::Fd(987), "k", false).unwrap_err().to_string();
        assert!(e.contains("--passphrase-fd 987"), "{e}");
        let r = pipe_with(b"\n");
        let e = read(fd(&r), "k", false).unwrap_err().to_string();
        assert!(e.contains("empty passphrase"), "{e}");
        let r = pipe_with(&[b'x'; 4096]);
        let e = read(fd(&r), "k", false).unwrap_err().to_string();
        assert!(e.contains("longer than"), "{e}");
    }
}
