//! The agent process: starts the control socket, the transfers and the
//! pending-change watchdog, then connects, runs sessions and reconnects until
//! shutdown.

use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

use crate::agent::commands::Dispatcher;
use crate::agent::session::backoff::Backoff;
use crate::agent::session::{self, SessionEnd};
use crate::agent::terminal::Agent;

/// How long the server has been unreachable, for the log.
struct Unreachable {
    first: Option<Instant>,
    attempts: u64,
    last_summary: Instant,
}

impl Default for Unreachable {
    fn default() -> Self {
        Unreachable {
            first: None,
            attempts: 0,
            last_summary: Instant::now(),
        }
    }
}

impl Agent {
    /// Connects, runs sessions, and reconnects until `shutdown` fires.
    pub async fn run(self: Arc<Self>) {
        let commands: Arc<dyn session::CommandHandler> = Dispatcher::new(self.clone());
        let control = crate::agent::control_socket::serve(self.clone());
        let control = match control {
            Ok(task) => Some(task),
            Err(e) => {
                log::error!(
                    "control socket {}: {e}",
                    self.cfg.control_socket_path().display()
                );
                None
            }
        };
        let watchdog = tokio::spawn(self.clone().watch_pending_change());
        let distribution = tokio::spawn(crate::agent::transfers::server_link::start(self.clone()));
        // The agent can serve its control socket and retry the server from
        // here on: that is "ready" for systemd.
        crate::sdnotify::notify_logged("READY=1");
        let sd_watchdog = crate::sdnotify::watchdog_interval().map(|every| {
            tokio::spawn(async move {
                // Pings come from the runtime itself, so a wedged runtime
                // stops them and systemd restarts the agent.
                let mut t = tokio::time::interval(every);
                loop {
                    t.tick().await;
                    crate::sdnotify::notify_logged("WATCHDOG=1");
                }
            })
        });
        let mut connect_backoff = Backoff::new(
            Duration::from_millis(100),
            Duration::from_millis(self.cfg.connect_retry_ms.max(100)),
        );
        let mut session_backoff = Backoff::new(
            Duration::from_millis(200),
            Duration::from_secs(self.cfg.backoff_cap_secs),
        );
        let mut unreachable = Unreachable::default();
        while !self.shutdown.is_cancelled() {
            let addr = self.server_addr();
            self.set_live(|l| {
                l.session = "connecting".into();
                l.server = addr.clone();
            });
            let connect = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(&addr));
            let stream = tokio::select! {
                r = connect => r,
                _ = self.shutdown.cancelled() => break,
            };
            let stream = match stream {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    self.unreachable(&mut unreachable, &addr, e.to_string());
                    self.pause(connect_backoff.next_delay()).await;
                    continue;
                }
                Err(_) => {
                    self.unreachable(&mut unreachable, &addr, "no answer within 5 s".into());
                    self.pause(connect_backoff.next_delay()).await;
                    continue;
                }
            };
            if let Some(since) = unreachable.first.take() {
                log::info!(
                    "reached the server at {addr} after {} failed attempts over {:?}",
                    unreachable.attempts,
                    since.elapsed()
                );
            }
            unreachable = Unreachable::default();
            self.set_live(|l| {
                l.last_error = None;
                l.unreachable_since = None;
            });
            connect_backoff.reset();
            let started = Instant::now();
            let end = session::run(self.clone(), stream, commands.clone()).await;
            let text = format!("{end:?}");
            self.set_live(|l| {
                l.session = "disconnected".into();
                l.last_end = Some(text.clone());
            });
            match &end {
                SessionEnd::Shutdown => break,
                e if e.is_planned() => {
                    log::info!("session ended: {text}; reconnecting now");
                    session_backoff.reset();
                    continue;
                }
                _ => {}
            }
            if started.elapsed() > Duration::from_secs(60) {
                session_backoff.reset();
            }
            let delay = session_backoff.next_delay();
            log::warn!("session ended: {text}; reconnecting in {delay:?}");
            self.pause(delay).await;
        }
        watchdog.abort();
        // The engine stops with the shutdown token; give it a moment to
        // save its resume data.
        let _ = tokio::time::timeout(Duration::from_secs(3), distribution).await;
        if let Some(w) = sd_watchdog {
            w.abort();
        }
        crate::sdnotify::notify_logged("STOPPING=1");
        if let Some(task) = control {
            task.abort();
        }
        let _ = std::fs::remove_file(self.cfg.control_socket_path());
        // Another agent may have this dir now.
        drop(
            self.dir_lock
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take(),
        );
    }

    /// A failed connect, said at the default level: the first at once, then
    /// one line a minute while it lasts, each with the address and error.
    fn unreachable(&self, u: &mut Unreachable, addr: &str, error: String) {
        u.attempts += 1;
        let first = u.first.is_none();
        let since = *u.first.get_or_insert_with(Instant::now);
        if first {
            log::warn!("cannot reach the server at {addr}: {error}; retrying");
            u.last_summary = Instant::now();
            let now = chrono::Local::now().to_rfc3339();
            self.set_live(|l| l.unreachable_since = Some(now));
        } else if u.last_summary.elapsed() >= Duration::from_secs(60) {
            log::warn!(
                "still cannot reach the server at {addr} ({} attempts over {:?}): {error}",
                u.attempts,
                since.elapsed()
            );
            u.last_summary = Instant::now();
        }
        self.set_live(|l| l.last_error = Some(format!("{addr}: {error}")));
    }

    async fn pause(&self, d: Duration) {
        self.set_live(|l| l.session = format!("waiting {} ms to reconnect", d.as_millis()));
        tokio::select! {
            _ = tokio::time::sleep(d) => {}
            _ = self.shutdown.cancelled() => {}
        }
    }
}
