//! Every effect that could take down or cut off the machine the agent runs
//! on sits behind `Platform`. Command logic calls the trait and never asks
//! whether it is being tested; configuration picks the implementation per
//! effect (`[platform]` in the agent config).

mod linux;
mod recording;

pub use linux::LinuxPlatform;
pub use recording::{JournalEntry, RecordingPlatform};

use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;
use std::sync::Arc;

use crate::agent::config::{AgentConfig, EffectMode};

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

pub trait Platform: Send + Sync {
    fn power_off(&self) -> PlatformResult;
    fn reboot(&self) -> PlatformResult;
    fn set_next_boot(&self, target: BootTarget) -> PlatformResult;
    fn set_hostname(&self, name: &str) -> PlatformResult;
    fn apply_network(&self, net: &NetworkConfig) -> PlatformResult;
}

/// Routes each effect to the implementation the config names.
pub struct SelectedPlatform {
    linux: LinuxPlatform,
    recording: RecordingPlatform,
    power: EffectMode,
    boot: EffectMode,
    hostname: EffectMode,
    network: EffectMode,
}

impl SelectedPlatform {
    pub fn from_config(cfg: &AgentConfig) -> Arc<dyn Platform> {
        let p = &cfg.platform;
        Arc::new(SelectedPlatform {
            linux: LinuxPlatform::new(p.clone()),
            recording: RecordingPlatform::new(cfg.journal_path()),
            power: p.power,
            boot: p.boot,
            hostname: p.hostname,
            network: p.network,
        })
    }

    fn pick(&self, mode: EffectMode) -> &dyn Platform {
        match mode {
            EffectMode::Linux => &self.linux,
            EffectMode::Recording => &self.recording,
        }
    }
}

impl Platform for SelectedPlatform {
    fn power_off(&self) -> PlatformResult {
        self.pick(self.power).power_off()
    }
    fn reboot(&self) -> PlatformResult {
        self.pick(self.power).reboot()
    }
    fn set_next_boot(&self, target: BootTarget) -> PlatformResult {
        self.pick(self.boot).set_next_boot(target)
    }
    fn set_hostname(&self, name: &str) -> PlatformResult {
        self.pick(self.hostname).set_hostname(name)
    }
    fn apply_network(&self, net: &NetworkConfig) -> PlatformResult {
        self.pick(self.network).apply_network(net)
    }
}
