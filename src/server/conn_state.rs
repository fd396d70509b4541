//! What one terminal connection knows about its peer; the connection loop
//! keeps it and the request handlers read it.

use std::net::SocketAddr;

/// What this connection knows about its peer.
pub struct ConnState {
    pub id: u64,
    pub peer: SocketAddr,
    pub local: Option<SocketAddr>,
    pub token: String,
    pub mac: Option<String>,
}
