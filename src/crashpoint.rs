//! Crash drills: every durable write (a file replaced, a directory synced
//! after a rename, a platform effect recorded) calls [`hit`] once it is on
//! disk. Two environment variables turn the points on, for the crash-point
//! harness and for operators rehearsing power cuts on a bench terminal:
//!
//! * `VOI_CRASH_LOG=<file>` appends one line per point reached:
//!   `<n> <label>`, where `n` counts points in this process from 1.
//! * `VOI_CRASH_AT=<n>` kills the process with SIGKILL right after point
//!   `n`, which is what a power cut after that write looks like.
//!
//! Unset (always, in production), a point costs one atomic load.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

struct Drill {
    at: Option<u64>,
    log: Option<Mutex<std::fs::File>>,
}

static DRILL: OnceLock<Option<Drill>> = OnceLock::new();
static COUNT: AtomicU64 = AtomicU64::new(0);
static GATE: Mutex<()> = Mutex::new(());

fn drill() -> Option<&'static Drill> {
    DRILL
        .get_or_init(|| {
            let at = std::env::var("VOI_CRASH_AT")
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok());
            let log = std::env::var_os("VOI_CRASH_LOG").and_then(|p| {
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .ok()
                    .map(Mutex::new)
            });
            (at.is_some() || log.is_some()).then_some(Drill { at, log })
        })
        .as_ref()
}

/// Marks a durable write as done; see the module comment.
pub fn hit(label: &str) {
    let Some(d) = drill() else {
        return;
    };
    // One point at a time: its number, its log line and the kill happen
    // under one lock, so no other thread's later point is numbered or
    // logged before the process dies (two writers finishing together made
    // the log end one point past the kill).
    let _gate = GATE.lock().unwrap_or_else(|p| p.into_inner());
    let n = COUNT.fetch_add(1, Ordering::SeqCst) + 1;
    if let Some(log) = &d.log {
        let mut f = log.lock().unwrap_or_else(|p| p.into_inner());
        let _ = writeln!(f, "{n} {label}");
        let _ = f.sync_data();
    }
    if d.at == Some(n) {
        log::warn!("crash drill: SIGKILL after point {n} ({label})");
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
        // SIGKILL cannot be caught; hold the gate until it lands.
        loop {
            std::thread::sleep(std::time::Duration::from_secs(1));
        }
    }
}
