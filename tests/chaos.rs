//! Chaos during distribution: a voi-server process and four voi-agent
//! processes, each in its own network namespace on one switch (a bridge in
//! a namespace of its own), fetch a real 128 MiB layer over BitTorrent
//! from a server whose uplink is shaped. While they do, two agents are
//! killed with SIGKILL and started again, the server is killed and started
//! again, and one agent's cable is pulled for 10 s. Every agent must end
//! with a byte-identical layer that passes `qemu-img check`, and no command
//! may be applied twice. The bytes the faults cost are printed.
//!
//! Needs root, iproute2 and tc; skips with one line without them.

mod common;

use common::lan::{spawn_in, Lan};
use common::*;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use voi::agent::platform::{JournalEntry, RecordingPlatform};
use voi::protocol::messages::{DesktopGroup, DiskInfo};
use voi::protocol::Sectors;

const U: &str = "5c0a5b1e-1d7e-4c36-9c43-3f0c7b7b0c01";
const G: &str = "0c4a5e2b-7f4e-4d8e-8f53-4a5bb0e0c0de";
const AGENTS: usize = 4;
const LAYER_MIB: u64 = 128;
/// The server's uplink: slow enough that every fault lands mid-transfer.
const RATE: &str = "48mbit";

struct Terminal {
    mac: String,
    config: PathBuf,
    data: PathBuf,
    log: PathBuf,
    ns: String,
    proc: Option<Proc>,
}

impl Terminal {
    fn start(&mut self) {
        let cfg = self.config.to_string_lossy().into_owned();
        self.proc = Some(spawn_in(
            &self.ns,
            env!("CARGO_BIN_EXE_voi-agent"),
            &["--config", &cfg, "run"],
            &self.log,
        ));
    }

    /// SIGKILL: a power cut, not a shutdown.
    fn kill(&mut self) {
        self.proc = None;
    }
}

fn start_server(ns: &str, config: &Path, log: &Path) -> Proc {
    let cfg = config.to_string_lossy().into_owned();
    spawn_in(
        ns,
        env!("CARGO_BIN_EXE_voi-server"),
        &["run", "--config", &cfg],
        log,
    )
}

async fn wait_until<F, Fut>(what: &str, secs: u64, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !f().await {
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "timed out after {secs} s waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_killed_a_server_restarted_and_a_cable_pulled_still_all_end_with_the_layer() {
    let test = "agents_killed_a_server_restarted_and_a_cable_pulled_still_all_end_with_the_layer";
    if !has(test, &[Need::Root, IP, TC]) {
        return;
    }
    init_log();
    let subnet = format!("10.205.{}", 100 + std::process::id() % 100);
    // Host 0 is the server, hosts 1..=AGENTS the terminals.
    let lan = Lan::create(&subnet, AGENTS + 1)
        .unwrap_or_else(|e| panic!("cannot build the test LAN: {e}"));
    sh(&["ip", "-n", &lan.hosts[0], "link", "set", "eth0", "up"]).expect("up");
    sh(&[
        "tc",
        "-n",
        &lan.hosts[0],
        "qdisc",
        "add",
        "dev",
        "eth0",
        "root",
        "tbf",
        "rate",
        RATE,
        "burst",
        "256kb",
        "latency",
        "100ms",
    ])
    .expect("shape the server's uplink");
    let server_ip = format!("{subnet}.1");

    let dir = tempfile::tempdir().expect("tmp");
    let data = dir.path().join("server");
    let layer = format!("voi_0_{U}");
    let image = data.join("images").join(&layer);
    std::fs::create_dir_all(data.join("images")).expect("images");
    make_base(&image, LAYER_MIB);
    let size = std::fs::metadata(&image).expect("size").len();
    let token = "chaos-test-token";
    let server_toml = dir.path().join("server.toml");
    std::fs::write(
        &server_toml,
        format!(
            "listen = \"0.0.0.0:50007\"\napi_listen = \"0.0.0.0:50080\"\ntracker_listen = \"0.0.0.0:50021\"\ndata_dir = \"{}\"\napi_token = \"{token}\"\nadvertise_ip = \"{server_ip}\"\nbt_listen_port = 6880\nheartbeat_secs = 2\n",
            data.display()
        ),
    )
    .expect("server.toml");
    let server_log = dir.path().join("server.log");
    let mut server = Some(start_server(&lan.hosts[0], &server_toml, &server_log));
    let api = voi::server::client::ApiClient::new(format!("http://{server_ip}:50080"), token);
    wait_until("the server seeding", 120, || async {
        api.get("/api/v1/images").await.ok().is_some_and(|env| {
            env.data
                .as_ref()
                .is_some_and(|d| d["images"][0]["state"] == "seeding")
        })
    })
    .await;
    let group = DesktopGroup {
        desktop_group_name: "chaos".into(),
        desktop_group_uuid: G.into(),
        default_desktop_group: true,
        disks: vec![DiskInfo {
            uuid: U.into(),
            disk_type: 0,
            dif_level: 0,
            prefix: "voi".into(),
            max_dif: Some(2),
            real_size: Sectors(1 << 21),
            ..Default::default()
        }],
        ..Default::default()
    };
    let put = api
        .put("/api/v1/desktop_groups", &group)
        .await
        .expect("group");
    assert_eq!(put.code, 0, "{put:?}");

    let mut terminals: Vec<Terminal> = (0..AGENTS)
        .map(|i| {
            let data = dir.path().join(format!("a{i}"));
            let t = Terminal {
                mac: format!("AA:00:00:00:09:{i:02X}"),
                config: dir.path().join(format!("a{i}.toml")),
                log: dir.path().join(format!("a{i}.log")),
                ns: lan.hosts[i + 1].clone(),
                data,
                proc: None,
            };
            std::fs::write(
                &t.config,
                format!(
                    "server_ip = \"{server_ip}\"\nserver_port = 50007\nmac = \"{}\"\ndata_dir = \"{}\"\nheartbeat_secs = 1\nconnect_retry_ms = 300\nrequest_timeout_secs = 3\nperformance_secs = 0\n[bt]\nlisten_port = 6881\n[platform]\npower = \"recording\"\nboot = \"recording\"\nhostname = \"recording\"\nnetwork = \"recording\"\n",
                    t.mac,
                    t.data.display()
                ),
            )
            .expect("agent toml");
            t
        })
        .collect();
    let started = Instant::now();
    for t in &mut terminals {
        t.start();
    }
    let online = |mac: String| {
        let api = &api;
        async move {
            api.get(&format!("/api/v1/terminals/{mac}"))
                .await
                .ok()
                .and_then(|e| e.data)
                .is_some_and(|d| d["online"] == true)
        }
    };
    for t in &terminals {
        wait_until(&format!("{} online", t.mac), 60, || online(t.mac.clone())).await;
    }
    // One command each, answered before any fault: none may be applied a
    // second time by a restart, a reconnect or a replayed frame.
    for (i, t) in terminals.iter().enumerate() {
        let env = api
            .post(
                &format!("/api/v1/terminals/{}/commands", t.mac),
                &json!({"command": "update_name", "params": {"name": format!("chaos-{i}")}}),
            )
            .await
            .expect("update_name");
        assert_eq!(env.code, 0, "{env:?}");
    }
    let progress = |mac: String| {
        let api = &api;
        let layer = layer.clone();
        async move {
            api.get(&format!("/api/v1/terminals/{mac}"))
                .await
                .ok()
                .and_then(|e| e.data)
                .and_then(|d| d["reports"][format!("bt_task:{layer}")]["progress"].as_i64())
                .unwrap_or(0)
        }
    };
    wait_until("the download under way", 60, || async {
        let mut any = false;
        for t in &terminals {
            any |= progress(t.mac.clone()).await > 0;
        }
        any
    })
    .await;

    // The faults, all while the layer is in flight. VOI_CHAOS_CALM=1 runs
    // the same transfer without them: the baseline the extra bytes are
    // measured against.
    let calm = std::env::var_os("VOI_CHAOS_CALM").is_some_and(|v| v != "0");
    let mut faults = Vec::new();
    if !calm {
        for victim in [0, 1] {
            terminals[victim].kill();
            faults.push(format!(
                "{:.1} s: SIGKILL {}",
                started.elapsed().as_secs_f64(),
                terminals[victim].mac
            ));
            tokio::time::sleep(Duration::from_secs(2)).await;
            terminals[victim].start();
        }
        drop(server.take());
        faults.push(format!(
            "{:.1} s: SIGKILL voi-server",
            started.elapsed().as_secs_f64()
        ));
        tokio::time::sleep(Duration::from_secs(1)).await;
        server = Some(start_server(&lan.hosts[0], &server_toml, &server_log));
        let cut = 3;
        lan.cable(cut, false).expect("pull the cable");
        faults.push(format!(
            "{:.1} s: cable of {} pulled for 10 s",
            started.elapsed().as_secs_f64(),
            terminals[cut - 1].mac
        ));
        tokio::time::sleep(Duration::from_secs(10)).await;
        lan.cable(cut, true).expect("plug the cable");
    }

    // Every terminal ends with the layer, verified, and says so.
    for t in &terminals {
        let mac = t.mac.clone();
        wait_until(&format!("{mac} reporting the layer done"), 400, || {
            let api = &api;
            let mac = mac.clone();
            let layer = layer.clone();
            async move {
                api.get(&format!("/api/v1/terminals/{mac}"))
                    .await
                    .ok()
                    .and_then(|e| e.data)
                    .is_some_and(|d| d["reports"][format!("task_result:{layer}")]["result"] == 1)
            }
        })
        .await;
    }
    let done = started.elapsed();
    let original = std::fs::read(&image).expect("original");
    for t in &terminals {
        let copy = t.data.join("disks").join(&layer);
        assert!(
            std::fs::read(&copy).expect("copy") == original,
            "{}: the copy differs",
            t.mac
        );
        voi::disk::qemu_img::check(&copy).expect("qemu-img check");
    }
    for (i, t) in terminals.iter().enumerate() {
        let renames = RecordingPlatform::read_journal(&t.data.join("platform-journal.jsonl"))
            .into_iter()
            .filter(|e| matches!(e, JournalEntry::SetHostname { .. }))
            .collect::<Vec<_>>();
        assert_eq!(
            renames,
            vec![JournalEntry::SetHostname {
                name: format!("chaos-{i}")
            }],
            "{}: each command applied once",
            t.mac
        );
    }
    let received: Vec<u64> = (1..=AGENTS).map(|h| lan.bytes_to(h)).collect();
    let sent: Vec<u64> = (0..=AGENTS).map(|h| lan.bytes_from(h)).collect();
    eprintln!("chaos: bytes sent into the switch by the server and each terminal: {sent:?}");
    let total: u64 = received.iter().sum();
    let ideal = size * AGENTS as u64;
    eprintln!(
        "chaos: {AGENTS} agents, {size}-byte layer, server uplink {RATE}; faults: {faults:?}; all done {:.1} s after start; bytes into each terminal {received:?}: {total} in all, {:.3} x the {ideal} the layers need ({} extra bytes, protocol overhead included)",
        done.as_secs_f64(),
        total as f64 / ideal as f64,
        total.saturating_sub(ideal)
    );
    for t in &mut terminals {
        t.kill();
    }
    drop(server);
    if let Some(keep) = std::env::var_os("VOI_CHAOS_KEEP") {
        let _ = std::fs::remove_dir_all(&keep);
        let _ = Command::new("cp")
            .arg("-a")
            .arg(dir.path())
            .arg(&keep)
            .status();
    }
}
