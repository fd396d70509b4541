//! Records effects instead of performing them: one JSON line per call in a
//! journal file, fsynced, so another process (a test, an operator) can read
//! exactly what the agent would have done.

use serde::{Deserialize, Serialize};
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::effects::{
    BootTarget, NetworkConfig, Platform, PlatformError, PlatformResult, WakeSupport,
};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "effect", rename_all = "snake_case")]
pub enum JournalEntry {
    PowerOff,
    Reboot,
    SetNextBoot {
        target: BootTarget,
    },
    SetHostname {
        name: String,
    },
    ApplyNetwork {
        net: NetworkConfig,
    },
    ApplyDhcp {
        interface: String,
    },
    ArmWakeOnLan {
        interface: String,
    },
    SendWake {
        mac: String,
        broadcast: std::net::Ipv4Addr,
    },
}

pub struct RecordingPlatform {
    path: PathBuf,
    lock: Mutex<()>,
}

impl RecordingPlatform {
    pub fn new(path: PathBuf) -> Self {
        RecordingPlatform {
            path,
            lock: Mutex::new(()),
        }
    }

    fn record(&self, entry: JournalEntry) -> PlatformResult {
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut line = serde_json::to_vec(&entry).map_err(std::io::Error::other)?;
        line.push(b'\n');
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        f.write_all(&line)?;
        f.sync_data()?;
        crate::crashpoint::hit("journal effect");
        log::info!(
            "recorded platform effect: {}",
            String::from_utf8_lossy(&line).trim_end()
        );
        Ok(())
    }

    /// Reads a journal; lines that do not parse are skipped.
    pub fn read_journal(path: &Path) -> Vec<JournalEntry> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

impl Platform for RecordingPlatform {
    fn power_off(&self) -> PlatformResult {
        self.record(JournalEntry::PowerOff)
    }
    fn reboot(&self) -> PlatformResult {
        self.record(JournalEntry::Reboot)
    }
    fn set_next_boot(&self, target: BootTarget) -> PlatformResult {
        self.record(JournalEntry::SetNextBoot { target })
    }
    fn set_hostname(&self, name: &str) -> PlatformResult {
        self.record(JournalEntry::SetHostname { name: name.into() })
    }
    fn apply_network(&self, net: &NetworkConfig) -> PlatformResult {
        self.record(JournalEntry::ApplyNetwork { net: net.clone() })
    }
    fn apply_dhcp(&self, interface: &str) -> PlatformResult {
        self.record(JournalEntry::ApplyDhcp {
            interface: interface.into(),
        })
    }
    /// Journals the arming; what it reports is the NIC's real support,
    /// read (never changed) through the same ethtool call.
    fn arm_wake_on_lan(&self, interface: &str) -> Result<WakeSupport, PlatformError> {
        self.record(JournalEntry::ArmWakeOnLan {
            interface: interface.into(),
        })?;
        Ok(super::linux::wake_support(interface))
    }
    fn send_wake(
        &self,
        mac: [u8; 6],
        broadcast: std::net::Ipv4Addr,
        _source: std::net::Ipv4Addr,
    ) -> PlatformResult {
        let mac = mac
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<Vec<_>>()
            .join(":");
        self.record(JournalEntry::SendWake { mac, broadcast })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_round_trip() {
        let d = tempfile::tempdir().expect("tmp");
        let p = d.path().join("j.jsonl");
        let r = RecordingPlatform::new(p.clone());
        r.reboot().expect("ok");
        r.set_next_boot(BootTarget::Pxe).expect("ok");
        r.set_hostname("PC-1").expect("ok");
        assert_eq!(
            RecordingPlatform::read_journal(&p),
            vec![
                JournalEntry::Reboot,
                JournalEntry::SetNextBoot {
                    target: BootTarget::Pxe
                },
                JournalEntry::SetHostname {
                    name: "PC-1".into()
                }
            ]
        );
    }
}
