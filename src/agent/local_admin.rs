//! What the terminal's own screen may do through the control socket: see
//! everything at once, stop the auto-boot countdown, check the
//! administrator, move to another server, change the address, test the
//! server's port, read the last log lines. Every input is checked here,
//! as a server command's would be: the screen is not trusted either.

use serde::Deserialize;
use serde_json::{json, Value};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::agent::platform::NetworkConfig;
use crate::agent::terminal::Agent;

/// Everything the screen shows, in one answer.
pub fn screen_status(agent: &Agent) -> Value {
    let s = agent.state.snapshot();
    let live = agent.live();
    let transfers: Vec<Value> = agent
        .transfers
        .get()
        .map(|t| {
            t.list()
                .into_iter()
                .map(|(rec, stats)| {
                    json!({
                        "layer": rec.layer,
                        "kind": rec.kind,
                        "stage": rec.stage,
                        "group_uuid": rec.group_uuid,
                        "length": rec.length,
                        "phase": stats.as_ref().map(|s| s.phase.wire()),
                        "have_bytes": stats.as_ref().map(|s| s.have_bytes),
                        "down_bps": stats.as_ref().map(|s| s.down_bps),
                        "error": stats.and_then(|s| s.error),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    let refused: Vec<Value> = agent
        .transfers
        .get()
        .map(|t| t.refusals())
        .unwrap_or_default()
        .into_iter()
        .map(|(layer, r)| json!({"layer": layer, "reason": r.reason}))
        .collect();
    let countdown = agent
        .auto_boot_deadline_ms
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .map(|d| {
            d.saturating_sub(crate::agent::desktop::now_ms())
                .div_ceil(1000)
        });
    let groups: Vec<Value> = s
        .desktop_groups
        .iter()
        .map(|g| {
            json!({
                "uuid": g.desktop_group_uuid,
                "name": g.desktop_group_name,
                "default": g.default_desktop_group,
                "restore": g.desktop_group_restore,
                "disks": g.disks.iter().map(|d| json!({
                    "uuid": d.uuid, "type": d.disk_type, "level": d.dif_level, "prefix": d.prefix,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({
        "mac": agent.mac,
        "name": s.terminal.name,
        "terminal_id": s.terminal.terminal_id,
        "ip": crate::agent::interfaces::detect(agent.cfg.interface.as_deref())
            .ok()
            .and_then(|i| i.ipv4)
            .map(|ip| ip.to_string())
            .unwrap_or_default(),
        "interface": agent.interface_name().ok(),
        "version": agent.cfg.soft_version,
        "client_type": agent.cfg.client_type,
        "server": agent.server_addr(),
        "tls": agent.cfg.tls.enabled,
        "live": live,
        "is_dhcp": s.network.is_none(),
        "network": s.network,
        "groups": groups,
        "transfers": transfers,
        "refused": refused,
        "desktop": agent.desktop.status(),
        "countdown_secs": countdown,
        "now_ms": crate::agent::desktop::now_ms(),
        "pending_order": s.pending_order,
        "notices": s.notices,
        "pending_change": s.pending_change,
    })
}

/// A server address typed at the terminal: an IP, or a host name made of
/// letters, digits, dots and dashes.
pub fn check_server(ip: &str, port: u16) -> Result<String, String> {
    let ip = ip.trim();
    if port == 0 {
        return Err("the port must be 1 to 65535".into());
    }
    if ip.parse::<IpAddr>().is_ok() {
        return Ok(ip.to_string());
    }
    let host_ok = !ip.is_empty()
        && ip.len() <= 253
        && ip
            .split('.')
            .all(|l| !l.is_empty() && l.len() <= 63 && !l.starts_with('-') && !l.ends_with('-'))
        && ip
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-');
    if host_ok {
        Ok(ip.to_string())
    } else {
        Err(format!("{ip:?} is not an IP address or a host name"))
    }
}

/// Tries the server's port: "reachable in N ms" or why not.
pub async fn test_server(ip: &str, port: u16) -> Result<Value, String> {
    let host = check_server(ip, port)?;
    let started = Instant::now();
    let target = match host.parse::<IpAddr>() {
        Ok(IpAddr::V6(v6)) => format!("[{v6}]:{port}"),
        _ => format!("{host}:{port}"),
    };
    match tokio::time::timeout(
        Duration::from_secs(3),
        tokio::net::TcpStream::connect(&target),
    )
    .await
    {
        Ok(Ok(_)) => Ok(json!({
            "reachable": true,
            "ms": started.elapsed().as_millis() as u64,
            "text": format!("{target} answers ({} ms)", started.elapsed().as_millis()),
        })),
        Ok(Err(e)) => Err(format!("{target}: {e}")),
        Err(_) => Err(format!("{target}: no answer within 3 s")),
    }
}

/// Moves to another server; rolled back when no login succeeds there in
/// `change_confirm_secs`.
pub fn set_server(agent: &Agent, ip: &str, port: u16) -> Result<Value, String> {
    let host = check_server(ip, port)?;
    log::info!("the terminal's screen moves this terminal to {host}:{port}");
    agent.move_server(host, Some(port));
    // The session ends; the supervisor connects to the new address.
    if let Some(link) = agent.link() {
        link.close();
    }
    Ok(json!({ "server": agent.server_addr() }))
}

#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
pub struct NetworkRequest {
    #[serde(default)]
    pub dhcp: bool,
    #[serde(default)]
    pub ip: String,
    #[serde(default)]
    pub mask: String,
    #[serde(default)]
    pub gateway: String,
    #[serde(default)]
    pub dns1: String,
    #[serde(default)]
    pub dns2: String,
}

/// A static address, validated and rolled back as 1012 is; or DHCP.
pub async fn set_network(agent: &Arc<Agent>, req: NetworkRequest) -> Result<Value, String> {
    let interface = agent
        .interface_name()
        .map_err(|e| format!("no interface to configure: {e}"))?;
    if req.dhcp {
        agent.apply_dhcp(&interface).await?;
        agent.persist(|s| {
            s.network = None;
            s.terminal.is_dhcp = 1;
        });
        if let Some(link) = agent.link() {
            link.close();
        }
        return Ok(json!({ "interface": interface, "dhcp": true }));
    }
    let checked =
        crate::ipv4::validate_static(&req.ip, &req.mask, &req.gateway, &req.dns1, &req.dns2)
            .map_err(|(_, msg)| msg)?;
    let net = NetworkConfig {
        interface,
        address: checked.address,
        prefix_len: checked.prefix_len,
        gateway: Some(checked.gateway),
        dns: checked.dns,
    };
    let conf_version = agent.state.read(|s| s.terminal.conf_version);
    agent
        .change_network(net.clone(), conf_version, req.mask.trim().to_string())
        .await?;
    if let Some(link) = agent.link() {
        link.close();
    }
    Ok(json!({ "interface": net.interface, "address": net.address, "prefix_len": net.prefix_len }))
}

/// md5 of a password, as the protocol's administrator check compares it.
fn md5_of(password: &str) -> String {
    crate::protocol::md5_hex(password.as_bytes())
}

/// The key this terminal was flashed with (`[bt] manifest_key`), which
/// also checks the offline password's signature.
fn manifest_key(agent: &Agent) -> Option<ed25519_dalek::VerifyingKey> {
    agent
        .cfg
        .bt
        .manifest_key
        .as_deref()
        .and_then(|k| crate::bt::manifest::parse_public_key(k).ok())
}

/// A 9008 "yes" keeps the offline password only when it carries one the
/// server signed with the manifest key this terminal was flashed with.
fn keep_offline_admin(agent: &Arc<Agent>, env: &crate::protocol::Envelope<Value>) {
    let Some(o) = env
        .data
        .as_ref()
        .and_then(|d| d.get("offline_admin"))
        .and_then(|o| serde_json::from_value::<crate::offline_admin::OfflineAdmin>(o.clone()).ok())
    else {
        return;
    };
    let key = manifest_key(agent);
    match key {
        Some(k) if o.verify(&k) => {
            if agent.state.read(|s| s.offline_admin.as_ref() != Some(&o)) {
                agent.persist(|s| s.offline_admin = Some(o));
            }
        }
        Some(_) => log::warn!(
            "9008: the offline password the server sent is not signed with this terminal's manifest_key; not kept"
        ),
        None => log::info!("9008: no [bt] manifest_key here, so no offline password is kept"),
    }
}

/// Wrong answers on the control socket before waits begin, and the
/// longest wait (issue 38.14: 18,800 guesses a second were possible).
const FREE_TRIES: u32 = 3;
const MAX_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// Failed administrator checks on this terminal, whoever asks: after
/// `FREE_TRIES`, each wrong answer doubles the wait before the next check.
static GUESSES: std::sync::Mutex<(u32, Option<std::time::Instant>)> =
    std::sync::Mutex::new((0, None));

fn guess_wait() -> Option<std::time::Duration> {
    let g = GUESSES.lock().unwrap_or_else(|p| p.into_inner());
    g.1.and_then(|until| until.checked_duration_since(std::time::Instant::now()))
}

fn guess_result(ok: bool) {
    let mut g = GUESSES.lock().unwrap_or_else(|p| p.into_inner());
    if ok {
        *g = (0, None);
        return;
    }
    g.0 += 1;
    if g.0 > FREE_TRIES {
        let doublings = (g.0 - FREE_TRIES - 1).min(6);
        g.1 = Some(
            std::time::Instant::now()
                + std::time::Duration::from_secs(1 << doublings).min(MAX_WAIT),
        );
    }
}

/// The administrator check for the screen's settings: 9008 when the server
/// can be reached, else `admin_password_md5` in the config (flashed with
/// the image). A server's "yes" sets nothing for later (issue 38.13: a
/// rogue server answering yes to anything planted the offline password);
/// the md5 an older agent kept in `state.json` is no longer read.
pub async fn verify_admin(
    agent: &Arc<Agent>,
    user: String,
    password: String,
) -> Result<Value, String> {
    if user.len() > 64 || password.len() > 128 {
        return Err("user or password too long".into());
    }
    if let Some(wait) = guess_wait() {
        return Err(format!(
            "too many wrong passwords; try again in {} s",
            wait.as_secs() + 1
        ));
    }
    let r = verify_admin_now(agent, user, password).await;
    guess_result(r.is_ok());
    r
}

async fn verify_admin_now(
    agent: &Arc<Agent>,
    user: String,
    password: String,
) -> Result<Value, String> {
    if let Some(link) = agent.link() {
        let body = crate::protocol::messages::VerifyAdminUserReq {
            mac: agent.mac.clone(),
            user_name: user.clone(),
            password: password.clone(),
        };
        match link
            .request(crate::protocol::ServiceCode::VerifyAdminUser, &body)
            .await
        {
            Ok((_, env)) if env.is_ok() => {
                keep_offline_admin(agent, &env);
                return Ok(json!({ "verified": true, "by": "server" }));
            }
            Ok((_, env)) => {
                return Err(format!(
                    "wrong user or password (the server answered {})",
                    env.code
                ))
            }
            // The link went while asking: fall back as if offline.
            Err(e) => log::warn!("9008 verify_admin_user: {e}; checking locally"),
        }
    }
    if let Some(o) = agent.state.read(|s| s.offline_admin.clone()) {
        let key = manifest_key(agent);
        if key.is_some_and(|k| o.verify(&k)) {
            let (u, p) = (user.clone(), password.clone());
            // scrypt is slow on purpose: off the async threads.
            let ok = tokio::task::spawn_blocking(move || o.matches(&u, &p))
                .await
                .unwrap_or(false);
            return if ok {
                Ok(json!({ "verified": true, "by": "local" }))
            } else {
                Err("wrong user or password (checked locally: the server cannot be reached)".into())
            };
        }
    }
    let local = agent.cfg.admin_password_md5.clone();
    match local {
        Some(h) if h.eq_ignore_ascii_case(&md5_of(&password)) => {
            Ok(json!({ "verified": true, "by": "local" }))
        }
        Some(_) => Err("wrong password (checked locally: the server cannot be reached)".into()),
        None => Err(
            "the server cannot be reached and no local administrator password is known (admin_password_md5)"
                .into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_addresses_are_checked() {
        assert!(check_server("10.0.0.1", 50007).is_ok());
        assert!(check_server("voi-server.school", 50007).is_ok());
        assert!(check_server("::1", 1).is_ok());
        for bad in [
            "",
            "10.0.0.1; reboot",
            "../etc",
            "a..b",
            "-x.y",
            "$(id)",
            "a b",
        ] {
            assert!(check_server(bad, 50007).is_err(), "{bad}");
        }
        assert!(check_server("10.0.0.1", 0).is_err());
    }
}
