//! What each terminal's desktop is doing, as the API, `ctl` and the
//! console show it. Our agent reports every change of its desktop runtime
//! (the optional `desktop` of 9000, sent at once on a change); the
//! vendor's terminals say only that a desktop started (9024).
//!
//! The rule the views follow: a desktop is shown running only while its
//! terminal is online and the last word from it says so. An offline
//! terminal shows its last known state as "last seen …", never as running.

use serde_json::{json, Value};

use super::registry::now_ms;
use super::service::Server;
use super::store::{StoreError, TerminalRecord};
use crate::protocol::messages::DesktopState;

/// The report key the state is kept under on the terminal's record.
pub const REPORT: &str = "desktop_state";

/// The 9015 message our agent sends when a desktop did not boot.
const BOOT_FAILURE: &str = "desktop failed to boot";

/// Keeps a reported state when it differs from the last one (a heartbeat
/// carrying the same state writes nothing). A desktop that runs clears the
/// boot failures reported against its layers, except the layer it was
/// rolled back from, which is still broken.
pub fn record(server: &Server, mac: &str, d: DesktopState) -> Result<(), StoreError> {
    let value = json!(d);
    let unchanged = server
        .store
        .terminal(mac)?
        .and_then(|r| r.reports.get(REPORT).cloned())
        .is_some_and(|old| old == value);
    if unchanged {
        return Ok(());
    }
    let running = d.state == "running";
    let keep = d.rolled_back_from.clone();
    // Only this desktop's failures: another group's broken layer stays so.
    let layers: Vec<String> = if running {
        server
            .store
            .groups()?
            .iter()
            .filter(|g| g.desktop_group_uuid == d.desktop_group_uuid)
            .flat_map(|g| g.disks.iter().map(|d| d.layer_name()))
            .collect()
    } else {
        Vec::new()
    };
    let mut cleared = Vec::new();
    server.store.update_terminal(mac, |r| {
        r.reports.insert(REPORT.to_string(), value.clone());
        if running {
            r.reports.retain(|k, v| {
                let failure = k
                    .strip_prefix("task_result:")
                    .is_some_and(|l| layers.iter().any(|x| x == l))
                    && v["result"] == 2
                    && v["msg"]
                        .as_str()
                        .is_some_and(|m| m.starts_with(BOOT_FAILURE))
                    && keep.as_deref() != k.strip_prefix("task_result:");
                if failure {
                    cleared.push(k.clone());
                }
                !failure
            });
        }
    })?;
    for k in &cleared {
        log::info!("{mac}: the desktop runs again; {k} no longer shown as failed");
    }
    log::info!(
        "{mac}: desktop {} {}{}",
        d.desktop_group_uuid,
        d.state,
        if d.accelerator.is_empty() {
            String::new()
        } else {
            format!(" on {}", d.accelerator)
        }
    );
    server.registry.emit(super::registry::ServerEvent::Report {
        mac: mac.to_string(),
        key: REPORT.to_string(),
        value,
        at_ms: now_ms(),
    });
    Ok(())
}

/// The desktop part of a terminal's view: `desktop` (state, group, since,
/// accelerator, reason; "unknown" with `last_state` and `last_seen_ms` when
/// the terminal is offline), and `running_desktop` only when it runs now.
/// `names` maps group uuids to names; `last_seen_ms` is the terminal's
/// last heartbeat, when the server has one.
pub fn view(
    rec: &TerminalRecord,
    online: bool,
    last_seen_ms: Option<u64>,
    name_of: impl Fn(&str) -> String,
) -> (Value, Value) {
    let reported: Option<DesktopState> = rec
        .reports
        .get(REPORT)
        .and_then(|v| serde_json::from_value(v.clone()).ok());
    // The vendor's terminals: the last 9024 is all there is.
    let login = rec
        .reports
        .iter()
        .filter(|(k, _)| k.starts_with("desktop_login:"))
        .max_by_key(|(_, r)| r["since_ms"].as_u64().unwrap_or(0))
        .map(|(_, r)| r.clone());
    let running_from_login = |r: &Value| {
        let uuid = r["desktop_group_uuid"].as_str().unwrap_or_default();
        json!({
            "desktop_group_uuid": uuid,
            "desktop_group_name": name_of(uuid),
            "accelerator": r["accelerator"],
            "since_ms": r["since_ms"],
            "ip": r["ip"],
            "is_dhcp": r["is_dhcp"],
        })
    };
    match (reported, online) {
        (Some(d), true) => {
            let desktop = json!({
                "state": d.state,
                "desktop_group_uuid": d.desktop_group_uuid,
                "desktop_group_name": name_of(&d.desktop_group_uuid),
                "since_ms": d.changed_ms,
                "accelerator": d.accelerator,
                "reason": d.reason,
                "rolled_back_from": d.rolled_back_from,
            });
            let running = if d.state == "running" {
                let mut r = login
                    .filter(|r| r["desktop_group_uuid"] == d.desktop_group_uuid.as_str())
                    .map(|r| running_from_login(&r))
                    .unwrap_or_else(|| {
                        json!({
                            "desktop_group_uuid": d.desktop_group_uuid,
                            "desktop_group_name": name_of(&d.desktop_group_uuid),
                            "ip": Value::Null,
                            "is_dhcp": Value::Null,
                        })
                    });
                r["accelerator"] = json!(d.accelerator);
                r["since_ms"] = json!(d.changed_ms);
                r
            } else {
                Value::Null
            };
            (desktop, running)
        }
        (Some(d), false) => (
            json!({
                "state": "unknown",
                "last_state": d.state,
                "desktop_group_uuid": d.desktop_group_uuid,
                "desktop_group_name": name_of(&d.desktop_group_uuid),
                "since_ms": d.changed_ms,
                "accelerator": d.accelerator,
                "reason": d.reason,
                "last_seen_ms": last_seen_ms.unwrap_or(d.changed_ms).max(d.changed_ms),
            }),
            Value::Null,
        ),
        (None, true) => match login {
            Some(r) => (
                json!({
                    "state": "running",
                    "desktop_group_uuid": r["desktop_group_uuid"],
                    "desktop_group_name": name_of(r["desktop_group_uuid"].as_str().unwrap_or_default()),
                    "since_ms": r["since_ms"],
                    "accelerator": r["accelerator"],
                    "reason": "",
                    "source": "9024 (the terminal reports no stop)",
                }),
                running_from_login(&r),
            ),
            None => (json!({ "state": "off" }), Value::Null),
        },
        (None, false) => match login {
            Some(r) => (
                json!({
                    "state": "unknown",
                    "last_state": "running",
                    "desktop_group_uuid": r["desktop_group_uuid"],
                    "desktop_group_name": name_of(r["desktop_group_uuid"].as_str().unwrap_or_default()),
                    "since_ms": r["since_ms"],
                    "last_seen_ms": last_seen_ms,
                }),
                Value::Null,
            ),
            None => (json!({ "state": "unknown" }), Value::Null),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const G: &str = "3b7e6a10-58c2-4d4e-9a0b-2f1c3d4e5aff";

    fn rec(state: Option<&str>, login: bool) -> TerminalRecord {
        let mut r = TerminalRecord::new("AA:00:00:00:00:01");
        if let Some(s) = state {
            r.reports.insert(
                REPORT.into(),
                json!(DesktopState {
                    state: s.into(),
                    desktop_group_uuid: G.into(),
                    changed_ms: 1000,
                    accelerator: "tcg".into(),
                    reason: String::new(),
                    rolled_back_from: None,
                }),
            );
        }
        if login {
            r.reports.insert(
                format!("desktop_login:{G}"),
                json!({"desktop_group_uuid": G, "since_ms": 500, "accelerator": "tcg"}),
            );
        }
        r
    }

    #[test]
    fn running_only_while_online_and_so_reported() {
        let name = |_: &str| "Lab".to_string();
        let (d, r) = view(&rec(Some("running"), true), true, None, name);
        assert_eq!(d["state"], "running");
        assert_eq!(r["desktop_group_name"], "Lab");
        assert_eq!(r["since_ms"], 1000);
        // Stopped: the 9024 of its start no longer makes it "running".
        let (d, r) = view(&rec(Some("off"), true), true, None, name);
        assert_eq!(d["state"], "off");
        assert!(r.is_null());
        // Offline: last known state, never running.
        let (d, r) = view(&rec(Some("running"), true), false, Some(5000), name);
        assert_eq!(d["state"], "unknown");
        assert_eq!(d["last_state"], "running");
        assert_eq!(d["last_seen_ms"], 5000);
        assert!(r.is_null());
        // A vendor terminal: its 9024 while online, nothing when offline.
        let (d, r) = view(&rec(None, true), true, None, name);
        assert_eq!(d["state"], "running");
        assert!(!r.is_null());
        let (_, r) = view(&rec(None, true), false, None, name);
        assert!(r.is_null());
    }

    #[test]
    fn a_bad_state_is_refused() {
        let mut d = DesktopState {
            state: "dancing".into(),
            desktop_group_uuid: G.into(),
            changed_ms: 0,
            accelerator: String::new(),
            reason: String::new(),
            rolled_back_from: None,
        };
        assert!(d.check().is_err());
        d.state = "off".into();
        assert!(d.check().is_ok());
        d.desktop_group_uuid = "../../etc".into();
        assert!(d.check().is_err());
        d.desktop_group_uuid = G.into();
        d.reason = "x".repeat(2000);
        assert!(d.check().is_err());
        d.reason.clear();
        d.rolled_back_from = Some("not a layer".into());
        assert!(d.check().is_err());
    }
}
