//! Each simulated terminal connects from its own loopback address, as each
//! real one has its own IP: the server keeps a per-address share of its
//! pre-login and HTTP caps (issue 38.5), so thousands of terminals on one
//! address would measure the share, not the server.

use tokio::net::TcpStream;

/// The `i`th terminal's address: 127.10.0.1, 127.10.0.2, … (never .0 or
/// .255 in the last octet).
pub fn terminal_address(i: usize) -> std::net::Ipv4Addr {
    let (hi, lo) = (i / 254, i % 254 + 1);
    std::net::Ipv4Addr::new(
        127,
        10 + ((hi >> 8) & 0x3f) as u8,
        (hi & 0xff) as u8,
        lo as u8,
    )
}

/// Connects to `addr` from the `i`th terminal's address.
pub async fn connect_as(i: usize, addr: &str) -> std::io::Result<TcpStream> {
    let to: std::net::SocketAddr = tokio::net::lookup_host(addr)
        .await?
        .next()
        .ok_or_else(|| std::io::Error::other(format!("{addr}: no address")))?;
    let sock = tokio::net::TcpSocket::new_v4()?;
    sock.bind(std::net::SocketAddr::new(terminal_address(i).into(), 0))?;
    sock.connect(to).await
}

#[cfg(test)]
mod tests {
    #[test]
    fn addresses_are_distinct_and_never_end_in_0_or_255() {
        let all: std::collections::HashSet<_> = (0..70_000).map(super::terminal_address).collect();
        assert_eq!(all.len(), 70_000);
        assert!(all
            .iter()
            .all(|a| a.octets()[3] != 0 && a.octets()[3] != 255));
    }
}
