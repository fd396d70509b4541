//! Powering a classroom on and off: wake-on-LAN for one terminal, a room
//! or all, relayed across subnets by an agent of ours, and the class
//! schedule that does it by the clock.
//!
//! * `plan`: which routes reach a terminal (pure);
//! * `book`: what became of each wake;
//! * `schedule`: the timetable and what falls due when (pure);
//! * `cli`: `ctl wake`, `ctl room`, `ctl schedule`;
//! * this file: sending, relaying, and the schedule's runner.

pub mod book;
pub mod cli;
pub mod clock;
pub mod plan;
pub mod schedule;

pub use clock::{Clock, ManualClock, SystemClock};
pub use schedule::{ScheduleLog, ScheduleRun};

use chrono::NaiveDateTime;
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use self::book::{WakeResult, WakeState};
use self::plan::{Relay, Route, Subnet};
use self::schedule::{Action, Due, ScheduleEntry, Unless};
use super::registry::now_ms;
use super::service::{PushError, Server};
use super::store::TerminalRecord;
use crate::protocol::ServiceCode;

/// Which terminals an operator means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    Macs(Vec<String>),
    Room(String),
    All,
}

/// The narrowest subnet the server sends a directed broadcast to: a /30
/// reported by a terminal made the "broadcast" a chosen host (issue 38.15).
const NARROWEST_DIRECTED: u8 = 29;

/// The subnet a terminal was last on: what our agent reported, else its
/// address and mask from its configuration (a /24 when the mask is not
/// known). Nothing narrower than a /29.
fn last_subnet(rec: &TerminalRecord) -> Option<Subnet> {
    if let Some(w) = &rec.wake {
        if let Ok(ip) = w.ip.parse::<Ipv4Addr>() {
            if (1..=NARROWEST_DIRECTED).contains(&w.prefix) {
                return Some(Subnet {
                    ip,
                    prefix: w.prefix,
                });
            }
            // Our agent said where it is, and it is too narrow (or a lie).
            return None;
        }
    }
    let ip = rec.config.ip.parse::<Ipv4Addr>().ok()?;
    if ip.is_loopback() || ip.is_unspecified() {
        return None;
    }
    let prefix = match crate::ipv4::prefix_len(&rec.config.mask) {
        Some(p) if (1..=NARROWEST_DIRECTED).contains(&p) => p,
        Some(_) => return None,
        None => 24,
    };
    Some(Subnet { ip, prefix })
}

/// A terminal is still fetching a layer: a report of a transfer that is
/// neither finished nor at 100 %.
fn downloading(rec: &TerminalRecord) -> bool {
    rec.reports.iter().any(|(k, v)| {
        (k.starts_with("bt_task:") || k == "http_download")
            && v["state"].as_str() != Some("finished")
            && v["progress"].as_i64().unwrap_or(100) < 100
    })
}

impl Server {
    /// The MACs a selection names, checked: a room or "all" is what the
    /// store has; listed MACs must be MACs (unknown ones may be woken: the
    /// packet needs only the MAC).
    pub fn select_terminals(&self, sel: &Selection) -> Result<Vec<String>, PushError> {
        Ok(match sel {
            Selection::Macs(macs) => {
                let mut out = Vec::new();
                for m in macs {
                    let norm = crate::protocol::normalize_mac(m)
                        .filter(|n| crate::wake_on_lan::parse_mac(n).is_some())
                        .ok_or_else(|| PushError::Bad(format!("{m:?} is not a unicast MAC")))?;
                    if !out.contains(&norm) {
                        out.push(norm);
                    }
                }
                out
            }
            Selection::Room(room) => {
                let macs: Vec<String> = self
                    .store
                    .terminals()?
                    .into_iter()
                    .filter(|r| &r.room == room)
                    .map(|r| r.config.mac)
                    .collect();
                if macs.is_empty() {
                    return Err(PushError::Bad(format!("room {room:?} has no terminals")));
                }
                macs
            }
            Selection::All => self
                .store
                .terminals()?
                .into_iter()
                .map(|r| r.config.mac)
                .collect(),
        })
    }

    /// Wakes `macs`: a magic packet by every route that can reach each
    /// (`plan::routes`), recorded in `self.wakes`. Online terminals are
    /// left alone.
    pub async fn wake(self: &Arc<Self>, macs: &[String], timeout_secs: u64) -> Vec<WakeResult> {
        let locals = crate::wake_on_lan::local_subnets().unwrap_or_else(|e| {
            log::warn!("wake: cannot list this host's interfaces: {e}");
            Vec::new()
        });
        let records: HashMap<String, TerminalRecord> = self
            .store
            .terminals()
            .unwrap_or_default()
            .into_iter()
            .map(|r| (r.config.mac.clone(), r))
            .collect();
        let online: HashSet<String> = self.registry.macs().into_iter().collect();
        let mut relays: Vec<(u64, Relay)> = if self.cfg.wake.relay {
            let ages = self.registry.heartbeat_ages();
            online
                .iter()
                .filter_map(|m| {
                    let rec = records.get(m)?;
                    rec.wake.as_ref()?;
                    let subnet = last_subnet(rec)?;
                    Some((
                        ages.get(m).copied().unwrap_or(u64::MAX),
                        Relay {
                            mac: m.clone(),
                            subnet,
                        },
                    ))
                })
                .collect()
        } else {
            Vec::new()
        };
        relays.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.mac.cmp(&b.1.mac)));
        let relays: Vec<Relay> = relays.into_iter().map(|(_, r)| r).collect();

        let now = now_ms();
        let mut results: Vec<WakeResult> = Vec::new();
        // Relay MAC → indices into `results` of the terminals it relays for.
        let mut by_relay: HashMap<String, Vec<usize>> = HashMap::new();
        for mac in macs {
            let Some(bytes) = crate::wake_on_lan::parse_mac(mac) else {
                let mut r = WakeResult::new(mac, WakeState::Failed, now, timeout_secs);
                r.errors.push("not a unicast MAC".into());
                r.describe();
                results.push(r);
                continue;
            };
            if online.contains(mac) {
                results.push(WakeResult::new(
                    mac,
                    WakeState::AlreadyOnline,
                    now,
                    timeout_secs,
                ));
                continue;
            }
            let subnet = records.get(mac).and_then(last_subnet);
            let routes = plan::routes(mac, subnet, &locals, &relays);
            let mut r = WakeResult::new(mac, WakeState::Sent, now, timeout_secs);
            for route in &routes {
                let sent = match route {
                    Route::Local {
                        source, broadcast, ..
                    } => crate::wake_on_lan::send(bytes, *broadcast, Some(*source)),
                    Route::Directed { broadcast } => {
                        crate::wake_on_lan::send(bytes, *broadcast, None)
                    }
                    Route::Relay { mac: via, .. } => {
                        by_relay.entry(via.clone()).or_default().push(results.len());
                        Ok(())
                    }
                };
                match sent {
                    Ok(()) => r.routes.push(route.clone()),
                    Err(e) => r.errors.push(format!("{route}: {e}")),
                }
            }
            results.push(r);
        }
        for (via, idx) in by_relay {
            let targets: Vec<String> = idx.iter().map(|&i| results[i].mac.clone()).collect();
            let answer = self
                .push(
                    &via,
                    ServiceCode::WakeRelay,
                    json!({ "macs": targets }),
                    Duration::from_secs(5),
                )
                .await;
            let failure = match answer {
                Ok((_, env)) if env.is_ok() => None,
                Ok((_, env)) => Some(format!("{} {}", env.code, env.msg)),
                Err(e) => Some(e.to_string()),
            };
            if let Some(why) = failure {
                log::warn!("wake relay by {via} failed: {why}; sending the directed broadcast");
                for &i in &idx {
                    let r = &mut results[i];
                    let Some(pos) = r
                        .routes
                        .iter()
                        .position(|x| matches!(x, Route::Relay { mac, .. } if mac == &via))
                    else {
                        continue;
                    };
                    let Route::Relay { broadcast, .. } = r.routes.remove(pos) else {
                        continue;
                    };
                    r.errors.push(format!("relay by {via}: {why}"));
                    let direct = Route::Directed { broadcast };
                    match crate::wake_on_lan::parse_mac(&r.mac)
                        .map(|b| crate::wake_on_lan::send(b, broadcast, None))
                    {
                        Some(Ok(())) => r.routes.push(direct),
                        Some(Err(e)) => r.errors.push(format!("{direct}: {e}")),
                        None => {}
                    }
                }
            }
        }
        // A relay's "sent" is its word only (issue 38.15: a rogue relay
        // answered "sent" and sent nothing). Whoever it was for and is not
        // up by half the timeout gets the directed broadcast and another
        // relay too.
        let follow: Vec<(String, String, Ipv4Addr)> = results
            .iter()
            .filter(|r| r.state == WakeState::Sent)
            .filter_map(|r| {
                r.routes.iter().find_map(|x| match x {
                    Route::Relay { mac, broadcast } => {
                        Some((r.mac.clone(), mac.clone(), *broadcast))
                    }
                    _ => None,
                })
            })
            .collect();
        if !follow.is_empty() {
            let me = self.clone();
            let patience = Duration::from_secs((timeout_secs / 2).clamp(2, 60));
            let subnets: HashMap<String, Subnet> = follow
                .iter()
                .filter_map(|(m, _, _)| Some((m.clone(), records.get(m).and_then(last_subnet)?)))
                .collect();
            let relays = relays.clone();
            tokio::spawn(async move {
                tokio::time::sleep(patience).await;
                me.follow_relays(follow, subnets, relays, patience).await;
            });
        }
        for r in &mut results {
            if r.state == WakeState::Sent && r.routes.is_empty() {
                r.state = WakeState::Failed;
                if r.errors.is_empty() {
                    r.errors
                        .push("no route: this host has no broadcast interface".into());
                }
            }
            r.describe();
            log::info!("wake {}: {}", r.mac, r.text);
            self.wakes.record(r.clone());
        }
        results
    }

    /// For each (target, relay that was asked, broadcast) whose target is
    /// still not up: the directed broadcast, and another relay on its
    /// subnet; the wake's result names what was added. (`wake` calls it
    /// after half the timeout; public for the test, which cannot let a
    /// whole wake broadcast on the machine's own interfaces.)
    pub async fn follow_relays(
        self: Arc<Self>,
        follow: Vec<(String, String, Ipv4Addr)>,
        subnets: HashMap<String, Subnet>,
        relays: Vec<Relay>,
        patience: Duration,
    ) {
        let online: HashSet<String> = self.registry.macs().into_iter().collect();
        for (mac, first, broadcast) in follow {
            if online.contains(&mac) {
                continue;
            }
            let Some(bytes) = crate::wake_on_lan::parse_mac(&mac) else {
                continue;
            };
            let mut added = Vec::new();
            let mut errors = Vec::new();
            let direct = Route::Directed { broadcast };
            match crate::wake_on_lan::send(bytes, broadcast, None) {
                Ok(()) => added.push(direct),
                Err(e) => errors.push(format!("{direct}: {e}")),
            }
            let other = subnets.get(&mac).and_then(|t| {
                relays.iter().find(|r| {
                    r.mac != first
                        && r.mac != mac
                        && online.contains(&r.mac)
                        && r.subnet.prefix == t.prefix
                        && t.contains(r.subnet.ip)
                })
            });
            if let Some(other) = other {
                let answer = self
                    .push(
                        &other.mac,
                        ServiceCode::WakeRelay,
                        json!({ "macs": [mac.clone()] }),
                        Duration::from_secs(5),
                    )
                    .await;
                match answer {
                    Ok((_, env)) if env.is_ok() => added.push(Route::Relay {
                        mac: other.mac.clone(),
                        broadcast,
                    }),
                    Ok((_, env)) => {
                        errors.push(format!("relay by {}: {} {}", other.mac, env.code, env.msg))
                    }
                    Err(e) => errors.push(format!("relay by {}: {e}", other.mac)),
                }
            }
            let what = added
                .iter()
                .map(|r| r.to_string())
                .collect::<Vec<_>>()
                .join("; ");
            log::warn!(
                "wake {mac}: not up {patience:?} after relay by {first} said sent; followed by {}",
                if what.is_empty() {
                    "nothing (no other route)"
                } else {
                    &what
                }
            );
            self.wakes.follow_up(&mac, added, errors);
        }
    }

    /// Checks and stores a whole schedule; entries without an id get one.
    pub fn put_schedule(
        &self,
        mut entries: Vec<ScheduleEntry>,
    ) -> Result<Vec<ScheduleEntry>, PushError> {
        if entries.len() > schedule::MAX_ENTRIES {
            return Err(PushError::Bad(format!(
                "{} entries; at most {}",
                entries.len(),
                schedule::MAX_ENTRIES
            )));
        }
        let mut problems = Vec::new();
        for (i, e) in entries.iter_mut().enumerate() {
            if e.id.is_empty() {
                e.id = uuid::Uuid::new_v4().to_string()[..8].to_string();
            }
            for p in e.problems() {
                problems.push(format!("entry {} ({}): {p}", i + 1, e.id));
            }
        }
        let ids: HashSet<&str> = entries.iter().map(|e| e.id.as_str()).collect();
        if ids.len() != entries.len() {
            problems.push("two entries have the same id".into());
        }
        if !problems.is_empty() {
            return Err(PushError::Bad(problems.join("; ")));
        }
        self.store.put_schedule(&entries)?;
        Ok(entries)
    }

    /// Reads the schedule every `schedule_tick_ms`, from the server's start:
    /// what fell due while it was down is not replayed.
    pub async fn schedule_loop(self: Arc<Self>) {
        let tick = Duration::from_millis(self.cfg.wake.schedule_tick_ms.max(50));
        let mut last = self.clock.now();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(tick) => {}
                _ = self.shutdown.cancelled() => return,
            }
            let now = self.clock.now();
            if now < last {
                // The clock went back: start again from here.
                last = now;
                continue;
            }
            let entries = match self.store.schedule() {
                Ok(e) => e,
                Err(e) => {
                    log::error!("schedule: {e}");
                    continue;
                }
            };
            if now - last > schedule::MAX_WINDOW {
                log::warn!(
                    "schedule: the clock moved {} s at once; what fell in between is skipped",
                    (now - last).num_seconds()
                );
            }
            for (i, due) in schedule::due(&entries, last, now) {
                let s = self.clone();
                let entry = entries[i].clone();
                tokio::spawn(async move { s.run_entry(entry, due, now).await });
            }
            last = now;
        }
    }

    async fn run_entry(self: Arc<Self>, e: ScheduleEntry, due: Due, now: NaiveDateTime) {
        let macs = match self.select_terminals(&Selection::Room(e.room.clone())) {
            Ok(m) => m,
            Err(err) => {
                log::warn!("schedule {}: {err}", e.id);
                Vec::new()
            }
        };
        let online: HashSet<String> = self.registry.macs().into_iter().collect();
        let mut terminals = Vec::new();
        let what = match (due, e.action) {
            (Due::Act, Action::Wake) => {
                for r in self.wake(&macs, self.cfg.wake.timeout_secs).await {
                    terminals.push((r.mac, r.text));
                }
                "wake"
            }
            (Due::Warn { in_secs }, _) => {
                for mac in macs.iter().filter(|m| online.contains(*m)) {
                    let ours = self
                        .store
                        .terminal(mac)
                        .ok()
                        .flatten()
                        .is_some_and(|r| r.wake.is_some());
                    if !ours {
                        // The vendor's terminals have no such message.
                        continue;
                    }
                    let body = json!({
                        "action": "shutdown",
                        "in_secs": in_secs,
                        "reason": format!("class schedule ({} {})", e.room, e.at),
                    });
                    let r = self
                        .push(mac, ServiceCode::PowerNotice, body, Duration::from_secs(10))
                        .await;
                    terminals.push((mac.clone(), outcome(r, "told")));
                }
                "warn"
            }
            (Due::Act, Action::Shutdown) => {
                for mac in &macs {
                    if !online.contains(mac) {
                        terminals.push((mac.clone(), "off: skipped".into()));
                        continue;
                    }
                    let rec = self.store.terminal(mac).ok().flatten();
                    if e.unless.contains(&Unless::Downloading)
                        && rec.as_ref().is_some_and(downloading)
                    {
                        terminals.push((mac.clone(), "downloading: left on".into()));
                        continue;
                    }
                    let r = self
                        .push(
                            mac,
                            ServiceCode::Shutdown,
                            json!({}),
                            Duration::from_secs(10),
                        )
                        .await;
                    terminals.push((mac.clone(), outcome(r, "shutting down")));
                }
                "shutdown"
            }
        };
        log::info!(
            "schedule {} ({} {} {}): {}",
            e.id,
            e.room,
            e.at,
            what,
            terminals
                .iter()
                .map(|(m, t)| format!("{m} {t}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        self.schedule_runs.push(ScheduleRun {
            entry_id: e.id,
            room: e.room,
            what: what.into(),
            at: now.format("%Y-%m-%d %H:%M:%S").to_string(),
            terminals,
        });
    }
}

fn outcome(
    r: Result<
        (
            crate::protocol::BatchNo,
            crate::protocol::Envelope<serde_json::Value>,
        ),
        PushError,
    >,
    ok: &str,
) -> String {
    match r {
        Ok((_, env)) if env.is_ok() => ok.into(),
        Ok((_, env)) => format!("refused: {} {}", env.code, env.msg),
        Err(e) => format!("failed: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(wake_prefix: Option<u8>, mask: &str) -> TerminalRecord {
        let mut r = TerminalRecord::new("AA:00:00:00:00:01");
        r.config.ip = "10.1.0.2".into();
        r.config.mask = mask.into();
        r.wake = wake_prefix.map(|prefix| crate::protocol::messages::WakeInfo {
            interface: "eth0".into(),
            supported: true,
            detail: String::new(),
            ip: "10.1.0.2".into(),
            prefix,
        });
        r
    }

    #[test]
    fn no_directed_broadcast_narrower_than_a_slash_29() {
        assert_eq!(last_subnet(&rec(Some(29), "")).map(|s| s.prefix), Some(29));
        // A /30 reported by the terminal (the "broadcast" would be a host)
        // gives no subnet, whatever its mask says; nor does a /30 mask; no
        // mask at all is a /24.
        assert!(last_subnet(&rec(Some(30), "")).is_none());
        assert!(last_subnet(&rec(Some(30), "255.255.255.252")).is_none());
        assert!(last_subnet(&rec(None, "255.255.255.252")).is_none());
        assert_eq!(last_subnet(&rec(None, "")).map(|s| s.prefix), Some(24));
    }
}
