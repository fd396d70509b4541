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
    /// The MAC its client certificate names, under mutual TLS; a login as
    /// any other MAC is refused.
    pub cert_mac: Option<String>,
    /// Whether the operator has let it in (`admission.rs`), from login on.
    pub standing: crate::server::admission::Admission,
    /// Held until login: one of `[limits] max_unauthenticated`, shared
    /// fairly between addresses.
    pub unauthenticated: Option<crate::server::conn_shares::Share>,
}
