//! The real effects on a Linux terminal.

use std::path::Path;
use std::process::Command;

use super::effects::{
    BootTarget, NetworkConfig, Platform, PlatformError, PlatformResult, WakeSupport,
};
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

/// Wake-on-LAN through the ethtool ioctl (`SIOCETHTOOL`), what `ethtool
/// -s IF wol g` does, without needing the ethtool program on the image.
mod ethtool {
    use nix::libc;
    use std::os::fd::AsRawFd;

    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    const ETHTOOL_GWOL: u32 = 0x05;
    const ETHTOOL_SWOL: u32 = 0x06;
    pub const WAKE_MAGIC: u32 = 1 << 5;

    /// `struct ethtool_wolinfo`.
    #[repr(C)]
    #[derive(Default, Clone, Copy)]
    pub struct WolInfo {
        cmd: u32,
        pub supported: u32,
        pub wolopts: u32,
        sopass: [u8; 6],
    }

    /// `struct ifreq` with its union as `ifr_data`, padded to its size.
    #[repr(C)]
    struct IfReq {
        name: [libc::c_char; libc::IFNAMSIZ],
        data: *mut libc::c_void,
        _pad: [u8; 16],
    }

    fn call(interface: &str, info: &mut WolInfo) -> std::io::Result<()> {
        let bytes = interface.as_bytes();
        // Linux interface names: 1 to 15 bytes, no '/', no whitespace.
        if bytes.is_empty()
            || bytes.len() >= libc::IFNAMSIZ
            || bytes
                .iter()
                .any(|b| *b == b'/' || *b == 0 || b.is_ascii_whitespace())
        {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{interface:?} is no interface name"),
            ));
        }
        use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
        let sock = socket(
            AddressFamily::Inet,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC,
            None,
        )?;
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            data: info as *mut WolInfo as *mut libc::c_void,
            _pad: [0; 16],
        };
        for (d, s) in req.name.iter_mut().zip(bytes) {
            *d = *s as libc::c_char;
        }
        // SAFETY: `req` is a valid ifreq whose data points at a live
        // ethtool_wolinfo for the whole call; the kernel reads the name
        // and reads or writes only that struct.
        let r = unsafe { libc::ioctl(sock.as_raw_fd(), SIOCETHTOOL as _, &mut req) };
        if r < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    pub fn get(interface: &str) -> std::io::Result<WolInfo> {
        let mut info = WolInfo {
            cmd: ETHTOOL_GWOL,
            ..Default::default()
        };
        call(interface, &mut info)?;
        Ok(info)
    }

    pub fn set(interface: &str, wolopts: u32) -> std::io::Result<()> {
        let mut info = WolInfo {
            cmd: ETHTOOL_SWOL,
            wolopts,
            ..Default::default()
        };
        call(interface, &mut info)
    }
}

/// What `interface` can do about wake-on-LAN, read without changing it.
pub fn wake_support(interface: &str) -> WakeSupport {
    match ethtool::get(interface) {
        Ok(info) if info.supported & ethtool::WAKE_MAGIC == 0 => WakeSupport {
            supported: false,
            detail: "the NIC does not wake on a magic packet".into(),
        },
        Ok(info) => WakeSupport {
            supported: true,
            detail: if info.wolopts & ethtool::WAKE_MAGIC != 0 {
                "magic-packet wake armed".into()
            } else {
                "magic-packet wake supported, not armed".into()
            },
        },
        Err(e) if e.raw_os_error() == Some(nix::libc::EOPNOTSUPP) => WakeSupport {
            supported: false,
            detail: format!("the NIC has no wake-on-LAN (ethtool: {e})"),
        },
        Err(e) => WakeSupport {
            supported: false,
            detail: format!("cannot read wake-on-LAN of {interface}: {e}"),
        },
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

    /// The networkd unit for DHCP replaces the static one; networkd then
    /// takes the interface over (dhclient where networkd does not run).
    fn apply_dhcp(&self, interface: &str) -> PlatformResult {
        let unit_dir = self.cfg.etc_dir.join("systemd").join("network");
        std::fs::create_dir_all(&unit_dir)?;
        fsutil::atomic_write(
            &unit_dir.join(format!("10-voi-{interface}.network")),
            format!(
                "# Written by voi-agent (terminal screen); changes are overwritten.\n[Match]\nName={interface}\n\n[Network]\nDHCP=ipv4\n"
            )
            .as_bytes(),
        )?;
        run(
            "ip",
            &["addr", "flush", "dev", interface, "scope", "global"],
        )?;
        run("networkctl", &["reload"])
            .and_then(|_| run("networkctl", &["reconfigure", interface]))
            .or_else(|_| run("dhclient", &[interface]))
    }

    fn arm_wake_on_lan(&self, interface: &str) -> Result<WakeSupport, PlatformError> {
        let support = wake_support(interface);
        if !support.supported {
            return Ok(support);
        }
        let current = ethtool::get(interface)
            .map_err(|e| PlatformError::failed("ethtool get wol", e.to_string()))?;
        if current.wolopts & ethtool::WAKE_MAGIC == 0 {
            ethtool::set(interface, current.wolopts | ethtool::WAKE_MAGIC)
                .map_err(|e| PlatformError::failed("ethtool set wol", e.to_string()))?;
        }
        Ok(WakeSupport {
            supported: true,
            detail: "magic-packet wake armed".into(),
        })
    }

    fn send_wake(
        &self,
        mac: [u8; 6],
        broadcast: std::net::Ipv4Addr,
        source: std::net::Ipv4Addr,
    ) -> PlatformResult {
        crate::wake_on_lan::send(mac, broadcast, Some(source))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_has_no_wake_on_lan_and_that_is_no_error() {
        let s = wake_support("lo");
        assert!(!s.supported, "{s:?}");
        assert!(s.detail.contains("wake-on-LAN"), "{s:?}");
        let bad = wake_support("../../etc");
        assert!(!bad.supported);
        assert!(bad.detail.contains("no interface name"), "{bad:?}");
    }

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
