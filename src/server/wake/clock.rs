//! The wall clock the class schedule reads, behind a trait so a test moves
//! time instead of waiting for 07:50.

use chrono::NaiveDateTime;
use std::sync::Mutex;

/// The server's wall clock, local time. The schedule reads it through this
/// so a test can move time instead of waiting for 07:50.
pub trait Clock: Send + Sync {
    fn now(&self) -> NaiveDateTime;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> NaiveDateTime {
        chrono::Local::now().naive_local()
    }
}

/// A clock that stands still until it is set.
pub struct ManualClock(Mutex<NaiveDateTime>);

impl ManualClock {
    pub fn new(at: NaiveDateTime) -> Self {
        ManualClock(Mutex::new(at))
    }
    pub fn set(&self, at: NaiveDateTime) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = at;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> NaiveDateTime {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}
