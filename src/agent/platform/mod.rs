//! Every effect that could take down or cut off the machine the agent runs
//! on sits behind `Platform`. Command logic calls the trait and never asks
//! whether it is being tested; configuration picks the implementation per
//! effect (`[platform]` in the agent config).

mod effects;
mod linux;
mod recording;

pub use effects::{
    BootTarget, NetworkConfig, Platform, PlatformError, PlatformResult, WakeSupport,
};
pub use linux::{wake_support, LinuxPlatform};
pub use recording::{JournalEntry, RecordingPlatform};

use std::sync::Arc;

use crate::agent::config::{AgentConfig, EffectMode};

/// Routes each effect to the implementation the config names.
pub struct SelectedPlatform {
    linux: LinuxPlatform,
    recording: RecordingPlatform,
    power: EffectMode,
    boot: EffectMode,
    hostname: EffectMode,
    network: EffectMode,
    wake: EffectMode,
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
            wake: p.wake,
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
    fn apply_dhcp(&self, interface: &str) -> PlatformResult {
        self.pick(self.network).apply_dhcp(interface)
    }
    fn arm_wake_on_lan(&self, interface: &str) -> Result<WakeSupport, PlatformError> {
        self.pick(self.wake).arm_wake_on_lan(interface)
    }
    fn send_wake(
        &self,
        mac: [u8; 6],
        broadcast: std::net::Ipv4Addr,
        source: std::net::Ipv4Addr,
    ) -> PlatformResult {
        self.pick(self.wake).send_wake(mac, broadcast, source)
    }
}
