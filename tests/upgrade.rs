//! The agent upgrades itself, end to end with real binaries: the agent on
//! the "image" is a copy of this build, run under a small service manager
//! that restarts it whenever it exits (systemd's `Restart=always`); the
//! server publishes packages and sends 1030 through `voi-server ctl`.
//!
//! * an upgrade to a second build (this build stamped 0.2.0) that then
//!   logs in with the new soft_version; a downgrade is refused;
//! * a package whose signature is not the release key's, refused before
//!   anything is written where it would run;
//! * a "new" agent that exits at once, rolled back and reported;
//! * a power cut (SIGKILL) at each durable step of the install, which comes
//!   back as one working agent on the new version.

mod common;

use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use voi::server::client::ApiClient;
use voi::server::ServerHandle;

/// Restarts the agent whenever it exits, as systemd does; the first
/// `crash_spawn` start gets `VOI_CRASH_AT`.
struct ServiceManager {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<usize>>,
}

impl ServiceManager {
    fn start(
        bin: PathBuf,
        config: PathBuf,
        log: PathBuf,
        crash: Option<(usize, u64)>,
        crash_log: Option<PathBuf>,
    ) -> ServiceManager {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut spawns = 0;
            while !s.load(Ordering::SeqCst) {
                let mut cmd = Command::new(&bin);
                cmd.args(["--config"])
                    .arg(&config)
                    .arg("run")
                    .env("RUST_LOG", "info")
                    .stdout(Stdio::null())
                    .stderr(
                        std::fs::OpenOptions::new()
                            .create(true)
                            .append(true)
                            .open(&log)
                            .expect("log"),
                    );
                if let Some((k, n)) = crash {
                    if k == spawns {
                        cmd.env("VOI_CRASH_AT", n.to_string());
                    }
                }
                if let Some(l) = &crash_log {
                    cmd.env("VOI_CRASH_LOG", l);
                }
                let mut child: Child = cmd.spawn().expect("agent");
                spawns += 1;
                loop {
                    if s.load(Ordering::SeqCst) {
                        let _ = child.kill();
                        let _ = child.wait();
                        return spawns;
                    }
                    if let Ok(Some(_)) = child.try_wait() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            spawns
        });
        ServiceManager {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for ServiceManager {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Rig {
    dir: tempfile::TempDir,
    h: ServerHandle,
    api: ApiClient,
    mac: String,
    config: PathBuf,
    factory: PathBuf,
    root: PathBuf,
}

impl Rig {
    async fn new(mac: &str) -> Rig {
        let dir = tempfile::tempdir().expect("tmp");
        let h = start_server(&dir.path().join("s")).await;
        let api = common::api(&h);
        // The binary on the image.
        let factory = dir.path().join("usr-bin-voi-agent");
        std::fs::copy(env!("CARGO_BIN_EXE_voi-agent"), &factory).expect("copy the agent");
        let root = dir.path().join("opt");
        let config = dir.path().join("agent.toml");
        std::fs::write(
            &config,
            format!(
                "server_ip = \"127.0.0.1\"\nserver_port = {}\nmac = \"{mac}\"\ndata_dir = \"{}\"\nheartbeat_secs = 1\nconnect_retry_ms = 300\nrequest_timeout_secs = 3\nperformance_secs = 0\n[bt]\nlisten_port = 0\nmanifest_key = \"{}\"\n[upgrade]\nroot = \"{}\"\nconfirm_secs = 15\nmax_starts = 2\n[platform]\npower = \"recording\"\nboot = \"recording\"\nhostname = \"recording\"\nnetwork = \"recording\"\nwake = \"recording\"\n",
                h.addr.port(),
                dir.path().join("data").display(),
                h.server.images.manifest_public_key(),
                root.display(),
            ),
        )
        .expect("agent.toml");
        Rig {
            dir,
            h,
            api,
            mac: mac.into(),
            config,
            factory,
            root,
        }
    }

    fn run(&self, crash: Option<(usize, u64)>, crash_log: Option<PathBuf>) -> ServiceManager {
        ServiceManager::start(
            self.factory.clone(),
            self.config.clone(),
            self.dir.path().join("agent.log"),
            crash,
            crash_log,
        )
    }

    fn record(&self) -> Option<voi::server::store::TerminalRecord> {
        self.h.server.store.terminal(&self.mac).ok().flatten()
    }

    async fn online_as(&self, soft_version: &str, secs: u64) {
        let start = Instant::now();
        loop {
            let online = self.h.server.registry.macs().contains(&self.mac);
            let v = self
                .record()
                .map(|r| r.config.soft_version)
                .unwrap_or_default();
            if online && v == soft_version {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(secs),
                "not online as {soft_version} within {secs} s (online {online}, version {v:?}); log:\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    fn ctl(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_voi-server"))
            .args(["ctl", "--api"])
            .arg(self.h.api_addr.to_string())
            .args(["--token", &self.h.server.api_token])
            .args(args)
            .output()
            .expect("ctl");
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }

    fn publish(&self, file: &Path, version: &str, raw: bool) {
        let f = file.to_string_lossy().into_owned();
        let mut args = vec![
            "upgrade-publish",
            &f,
            "--platform",
            "x86",
            "--version",
            version,
        ];
        if raw {
            args.push("--raw");
        }
        let (ok, out) = self.ctl(&args);
        assert!(ok, "publish: {out}");
    }

    /// A raw 1030 for `version` naming `manifest_url`, as any server
    /// (a rogue one too) could send it; `ctl`'s output.
    fn push_1030(&self, version: &str, manifest_url: &str, force: bool) -> String {
        let body = serde_json::json!({
            "version": version,
            "platform": "x86",
            "upgrade_package": "voi-agent",
            "os_name": "linux",
            "force": force,
            "manifest_url": manifest_url,
        })
        .to_string();
        let (_, out) = self.ctl(&[
            "--json",
            "push",
            &self.mac,
            "terminal_upgrade",
            &body,
            "--timeout",
            "10",
        ]);
        out
    }

    fn current(&self) -> Option<String> {
        std::fs::read_link(self.root.join("current"))
            .ok()
            .map(|p| p.to_string_lossy().into_owned())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_to_a_second_build_logs_in_with_the_new_version() {
    init_log();
    let rig = Rig::new("AA:00:00:00:28:01").await;
    let _svc = rig.run(None, None);
    rig.online_as("0.1", 30).await;
    // 0.1.0 is published first (release 1), as it was before 0.2.0.
    rig.publish(Path::new(env!("CARGO_BIN_EXE_voi-agent")), "0.1.0", false);
    rig.publish(Path::new(env!("CARGO_BIN_EXE_voi-agent")), "0.2.0", false);
    let started = Instant::now();
    let (ok, out) = rig.ctl(&[
        "upgrade",
        &rig.mac,
        "0.2.0",
        "--batch",
        "1",
        "--wait-secs",
        "20",
    ]);
    println!(
        "ctl upgrade ({:.1} s):\n{out}",
        started.elapsed().as_secs_f64()
    );
    assert!(ok, "{out}\n{}", rig.log_tail());
    assert!(out.contains("runs 0.2.0"), "{out}");
    rig.online_as("0.2", 10).await;
    let r = rig.record().and_then(|r| r.upgrade).expect("report");
    assert_eq!(
        (r.state.as_str(), r.running.as_str()),
        ("installed", "0.2.0")
    );
    assert_eq!(rig.current().as_deref(), Some("versions/0.2.0"));
    assert!(
        rig.root.join("versions/0.1.0/voi-agent").is_file(),
        "the fallback is kept"
    );
    // The API says who runs what.
    let env = rig.api.get("/api/v1/upgrades").await.expect("list");
    let data = env.data.unwrap_or(Value::Null);
    assert!(
        data["packages"].as_array().is_some_and(|p| p
            .iter()
            .any(|m| m["version"] == "0.2.0" && m["release"] == 2)),
        "{data}"
    );
    assert_eq!(data["terminals"][0]["version"], "0.2.0");
    // Back to 0.1.0 only with --force.
    let (ok, out) = rig.ctl(&["upgrade", &rig.mac, "0.1.0", "--no-wait"]);
    assert!(!ok && out.contains("a downgrade needs --force"), "{out}");

    // Issue 38.8: an impersonated server sends force with the real
    // server's old signed package (public, release 1). The agent has
    // committed release 2 and refuses it, whatever the wire says.
    let replay = format!(
        "http://127.0.0.1:{}/upgrades/x86/0.1.0/manifest.json",
        rig.h.server.tracker_addr.port()
    );
    let out = rig.push_1030("0.1.0", &replay, true);
    println!("{out}");
    let started = Instant::now();
    let refused = loop {
        let r = rig.record().and_then(|r| r.upgrade);
        if let Some(r) = r.filter(|r| r.version == "0.1.0" && r.state == "failed") {
            break r;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no verdict on the replay: {}",
            rig.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    println!("replayed release 1: {}", refused.reason);
    assert!(
        refused.reason.contains("committed release 2"),
        "{}",
        refused.reason
    );
    rig.online_as("0.2", 10).await;
    // The operator's --force publishes 0.1.0 again as release 3.
    let (ok, out) = rig.ctl(&[
        "upgrade",
        &rig.mac,
        "0.1.0",
        "--force",
        "--batch",
        "1",
        "--wait-secs",
        "30",
    ]);
    println!("{out}");
    assert!(
        ok && out.contains("runs 0.1.0"),
        "{out}\n{}",
        rig.log_tail()
    );
    let m = rig
        .h
        .server
        .upgrades
        .manifest("x86", "0.1.0")
        .expect("manifest");
    assert_eq!(m.release, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_package_signed_with_another_key_is_refused_before_it_is_written() {
    init_log();
    let rig = Rig::new("AA:00:00:00:28:02").await;
    let _svc = rig.run(None, None);
    rig.online_as("0.1", 30).await;
    rig.publish(Path::new(env!("CARGO_BIN_EXE_voi-agent")), "0.3.0", false);
    // Someone signs the manifest with a key that is not the release key.
    let mpath = rig
        .h
        .server
        .cfg
        .data_dir
        .join("upgrades/x86/0.3.0/manifest.json");
    let mut m: voi::upgrade_package::UpgradeManifest =
        serde_json::from_slice(&std::fs::read(&mpath).expect("manifest")).expect("json");
    m.sign(&ed25519_dalek::SigningKey::from_bytes(&[0x42; 32]));
    std::fs::write(&mpath, serde_json::to_vec(&m).expect("json")).expect("write");
    let (ok, out) = rig.ctl(&["upgrade", &rig.mac, "0.3.0", "--wait-secs", "30"]);
    println!("{out}");
    assert!(!ok, "{out}");
    assert!(
        out.contains("refused: the package's signature does not verify"),
        "{out}"
    );
    assert!(
        !rig.root.join("versions/0.3.0").exists(),
        "nothing written where it would run"
    );
    assert_eq!(rig.current(), None, "nothing switched");
    rig.online_as("0.1", 10).await;

    // Issue 38.17: a 1030 naming another host (127.0.0.2 stands for one on
    // the LAN) is refused in its reply; the agent fetches nothing.
    let out = rig.push_1030(
        "0.3.0",
        "http://127.0.0.2:9/upgrades/x86/0.3.0/manifest.json",
        false,
    );
    println!("{out}");
    assert!(
        out.contains("not the server this terminal is connected to"),
        "{out}"
    );
    assert_eq!(rig.current(), None, "nothing switched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_agent_that_exits_at_once_is_rolled_back_and_reported() {
    init_log();
    let rig = Rig::new("AA:00:00:00:28:03").await;
    let _svc = rig.run(None, None);
    rig.online_as("0.1", 30).await;
    let script = rig.dir.path().join("broken-agent");
    std::fs::write(&script, "#!/bin/sh\nexit 3\n").expect("script");
    rig.publish(&script, "0.4.0", true);
    let (ok, out) = rig.ctl(&["upgrade", &rig.mac, "0.4.0", "--wait-secs", "60"]);
    println!("{out}");
    assert!(!ok, "{out}");
    assert!(
        out.contains("rolled back: version 0.4.0 started 2 times without logging in"),
        "{out}\n{}",
        rig.log_tail()
    );
    rig.online_as("0.1", 10).await;
    assert_eq!(rig.current().as_deref(), Some("versions/0.1.0"));
}

/// The durable steps one install takes, as the crash drill numbers them in
/// the process that installs (spawn 0) and in the first start after
/// (spawn 1, the launcher counting the trial start).
fn upgrade_points(log: &str) -> Vec<(usize, u64, String)> {
    let mut spawn = 0usize;
    let mut last = 0u64;
    let mut out = Vec::new();
    for line in log.lines() {
        let Some((n, label)) = line.split_once(' ') else {
            continue;
        };
        let Ok(n) = n.parse::<u64>() else { continue };
        if n <= last {
            spawn += 1;
        }
        last = n;
        if spawn <= 1 && (label.contains("upgrade")) {
            out.push((spawn, n, label.to_string()));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_power_cut_at_each_durable_step_comes_back_as_one_working_agent() {
    init_log();
    // A dry run lists the steps.
    let rig = Rig::new("AA:00:00:00:28:10").await;
    let crash_log = rig.dir.path().join("points.log");
    let svc = rig.run(None, Some(crash_log.clone()));
    rig.online_as("0.1", 30).await;
    rig.publish(Path::new(env!("CARGO_BIN_EXE_voi-agent")), "0.2.0", false);
    let (ok, out) = rig.ctl(&["upgrade", &rig.mac, "0.2.0", "--wait-secs", "90"]);
    assert!(ok, "{out}");
    drop(svc);
    let points = upgrade_points(&std::fs::read_to_string(&crash_log).unwrap_or_default());
    println!("durable steps of an install: {points:?}");
    assert!(points.len() >= 5, "{points:?}");
    for (i, (spawn, n, label)) in points.iter().enumerate() {
        let rig = Rig::new(&format!("AA:00:00:00:28:{:02X}", 0x20 + i)).await;
        let svc = rig.run(Some((*spawn, *n)), None);
        rig.online_as("0.1", 30).await;
        rig.publish(Path::new(env!("CARGO_BIN_EXE_voi-agent")), "0.2.0", false);
        let (_, out) = rig.ctl(&["upgrade", &rig.mac, "0.2.0", "--no-wait"]);
        // Cut at the step; the service manager starts it again, without
        // the drill: one agent comes back, on the new version.
        rig.online_as("0.2", 90).await;
        let r = rig.record().and_then(|r| r.upgrade);
        let state = r.as_ref().map(|r| r.state.clone()).unwrap_or_default();
        let start = Instant::now();
        while rig.record().and_then(|r| r.upgrade).map(|u| u.state) != Some("installed".into()) {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "cut at {label} (spawn {spawn}, point {n}): {state} {out}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(
            rig.current().as_deref(),
            Some("versions/0.2.0"),
            "cut at {label}"
        );
        println!("cut at {label} (spawn {spawn}, point {n}): back on 0.2.0");
        drop(svc);
    }
}
