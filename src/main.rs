//! vaultik: parse the command line, dispatch, report any error once, exit.

use std::process::ExitCode;

use vaultik::{cli, cmd};

fn main() -> ExitCode {
    limit_malloc_arenas();
    let result = cli::parse(std::env::args_os().skip(1)).and_then(|(g, c)| {
        // A usage error found while running points to the command's help.
        let name = c.name();
        cmd::run(&g, c).map_err(|e| match name {
            Some(n) => e.usage_in(n),
            None => e,
        })
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // A reader that went away (`vaultik snapshot list | head`) ends
        // the command quietly, as if all of it had been read.
        Err(e) if e.is_broken_pipe() => ExitCode::SUCCESS,
        // The message is the whole chain of causes, on one line.
        Err(e) => {
            eprintln!("{}vaultik: {e}", vaultik::error::priority(3));
            ExitCode::from(e.exit_code())
        }
    }
}

/// glibc gives every thread its own malloc arena; with rayon and upload
/// threads that multiplies peak memory for no speed we could measure
/// (restore of 50k files: 107 MB -> 76 MB peak with one arena). Two arenas.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn limit_malloc_arenas() {
    // SAFETY: called first thing in main, before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        // A fixed threshold: buffers of a chunk or more are mapped and given
        // back when freed (the default threshold grows to the largest buffer
        // freed, after which freed chunk buffers stay in the heap's RSS).
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

/// The static build keeps musl's own allocator. Measured on this project's
/// benchmark machine (2 cores; a 651 MB /usr/share copy to s3s-fs, and a
/// 515 MB restore of large files), two runs each:
///
/// | allocator        | backup        | peak RSS | restore      | peak RSS |
/// |------------------|---------------|----------|--------------|----------|
/// | glibc (M_ARENA_MAX=2, 1 MiB mmap threshold) | 3.3-3.8 s | 51 MB | 1.1-1.3 s | 36 MB |
/// | musl mallocng    | 4.1-4.3 s     | 42 MB    | 1.1 s        | 32 MB    |
/// | mimalloc (musl)  | 3.7-3.8 s     | 150 MB   | 1.0-1.4 s    | 140 MB   |
///
/// musl is 10-15% slower than glibc on backups (more system time: it maps
/// and unmaps large buffers) and as fast on restores; mimalloc wins back
/// most of that but triples the peak memory, and memory is the scarcer
/// resource on the small hosts and rescue systems the static build is for.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn limit_malloc_arenas() {}
