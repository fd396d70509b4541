//! Bounds on what the network can make the server hold: sockets before
//! login, HTTP connections, tracker entries, stored strings, reports, logs,
//! pending terminals and event-stream readers. Each has a default here and
//! a key under `[limits]` in `server.toml`.

use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Terminal sockets open at once, logged in or not.
    pub max_connections: usize,
    /// Terminal sockets open at once that have not logged in. High enough
    /// for a building whose power comes back (every terminal connects in the
    /// same second); each holds at most `max_body_before_login`.
    pub max_unauthenticated: usize,
    /// Of `max_unauthenticated`, what one IP address may hold; its oldest
    /// goes when it opens more, and at the cap the biggest holder's oldest
    /// goes, so a flood never locks another address out (issue 38.5).
    pub max_unauthenticated_per_address: usize,
    /// A socket that has not logged in this long after it opened is closed,
    /// whatever it sent meanwhile.
    pub login_deadline_secs: u64,
    /// Largest frame body read before login (a login is a few hundred
    /// bytes); after login `max_body` applies.
    pub max_body_before_login: usize,
    /// Operator API and tracker: time to read a request's headers, counted
    /// from when the connection waits for one, so it also closes an idle
    /// keep-alive connection.
    pub http_header_timeout_secs: u64,
    /// Operator API and tracker: connections open at once, each listener.
    pub http_max_connections: usize,
    /// Operator API and tracker: of `http_max_connections`, what one IP
    /// address may hold (displacing as `max_unauthenticated_per_address`).
    pub http_max_connections_per_address: usize,
    /// Operator API and tracker: a response write that makes no progress
    /// this long closes the connection (a download nobody reads).
    pub http_write_timeout_secs: u64,
    /// Tracker: peers kept per swarm.
    pub tracker_max_peers_per_swarm: usize,
    /// Tracker: peers kept per swarm from one IP address (each port is a
    /// peer; a NAT or a host running several agents needs more than one).
    pub tracker_max_peers_per_address: usize,
    /// Tracker: swarms kept at once.
    pub tracker_max_swarms: usize,
    /// Longest string the server stores from a terminal (a name, a
    /// platform, a report field), in bytes; longer is refused with 88888.
    pub max_string_bytes: usize,
    /// Report keys kept per terminal (9024 desktops, transfer results).
    pub max_report_keys: usize,
    /// 9999 upload_log: largest log file, in bytes.
    pub max_log_bytes: usize,
    /// 9999 upload_log: files kept per terminal; the oldest goes first.
    pub max_logs_per_terminal: usize,
    /// 9999 upload_log: at most one upload per terminal this often.
    pub log_min_interval_secs: u64,
    /// 9999 upload_log: bytes of logs kept on disk, all terminals together.
    /// Past it a terminal's new log replaces its own oldest, and one with
    /// none kept is refused: the terminals already kept keep theirs.
    pub max_log_bytes_total: u64,
    /// Reports (9024, 9025, …) kept in the store, bytes, all terminals
    /// together. Past it a report that would add bytes is refused; one that
    /// replaces a report with a smaller or equal one is kept.
    pub max_report_bytes_total: u64,
    /// Terminal records kept. Past it a MAC never seen is refused at login
    /// (made-up MACs cannot multiply the per-terminal bounds); known ones
    /// keep logging in.
    pub max_terminal_records: u64,
    /// Terminal records waiting for admission ("pending"); past it, a new
    /// MAC is refused until an operator decides or a pending record
    /// expires.
    pub max_pending: usize,
    /// A pending record not seen for this long is forgotten.
    pub pending_expire_secs: u64,
    /// Event-stream (`/api/v1/events`) readers at once.
    pub max_event_readers: usize,
    /// Of `max_event_readers`, how many read-only tokens can never take:
    /// they stay for tokens that may act (the console of an operator).
    pub event_readers_kept_for_operators: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 16384,
            max_unauthenticated: 8192,
            max_unauthenticated_per_address: 64,
            login_deadline_secs: 10,
            max_body_before_login: 8 * 1024,
            http_header_timeout_secs: 10,
            http_max_connections: 512,
            http_max_connections_per_address: 64,
            http_write_timeout_secs: 30,
            tracker_max_peers_per_swarm: 4096,
            tracker_max_peers_per_address: 16,
            tracker_max_swarms: 4096,
            max_string_bytes: 4096,
            max_report_keys: 256,
            max_log_bytes: 4 * 1024 * 1024,
            max_logs_per_terminal: 5,
            log_min_interval_secs: 60,
            max_log_bytes_total: 256 << 20,
            max_report_bytes_total: 256 << 20,
            max_terminal_records: 20_000,
            max_pending: 1024,
            pending_expire_secs: 7 * 24 * 3600,
            max_event_readers: 32,
            event_readers_kept_for_operators: 8,
        }
    }
}

impl Limits {
    pub fn login_deadline(&self) -> Duration {
        Duration::from_secs(self.login_deadline_secs.max(1))
    }
}

/// A counted slot: taken while below a cap, given back on drop.
#[derive(Debug)]
pub struct Slot(Arc<AtomicUsize>);

impl Slot {
    /// Takes one of `cap` slots counted by `count`, or `None` when all are
    /// taken.
    pub fn take(count: &Arc<AtomicUsize>, cap: usize) -> Option<Slot> {
        count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < cap).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot(count.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// How many are in use of each counted resource.
#[derive(Debug, Default)]
pub struct Counters {
    pub connections: Arc<AtomicUsize>,
    pub event_readers: Arc<AtomicUsize>,
    /// Of them, those opened with read-only tokens.
    pub read_only_event_readers: Arc<AtomicUsize>,
    /// Bytes of reports in the store (`max_report_bytes_total`): counted as
    /// reports are kept, and recounted by the periodic sweep.
    pub report_bytes: std::sync::atomic::AtomicU64,
    /// One WARN a minute when a global bound refuses something.
    pub global_bound_log: std::sync::Mutex<LogThrottle>,
    /// Pending terminal records: counted up as they are made, and set to
    /// the store's count by the periodic sweep (`Server::sweep_pending`).
    pub pending: Arc<AtomicUsize>,
}

/// Says that connections are being refused at a cap: the first at once,
/// then one line a minute with how many, so a flood does not flood the log.
#[derive(Debug, Default)]
pub struct RefusedLog {
    since_last: u64,
    last: Option<std::time::Instant>,
}

impl RefusedLog {
    pub fn note(&mut self, peer: std::net::SocketAddr, cap: &str) {
        self.since_last += 1;
        let due = self
            .last
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(60));
        if due {
            log::warn!(
                "refusing terminal connections at the {cap} limit ({} since the last report; latest from {peer}); raise [limits] {cap} if this is a real room",
                self.since_last
            );
            self.since_last = 0;
            self.last = Some(std::time::Instant::now());
        }
    }
}

/// One log line a minute for something that can happen thousands of times
/// a second: `due()` counts an occurrence and says, when a line is due, how
/// many there were since the last one.
#[derive(Debug, Default)]
pub struct LogThrottle {
    since_last: u64,
    last: Option<std::time::Instant>,
}

impl LogThrottle {
    pub fn due(&mut self) -> Option<u64> {
        self.since_last += 1;
        if self
            .last
            .is_some_and(|t| t.elapsed() < Duration::from_secs(60))
        {
            return None;
        }
        self.last = Some(std::time::Instant::now());
        Some(std::mem::take(&mut self.since_last))
    }
}

/// `s` as a stored string: refused when longer than `max` bytes.
pub fn check_len(what: &str, s: &str, max: usize) -> Result<(), String> {
    if s.len() > max {
        return Err(format!(
            "{what} is {} bytes; the most this server stores is {max}",
            s.len()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_stop_at_the_cap_and_come_back_on_drop() {
        let c = Arc::new(AtomicUsize::new(0));
        let a = Slot::take(&c, 2).expect("1");
        let b = Slot::take(&c, 2).expect("2");
        assert!(Slot::take(&c, 2).is_none());
        drop(a);
        assert!(Slot::take(&c, 2).is_some());
        drop(b);
        assert_eq!(c.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn every_limit_has_a_default_and_parses_from_an_empty_table() {
        let l: Limits = toml::from_str("").expect("empty");
        assert_eq!(l, Limits::default());
        let l: Limits = toml::from_str("max_pending = 3").expect("one key");
        assert_eq!(l.max_pending, 3);
        assert!(toml::from_str::<Limits>("max_pendin = 3").is_err());
    }
}
