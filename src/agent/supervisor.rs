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
    /// Tells the server what the desktop runtime did: 9024 when a desktop
    /// runs, 9015 (failed, with the reason) against a layer that did not
    /// boot. Kept while the server is away, the last 16.
    async fn report_desktop_events(self: Arc<Self>) {
        use crate::agent::desktop::DesktopEvent;
        use crate::protocol::messages::{DesktopLoginReq, TaskResultReq};
        use crate::protocol::ServiceCode;
        let Some(mut rx) = self.desktop.take_events() else {
            return;
        };
        let mut queue: std::collections::VecDeque<DesktopEvent> = Default::default();
        loop {
            tokio::select! {
                ev = rx.recv() => match ev {
                    Some(ev) => {
                        if queue.len() >= 16 {
                            queue.pop_front();
                        }
                        queue.push_back(ev);
                    }
                    None => return,
                },
                _ = tokio::time::sleep(Duration::from_secs(2)), if !queue.is_empty() => {}
                _ = self.shutdown.cancelled() => return,
            }
            let Some(link) = self.link() else { continue };
            while let Some(ev) = queue.front().cloned() {
                let sent = match &ev {
                    DesktopEvent::Running {
                        group_uuid,
                        accelerator,
                        since_ms,
                    } => {
                        let g = self.state.read(|s| {
                            s.desktop_groups
                                .iter()
                                .find(|g| &g.desktop_group_uuid == group_uuid)
                                .cloned()
                        });
                        let g = g.unwrap_or_default();
                        let body = DesktopLoginReq {
                            mac: self.mac.clone(),
                            desktop_group_uuid: group_uuid.clone(),
                            is_dhcp: if g.desktop_ip.is_empty() {
                                1
                            } else {
                                g.desktop_is_dhcp
                            },
                            ip: g.desktop_ip.clone(),
                            netmask: g.desktop_mask.clone(),
                            gateway: g.desktop_gateway.clone(),
                            dns1: g.desktop_dns1.clone(),
                            dns2: g.desktop_dns2.clone(),
                            accelerator: Some(accelerator.clone()),
                            since_ms: Some(*since_ms),
                        };
                        link.request(ServiceCode::DesktopLogin, &body)
                            .await
                            .map(drop)
                    }
                    DesktopEvent::Failed {
                        layer,
                        reason,
                        rolled_back_to,
                        ..
                    } if !layer.is_empty() => {
                        let msg = match rolled_back_to {
                            Some(prev) => format!("desktop failed to boot on {layer}: {reason}; rolled back: booting {prev} instead"),
                            None => format!("desktop failed to boot on {layer}: {reason}"),
                        };
                        let body = TaskResultReq {
                            mac: self.mac.clone(),
                            ip: self.report_ip(link.local_ip()),
                            disk: layer.clone(),
                            torrent_id: None,
                            msg: Some(msg),
                            result: 2,
                        };
                        link.request(ServiceCode::TaskResult, &body).await.map(drop)
                    }
                    _ => Ok(()),
                };
                match sent {
                    Ok(()) => {
                        queue.pop_front();
                    }
                    Err(e) => {
                        log::warn!("desktop report: {e}");
                        break;
                    }
                }
            }
        }
    }

    /// What the desktop list wanted while a desktop ran and could not be
    /// done under it (deleting a level it had open, so that a new copy
    /// replaces it) is done as soon as the desktop is off: the decision
    /// runs again on the list the terminal holds.
    async fn decide_when_the_desktop_is_off(self: Arc<Self>) {
        let mut changes = self.desktop.watch_changes();
        let mut was_on = false;
        loop {
            tokio::select! {
                r = changes.changed() => if r.is_err() { return },
                _ = self.shutdown.cancelled() => return,
            }
            let state = self.desktop.status().state;
            let on = !matches!(state.as_str(), "off" | "failed");
            if was_on && !on {
                let groups = self.state.read(|s| s.desktop_groups.clone());
                if !groups.is_empty() {
                    log::info!("desktop: it is {state}; the desktop list is applied again");
                    self.desktop_groups_received(groups).await;
                    if let Some(link) = self.link() {
                        crate::agent::transfers::server_link::request_pending(&self, &link).await;
                    }
                }
            }
            was_on = on;
        }
    }

    /// Boots the default desktop by itself when the config or the server
    /// (1005 mode.auto_desktop = 1) says so, after a countdown, with or
    /// without the server: a classroom whose server is down still boots.
    async fn auto_boot(self: Arc<Self>) {
        let wanted = self.cfg.desktop.auto_boot
            || self
                .state
                .read(|s| s.terminal.setup_info.mode.auto_desktop == 1);
        if !wanted {
            return;
        }
        let secs = self.cfg.desktop.countdown_secs;
        log::info!("desktop: booting the default desktop in {secs} s");
        let deadline = crate::agent::desktop::now_ms() + secs * 1000;
        *self
            .auto_boot_deadline_ms
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(deadline);
        let go = tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(secs)) => true,
            _ = self.shutdown.cancelled() => false,
            _ = self.auto_boot_cancel.cancelled() => {
                log::info!("desktop: auto-boot stopped at the terminal");
                false
            }
        };
        *self
            .auto_boot_deadline_ms
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = None;
        if !go {
            return;
        }
        let groups = self.state.read(|s| s.desktop_groups.clone());
        let d = self.desktops.clone();
        let g2 = groups.clone();
        let ready = tokio::task::spawn_blocking(move || d.system_disk_uuids(&g2))
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        let bootable = |g: &&crate::protocol::messages::DesktopGroup| {
            g.disks
                .iter()
                .any(|d| d.disk_type == 0 && ready.contains(&d.uuid))
        };
        let pick = groups
            .iter()
            .filter(bootable)
            .find(|g| g.default_desktop_group)
            .or_else(|| groups.iter().find(bootable));
        match pick {
            Some(g) => {
                log::info!(
                    "desktop: auto-boot of {:?} ({})",
                    g.desktop_group_name,
                    g.desktop_group_uuid
                );
                if let Err(e) = self.desktop.boot(groups.clone(), &g.desktop_group_uuid) {
                    log::error!("desktop: auto-boot: {e}");
                }
            }
            None => log::warn!("desktop: auto-boot: no desktop group has a complete chain yet"),
        }
    }

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
        let desktop_reports = tokio::spawn(self.clone().report_desktop_events());
        let decide_when_off = tokio::spawn(self.clone().decide_when_the_desktop_is_off());
        let auto_boot = tokio::spawn(self.clone().auto_boot());
        let upgrade = tokio::spawn(crate::agent::upgrade::resume(self.clone()));
        let metrics = self
            .cfg
            .metrics_listen
            .clone()
            .map(|l| tokio::spawn(crate::agent::metrics::serve(self.clone(), l)));
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
        let mut quick_closes = 0u32;
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
                quick_closes = 0;
            } else if text.contains("Eof") {
                // The server closing a fresh session again and again is
                // what a second terminal with this MAC looks like from here
                // (the server logs "two terminals claim this MAC").
                quick_closes += 1;
                if quick_closes == 3 {
                    log::warn!(
                        "the server closed {quick_closes} sessions in a row within a minute of login: another terminal may be using this MAC ({}); set a distinct `mac` in each agent's config",
                        self.mac
                    );
                    self.set_live(|l| {
                        l.last_error = Some(format!(
                            "sessions closed by the server right after login: another terminal may use MAC {}",
                            self.mac
                        ))
                    });
                }
            }
            let delay = session_backoff.next_delay();
            log::warn!("session ended: {text}; reconnecting in {delay:?}");
            self.pause(delay).await;
        }
        watchdog.abort();
        desktop_reports.abort();
        decide_when_off.abort();
        auto_boot.abort();
        upgrade.abort();
        if let Some(m) = metrics {
            m.abort();
        }
        // A desktop does not outlive its agent: powered down as for 1001.
        self.desktop.stop().await;
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
