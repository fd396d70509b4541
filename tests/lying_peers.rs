//! A hostile LAN, at the BitTorrent port: lying peers announce themselves
//! as seeders, claim every piece and answer every request with their own
//! bytes. Whatever the interleaving, a keyed agent adopts exactly the
//! server's bytes, and the liars are banned (librqbit patch 15). Run many
//! times; `VOI_LIAR_TRIALS` sets how many (default 12 on distinct
//! addresses, 4 on the tracker's).

mod common;

use common::*;
use std::path::Path;
use std::time::{Duration, Instant};

use voi::agent::Agent;
use voi::bt::meta::TorrentMeta;

const U: &str = "5d0c3f2a-8e4b-4c61-9a57-2b8f4e6d1c30";
const G: &str = "0b7e2c41-6a3d-4f58-8c19-d2e5f7a9b364";

fn layer0() -> String {
    format!("voi_0_{U}")
}

async fn online(
    h: &voi::server::ServerHandle,
    cfg: voi::agent::config::AgentConfig,
) -> (std::sync::Arc<Agent>, tokio::task::JoinHandle<()>) {
    let mac = cfg.mac.clone().expect("mac");
    let mut ev = h.server.registry.events.subscribe();
    let (agent, task) = start_agent(cfg);
    wait_event(&mut ev, 20, is_heartbeat(&mac)).await;
    (agent, task)
}

fn trials(default: usize) -> usize {
    std::env::var("VOI_LIAR_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Distinct addresses: the tracker on one of its own (nobody, not even the
/// server's seeder, is "the origin" of librqbit patch 8, so every peer
/// steals and is stolen from, as on a LAN of distinct hosts), each liar on
/// its own (127.0.0.2 and up). This is the interleaving that got the
/// liars' bytes into an adopted layer before patch 15.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lying_peers_on_addresses_of_their_own_never_get_a_byte_into_an_adopted_layer() {
    let binds: Vec<std::net::IpAddr> = (2..32u8)
        .map(|i| std::net::IpAddr::from([127, 0, 0, i]))
        .collect();
    run_trials(trials(12), Some([127, 0, 0, 100]), &binds).await;
}

/// Everyone on 127.0.0.1, the tracker's address: every peer is "the
/// origin", so the origin rules (patch 8) shape the swarm.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lying_peers_on_the_trackers_address_never_get_a_byte_into_an_adopted_layer() {
    let binds = vec![std::net::IpAddr::from([127, 0, 0, 1]); 30];
    run_trials(trials(4), None, &binds).await;
}

async fn run_trials(trials: usize, tracker_ip: Option<[u8; 4]>, binds: &[std::net::IpAddr]) {
    let dir = tempfile::tempdir().expect("tmp");
    init_log();
    let mut scfg = server_config(&dir.path().join("s"), "127.0.0.1:0");
    if let Some(ip) = tracker_ip {
        let ip = std::net::Ipv4Addr::from(ip);
        let tracker_port = free_port();
        scfg.tracker_listen = format!("{ip}:{tracker_port}");
        scfg.tracker_url = Some(format!("http://{ip}:{tracker_port}/announce"));
    }
    scfg.limits.tracker_max_peers_per_address = 64;
    let h = voi::server::Server::start(scfg).await.expect("server");
    let lib = h.server.images.dir().to_path_buf();
    make_base(&lib.join(layer0()), 8);
    h.server.images.scan().await.expect("scan");
    h.server
        .store
        .put_group(&layer_group("liars", G, U, &[0]))
        .expect("group");
    let key = h.server.images.manifest_public_key();
    let want = std::fs::read(lib.join(layer0())).expect("library file");

    // Two honest terminals already seed it.
    let mut honest = Vec::new();
    for i in 0..2 {
        let mut cfg = agent_config(
            &dir.path().join(format!("h{i}")),
            h.addr.port(),
            &format!("AA:00:00:00:0C:0{i}"),
        );
        cfg.bt.manifest_key = Some(key.clone());
        let (a, t) = online(&h, cfg).await;
        wait_for("an honest seeder", 60, || seeding(&a, &layer0())).await;
        honest.push((a, t));
    }

    let torrent = reqwest::get(h.server.torrent_url(&layer0(), None))
        .await
        .expect("torrent")
        .bytes()
        .await
        .expect("torrent bytes");
    let meta = TorrentMeta::parse(&torrent).expect("meta");
    let announce = meta.announce.first().expect("announce").clone();
    let liars = liar::start(
        binds,
        &announce,
        &meta.info_hash,
        meta.piece_count(),
        0x5eed,
    )
    .await;

    let started = Instant::now();
    let (mut wasted, mut banned, mut fetched) = (0u64, 0u64, 0u64);
    let mut bad_trials = Vec::new();
    for t in 0..trials {
        let mac = format!("AA:00:00:00:0D:{t:02X}");
        let mut cfg = agent_config(&dir.path().join(format!("t{t}")), h.addr.port(), &mac);
        cfg.bt.manifest_key = Some(key.clone());
        let (agent, task) = online(&h, cfg).await;
        wait_for("the layer, despite the liars", 120, || {
            seeding(&agent, &layer0())
        })
        .await;
        let path = agent.cfg.disk_dir().join(layer0());
        let got = std::fs::read(&path).expect("adopted layer");
        let first_diff = got.iter().zip(&want).position(|(a, b)| a != b);
        if got.len() != want.len() || first_diff.is_some() {
            bad_trials.push(format!(
                "trial {t}: the adopted layer differs from the server's (first at byte {first_diff:?}, piece {:?})",
                first_diff.map(|d| d as u64 / meta.piece_length)
            ));
        }
        voi::disk::qemu_img::check(&path).expect("qemu-img check");
        if let Some((_, Some(s))) = agent.transfers.get().and_then(|x| x.get(&layer0())) {
            wasted += s.wasted_bytes;
            banned += u64::from(s.banned_peers);
            fetched += s.fetched_bytes;
        }
        agent.shutdown.cancel();
        let _ = task.await;
    }
    let lied = liars
        .stats
        .lied_bytes
        .load(std::sync::atomic::Ordering::Relaxed);
    eprintln!(
        "lying peers: {trials} trials in {:.1} s, {} with the liars' bytes in the adopted layer; liars sent {lied} bytes over {} connections; the trial agents received {fetched} bytes for {} layers of {} bytes, {wasted} of them in pieces that failed their check, and banned {banned} liars",
        started.elapsed().as_secs_f64(),
        bad_trials.len(),
        liars.stats.connections.load(std::sync::atomic::Ordering::Relaxed),
        trials,
        meta.length,
    );
    for (a, t) in honest {
        a.shutdown.cancel();
        let _ = t.await;
    }
    h.stop().await;
    assert!(bad_trials.is_empty(), "{bad_trials:#?}");
}

/// The same in network namespaces: voi-server and the agents as processes,
/// each in its own namespace on one switch, the liars on 30 addresses of
/// the test's own namespace on that switch. Every address distinct, as on
/// a classroom LAN. Needs root and iproute2.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lying_peers_in_namespaces_never_get_a_byte_into_an_adopted_layer() {
    use common::lan::{spawn_in, Lan};
    let test = "lying_peers_in_namespaces_never_get_a_byte_into_an_adopted_layer";
    if !has(test, &[Need::Root, IP]) {
        return;
    }
    init_log();
    let trials = trials(6);
    let subnet = format!("10.206.{}", 100 + std::process::id() % 100);
    // Host 0 the server, 1 and 2 honest terminals, 3 the terminal on trial.
    let lan = Lan::create(&subnet, 4).unwrap_or_else(|e| panic!("cannot build the test LAN: {e}"));
    let dir = tempfile::tempdir().expect("tmp");
    let data = dir.path().join("server");
    std::fs::create_dir_all(data.join("images")).expect("images");
    let lib = data.join("images");
    make_base(&lib.join(layer0()), 8);
    let want = std::fs::read(lib.join(layer0())).expect("library file");
    let server_cfg = dir.path().join("server.toml");
    std::fs::write(
        &server_cfg,
        format!(
            "listen = \"0.0.0.0:50007\"\napi_listen = \"0.0.0.0:50080\"\ntracker_listen = \"0.0.0.0:50021\"\nadvertise_ip = \"{subnet}.1\"\ndata_dir = \"{}\"\napi_token = \"t\"\nbt_listen_port = 6880\nheartbeat_secs = 2\n",
            data.display()
        ),
    )
    .expect("server.toml");
    let cfg = server_cfg.to_string_lossy().into_owned();
    let _server = spawn_in(
        &lan.hosts[0],
        env!("CARGO_BIN_EXE_voi-server"),
        &["run", "--config", &cfg],
        &dir.path().join("server.log"),
    );
    let torrent_url = format!("http://{subnet}.1:50021/torrents/{}.torrent", layer0());
    let started = Instant::now();
    let torrent = loop {
        if let Ok(r) = reqwest::get(&torrent_url).await {
            if r.status().is_success() {
                break r.bytes().await.expect("torrent");
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the server never served the layer"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let meta = TorrentMeta::parse(&torrent).expect("meta");
    // The server's signing key, as its agents would be flashed with it.
    let secret = std::fs::read_to_string(data.join("manifest-signing.key")).expect("key");
    let secret: [u8; 32] = voi::bt::manifest::from_hex(secret.trim())
        .and_then(|b| b.try_into().ok())
        .expect("32-byte key");
    let key = voi::bt::manifest::to_hex(
        ed25519_dalek::SigningKey::from_bytes(&secret)
            .verifying_key()
            .as_bytes(),
    );
    let group = layer_group("liars", G, U, &[0]);
    api_put(
        &format!("http://{subnet}.1:50080/api/v1/desktop_groups"),
        &serde_json::to_string(&group).expect("json"),
    );

    let agent_toml = |name: &str, mac: &str| {
        let home = dir.path().join(name);
        std::fs::create_dir_all(&home).expect("home");
        let path = home.join("agent.toml");
        std::fs::write(
            &path,
            format!(
                "server_ip = \"{subnet}.1\"\nmac = \"{mac}\"\ndata_dir = \"{}\"\ninterface = \"eth0\"\nconnect_retry_ms = 300\n[platform]\npower = \"recording\"\nboot = \"recording\"\nhostname = \"recording\"\nnetwork = \"recording\"\n[bt]\nlisten_port = 6881\nmanifest_key = \"{key}\"\n",
                home.join("data").display()
            ),
        )
        .expect("agent.toml");
        (
            path,
            home.join("data/disks").join(layer0()),
            home.join("agent.log"),
        )
    };
    let run_agent = |ns: &str, cfg: &Path, log: &Path| {
        let cfg = cfg.to_string_lossy().into_owned();
        spawn_in(
            ns,
            env!("CARGO_BIN_EXE_voi-agent"),
            &["--config", &cfg, "run"],
            log,
        )
    };
    let mut honest = Vec::new();
    for i in 1..=2 {
        let (cfg, layer, log) = agent_toml(&format!("h{i}"), &format!("AA:00:00:00:0C:1{i}"));
        honest.push(run_agent(&lan.hosts[i], &cfg, &log));
        wait_for("an honest seeder", 90, || layer.exists()).await;
    }
    // The liars, on the switch at .200 and up.
    let mut binds = Vec::new();
    for i in 200..230u8 {
        sh(&[
            "ip",
            "addr",
            "add",
            &format!("{subnet}.{i}/24"),
            "dev",
            &lan.root_if,
        ])
        .expect("liar address");
        binds.push(std::net::IpAddr::from(
            format!("{subnet}.{i}")
                .parse::<std::net::Ipv4Addr>()
                .expect("ip"),
        ));
    }
    let liars = liar::start(
        &binds,
        &format!("http://{subnet}.1:50021/announce"),
        &meta.info_hash,
        meta.piece_count(),
        0x5eed_0002,
    )
    .await;
    let started = Instant::now();
    let mut bad_trials = Vec::new();
    for t in 0..trials {
        let (cfg, layer, log) = agent_toml(&format!("t{t}"), &format!("AA:00:00:00:0E:{t:02X}"));
        let agent = run_agent(&lan.hosts[3], &cfg, &log);
        let begun = Instant::now();
        while !layer.exists() {
            if begun.elapsed() > Duration::from_secs(120) {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(60).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                panic!(
                    "trial {t}: no layer after 120 s; the agent's log ends:\n{}",
                    tail.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Adopted: it is renamed into place whole, after its checks.
        let got = std::fs::read(&layer).expect("adopted layer");
        if got != want {
            let first = got.iter().zip(&want).position(|(a, b)| a != b);
            bad_trials.push(format!(
                "trial {t}: the adopted layer differs (first at byte {first:?})"
            ));
        }
        voi::disk::qemu_img::check(&layer).expect("qemu-img check");
        drop(agent);
    }
    let lied = liars
        .stats
        .lied_bytes
        .load(std::sync::atomic::Ordering::Relaxed);
    eprintln!(
        "lying peers in namespaces: {trials} trials in {:.1} s, {} with the liars' bytes in the adopted layer; liars sent {lied} bytes over {} connections",
        started.elapsed().as_secs_f64(),
        bad_trials.len(),
        liars.stats.connections.load(std::sync::atomic::Ordering::Relaxed),
    );
    drop(honest);
    assert!(bad_trials.is_empty(), "{bad_trials:#?}");
}
