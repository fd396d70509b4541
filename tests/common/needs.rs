//! What a test needs from the machine beyond the Rust toolchain, and one
//! visible line when it is not there.
//!
//! A developer without root (or without aria2c, systemd-analyze, …) sees
//! `SKIP <test>: needs …` and the test passes. `scripts/test` installs what is
//! missing when run as root, and CI sets `VOI_REQUIRE_ALL=1`, which turns
//! every such skip into a failure so nothing is skipped there in silence.

use std::process::{Command, Stdio};

/// One thing a test needs.
#[derive(Clone, Copy, Debug)]
pub enum Need {
    /// Effective uid 0: network namespaces, tc, veth.
    Root,
    /// A program on the PATH, and the Debian package that has it.
    Program(&'static str, &'static str),
    /// A kernel in /boot for the test guest (linux-image-amd64).
    Kernel,
}

pub const ARIA2C: Need = Need::Program("aria2c", "aria2");
pub const SYSTEMD_ANALYZE: Need = Need::Program("systemd-analyze", "systemd");
pub const IP: Need = Need::Program("ip", "iproute2");
pub const TC: Need = Need::Program("tc", "iproute2");
pub const CHROMIUM: Need = Need::Program("chromium", "chromium");
pub const QEMU_SYSTEM: Need = Need::Program("qemu-system-x86_64", "qemu-system-x86");
pub const SYSLINUX: Need = Need::Program("syslinux", "syslinux");
pub const MTOOLS: Need = Need::Program("mcopy", "mtools");
pub const BUSYBOX: Need = Need::Program("busybox", "busybox-static");
pub const KERNEL: Need = Need::Kernel;
pub const CHROMEDRIVER: Need = Need::Program("chromedriver", "chromium-driver");

fn unmet(need: Need) -> Option<String> {
    match need {
        Need::Root => (!is_root()).then(|| "root".to_string()),
        Need::Kernel => {
            let found = std::fs::read_dir("/boot").is_ok_and(|d| {
                d.flatten()
                    .any(|e| e.file_name().to_string_lossy().starts_with("vmlinuz-"))
            });
            (!found).then(|| "a kernel in /boot (apt-get install linux-image-amd64)".to_string())
        }
        Need::Program(prog, pkg) => {
            let found = Command::new("sh")
                .args(["-c", &format!("command -v {prog}")])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            (!found).then(|| format!("{prog} (apt-get install {pkg})"))
        }
    }
}

fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    // /proc/self belongs to the process's effective user.
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// True when everything `needs` lists is here. Otherwise prints one line and
/// returns false, or panics when `VOI_REQUIRE_ALL` is set (CI).
pub fn has(test: &str, needs: &[Need]) -> bool {
    let missing: Vec<String> = needs.iter().filter_map(|n| unmet(*n)).collect();
    if missing.is_empty() {
        return true;
    }
    let line = format!("SKIP {test}: needs {}", missing.join(", "));
    if std::env::var_os("VOI_REQUIRE_ALL").is_some_and(|v| v != "0") {
        panic!("{line}; VOI_REQUIRE_ALL is set, so this is a failure");
    }
    // Straight to stderr, not eprintln!: the test harness captures the
    // print macros of passing tests, and this line must be seen.
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
    false
}
