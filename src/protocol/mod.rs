//! The VOI wire protocol, free of any transport: header, frame, codec,
//! service and result codes, and typed message bodies.

pub mod codec;
pub mod codes;
pub mod envelope;
pub mod flex;
pub mod frame;
pub mod header;
pub mod messages;
pub mod torrent_struct;

pub use codec::{FrameCodec, FrameError};
pub use codes::{ErrorCode, ServiceCode};
pub use envelope::Envelope;
pub use flex::{BatchNo, Sectors};
pub use frame::Frame;
pub use header::{ClientType, DataType, Direction, Header, HEADER_LEN};

/// The terminal control port (notes §1.1).
pub const DEFAULT_PORT: u16 = 50007;
/// The management server's BitTorrent tracker port (the original's too).
pub const DEFAULT_TRACKER_PORT: u16 = 50021;

/// MAC in the form the protocol uses everywhere: upper-case, colon-separated.
pub fn normalize_mac(mac: &str) -> Option<String> {
    let parts: Vec<&str> = mac.trim().split([':', '-']).collect();
    if parts.len() != 6 {
        return None;
    }
    let mut out = String::with_capacity(17);
    for (i, p) in parts.iter().enumerate() {
        if p.len() != 2 || !p.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        if i > 0 {
            out.push(':');
        }
        out.push_str(&p.to_ascii_uppercase());
    }
    Some(out)
}

/// Token as the original server issues it: md5 of "ip:port" as lower hex.
pub fn token_for(peer: &std::net::SocketAddr) -> String {
    md5_hex(format!("{}:{}", peer.ip(), peer.port()).as_bytes())
}

/// md5 as 32 lower-case hex characters (tokens, password checks, command
/// digests).
pub fn md5_hex(b: &[u8]) -> String {
    use md5::{Digest, Md5};
    Md5::digest(b).iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use md5::Digest;

    #[test]
    fn mac_forms() {
        assert_eq!(
            normalize_mac("aa:50:cc:c0:dd:08").as_deref(),
            Some("AA:50:CC:C0:DD:08")
        );
        assert_eq!(
            normalize_mac("AA-50-CC-C0-DD-08").as_deref(),
            Some("AA:50:CC:C0:DD:08")
        );
        assert!(normalize_mac("AA:50:CC:C0:DD").is_none());
        assert!(normalize_mac("AA:50:CC:C0:DD:0G").is_none());
        assert!(normalize_mac("../../etc").is_none());
    }

    #[test]
    fn token_is_md5_of_ip_port() {
        let peer: std::net::SocketAddr = "127.0.0.1:5000".parse().expect("addr");
        // md5("127.0.0.1:5000")
        let t = token_for(&peer);
        assert_eq!(t.len(), 32);
        assert_eq!(t, format!("{:x}", md5::Md5::digest(b"127.0.0.1:5000")));
    }
}
