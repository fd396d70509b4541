//! Who is connected right now, and which command replies are awaited.

use serde::Serialize;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::protocol::{BatchNo, Envelope, Frame};

/// What the server shows an operator (and the demo prints).
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum ServerEvent {
    Login {
        mac: String,
        ip: String,
        client_type: u8,
    },
    Heartbeat {
        mac: String,
    },
    Offline {
        mac: String,
    },
    Disconnected {
        mac: String,
        reason: String,
    },
    CommandSent {
        mac: String,
        command: String,
        batch_no: BatchNo,
    },
    CommandReply {
        mac: String,
        command: String,
        batch_no: BatchNo,
        code: i64,
        msg: String,
    },
    Request {
        mac: String,
        service: String,
        code: i64,
    },
    /// A login refused: not admitted, or a certificate for another MAC.
    Refused {
        mac: String,
        reason: String,
    },
    /// An operator changed a terminal's admission.
    Admission {
        mac: String,
        admission: crate::server::admission::Admission,
    },
    /// A terminal's report was stored (9025 progress, 9015 results, its
    /// desktops, ...): `key` as in its record's `reports`. `at_ms` is the
    /// server's clock when it arrived, so a viewer can tell its lag.
    Report {
        mac: String,
        key: String,
        value: serde_json::Value,
        at_ms: u64,
    },
    /// The numbering session changed (started, a confirmation, cancelled).
    Order,
    /// A login for a MAC whose other session was still heartbeating.
    Conflict {
        mac: String,
        ip: String,
        other_ip: String,
    },
}

/// One command pushed to a terminal and, once it came, its reply.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RecentCommand {
    pub command: String,
    pub batch_no: BatchNo,
    pub sent: String,
    pub code: Option<i64>,
    pub msg: Option<String>,
}

/// How many commands per terminal the console can look back on.
const RECENT_COMMANDS: usize = 20;

/// Milliseconds since the epoch, for events.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

pub struct Online {
    pub conn_id: u64,
    pub tx: mpsc::Sender<Frame>,
    pub token: String,
    pub ip: String,
    /// The address its connection comes from (what the tracker sees).
    pub peer_ip: std::net::IpAddr,
    /// Our address on this terminal's connection (for URLs it can reach).
    pub local: Option<std::net::SocketAddr>,
    pub client_type: u8,
    pub since: Instant,
    pub last_heartbeat: Instant,
    pub last_seen: Instant,
    pub offline_reported: bool,
    pub close: CancellationToken,
}

type Key = (u32, String, BatchNo);

pub struct Registry {
    online: Mutex<HashMap<String, Online>>,
    pending: Mutex<HashMap<Key, oneshot::Sender<Envelope<serde_json::Value>>>>,
    recent: Mutex<HashMap<String, std::collections::VecDeque<RecentCommand>>>,
    /// The last time two live sessions claimed a MAC, per MAC: (this
    /// address, the other, when in ms).
    conflicts: Mutex<HashMap<String, (String, String, u64)>>,
    pub events: broadcast::Sender<ServerEvent>,
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            online: Mutex::default(),
            pending: Mutex::default(),
            recent: Mutex::default(),
            conflicts: Mutex::default(),
            events: broadcast::channel(4096).0,
        }
    }
}

impl Registry {
    fn online(&self) -> std::sync::MutexGuard<'_, HashMap<String, Online>> {
        self.online.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn emit(&self, ev: ServerEvent) {
        match &ev {
            ServerEvent::CommandSent {
                mac,
                command,
                batch_no,
            } => {
                let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
                let list = recent.entry(mac.clone()).or_default();
                if list.len() == RECENT_COMMANDS {
                    list.pop_front();
                }
                list.push_back(RecentCommand {
                    command: command.clone(),
                    batch_no: batch_no.clone(),
                    sent: chrono::Local::now().format("%Y-%m-%d %H:%M:%S").to_string(),
                    code: None,
                    msg: None,
                });
            }
            ServerEvent::CommandReply {
                mac,
                command,
                batch_no,
                code,
                msg,
            } => {
                let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(c) = recent.get_mut(mac).and_then(|l| {
                    l.iter_mut()
                        .rev()
                        .find(|c| c.command == *command && c.batch_no == *batch_no)
                }) {
                    c.code = Some(*code);
                    c.msg = Some(msg.clone());
                }
                log::info!(
                    mac = mac.as_str(), command = command.as_str(), code = *code;
                    "{mac}: {command} ({batch_no:?}) answered {code} {msg}"
                );
            }
            // One line each at the default level: who came, went, or fell
            // silent.
            ServerEvent::Login {
                mac,
                ip,
                client_type,
            } => log::info!(
                mac = mac.as_str(), ip = ip.as_str(), client_type = *client_type;
                "{mac} logged in from {ip} (client type {client_type})"
            ),
            ServerEvent::Disconnected { mac, reason } => {
                log::info!(mac = mac.as_str(); "{mac} disconnected: {reason}")
            }
            ServerEvent::Offline { mac } => {
                log::warn!(mac = mac.as_str(); "{mac} went offline: no heartbeat for three intervals")
            }
            ServerEvent::Conflict { mac, ip, other_ip } => log::warn!(
                mac = mac.as_str(), ip = ip.as_str(), other_ip = other_ip.as_str();
                "{mac}: two terminals claim this MAC: {ip} logged in while {other_ip} was online; the older session is closed (set a distinct `mac` in each agent's config)"
            ),
            _ => {}
        }
        let _ = self.events.send(ev);
    }

    /// The commands last pushed to a terminal, oldest first.
    pub fn recent_commands(&self, mac: &str) -> Vec<RecentCommand> {
        self.recent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(mac)
            .map(|l| l.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Seconds since each connected terminal's last heartbeat.
    pub fn heartbeat_ages(&self) -> HashMap<String, u64> {
        self.online()
            .iter()
            .map(|(m, o)| (m.clone(), o.last_heartbeat.elapsed().as_secs()))
            .collect()
    }

    /// Binds `mac` to a connection; an older connection of the same MAC is
    /// closed (the terminal reconnected before we saw the old socket die).
    /// Binds `mac` to this session. A live session of the same MAC from
    /// another address is closed and reported as a conflict (two terminals
    /// configured with one MAC kick each other off at every login).
    pub fn bind(&self, mac: &str, entry: Online, offline_after: Duration) {
        let ip = entry.ip.clone();
        let old = self.online().insert(mac.to_string(), entry);
        if let Some(old) = old {
            old.close.cancel();
            // A terminal that reconnects has lost its old session, which
            // then stops heartbeating; one still heartbeating is another
            // machine with this MAC (or this one reconnecting within a
            // heartbeat, which the log line then names too).
            if old.last_heartbeat.elapsed() < offline_after.min(Duration::from_secs(10)) {
                {
                    let mut c = self.conflicts.lock().unwrap_or_else(|p| p.into_inner());
                    // One entry per MAC that ever connected; bounded anyway.
                    if c.len() >= 65536 {
                        c.clear();
                    }
                    c.insert(mac.to_string(), (ip.clone(), old.ip.clone(), now_ms()));
                }
                self.emit(ServerEvent::Conflict {
                    mac: mac.to_string(),
                    ip,
                    other_ip: old.ip.clone(),
                });
            }
        }
    }

    /// The last MAC conflict seen for `mac`: (address, other address, ms).
    pub fn conflict(&self, mac: &str) -> Option<(String, String, u64)> {
        self.conflicts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(mac)
            .cloned()
    }

    /// Removes the binding if it still belongs to `conn_id`.
    pub fn unbind(&self, mac: &str, conn_id: u64) -> bool {
        let mut o = self.online();
        if o.get(mac).is_some_and(|e| e.conn_id == conn_id) {
            o.remove(mac);
            true
        } else {
            false
        }
    }

    /// Whether a terminal among `macs` is connected from `ip`.
    pub fn any_connected_from(&self, macs: &[String], ip: std::net::IpAddr) -> bool {
        let online = self.online();
        macs.iter()
            .any(|m| online.get(m).is_some_and(|o| o.peer_ip == ip))
    }

    pub fn with<R>(&self, mac: &str, f: impl FnOnce(&mut Online) -> R) -> Option<R> {
        self.online().get_mut(mac).map(f)
    }

    pub fn sender(&self, mac: &str) -> Option<(mpsc::Sender<Frame>, String)> {
        self.with(mac, |o| (o.tx.clone(), o.token.clone()))
    }

    /// (mac, online?) where online = heartbeat within `offline_after`.
    pub fn status(&self, offline_after: Duration) -> HashMap<String, (bool, String, u8)> {
        self.online()
            .iter()
            .map(|(m, o)| {
                (
                    m.clone(),
                    (
                        o.last_heartbeat.elapsed() <= offline_after,
                        o.ip.clone(),
                        o.client_type,
                    ),
                )
            })
            .collect()
    }

    pub fn macs(&self) -> Vec<String> {
        self.online().keys().cloned().collect()
    }

    /// Marks terminals offline and closes silent sockets.
    pub fn sweep(&self, offline_after: Duration, close_after: Duration) {
        let mut events = Vec::new();
        for (mac, o) in self.online().iter_mut() {
            if o.last_seen.elapsed() >= close_after {
                o.close.cancel();
            } else if !o.offline_reported && o.last_heartbeat.elapsed() > offline_after {
                o.offline_reported = true;
                events.push(ServerEvent::Offline { mac: mac.clone() });
            }
        }
        for ev in events {
            self.emit(ev);
        }
    }

    pub fn expect_reply(
        &self,
        code: u32,
        mac: &str,
        batch: &BatchNo,
    ) -> oneshot::Receiver<Envelope<serde_json::Value>> {
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((code, mac.to_string(), batch.clone()), tx);
        rx
    }

    pub fn forget_reply(&self, code: u32, mac: &str, batch: &BatchNo) {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(code, mac.to_string(), batch.clone()));
    }

    /// Delivers a terminal's reply to whoever pushed the command. Matching
    /// is by service code, batch_no and mac (not by sequence), like the
    /// original server.
    pub fn complete(
        &self,
        code: u32,
        mac: &str,
        batch: &BatchNo,
        env: Envelope<serde_json::Value>,
    ) -> bool {
        let key = (code, mac.to_string(), batch.clone());
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let tx = pending.remove(&key).or_else(|| {
            // An integer batch may come back as a numeric string.
            let alt = batch.as_int().map(BatchNo::Int)?;
            pending.remove(&(code, mac.to_string(), alt))
        });
        match tx {
            Some(tx) => tx.send(env).is_ok(),
            None => false,
        }
    }
}
