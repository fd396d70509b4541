//! Why a session ended, and whether the next one may start at once.

use super::connection::LinkEnd;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEnd {
    Link(LinkEnd),
    LoginRejected {
        code: i64,
        msg: String,
    },
    Startup(String),
    MissedHeartbeats(u32),
    /// A command asked for a new session (server moved, address changed).
    Reconnect(String),
    Shutdown,
}

impl SessionEnd {
    /// Whether the next connect may go out at once (no backoff).
    pub fn is_planned(&self) -> bool {
        matches!(self, SessionEnd::Reconnect(_))
    }
}
