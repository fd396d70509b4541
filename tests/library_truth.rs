//! The image library and delivery tell the operator the truth: every file
//! is served or refused with its reason; a group naming an unservable layer
//! is refused; a layer a terminal refused for its content is not fetched
//! again; `download-desktop --wait` means bootable, and survives a server
//! restart and a terminal dropping off.

mod common;

use common::*;
use std::process::Command;
use std::time::Duration;

use voi::server::Server;

const U: &str = "7c1e2d3f-4a5b-4c6d-8e7f-0a1b2c3d4e01";
const B: &str = "7c1e2d3f-4a5b-4c6d-8e7f-0a1b2c3d4e02";
const C: &str = "7c1e2d3f-4a5b-4c6d-8e7f-0a1b2c3d4e03";
const D: &str = "7c1e2d3f-4a5b-4c6d-8e7f-0a1b2c3d4e04";
const G: &str = "7c1e2d3f-4a5b-4c6d-8e7f-0a1b2c3d4eff";

fn ctl(h: &voi::server::ServerHandle, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_voi-server"))
        .args(["ctl", "--api"])
        .arg(h.api_addr.to_string())
        .args(["--token", &h.server.api_token])
        .args(args)
        .output()
        .expect("voi-server ctl")
}

fn refused_reason(images: &serde_json::Value, file: &str) -> Option<String> {
    images["refused"]
        .as_array()?
        .iter()
        .find(|r| r["file"] == file)
        .and_then(|r| r["reason"].as_str().map(String::from))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_library_file_is_served_or_refused_with_its_reason() {
    let dir = tempfile::tempdir().expect("tmp");
    let h = start_server(&dir.path().join("s")).await;
    let lib = h.server.images.dir().to_path_buf();
    make_base(&lib.join(format!("voi_0_{U}")), 2);
    // voi_1_<B> on voi_0_<U>: the diff named under another disk's uuid.
    make_diff(&lib, &format!("voi_1_{B}"), &format!("voi_0_{U}"), 1, 7);
    // A diff whose parent is not there.
    make_base(&lib.join(format!("voi_0_{C}")), 1);
    make_diff(&lib, &format!("voi_1_{C}"), &format!("voi_0_{C}"), 1, 7);
    std::fs::remove_file(lib.join(format!("voi_0_{C}"))).expect("rm");
    // A level the protocol's server side does not have.
    make_diff(&lib, &format!("voi_3_{U}"), &format!("voi_0_{U}"), 1, 7);
    // Not qcow2, and a name that does not parse.
    std::fs::write(lib.join(format!("voi_0_{D}")), vec![0x55u8; 4096]).expect("write");
    std::fs::write(lib.join("notes.txt"), b"hello").expect("write");
    // A diff of another virtual size than its parent.
    run(Command::new("qemu-img").current_dir(&lib).args([
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        &format!("voi_0_{U}"),
        "-F",
        "qcow2",
        &format!("voi_1_{U}"),
        "64M",
    ]));
    h.server.images.scan().await.expect("scan");

    let env = api(&h).get("/api/v1/images").await.expect("images");
    let data = env.data.expect("data");
    let served: Vec<String> = data["images"]
        .as_array()
        .expect("images")
        .iter()
        .filter_map(|i| i["layer"].as_str().map(String::from))
        .collect();
    assert_eq!(served, vec![format!("voi_0_{U}")], "{data:#}");
    let expect = [
        (format!("voi_1_{B}"), "parent of another uuid"),
        (format!("voi_1_{C}"), "parent missing"),
        (format!("voi_3_{U}"), "out of range"),
        (format!("voi_0_{D}"), "not qcow2"),
        ("notes.txt".to_string(), "name does not parse"),
        (format!("voi_1_{U}"), "virtual size"),
    ];
    for (file, why) in &expect {
        let reason = refused_reason(&data, file)
            .unwrap_or_else(|| panic!("{file} not listed as refused: {data:#}"));
        assert!(
            reason.contains(why),
            "{file}: {reason:?} should say {why:?}"
        );
    }
    // A refused layer has no torrent for anyone.
    let url = format!(
        "http://127.0.0.1:{}/torrents/voi_1_{B}.torrent",
        h.server.tracker_addr.port()
    );
    let status = reqwest::get(&url).await.expect("get").status();
    assert_eq!(status, reqwest::StatusCode::NOT_FOUND);

    // `ctl images` says the same, with the reasons.
    let out = ctl(&h, &["images"]);
    let text = String::from_utf8_lossy(&out.stdout);
    for (file, why) in &expect {
        assert!(
            text.contains(file.as_str()) && text.contains(why),
            "ctl images: {text}"
        );
    }

    // A group naming a refused layer is refused, and so is one naming a
    // layer that is not there; both name the layer.
    let bad = layer_group("bad", G, U, &[0, 1]);
    let env = api(&h)
        .put("/api/v1/desktop_groups", &bad)
        .await
        .expect("put");
    assert_ne!(env.code, 0, "{env:?}");
    assert!(
        env.msg.contains(&format!("voi_1_{U}")) && env.msg.contains("virtual size"),
        "{}",
        env.msg
    );
    let missing = layer_group("missing", G, "7c1e2d3f-4a5b-4c6d-8e7f-0a1b2c3d4e99", &[0]);
    let env = api(&h)
        .put("/api/v1/desktop_groups", &missing)
        .await
        .expect("put");
    assert_ne!(env.code, 0, "{env:?}");
    assert!(env.msg.contains("not in the image library"), "{}", env.msg);
    assert!(
        h.server.store.groups().expect("groups").is_empty(),
        "a refused group was stored"
    );
    let good = layer_group("good", G, U, &[0]);
    let env = api(&h)
        .put("/api/v1/desktop_groups", &good)
        .await
        .expect("put");
    assert_eq!(env.code, 0, "{env:?}");

    // The layer goes away after the group was stored: the group list
    // warns that it cannot be delivered.
    std::fs::remove_file(lib.join(format!("voi_0_{U}"))).expect("rm");
    h.server.images.scan().await.expect("scan");
    let env = api(&h).get("/api/v1/desktop_groups").await.expect("groups");
    let warn = &env.data.expect("data")["undeliverable"][G];
    assert!(warn.to_string().contains(&format!("voi_0_{U}")), "{warn}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_layer_refused_for_its_content_is_not_fetched_again() {
    let dir = tempfile::tempdir().expect("tmp");
    let h = start_server(&dir.path().join("s")).await;
    let lib = h.server.images.dir().to_path_buf();
    make_base(&lib.join(format!("voi_0_{U}")), 4);
    h.server.images.scan().await.expect("scan");
    let layer = format!("voi_0_{U}");
    let length = h.server.images.get(&layer).expect("image").length;
    h.server
        .store
        .put_group(&layer_group("lab", G, U, &[0]))
        .expect("group");

    // The agent trusts another server's key: every manifest this server
    // signs is refused, which no retry can change.
    let other = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
    let mac = "AA:00:00:00:93:01";
    let mut cfg = agent_config(&dir.path().join("a"), h.addr.port(), mac);
    cfg.bt.manifest_key = Some(voi::bt::manifest::to_hex(other.verifying_key().as_bytes()));
    let (a, ta) = start_agent(cfg);
    let result = |h: &voi::server::ServerHandle| report(h, mac, &format!("task_result:{layer}"));
    wait_for("the terminal's failed task_result", 60, || {
        result(&h).is_some_and(|r| r["result"] == 2)
    })
    .await;
    let r = result(&h).expect("result");
    let msg = r["msg"].as_str().unwrap_or_default().to_string();
    assert!(msg.contains("permanent"), "9015 msg: {msg:?}");
    let uploaded = |h: &voi::server::ServerHandle| {
        h.server
            .images
            .status()
            .iter()
            .find(|i| i.layer == layer)
            .map_or(0, |i| i.uploaded_bytes)
    };
    let after_failure = uploaded(&h);
    // Four of the agent's request rounds (10 s apart) and a 1024.
    for _ in 0..3 {
        h.server.tell_groups_changed();
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
    let total = uploaded(&h);
    eprintln!(
        "seeded {total} bytes of a {length}-byte layer ({after_failure} by the failure, {} after it)",
        total - after_failure
    );
    assert!(
        total <= 2 * length,
        "the seeder sent {total} bytes of a {length}-byte layer for one permanent failure"
    );
    assert!(!a.desktops.store.dir().join(&layer).exists());

    // --wait says why, and fails.
    let out = ctl(
        &h,
        &["download-desktop", mac, G, "--wait", "--wait-secs", "30"],
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("refused"), "{text}");
    // The agent's status lists the refusal.
    let refused = a.transfers.get().expect("transfers").refusals();
    assert_eq!(refused.len(), 1, "{refused:?}");
    a.shutdown.cancel();
    let _ = ta.await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn download_wait_means_bootable_and_survives_a_restart_and_a_drop() {
    let dir = tempfile::tempdir().expect("tmp");
    let sdir = dir.path().join("s");
    let mut cfg = server_config(&sdir, &format!("127.0.0.1:{}", free_port()));
    cfg.api_listen = format!("127.0.0.1:{}", free_port());
    cfg.tracker_listen = format!("127.0.0.1:{}", free_port());
    cfg.bt_listen_port = free_port();
    // Slow enough that the transfer outlives the restart below.
    cfg.bt_upload_limit = 512 << 10;
    init_log();
    let h = Server::start(cfg.clone()).await.expect("server");
    let lib = h.server.images.dir().to_path_buf();
    make_base(&lib.join(format!("voi_0_{U}")), 24);
    h.server.images.scan().await.expect("scan");
    let mac = "AA:00:00:00:94:01";
    let adir = dir.path().join("a");
    let mut ev = h.server.registry.events.subscribe();
    let (a, ta) = start_agent(agent_config(&adir, h.addr.port(), mac));
    wait_event(&mut ev, 20, is_heartbeat(mac)).await;
    // Stored without telling anyone: the operator's command is what makes
    // the terminal hold the group.
    h.server
        .store
        .put_group(&layer_group("lab", G, U, &[0]))
        .expect("group");
    assert!(a.state.read(|s| s.desktop_groups.is_empty()));

    let log = dir.path().join("wait.log");
    let child = Command::new(env!("CARGO_BIN_EXE_voi-server"))
        .args(["ctl", "--api"])
        .arg(h.api_addr.to_string())
        .args(["--token", &h.server.api_token])
        .args(["download-desktop", mac, G, "--wait", "--wait-secs", "120"])
        .stdout(std::fs::File::create(dir.path().join("wait.out")).expect("out"))
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("ctl");
    let mut child = Proc(child);
    let text = || std::fs::read_to_string(&log).unwrap_or_default();
    tokio::time::sleep(Duration::from_secs(2)).await;

    // The terminal drops off mid-transfer.
    a.shutdown.cancel();
    let _ = ta.await;
    drop(a);
    wait_for("ctl to say the terminal dropped off", 20, || {
        text().contains("dropped off")
    })
    .await;

    // The server restarts while the operator waits.
    let token = h.server.api_token.clone();
    h.stop().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut cfg2 = cfg.clone();
    cfg2.api_token = Some(token);
    let h = Server::start(cfg2).await.expect("server again");
    let (a, ta) = start_agent(agent_config(&adir, h.addr.port(), mac));

    let started = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.0.try_wait().expect("wait") {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "ctl never ended: {}",
            text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let out = format!(
        "{}{}",
        std::fs::read_to_string(dir.path().join("wait.out")).unwrap_or_default(),
        text()
    );
    eprintln!("{out}");
    assert!(status.success(), "{out}");
    assert!(out.contains("reconnected"), "{out}");
    assert!(out.contains("bootable"), "{out}");
    // What --wait promised: boot-plan boots it.
    let groups = a.state.read(|s| s.desktop_groups.clone());
    let plan = a.desktops.boot_plan(&groups, G, false).expect("boot plan");
    assert!(plan.system.is_some(), "{plan:?}");
    a.shutdown.cancel();
    let _ = ta.await;
    h.stop().await;
}
