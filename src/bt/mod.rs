//! BitTorrent distribution of disk layers: torrent creation and checking,
//! the engine wrapper shared by agent and server, and the agent's transfer
//! tasks. See `STATE.md` for the transfer state machine.
pub mod bencode;
pub mod engine;
pub mod manifest;
pub mod meta;
pub mod torrent;
