//! voi-agent: the terminal agent and reference server of the VOI protocol.
pub mod agent;
pub mod cli;
pub mod commands;
pub mod config;
pub mod control;
pub mod demo;
pub mod desktops;
pub mod disk;
pub mod fsutil;
pub mod net;
pub mod netinfo;
pub mod perf;
pub mod platform;
pub mod protocol;
pub mod server;
pub mod session;
pub mod state;
