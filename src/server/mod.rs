//! `voi-server`: the reference management server. It speaks the terminal
//! protocol on TCP 50007, keeps state in an embedded store, and offers an
//! operator HTTP API on loopback.

pub mod admin_password;
pub mod admission;
pub mod api;
pub mod api_schema;
pub mod cli;
pub mod client;
mod config;
mod conn;
mod conn_shares;
mod conn_state;
mod console;
pub mod ctl_tables;
mod desktop_state;
pub mod generation;
mod handlers;
pub mod http_serve;
pub mod images;
pub mod layer_versions;
pub mod library_check;
pub mod limits;
pub mod metrics;
pub mod order;
pub mod registry;
pub mod scrape;
mod service;
mod startup;
pub mod store;
pub mod tokens;
pub mod tracker;
pub mod upgrades;
pub mod wake;

pub use crate::protocol::md5_hex;
pub use config::{ServerConfig, WakeConfig};
pub use service::{announce_url, env_error, PushError, Server};
pub use startup::ServerHandle;
