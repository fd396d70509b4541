//! IPv4 address arithmetic shared by update_ip validation and the server.

use std::net::Ipv4Addr;

use crate::protocol::ErrorCode;

/// Prefix length of a dotted mask, if the mask is contiguous and 1..=32.
pub fn prefix_len(mask: &str) -> Option<u8> {
    let m: Ipv4Addr = mask.trim().parse().ok()?;
    let bits = u32::from(m);
    let ones = bits.leading_ones();
    (bits.count_ones() == ones && ones > 0).then_some(ones as u8)
}

pub fn mask_of(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix.min(32)))
    }
}

pub fn same_subnet(a: Ipv4Addr, b: Ipv4Addr, prefix: u8) -> bool {
    let m = mask_of(prefix);
    u32::from(a) & m == u32::from(b) & m
}

/// A usable host address in its subnet: not the network or broadcast address
/// (for prefixes up to /30), not multicast, loopback or unspecified.
pub fn is_host_address(ip: Ipv4Addr, prefix: u8) -> bool {
    if ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() || ip.is_broadcast() {
        return false;
    }
    if prefix >= 31 {
        return true;
    }
    let host = u32::from(ip) & !mask_of(prefix);
    host != 0 && host != !mask_of(prefix)
}

/// A static IPv4 configuration (1012 update_ip) that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticAddress {
    pub address: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Ipv4Addr,
    pub dns: Vec<Ipv4Addr>,
}

fn ipv4(s: &str) -> Option<Ipv4Addr> {
    s.trim().parse().ok()
}

/// The checks an agent makes before it changes its network, with the
/// documented code of the first that fails. The server runs the same ones
/// before it sends update_ip, so an operator's form and the terminal agree.
pub fn validate_static(
    ip: &str,
    mask: &str,
    gateway: &str,
    dns1: &str,
    dns2: &str,
) -> Result<StaticAddress, (ErrorCode, String)> {
    let prefix = prefix_len(mask).filter(|p| *p <= 30).ok_or_else(|| {
        (
            ErrorCode::TerminalMaskError,
            format!("mask {mask:?} is not a contiguous /1–/30 mask"),
        )
    })?;
    let address = ipv4(ip)
        .filter(|a| is_host_address(*a, prefix))
        .ok_or_else(|| {
            (
                ErrorCode::MessageError,
                format!("ip {ip:?} is not a host address in a /{prefix}"),
            )
        })?;
    let gw = ipv4(gateway)
        .filter(|g| {
            is_host_address(*g, prefix) && same_subnet(*g, address, prefix) && *g != address
        })
        .ok_or_else(|| {
            (
                ErrorCode::TerminalGatewayError,
                format!("gateway {gateway:?} is not another host of {address}/{prefix}"),
            )
        })?;
    let resolver = |s: &str| ipv4(s).filter(|d| !d.is_unspecified() && !d.is_multicast());
    // An empty dns1 is taken, as the vendor's server takes it (the address
    // then resolves through dns2, or through nothing the terminal sets).
    let mut dns = Vec::new();
    if !dns1.trim().is_empty() {
        dns.push(
            resolver(dns1)
                .ok_or_else(|| (ErrorCode::TerminalDns1Error, format!("dns1 {dns1:?}")))?,
        );
    }
    if !dns2.trim().is_empty() {
        dns.push(
            resolver(dns2)
                .ok_or_else(|| (ErrorCode::TerminalDns1Error, format!("dns2 {dns2:?}")))?,
        );
    }
    Ok(StaticAddress {
        address,
        prefix_len: prefix,
        gateway: gw,
        dns,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_addresses() {
        let ok = validate_static(
            "172.16.1.20",
            "255.255.255.0",
            "172.16.1.254",
            "8.8.8.8",
            "",
        )
        .expect("valid");
        assert_eq!(ok.prefix_len, 24);
        assert_eq!(ok.dns.len(), 1);
        let code = |r: Result<StaticAddress, (ErrorCode, String)>| r.err().map(|e| e.0);
        assert_eq!(
            code(validate_static(
                "172.16.1.20",
                "255.0.255.0",
                "172.16.1.254",
                "8.8.8.8",
                ""
            )),
            Some(ErrorCode::TerminalMaskError)
        );
        assert_eq!(
            code(validate_static(
                "172.16.1.0",
                "255.255.255.0",
                "172.16.1.254",
                "8.8.8.8",
                ""
            )),
            Some(ErrorCode::MessageError)
        );
        assert_eq!(
            code(validate_static(
                "172.16.1.20",
                "255.255.255.0",
                "172.16.2.254",
                "8.8.8.8",
                ""
            )),
            Some(ErrorCode::TerminalGatewayError)
        );
        assert_eq!(
            code(validate_static(
                "172.16.1.20",
                "255.255.255.0",
                "172.16.1.254",
                "x",
                ""
            )),
            Some(ErrorCode::TerminalDns1Error)
        );
        assert_eq!(
            code(validate_static(
                "172.16.1.20",
                "255.255.255.0",
                "172.16.1.254",
                "8.8.8.8",
                "224.0.0.1"
            )),
            Some(ErrorCode::TerminalDns1Error)
        );
        // Issue 39.10: an empty dns1 is taken, as D takes it.
        let no_dns = validate_static("172.16.1.20", "255.255.255.0", "172.16.1.254", "", "")
            .expect("an empty dns1");
        assert!(no_dns.dns.is_empty());
    }

    #[test]
    fn masks() {
        assert_eq!(prefix_len("255.255.255.0"), Some(24));
        assert_eq!(prefix_len("255.255.255.255"), Some(32));
        assert_eq!(prefix_len("255.0.255.0"), None);
        assert_eq!(prefix_len("0.0.0.0"), None);
        assert_eq!(prefix_len("255.255.255.1"), None);
        assert_eq!(prefix_len("garbage"), None);
    }

    #[test]
    fn hosts_and_subnets() {
        let ip = |s: &str| s.parse::<Ipv4Addr>().expect("ip");
        assert!(same_subnet(ip("172.16.1.20"), ip("172.16.1.254"), 24));
        assert!(!same_subnet(ip("172.16.1.20"), ip("172.16.2.254"), 24));
        assert!(is_host_address(ip("172.16.1.20"), 24));
        assert!(!is_host_address(ip("172.16.1.0"), 24));
        assert!(!is_host_address(ip("172.16.1.255"), 24));
        assert!(!is_host_address(ip("224.0.0.1"), 24));
    }
}
