//! voi-agent: the terminal agent and reference server of the VOI protocol.
pub mod protocol;
