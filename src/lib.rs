//! voi-agent: the terminal agent and reference server of the VOI protocol.
//!
//! The tree is layered; `tests/layers.rs` enforces it:
//!
//! * `agent/`  the terminal program (`voi-agent`);
//! * `server/` the reference management server (`voi-server`);
//! * everything else is shared by both and imports neither: the wire
//!   protocol, the qcow2 disk chains, the BitTorrent engine, TLS, file
//!   safety, logging;
//! * `demo` runs one of each in a process and is used only by `voi-server demo`.

// Shared by both programs.
pub mod bt;
pub mod cli_support;
pub mod crashpoint;
pub mod disk;
pub mod fsutil;
pub mod ipv4;
pub mod offline_admin;
pub mod protocol;
pub mod sdnotify;
pub mod tls;
pub mod upgrade_package;
pub mod wake_on_lan;

// The two programs.
pub mod agent;
pub mod server;

// Both programs in one process.
pub mod demo;
