//! `voi-agent`, the terminal program.
//!
//! Layers, each using only those below it:
//!
//! * `cli`, `supervisor`: the process; connects and reconnects, starts
//!   everything else;
//! * `screen/`: the terminal's own full-screen menu (a separate process on
//!   the control socket);
//! * `control_socket`: the local `voi-agent ctl` interface;
//! * `commands/`: one file per server command (1000–1032), parse + apply,
//!   except those `docs/protocol.md` lists as refused (`unsupported.rs`)
//!   and 1016, which shares `upload_disk.rs` with 1020;
//! * `session/`: one logged-in session (login, startup requests, heartbeats);
//!   it hands command frames to a handler it is given;
//! * `transfers/`: layer downloads and uploads on the BitTorrent engine, and
//!   what the agent tells the server about them;
//! * `terminal`: the agent's shared state (identity, persisted state, platform,
//!   desktops, the current link);
//! * `power`: powering down armed for wake-on-LAN, and relaying a wake;
//! * `desktops`, `update_plan`, `state`, `config`, `platform/`, `interfaces`,
//!   `performance_report`: the parts `terminal` is made of.
pub mod cli;
pub mod commands;
pub mod config;
pub mod control_socket;
pub mod desktop;
pub mod desktops;
pub mod identity_report;
pub mod interfaces;
pub mod local_admin;
pub mod metrics;
pub mod performance_report;
pub mod platform;
pub mod power;
pub mod screen;
pub mod session;
pub mod state;
pub mod supervisor;
pub mod terminal;
pub mod transfers;
pub mod update_plan;
pub mod upgrade;
pub mod version;

pub use terminal::Agent;
