//! systemd integration: the units verify, and the agent speaks sd_notify.

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn unit_with_local_binary(
    src: &Path,
    dir: &Path,
    bin: &str,
    installed: &str,
) -> std::path::PathBuf {
    let text = std::fs::read_to_string(src).expect("unit");
    let dst = dir.join(src.file_name().expect("name"));
    std::fs::write(&dst, text.replace(installed, bin)).expect("write");
    dst
}

#[test]
fn units_pass_systemd_analyze_verify() {
    if !common::has(
        "units_pass_systemd_analyze_verify",
        &[common::SYSTEMD_ANALYZE],
    ) {
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let d = tempfile::tempdir().expect("tmp");
    for (unit, bin, installed) in [
        (
            "voi-agent.service",
            env!("CARGO_BIN_EXE_voi-agent"),
            "/usr/bin/voi-agent",
        ),
        (
            "voi-server.service",
            env!("CARGO_BIN_EXE_voi-server"),
            "/usr/bin/voi-server",
        ),
        (
            "voi-screen.service",
            env!("CARGO_BIN_EXE_voi-agent"),
            "/usr/bin/voi-agent",
        ),
    ] {
        let path =
            unit_with_local_binary(&root.join("systemd").join(unit), d.path(), bin, installed);
        let out = Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(&path)
            .output()
            .expect("systemd-analyze");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let ours: Vec<&str> = stderr.lines().filter(|l| l.contains(unit)).collect();
        assert!(out.status.success() && ours.is_empty(), "{unit}: {stderr}");
    }
}

#[test]
fn agent_sends_ready_then_watchdog_then_stopping() {
    let d = tempfile::tempdir().expect("tmp");
    let sock_path = d.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).expect("bind");
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let cfg = d.path().join("agent.toml");
    // No server at all: the agent is still ready (it serves its control
    // socket and keeps retrying).
    std::fs::write(
        &cfg,
        format!("server_ip = \"127.0.0.1\"\nserver_port = 1\nmac = \"AA:00:00:00:06:01\"\ndata_dir = \"{}\"\n[bt]\nlisten_port = 0\n", d.path().join("data").display()),
    )
    .expect("config");
    let mut child = Command::new(env!("CARGO_BIN_EXE_voi-agent"))
        .args(["--config"])
        .arg(&cfg)
        .arg("run")
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "400000")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let mut seen = Vec::new();
    let start = Instant::now();
    let mut buf = [0u8; 256];
    while start.elapsed() < Duration::from_secs(10) {
        if let Ok(n) = sock.recv(&mut buf) {
            seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            if seen.iter().filter(|m| *m == "WATCHDOG=1").count() >= 3 {
                break;
            }
        }
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("kill");
    let status = child.wait().expect("wait");
    while let Ok(n) = sock.recv(&mut buf) {
        seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert_eq!(
        seen.first().map(String::as_str),
        Some("READY=1"),
        "{seen:?}"
    );
    assert!(
        seen.iter().filter(|m| *m == "WATCHDOG=1").count() >= 3,
        "{seen:?}"
    );
    assert_eq!(
        seen.last().map(String::as_str),
        Some("STOPPING=1"),
        "{seen:?}"
    );
    assert!(status.success(), "SIGTERM is a clean stop: {status}");
}

#[test]
fn terminal_root_directory_has_agent_units_and_config() {
    use std::os::unix::fs::PermissionsExt;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let d = tempfile::tempdir().expect("tmp");
    let out = Command::new(root.join("image/build-rootfs.sh"))
        .arg(d.path())
        .arg(env!("CARGO_BIN_EXE_voi-agent"))
        .output()
        .expect("build-rootfs.sh");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = d.path();
    let agent = r.join("usr/bin/voi-agent");
    assert!(
        std::fs::metadata(&agent)
            .expect("agent")
            .permissions()
            .mode()
            & 0o111
            != 0
    );
    let version = Command::new(&agent)
        .arg("--version")
        .output()
        .expect("runs");
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("voi-agent "));
    let unit =
        std::fs::read_to_string(r.join("usr/lib/systemd/system/voi-agent.service")).expect("unit");
    assert!(unit.contains("Type=notify") && unit.contains("WatchdogSec="));
    let wants = r.join("etc/systemd/system/multi-user.target.wants/voi-agent.service");
    assert_eq!(
        std::fs::read_link(&wants).expect("enabled"),
        Path::new("/usr/lib/systemd/system/voi-agent.service")
    );
    let cfg = r.join("etc/voi-agent/agent.toml");
    assert_eq!(
        std::fs::metadata(&cfg)
            .expect("config")
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    voi::agent::config::AgentConfig::load(&cfg).expect("the shipped config is valid");
    assert!(r.join("var/lib/voi-agent").is_dir());
    assert!(std::fs::read_to_string(r.join("boot/grub/custom.cfg"))
        .expect("grub")
        .contains("voi-maintenance"));
}
