//! IPv4 address arithmetic shared by update_ip validation and the server.

use std::net::Ipv4Addr;

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

#[cfg(test)]
mod tests {
    use super::*;

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
