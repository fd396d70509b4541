//! Powering the terminal down so that it can be woken again, and waking
//! others: the NIC is armed for magic-packet wake before every power-off
//! the agent initiates, and a server on another subnet can ask this agent
//! to broadcast a magic packet on its own subnet (1900).

use std::net::Ipv4Addr;

use crate::agent::interfaces;
use crate::agent::platform::{PlatformResult, WakeSupport};
use crate::agent::terminal::Agent;
use crate::protocol::messages::WakeInfo;

/// At most this many MACs in one relay request.
pub const MAX_RELAY_MACS: usize = 256;

/// The interface the agent is known by, with its address.
fn own_interface(agent: &Agent) -> Option<interfaces::InterfaceInfo> {
    interfaces::detect(agent.cfg.interface.as_deref()).ok()
}

/// What 9004 says about waking this terminal: the NIC's support, read and
/// not changed, and the subnet it is on.
pub fn wake_info(agent: &Agent) -> Option<WakeInfo> {
    let info = own_interface(agent)?;
    let support = crate::agent::platform::wake_support(&info.name);
    Some(WakeInfo {
        interface: info.name,
        supported: support.supported,
        detail: support.detail,
        ip: info.ipv4.map(|a| a.to_string()).unwrap_or_default(),
        prefix: info.prefix_len.unwrap_or(0),
    })
}

/// Arms magic-packet wake. Never stops a power-off: a NIC without wake is
/// reported, a failure logged.
pub fn arm_wake(agent: &Agent) -> Option<WakeSupport> {
    let Some(info) = own_interface(agent) else {
        log::warn!("wake-on-LAN not armed: the terminal's interface is not found");
        return None;
    };
    match agent.platform.arm_wake_on_lan(&info.name) {
        Ok(s) if s.supported => {
            log::info!("wake-on-LAN on {}: {}", info.name, s.detail);
            Some(s)
        }
        Ok(s) => {
            log::warn!(
                "wake-on-LAN on {}: not supported ({}); this terminal must be powered on by hand",
                info.name,
                s.detail
            );
            Some(s)
        }
        Err(e) => {
            log::warn!("wake-on-LAN on {} not armed: {e}", info.name);
            None
        }
    }
}

/// Stops the desktop, then powers off (arming wake first) or reboots.
pub async fn power_down(agent: &Agent, power_off: bool) -> PlatformResult {
    // The guest first: ACPI powerdown, so a persistent desktop flushes
    // what it wrote, then hard after a while.
    agent.desktop.stop().await;
    if power_off {
        arm_wake(agent);
        agent.platform.power_off()
    } else {
        agent.platform.reboot()
    }
}

/// Why a relay request cannot be carried out.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RelayError {
    #[error("no MACs given")]
    Empty,
    #[error("{0} MACs; at most {MAX_RELAY_MACS} in one request")]
    TooMany(usize),
    #[error("{0:?} is not a unicast MAC address")]
    BadMac(String),
    #[error("this terminal has no IPv4 subnet with a broadcast address to relay on")]
    NoSubnet,
    #[error("sending on {0}: {1}")]
    Send(Ipv4Addr, String),
    #[error("{0} wake packets relayed in the last {RELAY_WINDOW:?} already; at most {MAX_RELAYED_PER_WINDOW}")]
    RateLimited(usize),
}

/// 1900 is deduplicated and rate-limited (issue 38.15: 21 requests made
/// 10,229 packets in 0.14 s): a MAC relayed within `RELAY_WINDOW` is not
/// sent again, and at most `MAX_RELAYED_PER_WINDOW` packets leave in one.
const RELAY_WINDOW: std::time::Duration = std::time::Duration::from_secs(10);
const MAX_RELAYED_PER_WINDOW: usize = 256;

/// (relaying agent's MAC, target) → when it was last relayed.
type Relayed = std::collections::HashMap<(String, [u8; 6]), std::time::Instant>;
static RELAYED: std::sync::Mutex<Option<Relayed>> = std::sync::Mutex::new(None);

/// Broadcasts the magic packet of each MAC on this terminal's subnet.
/// Every MAC is checked before anything is sent.
pub fn relay(agent: &Agent, macs: &[String]) -> Result<(Vec<String>, Ipv4Addr), RelayError> {
    if macs.is_empty() {
        return Err(RelayError::Empty);
    }
    if macs.len() > MAX_RELAY_MACS {
        return Err(RelayError::TooMany(macs.len()));
    }
    let parsed: Vec<[u8; 6]> = macs
        .iter()
        .map(|m| crate::wake_on_lan::parse_mac(m).ok_or_else(|| RelayError::BadMac(m.clone())))
        .collect::<Result<_, _>>()?;
    let info = own_interface(agent).ok_or(RelayError::NoSubnet)?;
    let (Some(ip), Some(prefix)) = (info.ipv4, info.prefix_len) else {
        return Err(RelayError::NoSubnet);
    };
    let broadcast = crate::wake_on_lan::broadcast_of(ip, prefix).ok_or(RelayError::NoSubnet)?;
    // Which of them go now: not one relayed by this agent within the
    // window, and not past the window's packet budget.
    let now = std::time::Instant::now();
    let fresh: Vec<([u8; 6], &String)> = {
        let mut guard = RELAYED.lock().unwrap_or_else(|p| p.into_inner());
        let relayed = guard.get_or_insert_with(Default::default);
        relayed.retain(|_, t| now.duration_since(*t) < RELAY_WINDOW);
        let mut fresh = Vec::new();
        for (mac, text) in parsed.into_iter().zip(macs) {
            let key = (agent.mac.clone(), mac);
            if relayed.contains_key(&key) || fresh.iter().any(|(m, _)| *m == mac) {
                continue;
            }
            fresh.push((mac, text));
        }
        let mine = relayed.keys().filter(|(a, _)| *a == agent.mac).count();
        if mine + fresh.len() > MAX_RELAYED_PER_WINDOW {
            return Err(RelayError::RateLimited(mine));
        }
        for (mac, _) in &fresh {
            relayed.insert((agent.mac.clone(), *mac), now);
        }
        fresh
    };
    let mut sent = Vec::new();
    for (mac, text) in fresh {
        agent
            .platform
            .send_wake(mac, broadcast, ip)
            .map_err(|e| RelayError::Send(broadcast, e.to_string()))?;
        sent.push(text.to_ascii_uppercase());
    }
    log::info!("relayed wake-on-LAN for {} on {broadcast}", sent.join(", "));
    Ok((sent, broadcast))
}
