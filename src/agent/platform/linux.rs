//! The real effects on a Linux terminal.

use std::path::Path;
use std::process::Command;

use super::effects::{BootTarget, NetworkConfig, Platform, PlatformError, PlatformResult};
use crate::agent::config::PlatformConfig;
use crate::fsutil;

pub struct LinuxPlatform {
    cfg: PlatformConfig,
}

impl LinuxPlatform {
    pub fn new(cfg: PlatformConfig) -> Self {
        LinuxPlatform { cfg }
    }

    fn systemd_running() -> bool {
        Path::new("/run/systemd/system").is_dir()
    }

    fn power(&self, poweroff: bool) -> PlatformResult {
        nix::unistd::sync();
        if Self::systemd_running() {
            let verb = if poweroff { "poweroff" } else { "reboot" };
            if run("systemctl", &[verb]).is_ok() {
                return Ok(());
            }
            log::warn!("systemctl {verb} failed; falling back to reboot(2)");
        }
        use nix::sys::reboot::{reboot, RebootMode};
        let mode = if poweroff {
            RebootMode::RB_POWER_OFF
        } else {
            RebootMode::RB_AUTOBOOT
        };
        match reboot(mode) {
            Ok(never) => match never {},
            Err(e) => Err(PlatformError::failed("reboot(2)", e.to_string())),
        }
    }

    /// The EFI boot entry for `target`: configured, or for PXE the first
    /// entry whose label names a network boot.
    fn efi_entry(&self, target: BootTarget) -> Option<String> {
        match target {
            BootTarget::Maintenance => self.cfg.maintenance_boot_entry.clone(),
            BootTarget::Pxe => self.cfg.pxe_boot_entry.clone().or_else(|| {
                let out = Command::new("efibootmgr").output().ok()?;
                String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
                    let up = l.to_ascii_uppercase();
                    let is_net =
                        up.contains("PXE") || up.contains("NETWORK") || up.contains("IPV4");
                    let id = l.strip_prefix("Boot")?.get(..4)?;
                    (is_net && id.chars().all(|c| c.is_ascii_hexdigit())).then(|| id.to_string())
                })
            }),
        }
    }
}

fn run(prog: &str, args: &[&str]) -> PlatformResult {
    let out = Command::new(prog)
        .args(args)
        .output()
        .map_err(|e| PlatformError::failed("spawn", format!("{prog}: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(PlatformError::failed(
            "command",
            format!(
                "{prog} {}: {} {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ))
    }
}

/// The systemd-networkd unit that makes `net` survive a reboot.
pub fn networkd_unit(net: &NetworkConfig) -> String {
    let mut s = format!(
        "# Written by voi-agent (update_ip); changes are overwritten.\n[Match]\nName={}\n\n[Network]\nAddress={}/{}\n",
        net.interface, net.address, net.prefix_len
    );
    if let Some(gw) = net.gateway {
        s.push_str(&format!("Gateway={gw}\n"));
    }
    for d in &net.dns {
        s.push_str(&format!("DNS={d}\n"));
    }
    s
}

pub fn resolv_conf(net: &NetworkConfig) -> String {
    let mut s = String::from("# Written by voi-agent (update_ip)\n");
    for d in &net.dns {
        s.push_str(&format!("nameserver {d}\n"));
    }
    s
}

impl Platform for LinuxPlatform {
    fn power_off(&self) -> PlatformResult {
        self.power(true)
    }

    fn reboot(&self) -> PlatformResult {
        self.power(false)
    }

    fn set_next_boot(&self, target: BootTarget) -> PlatformResult {
        if Path::new("/sys/firmware/efi").is_dir() {
            if let Some(id) = self.efi_entry(target) {
                match run("efibootmgr", &["--bootnext", &id]) {
                    Ok(()) => return Ok(()),
                    Err(e) => {
                        log::warn!("efibootmgr --bootnext {id} failed ({e}); trying grub-reboot")
                    }
                }
            }
        }
        let entry = match target {
            BootTarget::Pxe => &self.cfg.grub_pxe_entry,
            BootTarget::Maintenance => &self.cfg.grub_maintenance_entry,
        };
        run("grub-reboot", &[entry]).or_else(|_| run("grub2-reboot", &[entry]))
    }

    fn set_hostname(&self, name: &str) -> PlatformResult {
        nix::unistd::sethostname(name)
            .map_err(|e| PlatformError::failed("sethostname", e.to_string()))?;
        fsutil::atomic_write(
            &self.cfg.etc_dir.join("hostname"),
            format!("{name}\n").as_bytes(),
        )?;
        Ok(())
    }

    fn apply_network(&self, net: &NetworkConfig) -> PlatformResult {
        let dev = net.interface.as_str();
        let cidr = format!("{}/{}", net.address, net.prefix_len);
        run("ip", &["addr", "flush", "dev", dev, "scope", "global"])?;
        run("ip", &["addr", "add", &cidr, "dev", dev])?;
        run("ip", &["link", "set", dev, "up"])?;
        if let Some(gw) = net.gateway {
            run(
                "ip",
                &[
                    "route",
                    "replace",
                    "default",
                    "via",
                    &gw.to_string(),
                    "dev",
                    dev,
                ],
            )?;
        }
        let unit_dir = self.cfg.etc_dir.join("systemd").join("network");
        std::fs::create_dir_all(&unit_dir)?;
        fsutil::atomic_write(
            &unit_dir.join(format!("10-voi-{dev}.network")),
            networkd_unit(net).as_bytes(),
        )?;
        if !net.dns.is_empty() {
            fsutil::atomic_write(
                &self.cfg.etc_dir.join("resolv.conf"),
                resolv_conf(net).as_bytes(),
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_text() {
        let net = NetworkConfig {
            interface: "eth0".into(),
            address: "172.16.1.20".parse().expect("ip"),
            prefix_len: 24,
            gateway: Some("172.16.1.254".parse().expect("ip")),
            dns: vec!["8.8.8.8".parse().expect("ip")],
        };
        let u = networkd_unit(&net);
        assert!(u.contains("Name=eth0\n"));
        assert!(u.contains("Address=172.16.1.20/24\n"));
        assert!(u.contains("Gateway=172.16.1.254\n"));
        assert!(u.contains("DNS=8.8.8.8\n"));
        assert_eq!(
            resolv_conf(&net),
            "# Written by voi-agent (update_ip)\nnameserver 8.8.8.8\n"
        );
    }
}
