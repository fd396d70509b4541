//! BitTorrent for disk layers, shared by agent and server: torrent creation
//! and checking, bencode, the layer manifest, and the engine wrapper. The
//! agent's transfers built on it are in `agent/transfers/`.
pub mod bencode;
pub mod engine;
pub mod manifest;
pub mod meta;
pub mod torrent;
