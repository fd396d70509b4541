//! Wake-on-LAN, shared by the server (which wakes terminals) and the agent
//! (which arms its NIC, and relays a wake onto its own subnet): the magic
//! packet, subnet broadcasts, and sending one.
//!
//! A magic packet is 6 × `FF` then 16 × the target's MAC (102 bytes). It
//! goes over UDP to the discard (9) and echo (7) ports, the two that BIOSes
//! and NIC firmwares are known to listen on; the payload is what the NIC
//! matches, the port only has to get through.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};

/// The UDP ports a magic packet is sent to.
pub const PORTS: [u16; 2] = [9, 7];

pub const PACKET_LEN: usize = 102;

/// `AA:BB:CC:DD:EE:FF` or `aa-bb-cc-dd-ee-ff` → bytes. Anything else, an
/// all-zero or a multicast (group) address is no MAC one can wake.
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let parts: Vec<&str> = text.trim().split([':', '-']).collect();
    if parts.len() != 6 {
        return None;
    }
    let mut mac = [0u8; 6];
    for (byte, part) in mac.iter_mut().zip(parts) {
        if part.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    let unicast = mac[0] & 1 == 0 && mac != [0; 6];
    unicast.then_some(mac)
}

pub fn magic_packet(mac: [u8; 6]) -> [u8; PACKET_LEN] {
    let mut p = [0xFFu8; PACKET_LEN];
    for copy in p[6..].chunks_exact_mut(6) {
        copy.copy_from_slice(&mac);
    }
    p
}

/// Whether `payload` is a magic packet, and for which MAC (a SecureOn
/// password of 4 or 6 bytes after it is allowed, as NICs allow it).
pub fn magic_target(payload: &[u8]) -> Option<[u8; 6]> {
    if payload.len() < PACKET_LEN || payload[..6] != [0xFF; 6] {
        return None;
    }
    let mac: [u8; 6] = payload[6..12].try_into().ok()?;
    payload[6..PACKET_LEN]
        .chunks_exact(6)
        .all(|c| c == mac)
        .then_some(mac)
}

/// The directed broadcast address of `ip`'s subnet; none for /31 and /32,
/// which have no broadcast.
pub fn broadcast_of(ip: Ipv4Addr, prefix: u8) -> Option<Ipv4Addr> {
    if prefix > 30 {
        return None;
    }
    let mask = crate::ipv4::mask_of(prefix);
    Some(Ipv4Addr::from(u32::from(ip) | !mask))
}

/// One local subnet a magic packet can be broadcast on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalSubnet {
    pub interface: String,
    pub address: Ipv4Addr,
    pub prefix: u8,
    pub broadcast: Ipv4Addr,
}

impl LocalSubnet {
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        crate::ipv4::same_subnet(self.address, ip, self.prefix)
    }
}

/// This host's IPv4 subnets that have a broadcast address: interfaces that
/// are up, not loopback, not point-to-point.
pub fn local_subnets() -> std::io::Result<Vec<LocalSubnet>> {
    use nix::net::if_::InterfaceFlags as F;
    let mut out = Vec::new();
    for ifa in nix::ifaddrs::getifaddrs().map_err(std::io::Error::from)? {
        if !ifa.flags.contains(F::IFF_UP)
            || !ifa.flags.contains(F::IFF_BROADCAST)
            || ifa.flags.intersects(F::IFF_LOOPBACK | F::IFF_POINTOPOINT)
        {
            continue;
        }
        let (Some(addr), Some(mask)) = (
            ifa.address.as_ref().and_then(|a| a.as_sockaddr_in()),
            ifa.netmask.as_ref().and_then(|a| a.as_sockaddr_in()),
        ) else {
            continue;
        };
        let address = addr.ip();
        let prefix = u32::from(mask.ip()).count_ones() as u8;
        if let Some(broadcast) = broadcast_of(address, prefix) {
            out.push(LocalSubnet {
                interface: ifa.interface_name.clone(),
                address,
                prefix,
                broadcast,
            });
        }
    }
    Ok(out)
}

/// Sends the magic packet for `mac` to `dst` on every port of `PORTS`,
/// from `src` when given (so a subnet's broadcast leaves by the interface
/// that has that subnet).
pub fn send(mac: [u8; 6], dst: Ipv4Addr, src: Option<Ipv4Addr>) -> std::io::Result<()> {
    let sock = UdpSocket::bind(SocketAddrV4::new(src.unwrap_or(Ipv4Addr::UNSPECIFIED), 0))?;
    sock.set_broadcast(true)?;
    let packet = magic_packet(mac);
    for port in PORTS {
        sock.send_to(&packet, SocketAddrV4::new(dst, port))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packet_is_six_ff_then_sixteen_macs() {
        let mac = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
        let p = magic_packet(mac);
        assert_eq!(&p[..6], &[0xFF; 6]);
        for i in 0..16 {
            assert_eq!(&p[6 + i * 6..12 + i * 6], &mac);
        }
        assert_eq!(magic_target(&p), Some(mac));
        let mut bad = p;
        bad[50] ^= 1;
        assert_eq!(magic_target(&bad), None);
        assert_eq!(magic_target(&p[..101]), None);
    }

    #[test]
    fn macs_parse_strictly() {
        assert_eq!(
            parse_mac("52:54:00:12:34:56"),
            Some([0x52, 0x54, 0, 0x12, 0x34, 0x56])
        );
        assert_eq!(parse_mac("52-54-00-ab-cd-ef").map(|m| m[5]), Some(0xef));
        for bad in [
            "",
            "52:54:00:12:34",
            "52:54:00:12:34:5",
            "52:54:00:12:34:567",
            "zz:54:00:12:34:56",
            "00:00:00:00:00:00",
            "01:00:5e:00:00:01",
            "+1:54:00:12:34:56",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad}");
        }
    }

    #[test]
    fn broadcasts() {
        let ip: Ipv4Addr = "10.7.2.33".parse().expect("ip");
        assert_eq!(
            broadcast_of(ip, 24),
            Some("10.7.2.255".parse().expect("ip"))
        );
        assert_eq!(
            broadcast_of(ip, 16),
            Some("10.7.255.255".parse().expect("ip"))
        );
        assert_eq!(broadcast_of(ip, 31), None);
    }
}
