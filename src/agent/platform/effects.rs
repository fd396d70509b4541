//! The one trait for effects that could take the machine down or cut it
//! off, and the values those effects take.

use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BootTarget {
    /// One-shot network boot (1014 pxe_start).
    Pxe,
    /// One-shot boot into the maintenance entry of `boot/` (1006, 1019).
    Maintenance,
}

/// Static IPv4 settings of one interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkConfig {
    pub interface: String,
    pub address: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
}

#[derive(Debug, thiserror::Error)]
pub enum PlatformError {
    #[error("{what} failed: {detail}")]
    Failed { what: &'static str, detail: String },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl PlatformError {
    pub fn failed(what: &'static str, detail: impl Into<String>) -> Self {
        PlatformError::Failed {
            what,
            detail: detail.into(),
        }
    }
}

pub type PlatformResult = Result<(), PlatformError>;

/// What a NIC can do about wake-on-LAN. A NIC without it (a veth, many USB
/// adapters) is a fact to report, not an error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WakeSupport {
    pub supported: bool,
    /// Armed, or why not.
    pub detail: String,
}

pub trait Platform: Send + Sync {
    fn power_off(&self) -> PlatformResult;
    fn reboot(&self) -> PlatformResult;
    fn set_next_boot(&self, target: BootTarget) -> PlatformResult;
    fn set_hostname(&self, name: &str) -> PlatformResult;
    fn apply_network(&self, net: &NetworkConfig) -> PlatformResult;
    /// Puts `interface` back on DHCP (the terminal's screen).
    fn apply_dhcp(&self, interface: &str) -> PlatformResult;
    /// Enables magic-packet wake on `interface` (before a power-off).
    fn arm_wake_on_lan(&self, interface: &str) -> Result<WakeSupport, PlatformError>;
    /// Broadcasts the magic packet for `mac` to `broadcast`, from `source`.
    fn send_wake(&self, mac: [u8; 6], broadcast: Ipv4Addr, source: Ipv4Addr) -> PlatformResult;
}
