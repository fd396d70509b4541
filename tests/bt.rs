//! BitTorrent layer distribution end to end: voi-server's library seeds
//! real qcow2 layers, real agents (each with its own engine and TCP port)
//! fetch them over loopback, verify them and join them to their chains;
//! uploads go the other way. aria2c is the peer nobody here wrote.

mod common;

use common::*;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use voi::agent::Agent;
use voi::protocol::messages::DesktopGroup;
use voi::protocol::torrent_struct::SendTorrent;
use voi::protocol::{BatchNo, ServiceCode};
use voi::server::ServerHandle;

const U: &str = "91f9d1ba-cb4a-41ba-971a-618f9e306571";
const G: &str = "f15a1759-789e-4e17-a3e1-e723121e9314";

fn layer(level: u8) -> String {
    format!("voi_{level}_{U}")
}

fn group(levels: &[i64]) -> DesktopGroup {
    layer_group("bt", G, U, levels)
}

fn same_bytes(a: &Path, b: &Path) -> bool {
    std::fs::read(a).expect("a") == std::fs::read(b).expect("b")
}

fn disk_path(agent: &Agent, name: &str) -> PathBuf {
    agent.cfg.disk_dir().join(name)
}

fn bt_dir_entries(agent: &Agent) -> Vec<String> {
    std::fs::read_dir(agent.cfg.disk_dir().join(".bt"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

async fn online(
    h: &ServerHandle,
    cfg: voi::agent::config::AgentConfig,
) -> (Arc<Agent>, tokio::task::JoinHandle<()>) {
    let mac = cfg.mac.clone().expect("mac");
    let mut ev = h.server.registry.events.subscribe();
    let (agent, task) = start_agent(cfg);
    wait_event(&mut ev, 20, is_heartbeat(&mac)).await;
    wait_for("the agent's engine", 20, || agent.transfers.get().is_some()).await;
    (agent, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn download_desktop_pushes_torrents_and_layers_join_their_chain() {
    let dir = tempfile::tempdir().expect("tmp");
    let h = start_server(&dir.path().join("s")).await;
    h.server.store.put_group(&group(&[0, 1])).expect("group");
    let mac = "AA:00:00:00:05:01";
    let (agent, task) = online(&h, agent_config(&dir.path().join("a"), h.addr.port(), mac)).await;
    // The library was empty at login, so 9023 named no torrent; the
    // layers arrive now and go out as 1008 + 1015.
    let lib = h.server.images.dir().to_path_buf();
    make_base(&lib.join(layer(0)), 12);
    make_diff(&lib, &layer(1), &layer(0), 3, 0x33);
    h.server.images.scan().await.expect("scan");

    let sent = h
        .server
        .download_desktop(mac, G, Duration::from_secs(10))
        .await
        .expect("download_desktop");
    assert_eq!(sent.len(), 2, "{sent:?}");
    for s in &sent {
        assert_eq!(s["code"], 0, "{s}");
    }
    for l in [layer(0), layer(1)] {
        wait_for(&format!("{l} seeding"), 60, || seeding(&agent, &l)).await;
        assert!(same_bytes(&disk_path(&agent, &l), &lib.join(&l)));
    }
    voi::disk::qemu_img::check(&disk_path(&agent, &layer(1))).expect("chain top checks");
    // The level-1 layer names its parent by relative name, as the chain needs.
    let hdr = voi::disk::qcow2::read_header(&disk_path(&agent, &layer(1))).expect("header");
    assert_eq!(hdr.backing_file.as_deref(), Some(layer(0).as_str()));

    // The server heard the final 9025 and 9015 for both.
    for l in [layer(0), layer(1)] {
        wait_for(&format!("task_result of {l}"), 20, || {
            report(&h, mac, &format!("task_result:{l}")).is_some_and(|r| r["result"] == 1)
        })
        .await;
        let st = report(&h, mac, &format!("bt_task:{l}")).expect("bt_task_state");
        assert_eq!(st["state"], "finished");
        assert_eq!(st["progress"], 100);
        assert_eq!(
            st["file_size"], st["total_size"],
            "sizes travel as equal strings"
        );
        assert!(st["file_size"].is_string());
    }
    // Sending the same torrent again is answered and changes nothing.
    let again = h
        .server
        .download_desktop(mac, G, Duration::from_secs(10))
        .await
        .expect("again");
    assert!(again.iter().all(|s| s["code"] == 0), "{again:?}");

    // A fresh desktop decision keeps the downloaded layers (their
    // operate_id was recorded) and the seeding goes on.
    api(&h)
        .push(mac, "update_desktop_group_info", json!({}), 10)
        .await
        .expect("refresh");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(disk_path(&agent, &layer(1)).exists());
    assert!(seeding(&agent, &layer(1)));

    // The server drops level 1: the decision deletes it and the seeder
    // lets go first (no hidden second link keeps its space).
    h.server.store.put_group(&group(&[0])).expect("group");
    api(&h)
        .push(mac, "update_desktop_group_info", json!({}), 10)
        .await
        .expect("refresh");
    wait_for("level 1 gone", 20, || {
        !disk_path(&agent, &layer(1)).exists()
    })
    .await;
    wait_for("its transfer gone", 20, || {
        !bt_dir_entries(&agent).contains(&layer(1))
    })
    .await;
    assert!(seeding(&agent, &layer(0)));
    let cfg = agent.cfg.clone();
    agent.shutdown.cancel();
    let _ = task.await;
    drop(agent);

    // A restarted agent seeds its finished layer again from its own
    // records, without fetching it.
    let before: u64 = h
        .server
        .images
        .status()
        .iter()
        .map(|s| s.uploaded_bytes)
        .sum();
    let (agent, task) = online(&h, cfg).await;
    wait_for("seeding restored", 20, || seeding(&agent, &layer(0))).await;
    assert!(same_bytes(
        &disk_path(&agent, &layer(0)),
        &lib.join(layer(0))
    ));
    let after: u64 = h
        .server
        .images
        .status()
        .iter()
        .map(|s| s.uploaded_bytes)
        .sum();
    assert_eq!(before, after, "nothing was fetched again");
    agent.shutdown.cancel();
    let _ = task.await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn layers_the_decision_wants_are_fetched_by_url_at_login() {
    let dir = tempfile::tempdir().expect("tmp");
    let h = start_server(&dir.path().join("s")).await;
    let lib = h.server.images.dir().to_path_buf();
    make_base(&lib.join(layer(0)), 8);
    h.server.images.scan().await.expect("scan");
    h.server.store.put_group(&group(&[0])).expect("group");
    let mac = "AA:00:00:00:05:02";
    // 9007 → decision wants level 0 → 9023 answers with the torrent URL on
    // the tracker's port → fetched with reqwest → downloaded.
    let (agent, task) = online(&h, agent_config(&dir.path().join("a"), h.addr.port(), mac)).await;
    wait_for("the layer", 60, || seeding(&agent, &layer(0))).await;
    assert!(same_bytes(
        &disk_path(&agent, &layer(0)),
        &lib.join(layer(0))
    ));
    // The agent reports an older version, so after answering 9023 the
    // server also pushed the layer as a 1015 (as the vendor server does).
    // Getting both styles, the agent answered it and fetched once.
    wait_for("the 1015 after 9023 answered", 20, || {
        agent.state.read(|s| {
            s.commands
                .iter()
                .any(|c| c.service_code == 1015 && c.code == 0 && !c.pending)
        })
    })
    .await;
    let size = std::fs::metadata(lib.join(layer(0))).expect("layer").len();
    let sent: u64 = h
        .server
        .images
        .status()
        .iter()
        .map(|s| s.uploaded_bytes)
        .sum();
    assert!(
        sent < size + size / 5,
        "server sent {sent} bytes of a {size}-byte layer"
    );
    wait_for("9026 lists the system disk", 20, || {
        report(&h, mac, "desktop_groups").is_some_and(|v| v.as_str() == Some(U))
    })
    .await;

    // 1017 with a URL that is not http(s), or a path trick in a disk
    // name: refused before anything is fetched.
    let bad = json!({"desktop": {"desktop_group_uuid": G, "disks": [
        {"uuid": U, "type": 0, "dif_level": 1, "prefix": "voi", "download_url": "file:///etc/passwd"}]}});
    let (_, env) = h
        .server
        .push(mac, ServiceCode::SendDesktop, bad, Duration::from_secs(5))
        .await
        .expect("reply");
    assert_eq!(env.code, 88888, "{}", env.msg);
    let bad = json!({"desktop": {"desktop_group_uuid": G, "disks": [
        {"uuid": "../../etc", "type": 0, "dif_level": 1, "prefix": "voi", "download_url": "http://127.0.0.1:1/x"}]}});
    let (_, env) = h
        .server
        .push(mac, ServiceCode::SendDesktop, bad, Duration::from_secs(5))
        .await
        .expect("reply");
    assert_eq!(env.code, 88888, "{}", env.msg);
    // A URL that fails: the reply is success (queued), the failure comes
    // back as a 9015 with result 2 and nothing is left behind.
    let gone = json!({"desktop": {"desktop_group_uuid": G, "disks": [
        {"uuid": U, "type": 0, "dif_level": 1, "prefix": "voi",
         "download_url": format!("http://127.0.0.1:{}/torrents/nothing.torrent", h.server.tracker_addr.port())}]}});
    let (_, env) = h
        .server
        .push(mac, ServiceCode::SendDesktop, gone, Duration::from_secs(5))
        .await
        .expect("reply");
    assert_eq!(env.code, 0, "{}", env.msg);
    wait_for("failed task_result", 20, || {
        report(&h, mac, &format!("task_result:{}", layer(1))).is_some_and(|r| r["result"] == 2)
    })
    .await;
    assert!(!bt_dir_entries(&agent).contains(&layer(1)));
    agent.shutdown.cancel();
    let _ = task.await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn malformed_send_torrent_is_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().expect("tmp");
    let h = start_server(&dir.path().join("s")).await;
    let mac = "AA:00:00:00:05:03";
    let (agent, task) = online(&h, agent_config(&dir.path().join("a"), h.addr.port(), mac)).await;
    let src = dir.path().join(layer(0));
    make_base(&src, 1);
    let good =
        voi::bt::torrent::create(&src, "http://127.0.0.1:1/announce", 16384).expect("torrent");
    let task_uuid = "0b7d4a0e-1f2a-4c3b-9d8e-7f6a5b4c3d2e";
    let body = |uuid: &str, level: i32, torrent: Vec<u8>| SendTorrent {
        uuid: uuid.into(),
        disk_type: 0,
        sys_type: 3,
        dif_level: level,
        real_size: 2048,
        space_size: 0,
        file_size: 2048,
        task_uuid: task_uuid.into(),
        group_uuid: G.into(),
        operate_id: 0,
        torrent: torrent.into(),
    };
    let push = |payload: bytes::Bytes, batch: BatchNo| {
        let h = &h;
        async move {
            h.server
                .push_binary(
                    mac,
                    ServiceCode::SendTorrent,
                    payload,
                    batch,
                    Duration::from_secs(5),
                )
                .await
                .expect("a reply, not a dropped connection")
        }
    };
    // Declared torrent length larger than what follows.
    let mut wire = body(U, 0, good.bytes.clone()).encode().to_vec();
    wire.truncate(wire.len() - 10);
    let env = push(wire.into(), BatchNo::default()).await;
    assert_eq!(env.code, 88888, "{}", env.msg);
    // A uuid that is not one.
    let mut wire = body(U, 0, good.bytes.clone()).encode().to_vec();
    wire[..36].copy_from_slice(b"../../../../../../../../../etc/passw");
    let env = push(wire.into(), BatchNo::default()).await;
    assert_eq!(env.code, 88888, "{}", env.msg);
    // A level outside 0..=5.
    let env = push(body(U, 9, good.bytes.clone()).encode(), BatchNo::default()).await;
    assert_eq!(env.code, 88888, "{}", env.msg);
    // A torrent whose file name climbs out of the directory.
    let mut evil = good.bytes.clone();
    let needle = layer(0);
    let pos = evil
        .windows(needle.len())
        .position(|w| w == needle.as_bytes())
        .expect("name in torrent");
    let trick = b"../../../../../../../../../../../../tmp/x/evil/voi-evil-target";
    evil.splice(
        pos..pos + needle.len(),
        trick[..needle.len()].iter().copied(),
    );
    // Keep the length prefix valid: same length, so only the name changed.
    let env = push(body(U, 0, evil).encode(), BatchNo::Text(task_uuid.into())).await;
    assert_eq!(env.code, 88888, "{}", env.msg);
    // Not a torrent at all.
    let env = push(
        body(U, 0, b"d4:junk3:abce".to_vec()).encode(),
        BatchNo::Text(task_uuid.into()),
    )
    .await;
    assert_eq!(env.code, 88888, "{}", env.msg);
    // JSON where the struct belongs.
    let (_, env) = h
        .server
        .push(
            mac,
            ServiceCode::SendTorrent,
            json!({}),
            Duration::from_secs(5),
        )
        .await
        .expect("reply");
    assert_eq!(env.code, 88888, "{}", env.msg);

    assert!(
        bt_dir_entries(&agent).is_empty(),
        "{:?}",
        bt_dir_entries(&agent)
    );
    assert!(!disk_path(&agent, &layer(0)).exists());
    assert!(!Path::new("/tmp/x/evil").exists());
    // Still logged in and answering.
    let (_, env) = h
        .server
        .push(
            mac,
            ServiceCode::WatermarkSwitch,
            json!({"switch": 1}),
            Duration::from_secs(5),
        )
        .await
        .expect("still answering");
    assert_eq!(env.code, 0);
    agent.shutdown.cancel();
    let _ = task.await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancel_download_desktop_stops_and_removes_the_partial_file() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut cfg = server_config(&dir.path().join("s"), "127.0.0.1:0");
    // Slow enough to be caught mid-download.
    cfg.bt_upload_limit = 1 << 20;
    let h = voi::server::Server::start(cfg).await.expect("server");
    h.server.store.put_group(&group(&[0])).expect("group");
    let mac = "AA:00:00:00:05:04";
    let (agent, task) = online(&h, agent_config(&dir.path().join("a"), h.addr.port(), mac)).await;
    let lib = h.server.images.dir().to_path_buf();
    make_base(&lib.join(layer(0)), 32);
    h.server.images.scan().await.expect("scan");
    h.server
        .download_desktop(mac, G, Duration::from_secs(10))
        .await
        .expect("sent");
    wait_for("some progress", 30, || {
        agent
            .transfers
            .get()
            .and_then(|t| t.get(&layer(0)))
            .and_then(|(_, s)| s)
            .is_some_and(|s| s.have_bytes > 0)
    })
    .await;
    let (_, env) = h
        .server
        .push(
            mac,
            ServiceCode::CancelDownloadDesktop,
            json!({}),
            Duration::from_secs(5),
        )
        .await
        .expect("reply");
    assert_eq!(env.code, 0, "{}", env.msg);
    assert!(
        bt_dir_entries(&agent).is_empty(),
        "{:?}",
        bt_dir_entries(&agent)
    );
    assert!(!disk_path(&agent, &layer(0)).exists());
    // 1021 for a torrent nobody uploads: the documented code.
    let (_, env) = h
        .server
        .push(
            mac,
            ServiceCode::BtTaskComplete,
            json!({"torrent_id": "nope"}),
            Duration::from_secs(5),
        )
        .await
        .expect("reply");
    assert_eq!(env.code, 60033, "{}", env.msg);
    agent.shutdown.cancel();
    let _ = task.await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_local_diff_uploads_to_the_server_library() {
    let dir = tempfile::tempdir().expect("tmp");
    let h = start_server(&dir.path().join("s")).await;
    let lib = h.server.images.dir().to_path_buf();
    make_base(&lib.join(layer(0)), 6);
    h.server.images.scan().await.expect("scan");
    h.server.store.put_group(&group(&[0])).expect("group");
    let mac = "AA:00:00:00:05:05";
    let (agent, task) = online(&h, agent_config(&dir.path().join("a"), h.addr.port(), mac)).await;
    wait_for("the base", 60, || seeding(&agent, &layer(0))).await;
    // The terminal's own work: a diff over the base.
    make_diff(&agent.cfg.disk_dir(), &layer(1), &layer(0), 4, 0x77);

    let (_, env) = h
        .server
        .push(
            mac,
            ServiceCode::UploadDisk,
            json!({"desktop": {"uuid": G, "disks": [{"uuid": U, "type": 0, "dif_level": 1, "prefix": "voi"}]}}),
            Duration::from_secs(5),
        )
        .await
        .expect("reply");
    assert_eq!(env.code, 0, "{}", env.msg);
    // 9018 → torrent → 9014 → the server pulls → review → 1021 → 9015;
    // an operator accepts → library (signed, seeded).
    wait_for("the upload awaiting review", 60, || {
        h.server
            .images
            .uploads_list()
            .iter()
            .any(|u| u.layer == layer(1) && u.state == "review")
    })
    .await;
    assert!(
        !lib.join(layer(1)).exists(),
        "not in the library before review"
    );
    assert!(
        h.server.images.get(&layer(1)).is_none(),
        "not seeded before review"
    );
    let id = h
        .server
        .images
        .uploads_list()
        .iter()
        .find(|u| u.layer == layer(1))
        .map(|u| u.torrent_id.clone())
        .expect("upload");
    let env = api(&h)
        .post(&format!("/api/v1/uploads/{id}/accept"), &json!({}))
        .await
        .expect("accept");
    assert_eq!(env.code, 0, "{}", env.msg);
    assert!(lib.join(layer(1)).exists());
    assert!(same_bytes(
        &lib.join(layer(1)),
        &disk_path(&agent, &layer(1))
    ));
    voi::disk::qemu_img::check(&lib.join(layer(1))).expect("check");
    wait_for("upload finished on the terminal", 30, || {
        report(&h, mac, &format!("task_result:{}", layer(1))).is_some_and(|r| r["result"] == 1)
    })
    .await;
    wait_for("seeding of the upload stopped", 10, || {
        !bt_dir_entries(&agent).contains(&layer(1))
    })
    .await;
    // The terminal's copy stays; the server now seeds the layer itself.
    assert!(disk_path(&agent, &layer(1)).exists());
    wait_for("the library seeds it", 10, || {
        h.server.images.get(&layer(1)).is_some()
    })
    .await;
    let ups = h.server.images.uploads_list();
    assert!(
        ups.iter()
            .any(|u| u.layer == layer(1) && u.state == "finished" && u.notified),
        "{ups:?}"
    );

    // A layer that is not on the terminal is refused at once.
    let (_, env) = h
        .server
        .push(
            mac,
            ServiceCode::UploadDisk,
            json!({"desktop": {"uuid": G, "disks": [{"uuid": U, "type": 0, "dif_level": 2, "prefix": "voi"}]}}),
            Duration::from_secs(5),
        )
        .await
        .expect("reply");
    assert_eq!(env.code, 88888, "{}", env.msg);
    agent.shutdown.cancel();
    let _ = task.await;
    h.stop().await;
}

fn spawn_agent(cfg_path: &Path, log: &Path) -> Proc {
    let log = std::fs::File::create(log).expect("log");
    Proc(
        Command::new(env!("CARGO_BIN_EXE_voi-agent"))
            .args(["--config"])
            .arg(cfg_path)
            .arg("run")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("voi-agent"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_download_killed_with_sigkill_resumes_without_refetching() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut cfg = server_config(&dir.path().join("s"), "127.0.0.1:0");
    cfg.bt_upload_limit = 8 << 20;
    let h = voi::server::Server::start(cfg).await.expect("server");
    let lib = h.server.images.dir().to_path_buf();
    make_base(&lib.join(layer(0)), 64);
    h.server.images.scan().await.expect("scan");
    let size = std::fs::metadata(lib.join(layer(0))).expect("size").len();
    h.server.store.put_group(&group(&[0])).expect("group");
    let mac = "AA:00:00:00:05:06";
    let data = dir.path().join("a");
    let cfg_path = dir.path().join("agent.toml");
    std::fs::write(
        &cfg_path,
        format!(
            "server_ip = \"127.0.0.1\"\nserver_port = {}\nmac = \"{mac}\"\ndata_dir = \"{}\"\nheartbeat_secs = 1\nconnect_retry_ms = 300\nperformance_secs = 0\n[bt]\nlisten_port = 0\nprogress_secs = 1\n[platform]\npower = \"recording\"\nboot = \"recording\"\nhostname = \"recording\"\nnetwork = \"recording\"\n",
            h.addr.port(),
            data.display()
        ),
    )
    .expect("cfg");
    let progress = |h: &ServerHandle| {
        report(h, mac, &format!("bt_task:{}", layer(0)))
            .and_then(|r| r["progress"].as_i64())
            .unwrap_or(0)
    };
    let started = Instant::now();
    let mut agent = spawn_agent(&cfg_path, &dir.path().join("agent1.log"));
    wait_for("40% downloaded", 60, || progress(&h) >= 40).await;
    let _ = agent.0.kill(); // SIGKILL
    let _ = agent.0.wait();
    let killed_at = progress(&h);
    let partial = data
        .join("disks/.bt")
        .join(layer(0))
        .join("data")
        .join(layer(0));
    let have = std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
    eprintln!("killed at {killed_at}% ({have} bytes on disk, sparse)");
    let restarted = Instant::now();
    let agent2 = spawn_agent(&cfg_path, &dir.path().join("agent2.log"));
    let final_path = data.join("disks").join(layer(0));
    wait_for("the layer after restart", 120, || {
        report(&h, mac, &format!("task_result:{}", layer(0))).is_some_and(|r| r["result"] == 1)
    })
    .await;
    assert!(
        same_bytes(&final_path, &lib.join(layer(0))),
        "byte-identical after resume"
    );
    voi::disk::qemu_img::check(&final_path).expect("check");
    let uploaded: u64 = h
        .server
        .images
        .status()
        .iter()
        .map(|s| s.uploaded_bytes)
        .sum();
    let after_restart = restarted.elapsed();
    // The agent process while it seeds the finished layer.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss = std::fs::read_to_string(format!("/proc/{}/status", agent2.0.id()))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS"))
        .unwrap_or("")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    eprintln!(
        "resume: {size}-byte layer at 8 MiB/s, killed at {killed_at}%; server sent {uploaded} bytes ({:.3} x); total {:?}, restart to verified {after_restart:?}; agent seeding: {rss}",
        uploaded as f64 / size as f64,
        started.elapsed(),
    );
    // What was verified before the kill is not fetched again: the server
    // sent little more than one copy (pieces in flight at the kill are the
    // only repeat).
    assert!(
        uploaded < size + size / 5,
        "server sent {uploaded} bytes for a {size}-byte layer"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn aria2c_downloads_from_the_server_and_seeds_to_the_agent() {
    if !has(
        "aria2c_downloads_from_the_server_and_seeds_to_the_agent",
        &[ARIA2C],
    ) {
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    let h = start_server(&dir.path().join("s")).await;
    let lib = h.server.images.dir().to_path_buf();
    make_base(&lib.join(layer(0)), 16);
    h.server.images.scan().await.expect("scan");

    // 1. aria2c fetches the server's torrent over HTTP and the layer from
    //    voi-server's seeder (librqbit).
    let url = format!(
        "http://127.0.0.1:{}/torrents/{}.torrent",
        h.server.tracker_addr.port(),
        layer(0)
    );
    let torrent = voi::agent::transfers::server_link::fetch_torrent(&url)
        .await
        .expect("torrent over HTTP");
    let tpath = dir.path().join("server.torrent");
    std::fs::write(&tpath, &torrent).expect("write");
    let get_dir = dir.path().join("aria-get");
    let mut leecher = aria2c(&[
        &format!("--dir={}", get_dir.display()),
        "--seed-time=0",
        &format!("--listen-port={}", free_port()),
        tpath.to_str().expect("utf8"),
    ])
    .spawn()
    .expect("aria2c");
    let start = Instant::now();
    let status = loop {
        if let Some(s) = leecher.try_wait().expect("wait") {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "aria2c did not finish"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(status.success(), "aria2c: {status}");
    assert!(same_bytes(&get_dir.join(layer(0)), &lib.join(layer(0))));

    // 2. aria2c seeds a layer the server does not have; the agent gets it
    //    from aria2c alone.
    let mac = "AA:00:00:00:05:07";
    let (agent, task) = online(&h, agent_config(&dir.path().join("a"), h.addr.port(), mac)).await;
    let seed_dir = dir.path().join("aria-seed");
    std::fs::create_dir_all(&seed_dir).expect("dir");
    let other = "5b0f3c8e-2d4a-4e6b-8c1d-9a7e6f5d4c3b";
    let name = format!("voi_0_{other}");
    make_base(&seed_dir.join(&name), 10);
    let announce = format!("http://127.0.0.1:{}/announce", h.server.tracker_addr.port());
    let t =
        voi::bt::torrent::create(&seed_dir.join(&name), &announce, 256 * 1024).expect("torrent");
    let tpath = dir.path().join("aria.torrent");
    std::fs::write(&tpath, &t.bytes).expect("write");
    // The tracker keeps swarms only for what the server knows (issue 38.4):
    // the operator's 1015 below makes this torrent known; aria2c announces
    // before it, so the server is told first.
    h.server.images.expect_info_hash(&t.info_hash_hex());
    let _seeder = Proc(
        aria2c(&[
            &format!("--dir={}", seed_dir.display()),
            "--check-integrity=true",
            "--seed-ratio=0.0",
            &format!("--listen-port={}", free_port()),
            tpath.to_str().expect("utf8"),
        ])
        .spawn()
        .expect("aria2c"),
    );
    wait_for("aria2c announced", 30, || {
        h.server.tracker.swarm_size(&t.info_hash) > 0
    })
    .await;
    let task_uuid = "3c2b1a09-8f7e-4d6c-9b5a-4e3d2c1b0a99";
    let body = SendTorrent {
        uuid: other.into(),
        disk_type: 0,
        sys_type: 3,
        dif_level: 0,
        real_size: 1 << 21,
        space_size: 0,
        file_size: t.length.div_ceil(512),
        task_uuid: task_uuid.into(),
        group_uuid: G.into(),
        operate_id: 0,
        torrent: t.bytes.clone().into(),
    };
    let env = h
        .server
        .push_binary(
            mac,
            ServiceCode::SendTorrent,
            body.encode(),
            BatchNo::Text(task_uuid.into()),
            Duration::from_secs(10),
        )
        .await
        .expect("reply");
    assert_eq!(env.code, 0, "{}", env.msg);
    wait_for("the agent's copy from aria2c", 60, || {
        seeding(&agent, &name)
    })
    .await;
    assert!(same_bytes(&disk_path(&agent, &name), &seed_dir.join(&name)));
    voi::disk::qemu_img::check(&disk_path(&agent, &name)).expect("check");
    agent.shutdown.cancel();
    let _ = task.await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_layer_that_does_not_fit_is_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().expect("tmp");
    let h = start_server(&dir.path().join("s")).await;
    let lib = h.server.images.dir().to_path_buf();
    make_base(&lib.join(layer(0)), 2);
    h.server.images.scan().await.expect("scan");
    h.server.store.put_group(&group(&[0])).expect("group");
    let mac = "AA:00:00:00:05:08";
    let mut cfg = agent_config(&dir.path().join("a"), h.addr.port(), mac);
    // A margin larger than any disk: nothing fits.
    cfg.disk_margin_mb = 1 << 40;
    let (agent, task) = online(&h, cfg).await;
    let sent = h
        .server
        .download_desktop(mac, G, Duration::from_secs(10))
        .await
        .expect("sent");
    assert_eq!(sent[0]["code"], 60027, "{sent:?}");
    assert!(
        sent[0]["msg"]
            .as_str()
            .is_some_and(|m| m.contains("not enough space")),
        "{sent:?}"
    );
    assert!(
        bt_dir_entries(&agent).is_empty(),
        "{:?}",
        bt_dir_entries(&agent)
    );
    assert!(!disk_path(&agent, &layer(0)).exists());
    agent.shutdown.cancel();
    let _ = task.await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn layers_are_checked_against_the_manifest_and_a_mismatch_is_refused() {
    let dir = tempfile::tempdir().expect("tmp");
    let sdir = dir.path().join("s");
    let h = start_server(&sdir).await;
    let lib = h.server.images.dir().to_path_buf();
    make_base(&lib.join(layer(0)), 6);
    make_diff(&lib, &layer(1), &layer(0), 2, 0x44);
    h.server.images.scan().await.expect("scan");

    // What the server publishes, next to each torrent.
    let url = h
        .server
        .torrent_url(&layer(1), None)
        .replace(".torrent", ".json")
        .replace("/torrents/", "/manifest/");
    let m: voi::bt::manifest::LayerManifest = reqwest::get(&url)
        .await
        .expect("get")
        .json()
        .await
        .expect("manifest");
    assert_eq!(m.layer, layer(1));
    assert_eq!(m.parent.as_deref(), Some(layer(0).as_str()));
    assert_eq!(
        m.size,
        std::fs::metadata(lib.join(layer(1))).expect("md").len()
    );
    assert_eq!(
        m.sha256,
        voi::bt::manifest::sha256_file(&lib.join(layer(1))).expect("sha")
    );
    assert_eq!(
        m.info_hash,
        h.server.images.get(&layer(1)).expect("img").info_hash
    );
    let missing = reqwest::get(url.replace(&layer(1), &layer(2)))
        .await
        .expect("get");
    assert_eq!(missing.status(), reqwest::StatusCode::NOT_FOUND);

    // A matching layer lands.
    h.server.store.put_group(&group(&[0, 1])).expect("group");
    let mac = "AA:00:00:00:05:21";
    let (agent, task) = online(&h, agent_config(&dir.path().join("a"), h.addr.port(), mac)).await;
    let sent = h
        .server
        .download_desktop(mac, G, Duration::from_secs(10))
        .await
        .expect("sent");
    assert!(sent.iter().all(|s| s["code"] == 0), "{sent:?}");
    wait_for("level 0 seeding", 60, || seeding(&agent, &layer(0))).await;
    wait_for("level 1 seeding", 60, || seeding(&agent, &layer(1))).await;
    agent.shutdown.cancel();
    let _ = task.await;

    // The server's record of level 1 now disagrees with the file (a library
    // file replaced under the same name, say): its sidecar carries another
    // sha256, and a restarted server publishes that.
    h.stop().await;
    let sidecar = sdir.join("torrents").join(format!("{}.json", layer(1)));
    let mut v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&sidecar).expect("sidecar")).expect("json");
    v["sha256"] = json!("00".repeat(32));
    v["piece_sha256"] = json!("00".repeat(32));
    std::fs::write(&sidecar, serde_json::to_vec(&v).expect("json")).expect("write");
    let h = start_server(&sdir).await;
    h.server.images.scan().await.expect("scan");
    let mac = "AA:00:00:00:05:22";
    let (agent, task) = online(&h, agent_config(&dir.path().join("b"), h.addr.port(), mac)).await;
    h.server
        .download_desktop(mac, G, Duration::from_secs(10))
        .await
        .expect("sent");
    wait_for("level 0 seeding", 60, || seeding(&agent, &layer(0))).await;
    wait_for("level 1 refused", 60, || {
        report(&h, mac, &format!("task_result:{}", layer(1))).is_some_and(|r| r["result"] == 2)
    })
    .await;
    assert!(
        !disk_path(&agent, &layer(1)).exists(),
        "a refused layer never becomes bootable"
    );
    assert!(
        !bt_dir_entries(&agent).contains(&layer(1)),
        "nor stays as a transfer"
    );
    assert!(
        disk_path(&agent, &layer(0)).exists(),
        "the matching base is kept"
    );
    agent.shutdown.cancel();
    let _ = task.await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn layers_wanted_before_the_engine_started_are_asked_for_again() {
    let dir = tempfile::tempdir().expect("tmp");
    let h = start_server(&dir.path().join("s")).await;
    let lib = h.server.images.dir().to_path_buf();
    make_base(&lib.join(layer(0)), 4);
    h.server.images.scan().await.expect("scan");
    h.server.store.put_group(&group(&[0])).expect("group");
    // The engine's port is taken, so the engine starts only after the
    // session has logged in and run its desktop decision (as when a
    // previous instance is still exiting).
    let blocker = std::net::TcpListener::bind("0.0.0.0:0").expect("bind");
    let port = blocker.local_addr().expect("addr").port();
    let mac = "AA:00:00:00:05:31";
    let mut cfg = agent_config(&dir.path().join("a"), h.addr.port(), mac);
    cfg.bt.listen_port = port;
    let mut ev = h.server.registry.events.subscribe();
    let (agent, task) = start_agent(cfg);
    wait_event(&mut ev, 20, is_login(mac)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        agent.transfers.get().is_none(),
        "the engine is still waiting"
    );
    drop(blocker);
    wait_for("the layer", 90, || {
        report(&h, mac, &format!("task_result:{}", layer(0))).is_some_and(|r| r["result"] == 1)
    })
    .await;
    assert!(same_bytes(
        &disk_path(&agent, &layer(0)),
        &lib.join(layer(0))
    ));
    agent.shutdown.cancel();
    let _ = task.await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_a_manifest_key_only_a_layer_the_server_signed_becomes_bootable() {
    let dir = tempfile::tempdir().expect("tmp");
    let h = start_server(&dir.path().join("s")).await;
    let lib = h.server.images.dir().to_path_buf();
    make_base(&lib.join(layer(0)), 6);
    h.server.images.scan().await.expect("scan");
    h.server.store.put_group(&group(&[0])).expect("group");

    // The published manifest carries the server's signature.
    let public = h.server.images.manifest_public_key();
    let url = h
        .server
        .torrent_url(&layer(0), None)
        .replace(".torrent", ".json")
        .replace("/torrents/", "/manifest/");
    let m: voi::bt::manifest::LayerManifest = reqwest::get(&url)
        .await
        .expect("get")
        .json()
        .await
        .expect("manifest");
    let key = voi::bt::manifest::parse_public_key(&public).expect("key");
    m.verify(&key).expect("signed by the server");

    // Flashed with the server's key: the layer lands.
    let mac = "AA:00:00:00:05:31";
    let mut cfg = agent_config(&dir.path().join("a"), h.addr.port(), mac);
    cfg.bt.manifest_key = Some(public.clone());
    let (agent, task) = online(&h, cfg).await;
    wait_for("the signed layer", 60, || seeding(&agent, &layer(0))).await;
    assert!(same_bytes(
        &disk_path(&agent, &layer(0)),
        &lib.join(layer(0))
    ));
    agent.shutdown.cancel();
    let _ = task.await;

    // Flashed with another server's key: the same bytes are refused, the
    // server hears 9015 result 2 and nothing joins the chain.
    let other = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
    let mac = "AA:00:00:00:05:32";
    let mut cfg = agent_config(&dir.path().join("b"), h.addr.port(), mac);
    cfg.bt.manifest_key = Some(voi::bt::manifest::to_hex(other.verifying_key().as_bytes()));
    let (agent, task) = online(&h, cfg).await;
    wait_for("the layer refused", 60, || {
        report(&h, mac, &format!("task_result:{}", layer(0))).is_some_and(|r| r["result"] == 2)
    })
    .await;
    assert!(!disk_path(&agent, &layer(0)).exists(), "never bootable");
    assert!(agent
        .state
        .read(|s| s.notices.iter().any(|n| n.contains("signature"))));
    agent.shutdown.cancel();
    let _ = task.await;

    // A key that is not a key stops the agent at start, not at the first
    // download.
    let mut cfg = agent_config(&dir.path().join("c"), h.addr.port(), "AA:00:00:00:05:33");
    cfg.bt.manifest_key = Some("not-a-key".into());
    assert!(voi::agent::Agent::new(cfg).is_err());
    h.stop().await;
}

/// An attacker on the LAN in front of the tracker port: passes requests to
/// the real server, or answers the target layer's torrent and manifest
/// from elsewhere.
mod lan_attacker {
    use axum::extract::State;
    use axum::http::{StatusCode, Uri};
    use axum::response::{IntoResponse, Response};
    use std::sync::{Arc, Mutex};

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Mode {
        /// Everything to the real server.
        Pass,
        /// The target layer's torrent and manifest from the attacker's own
        /// server, which seeds a layer of its making under that name.
        Forge,
        /// The target layer's torrent and manifest as the real server
        /// published them before an update; announces to the attacker's
        /// server, which seeds that old layer.
        Replay,
    }

    pub struct Proxy {
        pub mode: Mutex<Mode>,
        pub real: Mutex<String>,
        pub attacker: Mutex<String>,
        /// (torrent, manifest) captured from the real server.
        pub captured: Mutex<Option<(Vec<u8>, Vec<u8>)>>,
        pub layer: String,
        client: reqwest::Client,
    }

    fn get<T: Clone>(m: &Mutex<T>) -> T {
        m.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    async fn route(State(p): State<Arc<Proxy>>, uri: Uri) -> Response {
        let path = uri.path();
        let target = path == format!("/torrents/{}.torrent", p.layer)
            || path == format!("/manifest/{}.json", p.layer);
        let mode = get(&p.mode);
        if target && mode == Mode::Replay {
            if let Some((torrent, manifest)) = get(&p.captured) {
                let body = if path.ends_with(".torrent") {
                    torrent
                } else {
                    manifest
                };
                return (StatusCode::OK, body).into_response();
            }
        }
        let upstream =
            if (target && mode == Mode::Forge) || (path == "/announce" && mode == Mode::Replay) {
                get(&p.attacker)
            } else {
                get(&p.real)
            };
        let pq = uri.path_and_query().map(|x| x.as_str()).unwrap_or(path);
        match p.client.get(format!("{upstream}{pq}")).send().await {
            Ok(r) => {
                let status =
                    StatusCode::from_u16(r.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
                (status, r.bytes().await.unwrap_or_default()).into_response()
            }
            Err(e) => (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
        }
    }

    pub async fn start(layer: String) -> (Arc<Proxy>, u16) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let p = Arc::new(Proxy {
            mode: Mutex::new(Mode::Pass),
            real: Mutex::default(),
            attacker: Mutex::default(),
            captured: Mutex::default(),
            layer,
            client: reqwest::Client::new(),
        });
        let app = axum::Router::new().fallback(route).with_state(p.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        (p, port)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lan_attacker_answering_the_tracker_port_cannot_make_a_keyed_agent_boot_its_layer() {
    use lan_attacker::Mode;
    use voi::server::generation::Delivery;
    init_log();
    let dir = tempfile::tempdir().expect("tmp");
    let (proxy, proxy_port) = lan_attacker::start(layer(1)).await;

    // The real server: terminals reach its tracker port through the
    // attacker's proxy (tracker_url), as they would through a hostile LAN.
    let mut cfg = server_config(&dir.path().join("real"), "127.0.0.1:0");
    cfg.tracker_url = Some(format!("http://127.0.0.1:{proxy_port}/announce"));
    let real = voi::server::Server::start(cfg).await.expect("real server");
    *proxy.real.lock().expect("lock") = format!("http://{}", real.server.tracker_addr);
    let lib = real.server.images.dir().to_path_buf();
    make_base(&lib.join(layer(0)), 6);
    make_diff(&lib, &layer(1), &layer(0), 2, 0x11);
    real.server.images.scan().await.expect("scan");
    let mut g = group(&[0, 1]);
    for d in &mut g.disks {
        d.operate_id = 1;
    }
    real.server.store.put_group(&g).expect("group");
    let key = real.server.images.manifest_public_key();

    // What the real server publishes for layer 1 now (operate_id 1), kept
    // by the attacker with a copy of the layer itself.
    let http = reqwest::Client::new();
    let base = format!("http://{}", real.server.tracker_addr);
    let fetch = |path: String| {
        let http = http.clone();
        async move {
            http.get(path)
                .send()
                .await
                .expect("get")
                .bytes()
                .await
                .expect("body")
                .to_vec()
        }
    };
    let old_torrent = fetch(format!("{base}/torrents/{}.torrent", layer(1))).await;
    let old_manifest = fetch(format!("{base}/manifest/{}.json", layer(1))).await;
    let old_layer = std::fs::read(lib.join(layer(1))).expect("layer 1");
    *proxy.captured.lock().expect("lock") = Some((old_torrent.clone(), old_manifest));

    // The attacker's server: the same base, and its own layer 1.
    let evil = start_server(&dir.path().join("evil")).await;
    *proxy.attacker.lock().expect("lock") = format!("http://{}", evil.server.tracker_addr);
    let evil_lib = evil.server.images.dir().to_path_buf();
    std::fs::copy(lib.join(layer(0)), evil_lib.join(layer(0))).expect("copy base");
    make_diff(&evil_lib, &layer(1), &layer(0), 2, 0x66);
    evil.server.images.scan().await.expect("scan");

    let start_keyed = |name: &str, mac: &'static str, with_key: bool| {
        // Desktops by URL (1017), so the torrent too comes over HTTP.
        real.server
            .store
            .update_terminal(mac, |r| r.delivery = Some(Delivery::SendDesktop))
            .expect("pin delivery");
        let mut c = agent_config(&dir.path().join(name), real.addr.port(), mac);
        if with_key {
            c.bt.manifest_key = Some(key.clone());
        }
        c
    };

    // 1. Forged torrent and manifest for layer 1. The keyed agent takes
    // the real base, refuses the forged layer (9015 result 2) and keeps a
    // bootable chain of the base alone. An agent without a key is fooled:
    // that is what the key is for.
    *proxy.mode.lock().expect("lock") = Mode::Forge;
    let keyed_mac = "AA:00:00:00:06:01";
    let (keyed, tk) = online(&real, start_keyed("keyed", keyed_mac, true)).await;
    let (fooled, tf) = online(&real, start_keyed("fooled", "AA:00:00:00:06:02", false)).await;
    wait_for("the forged layer refused", 90, || {
        report(&real, keyed_mac, &format!("task_result:{}", layer(1)))
            .is_some_and(|r| r["result"] == 2)
    })
    .await;
    wait_for("the keyless agent fooled", 90, || {
        seeding(&fooled, &layer(1))
    })
    .await;
    assert!(same_bytes(
        &disk_path(&fooled, &layer(1)),
        &evil_lib.join(layer(1))
    ));
    wait_for("the real base", 60, || seeding(&keyed, &layer(0))).await;
    assert!(same_bytes(
        &disk_path(&keyed, &layer(0)),
        &lib.join(layer(0))
    ));
    assert!(
        !disk_path(&keyed, &layer(1)).exists(),
        "nothing forged in the chain"
    );
    voi::disk::qemu_img::check(&disk_path(&keyed, &layer(0))).expect("base checks");
    assert!(keyed
        .state
        .read(|s| s.notices.iter().any(|n| n.contains("signature"))));

    // 2. The operator updates layer 1 (operate_id 2). The attacker replays
    // what the real server signed before, and seeds the old layer: a valid
    // signature, a layer matching it, and still refused as out of date.
    std::fs::remove_file(lib.join(layer(1))).expect("rm");
    make_diff(&lib, &layer(1), &layer(0), 2, 0x22);
    real.server.images.scan().await.expect("rescan");
    for d in &mut g.disks {
        if d.dif_level == 1 {
            d.operate_id = 2;
        }
    }
    real.server.store.put_group(&g).expect("group v2");
    std::fs::remove_file(evil_lib.join(layer(1))).expect("rm");
    std::fs::write(evil_lib.join(layer(1)), &old_layer).expect("old layer");
    evil.server.images.scan().await.expect("rescan");
    assert_eq!(
        voi::bt::meta::TorrentMeta::parse(&old_torrent)
            .expect("torrent")
            .info_hash,
        evil.server
            .images
            .get(&layer(1))
            .expect("evil layer 1")
            .info_hash,
        "the attacker seeds exactly the old layer"
    );
    *proxy.mode.lock().expect("lock") = Mode::Replay;
    let replayed_mac = "AA:00:00:00:06:03";
    let (replayed, tr) = online(&real, start_keyed("replayed", replayed_mac, true)).await;
    wait_for("the replayed layer refused", 90, || {
        report(&real, replayed_mac, &format!("task_result:{}", layer(1)))
            .is_some_and(|r| r["result"] == 2)
    })
    .await;
    assert!(!disk_path(&replayed, &layer(1)).exists());
    assert!(replayed
        .state
        .read(|s| s.notices.iter().any(|n| n.contains("replayed"))));

    for (a, t) in [(keyed, tk), (fooled, tf), (replayed, tr)] {
        a.shutdown.cancel();
        let _ = t.await;
    }
    evil.stop().await;
    real.stop().await;
}
