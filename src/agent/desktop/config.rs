//! `[desktop]` in agent.toml: how a desktop group boots as a QEMU guest.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DesktopConfig {
    /// The QEMU binary; default `qemu-system-x86_64` (`qemu-system-aarch64`
    /// on aarch64 terminals).
    #[serde(default)]
    pub qemu: Option<PathBuf>,
    /// "auto" (KVM when /dev/kvm opens and KVM runs the guest, else TCG),
    /// "kvm" or "tcg".
    #[serde(default = "auto")]
    pub accel: String,
    /// The KVM device "auto" probes (opened read-write) before trying KVM.
    #[serde(default = "kvm_device")]
    pub kvm_device: PathBuf,
    /// "bios" (SeaBIOS) or "uefi" (Debian's OVMF / AAVMF).
    #[serde(default = "bios")]
    pub firmware: String,
    /// The UEFI code image; default OVMF's (AAVMF's on aarch64).
    #[serde(default)]
    pub uefi_code: Option<PathBuf>,
    /// "auto" (SATA/AHCI for Windows groups, os_sys_type 1–3, which boot
    /// without virtio drivers; virtio for the rest), "virtio" or "sata".
    #[serde(default = "auto")]
    pub disk_bus: String,
    /// 0: every core but one, which the agent keeps.
    #[serde(default)]
    pub vcpus: u32,
    /// 0: the machine's RAM minus `memory_reserve_mib`.
    #[serde(default)]
    pub memory_mib: u64,
    #[serde(default = "reserve")]
    pub memory_reserve_mib: u64,
    /// "user" (NAT), "none", or "bridge:<name>" (the desktop gets its own
    /// address on the classroom LAN through qemu-bridge-helper).
    #[serde(default = "user")]
    pub network: String,
    /// "fullscreen" (GTK, full screen on the terminal's monitor), "window"
    /// or "none".
    #[serde(default = "fullscreen")]
    pub display: String,
    /// The operator's view: "local" (a VNC server on a unix socket in the
    /// data dir), "off", or "host:display" to put it on the network.
    #[serde(default = "local")]
    pub vnc: String,
    /// USB interface classes passed through, by name: "hid", "storage",
    /// "printer", "audio", "video", "smartcard"; empty: none (off).
    #[serde(default)]
    pub usb_classes: Vec<String>,
    /// Seconds a guest has to power off after ACPI powerdown before it is
    /// stopped hard.
    #[serde(default = "stop_timeout")]
    pub stop_timeout_secs: u64,
    /// A start that fails (QEMU exits, the guest resets or panics) within
    /// this many seconds counts as a failed boot.
    #[serde(default = "healthy")]
    pub healthy_secs: u64,
    /// Failed boots in a row before the previous level is booted instead.
    #[serde(default = "failures")]
    pub max_failed_boots: u32,
    /// Boot the default desktop by itself at start (as 1005
    /// mode.auto_desktop = 1 does), after `countdown_secs`.
    #[serde(default)]
    pub auto_boot: bool,
    #[serde(default = "countdown")]
    pub countdown_secs: u64,
    /// Run QEMU as this user (`-runas`) when the agent is root; a member
    /// of `kvm` is enough for KVM.
    #[serde(default)]
    pub run_as: Option<String>,
}

fn auto() -> String {
    "auto".into()
}
fn kvm_device() -> PathBuf {
    PathBuf::from("/dev/kvm")
}
fn bios() -> String {
    "bios".into()
}
fn user() -> String {
    "user".into()
}
fn fullscreen() -> String {
    "fullscreen".into()
}
fn local() -> String {
    "local".into()
}
fn reserve() -> u64 {
    512
}
fn stop_timeout() -> u64 {
    60
}
fn healthy() -> u64 {
    60
}
fn failures() -> u32 {
    2
}
fn countdown() -> u64 {
    5
}

impl Default for DesktopConfig {
    fn default() -> Self {
        toml::from_str("").unwrap_or_else(|_| unreachable!("all fields have defaults"))
    }
}

impl DesktopConfig {
    pub fn validate(&self) -> Result<(), String> {
        let one_of = |key: &str, v: &str, allowed: &[&str]| {
            if allowed.contains(&v) {
                Ok(())
            } else {
                Err(format!("[desktop] {key} = {v:?}: one of {allowed:?}"))
            }
        };
        one_of("accel", &self.accel, &["auto", "kvm", "tcg"])?;
        one_of("firmware", &self.firmware, &["bios", "uefi"])?;
        one_of("disk_bus", &self.disk_bus, &["auto", "virtio", "sata"])?;
        one_of("display", &self.display, &["fullscreen", "window", "none"])?;
        if !(self.network == "user" || self.network == "none") {
            let br = self.network.strip_prefix("bridge:").unwrap_or_default();
            if br.is_empty()
                || br.len() > 15
                || !br
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(format!(
                    "[desktop] network = {:?}: \"user\", \"none\" or \"bridge:<interface>\"",
                    self.network
                ));
            }
        }
        for c in &self.usb_classes {
            if usb_class_code(c).is_none() {
                return Err(format!("[desktop] usb_classes: unknown class {c:?}"));
            }
        }
        if self.healthy_secs == 0 || self.stop_timeout_secs == 0 {
            return Err("[desktop] healthy_secs and stop_timeout_secs must be at least 1".into());
        }
        Ok(())
    }
}

/// `usb_classes` names to USB interface class codes.
pub fn usb_class_code(name: &str) -> Option<u8> {
    Some(match name {
        "audio" => 0x01,
        "hid" => 0x03,
        "printer" => 0x07,
        "storage" => 0x08,
        "smartcard" => 0x0b,
        "video" => 0x0e,
        _ => return None,
    })
}
