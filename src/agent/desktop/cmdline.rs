//! The QEMU command line for one boot: pure, so every choice (accelerator,
//! firmware, bus, disks, network, display, USB) is tested without QEMU.

use std::path::PathBuf;

use super::config::DesktopConfig;

/// One disk as the guest sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct GuestDisk {
    pub path: PathBuf,
    /// A shared disk the guest must not write.
    pub read_only: bool,
}

/// Everything that differs from one boot to the next.
#[derive(Debug, Clone, PartialEq)]
pub struct Launch {
    pub name: String,
    /// The system disk's writable top (the user layer) first, then data,
    /// share and the local data disk.
    pub disks: Vec<GuestDisk>,
    /// The group's os_sys_type (1–3 are Windows).
    pub os_sys_type: i64,
    pub accel: &'static str,
    pub vcpus: u32,
    pub memory_mib: u64,
    /// QMP for events (the supervisor reads it) and for commands
    /// (powerdown, screendump): a QMP socket takes one client at a time.
    pub qmp: PathBuf,
    pub qmp_commands: PathBuf,
    pub serial: PathBuf,
    pub vnc_socket: PathBuf,
    /// (bus, address) of USB devices the policy lets through.
    pub usb: Vec<(u32, u32)>,
}

pub use super::config::usb_class_code;

pub fn uses_sata(cfg: &DesktopConfig, os_sys_type: i64) -> bool {
    match cfg.disk_bus.as_str() {
        "sata" => true,
        "virtio" => false,
        // Windows images from the vendor's library have no virtio driver.
        _ => (1..=3).contains(&os_sys_type),
    }
}

pub fn default_qemu() -> PathBuf {
    if cfg!(target_arch = "aarch64") {
        PathBuf::from("qemu-system-aarch64")
    } else {
        PathBuf::from("qemu-system-x86_64")
    }
}

fn default_uefi_code() -> PathBuf {
    if cfg!(target_arch = "aarch64") {
        PathBuf::from("/usr/share/AAVMF/AAVMF_CODE.fd")
    } else {
        PathBuf::from("/usr/share/OVMF/OVMF_CODE.fd")
    }
}

/// A path as one QEMU option value: commas are doubled, as QEMU wants.
fn opt_path(p: &std::path::Path) -> String {
    p.display().to_string().replace(',', ",,")
}

pub fn args(cfg: &DesktopConfig, l: &Launch) -> Vec<String> {
    let mut a: Vec<String> = Vec::new();
    let mut push = |items: &[&str]| a.extend(items.iter().map(|s| s.to_string()));
    push(&["-name", &l.name, "-nodefaults", "-no-user-config"]);
    if cfg!(target_arch = "aarch64") {
        push(&["-machine", "virt"]);
    } else {
        push(&["-machine", "q35"]);
    }
    push(&["-accel", l.accel]);
    if l.accel == "kvm" {
        push(&["-cpu", "host"]);
    }
    push(&[
        "-smp",
        &l.vcpus.max(1).to_string(),
        "-m",
        &l.memory_mib.max(128).to_string(),
    ]);
    // A guest reset ends the process: the runtime decides whether it was a
    // reboot (boot again, restoring) or a failing guest (count it).
    push(&["-no-reboot", "-boot", "strict=on,reboot-timeout=1000"]);
    if cfg.firmware == "uefi" {
        let code = cfg.uefi_code.clone().unwrap_or_else(default_uefi_code);
        push(&[
            "-drive",
            &format!("if=pflash,format=raw,readonly=on,file={}", opt_path(&code)),
        ]);
    }
    let sata = uses_sata(cfg, l.os_sys_type);
    if sata {
        push(&["-device", "ahci,id=ahci"]);
    }
    for (i, d) in l.disks.iter().enumerate() {
        let ro = if d.read_only { ",read-only=on" } else { "" };
        push(&[
            "-blockdev",
            &format!(
                "driver=qcow2,node-name=disk{i},file.driver=file,file.filename={}{ro}",
                opt_path(&d.path)
            ),
        ]);
        let boot = if i == 0 { ",bootindex=0" } else { "" };
        if sata {
            push(&[
                "-device",
                &format!("ide-hd,drive=disk{i},bus=ahci.{i}{boot}"),
            ]);
        } else {
            push(&["-device", &format!("virtio-blk-pci,drive=disk{i}{boot}")]);
        }
    }
    match cfg.network.as_str() {
        "none" => {}
        "user" => push(&["-netdev", "user,id=net0", "-device", nic(sata)]),
        br => {
            let br = br.trim_start_matches("bridge:");
            push(&[
                "-netdev",
                &format!("bridge,id=net0,br={br}"),
                "-device",
                nic(sata),
            ]);
        }
    }
    push(&["-vga", "std"]);
    match cfg.display.as_str() {
        "none" => push(&["-display", "none"]),
        "window" => push(&["-display", "gtk"]),
        _ => push(&["-display", "gtk,full-screen=on"]),
    }
    match cfg.vnc.as_str() {
        "off" => {}
        "local" => push(&["-vnc", &format!("unix:{}", opt_path(&l.vnc_socket))]),
        addr => push(&["-vnc", addr]),
    }
    if !l.usb.is_empty() {
        push(&["-device", "qemu-xhci,id=xhci"]);
        for (bus, addr) in &l.usb {
            push(&[
                "-device",
                &format!("usb-host,bus=xhci.0,hostbus={bus},hostaddr={addr}"),
            ]);
        }
    }
    push(&[
        "-qmp",
        &format!("unix:{},server=on,wait=off", opt_path(&l.qmp)),
        "-qmp",
        &format!("unix:{},server=on,wait=off", opt_path(&l.qmp_commands)),
        "-serial",
        &format!("file:{}", opt_path(&l.serial)),
        // A crashing guest kernel tells QMP (GUEST_PANICKED).
        "-device",
        "pvpanic",
    ]);
    if let Some(user) = &cfg.run_as {
        push(&["-runas", user]);
    }
    a
}

fn nic(sata: bool) -> &'static str {
    // e1000 needs no driver in Windows; virtio-net does.
    if sata {
        "e1000,netdev=net0"
    } else {
        "virtio-net-pci,netdev=net0"
    }
}

/// The USB devices on this machine whose interface class the policy allows.
pub fn allowed_usb(cfg: &DesktopConfig) -> Vec<(u32, u32)> {
    let classes: Vec<u8> = cfg
        .usb_classes
        .iter()
        .filter_map(|c| usb_class_code(c))
        .collect();
    if classes.is_empty() {
        return Vec::new();
    }
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/sys/bus/usb/devices") else {
        return out;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        // Interfaces are "1-2:1.0"; their device is "1-2".
        let Some((dev, _)) = name.split_once(':') else {
            continue;
        };
        let class = std::fs::read_to_string(e.path().join("bInterfaceClass")).unwrap_or_default();
        let Ok(class) = u8::from_str_radix(class.trim(), 16) else {
            continue;
        };
        if !classes.contains(&class) {
            continue;
        }
        let base = std::path::Path::new("/sys/bus/usb/devices").join(dev);
        let read = |f: &str| {
            std::fs::read_to_string(base.join(f))
                .ok()
                .and_then(|s| s.trim().parse::<u32>().ok())
        };
        if let (Some(bus), Some(addr)) = (read("busnum"), read("devnum")) {
            if !out.contains(&(bus, addr)) {
                out.push((bus, addr));
            }
        }
    }
    out
}

/// vCPUs and memory from the config, or from the machine.
pub fn sizing(cfg: &DesktopConfig) -> (u32, u64) {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    let vcpus = if cfg.vcpus > 0 {
        cfg.vcpus
    } else {
        cores.saturating_sub(1).max(1)
    };
    let memory = if cfg.memory_mib > 0 {
        cfg.memory_mib
    } else {
        let total_kib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find(|l| l.starts_with("MemTotal:"))
                    .and_then(|l| {
                        l.split_whitespace()
                            .nth(1)
                            .and_then(|n| n.parse::<u64>().ok())
                    })
            })
            .unwrap_or(2 << 20);
        (total_kib / 1024)
            .saturating_sub(cfg.memory_reserve_mib)
            .max(256)
    };
    (vcpus, memory)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn launch(os: i64) -> Launch {
        Launch {
            name: "voi-desktop".into(),
            disks: vec![
                GuestDisk {
                    path: "/d/voi_4_u".into(),
                    read_only: false,
                },
                GuestDisk {
                    path: "/d/share,x".into(),
                    read_only: true,
                },
            ],
            os_sys_type: os,
            accel: "tcg",
            vcpus: 1,
            memory_mib: 256,
            qmp: "/d/qmp.sock".into(),
            qmp_commands: "/d/qmp-commands.sock".into(),
            serial: "/d/serial.log".into(),
            vnc_socket: "/d/vnc.sock".into(),
            usb: vec![],
        }
    }

    #[test]
    fn windows_groups_boot_from_sata_and_others_from_virtio() {
        let cfg = DesktopConfig::default();
        let win = args(&cfg, &launch(3)).join(" ");
        assert!(win.contains("-device ahci,id=ahci"), "{win}");
        assert!(
            win.contains("ide-hd,drive=disk0,bus=ahci.0,bootindex=0"),
            "{win}"
        );
        assert!(win.contains("e1000,netdev=net0"), "{win}");
        let linux = args(&cfg, &launch(0)).join(" ");
        assert!(
            linux.contains("virtio-blk-pci,drive=disk0,bootindex=0"),
            "{linux}"
        );
        let forced = DesktopConfig {
            disk_bus: "virtio".into(),
            ..DesktopConfig::default()
        };
        assert!(args(&forced, &launch(3))
            .join(" ")
            .contains("virtio-blk-pci"));
    }

    #[test]
    fn a_shared_disk_is_read_only_and_paths_are_quoted() {
        let a = args(&DesktopConfig::default(), &launch(0)).join(" ");
        assert!(a.contains("file.filename=/d/share,,x,read-only=on"), "{a}");
        assert!(a.contains("-vnc unix:/d/vnc.sock"), "{a}");
        assert!(a.contains("-display gtk,full-screen=on"), "{a}");
        assert!(a.contains("-no-reboot"), "{a}");
    }

    #[test]
    fn uefi_kvm_and_bridge() {
        let cfg = DesktopConfig {
            firmware: "uefi".into(),
            network: "bridge:br0".into(),
            vnc: "off".into(),
            ..DesktopConfig::default()
        };
        let mut l = launch(0);
        l.accel = "kvm";
        let a = args(&cfg, &l).join(" ");
        assert!(
            a.contains("if=pflash,format=raw,readonly=on,file=/usr/share/"),
            "{a}"
        );
        assert!(a.contains("-accel kvm -cpu host"), "{a}");
        assert!(a.contains("bridge,id=net0,br=br0"), "{a}");
        assert!(!a.contains("-vnc"), "{a}");
        assert!(cfg.validate().is_ok());
        let bad = DesktopConfig {
            network: "bridge:br0,helper=/bin/sh".into(),
            ..DesktopConfig::default()
        };
        assert!(bad.validate().is_err());
    }
}
