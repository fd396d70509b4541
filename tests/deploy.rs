//! systemd integration: the units verify, and the agent speaks sd_notify.

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
    if std::env::var("VOI_SKIP_SYSTEMD").is_ok() {
        eprintln!("VOI_SKIP_SYSTEMD set: skipping");
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
    ] {
        let path =
            unit_with_local_binary(&root.join("systemd").join(unit), d.path(), bin, installed);
        let out = Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(&path)
            .output()
            .expect("systemd-analyze (apt-get install systemd; VOI_SKIP_SYSTEMD=1 skips)");
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
        format!("server_ip = \"127.0.0.1\"\nserver_port = 1\nmac = \"AA:00:00:00:06:01\"\ndata_dir = \"{}\"\n", d.path().join("data").display()),
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
