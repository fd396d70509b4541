//! The terminal's identity on the network: MAC and IPv4 of one interface.

use nix::ifaddrs::getifaddrs;
use nix::net::if_::InterfaceFlags;
use std::net::Ipv4Addr;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceInfo {
    pub name: String,
    /// Upper-case, colon-separated.
    pub mac: String,
    pub ipv4: Option<Ipv4Addr>,
    pub prefix_len: Option<u8>,
    /// Up and not loopback.
    pub usable: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum NetInfoError {
    #[error("cannot list interfaces: {0}")]
    List(#[from] nix::Error),
    #[error("interface {0:?} not found")]
    NotFound(String),
    #[error("no interface is up with an IPv4 address (set `interface` in the config)")]
    NoCandidate,
}

pub fn interfaces() -> Result<Vec<InterfaceInfo>, NetInfoError> {
    let mut out: Vec<InterfaceInfo> = Vec::new();
    for ifa in getifaddrs()? {
        let usable = ifa.flags.contains(InterfaceFlags::IFF_UP)
            && !ifa.flags.contains(InterfaceFlags::IFF_LOOPBACK);
        let idx = match out.iter().position(|i| i.name == ifa.interface_name) {
            Some(i) => i,
            None => {
                out.push(InterfaceInfo {
                    name: ifa.interface_name.clone(),
                    mac: "00:00:00:00:00:00".into(),
                    ipv4: None,
                    prefix_len: None,
                    usable,
                });
                out.len() - 1
            }
        };
        let Some(addr) = ifa.address else { continue };
        if let Some(link) = addr.as_link_addr() {
            if let Some(mac) = link.addr() {
                out[idx].mac = mac
                    .iter()
                    .map(|b| format!("{b:02X}"))
                    .collect::<Vec<_>>()
                    .join(":");
            }
        } else if let Some(sin) = addr.as_sockaddr_in() {
            if out[idx].ipv4.is_none() {
                out[idx].ipv4 = Some(sin.ip());
                out[idx].prefix_len = ifa.netmask.and_then(|m| {
                    m.as_sockaddr_in()
                        .map(|m| u32::from(m.ip()).count_ones() as u8)
                });
            }
        }
    }
    Ok(out)
}

/// The named interface, or the first one that is up, not loopback and has
/// an IPv4 address.
pub fn detect(name: Option<&str>) -> Result<InterfaceInfo, NetInfoError> {
    let all = interfaces()?;
    match name {
        Some(n) => all
            .into_iter()
            .find(|i| i.name == n)
            .ok_or_else(|| NetInfoError::NotFound(n.to_string())),
        None => all
            .into_iter()
            .find(|i| i.usable && i.ipv4.is_some())
            .ok_or(NetInfoError::NoCandidate),
    }
}

/// The interface's current static settings, for a rollback: address and
/// prefix from the kernel, default gateway from `ip -j route` (JSON, not
/// text), DNS servers from `<etc>/resolv.conf`.
pub fn current_network(
    name: &str,
    etc: &std::path::Path,
) -> Option<crate::agent::platform::NetworkConfig> {
    let info = detect(Some(name)).ok()?;
    let gateway = std::process::Command::new("ip")
        .args(["-j", "route", "show", "default", "dev", name])
        .output()
        .ok()
        .and_then(|o| serde_json::from_slice::<Vec<serde_json::Value>>(&o.stdout).ok())
        .and_then(|routes| {
            routes
                .first()
                .and_then(|r| r["gateway"].as_str().and_then(|g| g.parse().ok()))
        });
    let dns = std::fs::read_to_string(etc.join("resolv.conf"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|a| a.trim().parse().ok())
        .collect();
    Some(crate::agent::platform::NetworkConfig {
        interface: info.name,
        address: info.ipv4?,
        prefix_len: info.prefix_len?,
        gateway,
        dns,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_listed() {
        let all = interfaces().expect("list");
        let lo = all.iter().find(|i| i.name == "lo").expect("lo exists");
        assert_eq!(lo.ipv4, Some(Ipv4Addr::LOCALHOST));
        assert_eq!(lo.prefix_len, Some(8));
        assert_eq!(lo.mac, "00:00:00:00:00:00");
    }

    #[test]
    fn unknown_name_is_error() {
        assert!(matches!(
            detect(Some("nope-xyz0")),
            Err(NetInfoError::NotFound(_))
        ));
    }
}
