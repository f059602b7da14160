//! The one way a backup run stops early: a token every stage checks. It is
//! set by the first stage that fails, or from outside (a daemon being
//! stopped). A stage that stops also hangs up what feeds it (the packer
//! closes its budget, an uploader drops the blob queue), so that nothing
//! upstream waits on it; then each sees the token and returns `Cancelled`,
//! and the run reports the first real error.

use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::{Error, Result};

pub struct Cancel<'a> {
    set: AtomicBool,
    /// Set from outside the run (the daemon's stop).
    outside: Option<&'a AtomicBool>,
}

impl<'a> Cancel<'a> {
    pub fn new(outside: Option<&'a AtomicBool>) -> Cancel<'a> {
        Cancel {
            set: AtomicBool::new(false),
            outside,
        }
    }

    /// Stop the run (a stage failed).
    pub fn set(&self) {
        self.set.store(true, Ordering::Relaxed);
    }

    pub fn is_set(&self) -> bool {
        self.set.load(Ordering::Relaxed) || self.outside.is_some_and(|a| a.load(Ordering::Relaxed))
    }

    /// `Cancelled` once the run is stopping.
    pub fn check(&self) -> Result<()> {
        if self.is_set() {
            Err(Error::Cancelled)
        } else {
            Ok(())
        }
    }

    /// `r`, setting the token if it is an error.
    pub fn on_error<T>(&self, r: Result<T>) -> Result<T> {
        if r.is_err() {
            self.set();
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_from_inside_or_outside() {
        let outside = AtomicBool::new(false);
        let c = Cancel::new(Some(&outside));
        assert!(c.check().is_ok());
        outside.store(true, Ordering::Relaxed);
        assert!(matches!(c.check(), Err(Error::Cancelled)));
        let c = Cancel::new(None);
        assert!(c.on_error::<()>(Err(Error::StaleBase)).is_err());
        assert!(c.is_set());
    }
}
