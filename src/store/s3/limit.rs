//! Limits a store's requests share, whatever thread sends them:
//! bandwidth (`limit_upload`, `limit_download`: bytes per second) and
//! requests in flight (`connections`).
//!
//! A `Rate` hands out time: each piece of a body reserves the span its
//! bytes take at the rate, after the pieces reserved before it, and waits
//! for its turn; every thread's pieces are queued on the same clock, so
//! the sum holds. Pieces are at most `PIECE` bytes, so that a turn is
//! short and threads interleave. An idle limiter does not save up: a burst
//! after a pause is paced like the rest.

use std::io::{self, Read};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// The most a throttled read moves at once.
pub(super) const PIECE: usize = 64 << 10;

/// A bandwidth limit shared by every thread of a store.
pub(super) struct Rate {
    bytes_per_sec: u64,
    /// When the bytes reserved so far have had their time.
    next: Mutex<Option<Instant>>,
}

impl Rate {
    pub(super) fn new(bytes_per_sec: u64) -> Rate {
        Rate {
            bytes_per_sec: bytes_per_sec.max(1),
            next: Mutex::new(None),
        }
    }

    /// Wait until `n` bytes may go.
    pub(super) fn take(&self, n: usize) {
        let cost = Duration::from_secs_f64(n as f64 / self.bytes_per_sec as f64);
        let until = {
            let mut next = self.next.lock().expect("rate poisoned by a panic");
            let now = Instant::now();
            let start = next.filter(|t| *t > now).unwrap_or(now);
            let end = start + cost;
            *next = Some(end);
            end
        };
        let now = Instant::now();
        if until > now {
            std::thread::sleep(until - now);
        }
    }
}

/// A body read at most at `rate` (when there is one).
pub(super) struct Throttled<'a, R> {
    inner: R,
    rate: Option<&'a Rate>,
}

impl<'a, R> Throttled<'a, R> {
    pub(super) fn new(inner: R, rate: Option<&'a Rate>) -> Throttled<'a, R> {
        Throttled { inner, rate }
    }
}

impl<R: Read> Read for Throttled<'_, R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let Some(rate) = self.rate else {
            return self.inner.read(out);
        };
        let want = out.len().min(PIECE);
        let n = self.inner.read(&mut out[..want])?;
        if n > 0 {
            rate.take(n);
        }
        Ok(n)
    }
}

thread_local! {
    /// Slots this thread holds.
    static HELD: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// At most so many requests in flight (`connections`); None: no bound.
pub(super) struct Slots {
    max: Option<usize>,
    used: Mutex<usize>,
    freed: Condvar,
}

impl Slots {
    pub(super) fn new(max: Option<usize>) -> Slots {
        Slots {
            max: max.map(|m| m.max(1)),
            used: Mutex::new(0),
            freed: Condvar::new(),
        }
    }

    /// A slot, once one is free; given back when the permit is dropped.
    /// A thread that holds one already (a download it has not finished)
    /// never waits for another: it could be waiting for itself.
    pub(super) fn acquire(&self) -> Permit<'_> {
        if let Some(max) = self.max {
            let mut used = self.used.lock().expect("slots poisoned by a panic");
            if HELD.get() == 0 {
                while *used >= max {
                    used = self.freed.wait(used).expect("slots poisoned by a panic");
                }
            }
            *used += 1;
            HELD.set(HELD.get() + 1);
        }
        Permit { slots: self }
    }

    #[cfg(test)]
    pub(super) fn in_use(&self) -> usize {
        *self.used.lock().expect("slots poisoned by a panic")
    }
}

/// One request's slot.
pub(super) struct Permit<'a> {
    slots: &'a Slots,
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if self.slots.max.is_some() {
            HELD.set(HELD.get().saturating_sub(1));
            let mut used = self.slots.used.lock().expect("slots poisoned by a panic");
            *used = used.saturating_sub(1);
            self.slots.freed.notify_one();
        }
    }
}

/// A body that holds its request's slot until its last byte is read (or
/// it is dropped).
pub(super) struct Held<'a, R> {
    pub(super) inner: R,
    pub(super) permit: Option<Permit<'a>>,
    pub(super) remaining: u64,
}

impl<R: Read> Read for Held<'_, R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(out)?;
        self.remaining = self.remaining.saturating_sub(n as u64);
        if self.remaining == 0 || n == 0 {
            self.permit = None;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_rate_holds_across_threads() {
        let rate = Arc::new(Rate::new(4 << 20));
        let t = Instant::now();
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let rate = rate.clone();
                std::thread::spawn(move || {
                    let mut r = Throttled::new(io::repeat(7).take(1 << 20), Some(&*rate));
                    io::copy(&mut r, &mut io::sink()).unwrap()
                })
            })
            .collect();
        let moved: u64 = threads.into_iter().map(|h| h.join().unwrap()).sum();
        let took = t.elapsed().as_secs_f64();
        assert_eq!(moved, 4 << 20);
        // 4 MiB at 4 MiB/s: a second, not a quarter of one.
        assert!((0.9..1.3).contains(&took), "{took}");
    }

    #[test]
    fn slots_bound_requests_in_flight() {
        let slots = Arc::new(Slots::new(Some(2)));
        let peak = Arc::new(Mutex::new(0usize));
        let threads: Vec<_> = (0..6)
            .map(|_| {
                let (slots, peak) = (slots.clone(), peak.clone());
                std::thread::spawn(move || {
                    let _p = slots.acquire();
                    let now = slots.in_use();
                    let mut p = peak.lock().unwrap();
                    *p = (*p).max(now);
                    drop(p);
                    std::thread::sleep(Duration::from_millis(30));
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(*peak.lock().unwrap(), 2);
        assert_eq!(slots.in_use(), 0);
        // A body gives its slot back with its last byte.
        let held = Held {
            inner: io::repeat(1).take(10),
            permit: Some(slots.acquire()),
            remaining: 10,
        };
        assert_eq!(slots.in_use(), 1);
        let mut held = held;
        let mut buf = [0u8; 10];
        held.read_exact(&mut buf).unwrap();
        assert_eq!(slots.in_use(), 0);
        // Held by this thread: a second one does not wait for it.
        let one = Slots::new(Some(1));
        let a = one.acquire();
        let b = one.acquire();
        assert_eq!(one.in_use(), 2);
        drop((a, b));
        assert_eq!(one.in_use(), 0);
        let unbounded = Slots::new(None);
        let _many: Vec<_> = (0..100).map(|_| unbounded.acquire()).collect();
    }
}
