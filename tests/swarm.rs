//! The swarm test: voi-server seeds a real 256 MiB qcow2 layer from a
//! network namespace whose uplink is shaped with `tc` (the classroom's
//! bottleneck is the server's one port); three agents in the root
//! namespace fetch it at once and trade pieces among themselves. Every
//! copy must verify; the figure is the server's upload bytes against the
//! layer size (3.00 would be plain unicast).
//!
//! Needs root, iproute2 and tc; skips with one line without them.

mod common;

use common::*;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use voi::agent::transfers::tasks::Stage;
use voi::protocol::messages::{DesktopGroup, DiskInfo};
use voi::protocol::Sectors;

const U: &str = "91f9d1ba-cb4a-41ba-971a-618f9e306571";
const G: &str = "f15a1759-789e-4e17-a3e1-e723121e9314";
const AGENTS: usize = 3;
/// The server's uplink.
const RATE: &str = "160mbit";

struct Netns {
    name: String,
    host_if: String,
}

impl Netns {
    fn create(host: &str, guest: &str) -> Result<Netns, String> {
        let pid = std::process::id() % 100000;
        let n = Netns {
            name: format!("voi-swarm-{pid}"),
            host_if: format!("vs{pid}h"),
        };
        let g = format!("vs{pid}g");
        sh(&["ip", "netns", "add", &n.name])?;
        sh(&[
            "ip", "link", "add", &n.host_if, "type", "veth", "peer", "name", &g,
        ])?;
        sh(&["ip", "link", "set", &g, "netns", &n.name])?;
        sh(&[
            "ip",
            "addr",
            "add",
            &format!("{host}/24"),
            "dev",
            &n.host_if,
        ])?;
        sh(&["ip", "link", "set", &n.host_if, "up"])?;
        let ns = |a: &[&str]| {
            let mut v = vec!["ip", "netns", "exec", &n.name];
            v.extend_from_slice(a);
            sh(&v)
        };
        ns(&["ip", "link", "set", "lo", "up"])?;
        ns(&["ip", "addr", "add", &format!("{guest}/24"), "dev", &g])?;
        ns(&["ip", "link", "set", &g, "up"])?;
        // Only the server's sending side is shaped: its uplink.
        ns(&[
            "tc", "qdisc", "add", "dev", &g, "root", "tbf", "rate", RATE, "burst", "256kb",
            "latency", "100ms",
        ])?;
        Ok(n)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = sh(&["ip", "netns", "del", &self.name]);
        let _ = sh(&["ip", "link", "del", &self.host_if]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_agents_share_a_256_mib_layer_from_a_shaped_server() {
    if !has(
        "three_agents_share_a_256_mib_layer_from_a_shaped_server",
        &[Need::Root, IP, TC],
    ) {
        return;
    }
    init_log();
    let subnet = 100 + std::process::id() % 100;
    let (host, guest) = (format!("10.202.{subnet}.1"), format!("10.202.{subnet}.2"));
    let ns = Netns::create(&host, &guest)
        .unwrap_or_else(|e| panic!("cannot create a shaped network namespace : {e}"));
    let dir = tempfile::tempdir().expect("tmp");
    let data = dir.path().join("server");
    let layer = format!("voi_0_{U}");
    std::fs::create_dir_all(data.join("images")).expect("images");
    make_base(&data.join("images").join(&layer), 256);
    let size = std::fs::metadata(data.join("images").join(&layer))
        .expect("size")
        .len();
    assert!(size >= 256 << 20);
    let token = "swarm-test-token";
    std::fs::write(
        dir.path().join("server.toml"),
        format!(
            "listen = \"0.0.0.0:50007\"\napi_listen = \"0.0.0.0:50080\"\ntracker_listen = \"0.0.0.0:50021\"\ndata_dir = \"{}\"\napi_token = \"{token}\"\nadvertise_ip = \"{guest}\"\nbt_listen_port = 6880\n",
            data.display()
        ),
    )
    .expect("server.toml");
    let _server = Proc(
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns.name,
                env!("CARGO_BIN_EXE_voi-server"),
                "run",
                "--config",
            ])
            .arg(dir.path().join("server.toml"))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("server.log")).expect("log"))
            .spawn()
            .expect("voi-server"),
    );
    let api = voi::server::client::ApiClient::new(format!("http://{guest}:50080"), token);
    let start = Instant::now();
    loop {
        if let Ok(env) = api.get("/api/v1/images").await {
            if env
                .data
                .as_ref()
                .is_some_and(|d| d["images"][0]["state"] == "seeding")
            {
                break;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the server never seeded"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let group = DesktopGroup {
        desktop_group_name: "swarm".into(),
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
    api.put("/api/v1/desktop_groups", &group)
        .await
        .expect("group");

    let started = Instant::now();
    let mut agents = Vec::new();
    for i in 0..AGENTS {
        let mac = format!("AA:00:00:00:07:{:02X}", i);
        let mut cfg = agent_config(&dir.path().join(format!("a{i}")), 50007, &mac);
        cfg.server_ip = guest.clone();
        agents.push(start_agent(cfg));
    }
    let mut done = vec![None; AGENTS];
    while done.iter().any(Option::is_none) {
        for (i, (agent, _)) in agents.iter().enumerate() {
            let seeding = agent
                .transfers
                .get()
                .and_then(|t| t.get(&layer))
                .is_some_and(|(r, _)| r.stage == Stage::Seeding);
            if seeding && done[i].is_none() {
                done[i] = Some(started.elapsed());
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "not done in 600 s: {done:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for (agent, _) in &agents {
        let p = agent.cfg.disk_dir().join(&layer);
        assert!(
            std::fs::read(&p).expect("copy")
                == std::fs::read(data.join("images").join(&layer)).expect("orig"),
            "copy differs"
        );
        voi::disk::qemu_img::check(&p).expect("qemu-img check");
    }
    for (i, (agent, _)) in agents.iter().enumerate() {
        if let Some(t) = agent.transfers.get() {
            let peers = t.peers_json(&layer);
            let brief: Vec<String> = peers["peers"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| {
                            format!(
                                "{k} {} fetched {} in {} out {} err {}",
                                v["state"],
                                v["counters"]["fetched_bytes"],
                                v["counters"]["incoming_connections"],
                                v["counters"]["connections"],
                                v["counters"]["errors"]
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            eprintln!("agent {i} (port {:?}) peers: {brief:#?}", t.listen_port());
        }
    }
    let env = api.get("/api/v1/images").await.expect("images");
    let uploaded = env
        .data
        .as_ref()
        .and_then(|d| d["images"][0]["uploaded_bytes"].as_u64())
        .unwrap_or(0);
    let peer_bytes: Vec<u64> = agents
        .iter()
        .map(|(a, _)| {
            a.transfers
                .get()
                .and_then(|t| t.get(&layer))
                .and_then(|(_, s)| s)
                .map(|s| s.uploaded_bytes)
                .unwrap_or(0)
        })
        .collect();
    let rss = std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS"))
        .unwrap_or("")
        .to_string();
    eprintln!(
        "swarm: {AGENTS} agents, {size}-byte layer, server uplink {RATE}; done at {done:?}; server sent {uploaded} bytes = {:.2} x the layer (unicast: {AGENTS}.00 x); agents sent each other {peer_bytes:?}; test process {rss}",
        uploaded as f64 / size as f64
    );
    assert!(
        uploaded < size * AGENTS as u64,
        "the terminals took nothing from each other: the server sent {uploaded} bytes"
    );
    for (agent, task) in agents {
        agent.shutdown.cancel();
        let _ = task.await;
    }
}
