//! A classroom's routine edits cost what they change (issue 37): the
//! server owns every layer's operate_id, so a console save with no change
//! moves no byte, adding a level sends that level alone, a layer whose
//! content changed in the library is fetched again on its own, and
//! removing a level removes only it.

mod common;

use common::*;
use serde_json::Value;
use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use voi::server::registry::ServerEvent;

const U: &str = "3b7e6a10-58c2-4d4e-9a0b-2f1c3d4e5a01";
const G: &str = "3b7e6a10-58c2-4d4e-9a0b-2f1c3d4e5aff";

fn layer(level: u8) -> String {
    format!("voi_{level}_{U}")
}

/// Bytes the server's seeder has sent, over every layer it has held.
fn sent(h: &voi::server::ServerHandle) -> u64 {
    h.server.images.uploaded_total()
}

/// The stored group, as the console has it (`GET /api/v1/desktop_groups`).
async fn stored_group(h: &voi::server::ServerHandle) -> Value {
    let env = api(h).get("/api/v1/desktop_groups").await.expect("groups");
    env.data.expect("data")["desktop_group_list"]
        .as_array()
        .expect("list")
        .iter()
        .find(|g| g["desktop_group_uuid"] == G)
        .cloned()
        .expect("the group is stored")
}

/// Waits until the agent has asked for the group list again after `ev`
/// was subscribed (the 1024 reached it), then a moment for its decision.
async fn decided(ev: &mut tokio::sync::broadcast::Receiver<ServerEvent>, mac: &str) {
    wait_event(ev, 20, |e| {
        matches!(e, ServerEvent::Request { mac: m, service, .. }
            if m == mac && service == "get_desktop_group_list")
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_console_save_moves_nothing_and_an_edit_moves_only_what_it_changes() {
    init_log();
    let dir = tempfile::tempdir().expect("tmp");
    let h = start_server(&dir.path().join("s")).await;
    let lib = h.server.images.dir().to_path_buf();
    make_base(&lib.join(layer(0)), 8);
    make_diff(&lib, &layer(1), &layer(0), 1, 7);
    let env = api(&h)
        .post("/api/v1/images", &serde_json::json!({}))
        .await
        .expect("rescan");
    assert_eq!(env.code, 0, "{env:?}");
    let env = api(&h)
        .put(
            "/api/v1/desktop_groups",
            &layer_group("Room 101 Lab", G, U, &[0]),
        )
        .await
        .expect("put");
    assert_eq!(env.code, 0, "{env:?}");

    let mac = "AA:00:00:00:37:01";
    let (a, ta) = start_agent(agent_config(&dir.path().join("a"), h.addr.port(), mac));
    wait_for("the base over BitTorrent", 60, || seeding(&a, &layer(0))).await;
    let disk = |l: u8| a.desktops.store.dir().join(layer(l));
    let ino = |l: u8| std::fs::metadata(disk(l)).map(|m| m.ino()).ok();
    let base_ino = ino(0).expect("the base is in the chain");
    let base_len = std::fs::metadata(lib.join(layer(0))).expect("lib").len();
    let diff_len = std::fs::metadata(lib.join(layer(1))).expect("lib").len();
    let day_start = sent(&h);
    assert!(day_start >= base_len, "{day_start} < {base_len}");

    // 1. A console save with no change, as the old console sent it: every
    //    operate_id one higher. The server keeps the library's and says so.
    let mut g = stored_group(&h).await;
    for d in g["disks"].as_array_mut().expect("disks") {
        d["operate_id"] = Value::from(d["operate_id"].as_i64().unwrap_or(0) + 1);
    }
    let mut ev = h.server.registry.events.subscribe();
    let env = api(&h)
        .put("/api/v1/desktop_groups", &g)
        .await
        .expect("save");
    assert_eq!(env.code, 0, "{env:?}");
    let data = env.data.expect("data");
    let ignored = data["operate_id_ignored"].as_array().expect("ignored");
    assert_eq!(ignored.len(), 1, "{data}");
    assert_eq!(ignored[0]["layer"], layer(0));
    assert_eq!(ignored[0]["sent"], 1);
    assert_eq!(ignored[0]["library"], 0);
    decided(&mut ev, mac).await;
    assert_eq!(
        ino(0),
        Some(base_ino),
        "a save with no change replaced the base on the terminal"
    );
    assert!(seeding(&a, &layer(0)));
    assert_eq!(stored_group(&h).await["disks"][0]["operate_id"], 0);
    let after_save = sent(&h);
    eprintln!(
        "console save with no change: {} bytes sent",
        after_save - day_start
    );
    assert_eq!(after_save, day_start, "a save with no change sent bytes");

    // 2. An edit adding a level sends that level alone.
    let mut ev = h.server.registry.events.subscribe();
    let env = api(&h)
        .put(
            "/api/v1/desktop_groups",
            &layer_group("Room 101 Lab", G, U, &[0, 1]),
        )
        .await
        .expect("add a level");
    assert_eq!(env.code, 0, "{env:?}");
    decided(&mut ev, mac).await;
    wait_for("level 1 over BitTorrent", 60, || seeding(&a, &layer(1))).await;
    assert_eq!(ino(0), Some(base_ino), "adding a level replaced the base");
    let added = sent(&h) - after_save;
    eprintln!("adding a {diff_len}-byte level: {added} bytes sent");
    assert!(
        added as f64 <= 1.3 * diff_len as f64,
        "adding a {diff_len}-byte level sent {added} bytes"
    );

    // 3. Level 1's content changes in the library (copied under a
    //    temporary name, then renamed): its version moves by one, the
    //    terminal fetches it again, and the base stays.
    let diff_ino = ino(1).expect("level 1");
    let before = sent(&h);
    make_diff(&lib, "voi-new-level-1.tmp", &layer(0), 1, 9);
    std::fs::rename(lib.join("voi-new-level-1.tmp"), lib.join(layer(1))).expect("rename");
    let mut ev = h.server.registry.events.subscribe();
    let env = api(&h)
        .post("/api/v1/images", &serde_json::json!({}))
        .await
        .expect("rescan");
    assert_eq!(env.code, 0, "{env:?}");
    let g = stored_group(&h).await;
    assert_eq!(g["disks"][0]["operate_id"], 0, "{g}");
    assert_eq!(g["disks"][1]["operate_id"], 1, "{g}");
    decided(&mut ev, mac).await;
    wait_for("the new level 1", 60, || {
        seeding(&a, &layer(1)) && ino(1).is_some_and(|i| i != diff_ino)
    })
    .await;
    assert_eq!(ino(0), Some(base_ino), "a new level 1 replaced the base");
    let new_len = std::fs::metadata(lib.join(layer(1))).expect("lib").len();
    let moved = sent(&h) - before;
    eprintln!("level 1 changed ({new_len} bytes): {moved} bytes sent");
    assert!(
        moved as f64 <= 1.3 * new_len as f64,
        "{moved} > 1.3 × {new_len}"
    );
    assert_eq!(
        std::fs::read(disk(1)).expect("chain"),
        std::fs::read(lib.join(layer(1))).expect("lib"),
        "the terminal's level 1 is the library's new one"
    );

    // 4. Removing the level removes it alone.
    let mut ev = h.server.registry.events.subscribe();
    let env = api(&h)
        .put(
            "/api/v1/desktop_groups",
            &layer_group("Room 101 Lab", G, U, &[0]),
        )
        .await
        .expect("remove a level");
    assert_eq!(env.code, 0, "{env:?}");
    decided(&mut ev, mac).await;
    wait_for("level 1 to go", 20, || ino(1).is_none()).await;
    assert_eq!(ino(0), Some(base_ino), "removing a level replaced the base");
    voi::disk::qemu_img::check(&disk(0)).unwrap_or_else(|e| panic!("{}: {e}", layer(0)));
    a.shutdown.cancel();
    let _ = ta.await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_layer_still_being_copied_in_is_not_taken_until_it_holds_still() {
    init_log();
    let dir = tempfile::tempdir().expect("tmp");
    let mut cfg = server_config(&dir.path().join("s"), "127.0.0.1:0");
    cfg.library_settle_ms = 1000;
    let h = voi::server::Server::start(cfg).await.expect("server");
    let lib = h.server.images.dir().to_path_buf();
    let src = dir.path().join("copy-source");
    make_base(&src, 8);
    let bytes = std::fs::read(&src).expect("source");
    let name = layer(0);
    let torrents = dir.path().join("s/torrents");

    // A slow copy straight into place: appends for 5 s.
    let dest = lib.join(&name);
    let writer = {
        let bytes = bytes.clone();
        std::thread::spawn(move || {
            use std::io::Write;
            let mut f = std::fs::File::create(&dest).expect("create");
            let chunks = 50;
            let step = bytes.len().div_ceil(chunks);
            for c in bytes.chunks(step) {
                f.write_all(c).expect("write");
                f.flush().expect("flush");
                std::thread::sleep(Duration::from_millis(100));
            }
            f.sync_all().expect("sync");
        })
    };
    // A copy under a temporary name, renamed when done, meanwhile.
    let tmp = lib.join(format!("voi_0_{}.tmp", G));
    std::fs::write(&tmp, &bytes[..bytes.len() / 2]).expect("tmp");
    let started = std::time::Instant::now();
    let mut looks = 0;
    while !writer.is_finished() {
        let env = api(&h)
            .post("/api/v1/images", &serde_json::json!({}))
            .await
            .expect("rescan");
        let data = env.data.expect("data");
        // A scan that began before the last byte may end after it and take
        // the whole file; never a part of it.
        if let Some(img) = h.server.images.get(&name) {
            assert_eq!(
                img.length,
                bytes.len() as u64,
                "a half-copied file was taken ({:?} in): {data}",
                started.elapsed()
            );
            assert!(writer.is_finished(), "taken before the copy ended: {data}");
        } else {
            looks += 1;
            assert!(
                !torrents.join(format!("{name}.torrent")).exists(),
                "a torrent was made of a half-copied file"
            );
        }
        assert!(
            !data.to_string().contains(".tmp"),
            "a temporary name was looked at: {data}"
        );
    }
    writer.join().expect("writer");
    eprintln!(
        "{looks} rescans during a {:?} copy took nothing",
        started.elapsed()
    );
    assert!(looks >= 2, "only {looks} looks while the copy ran");
    std::fs::write(&tmp, &bytes).expect("tmp");
    std::fs::rename(&tmp, lib.join(format!("voi_0_{G}"))).expect("rename");
    let env = api(&h)
        .post("/api/v1/images", &serde_json::json!({}))
        .await
        .expect("rescan");
    assert_eq!(env.code, 0);
    for l in [name.clone(), format!("voi_0_{G}")] {
        let img = h.server.images.get(&l).expect("taken once it held still");
        assert_eq!(img.length, bytes.len() as u64, "{l}");
    }
    h.stop().await;
}

/// Issue 37.10: `voi-server ctl` finds the API and its token in the
/// server's config file, prints tables a person reads, JSON with --json,
/// and exits non-zero when the server refuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ctl_reads_the_servers_config_and_prints_tables() {
    init_log();
    let dir = tempfile::tempdir().expect("tmp");
    let mut cfg = server_config(&dir.path().join("s"), "127.0.0.1:0");
    cfg.api_listen = format!("127.0.0.1:{}", free_port());
    cfg.api_token = Some("the-token".into());
    let h = voi::server::Server::start(cfg.clone())
        .await
        .expect("server");
    let mac = "AA:00:00:00:37:0A";
    let mut ev = h.server.registry.events.subscribe();
    let (a, ta) = start_agent(agent_config(&dir.path().join("a"), h.addr.port(), mac));
    wait_event(&mut ev, 20, is_heartbeat(mac)).await;
    let config = dir.path().join("server.toml");
    std::fs::write(
        &config,
        format!(
            "api_listen = \"{}\"\napi_token = \"the-token\"\ndata_dir = \"{}\"\n",
            cfg.api_listen,
            cfg.data_dir.display()
        ),
    )
    .expect("config");
    let ctl = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_voi-server"))
            .arg("ctl")
            .arg("--config")
            .arg(&config)
            .args(args)
            .output()
            .expect("ctl");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (ok, out, err) = ctl(&["terminals"]);
    assert!(ok, "{err}");
    let header = out.lines().next().unwrap_or_default();
    assert!(
        header.starts_with("MAC") && header.contains("NAME") && header.contains("DESKTOP"),
        "{out}"
    );
    assert!(out.contains(mac) && out.contains("online"), "{out}");
    assert!(out.contains("1 terminal(s), 1 online"), "{out}");
    assert!(!out.contains('{'), "a table, not JSON: {out}");
    let (ok, out, _) = ctl(&["--json", "terminals"]);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&out).expect("JSON with --json");
    assert_eq!(v["code"], 0);
    let (ok, out, _) = ctl(&["terminal", mac]);
    assert!(ok && out.contains("desktop"), "{out}");
    // A refusal: non-zero, with the server's reason.
    let (ok, _, err) = ctl(&["--token", "wrong", "terminals"]);
    assert!(!ok, "a wrong token exited 0");
    assert!(
        err.contains("server answered") || err.contains("401"),
        "{err}"
    );
    a.shutdown.cancel();
    let _ = ta.await;
    h.stop().await;
}

/// Issue 39.6: a server restarted on another tracker port (or address)
/// serves torrents that announce it, though they were cached by the run
/// before; aria2c, which uses only the torrent (as v2.28 does), downloads.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_torrent_cached_by_an_earlier_run_announces_todays_tracker() {
    if !has(
        "a_torrent_cached_by_an_earlier_run_announces_todays_tracker",
        &[ARIA2C],
    ) {
        return;
    }
    init_log();
    let dir = tempfile::tempdir().expect("tmp");
    let mut cfg = server_config(&dir.path().join("s"), "127.0.0.1:0");
    cfg.tracker_listen = format!("127.0.0.1:{}", free_port());
    cfg.bt_listen_port = free_port();
    let h = voi::server::Server::start(cfg.clone())
        .await
        .expect("server");
    let lib = h.server.images.dir().to_path_buf();
    make_base(&lib.join(layer(0)), 4);
    h.server.images.scan().await.expect("scan");
    h.stop().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    // The same data dir, the tracker on another port.
    let mut moved = cfg.clone();
    moved.tracker_listen = format!("127.0.0.1:{}", free_port());
    let h = loop {
        match voi::server::Server::start(moved.clone()).await {
            Ok(h) => break h,
            Err(e) => {
                eprintln!("not up yet: {e:#}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    };
    let url = format!(
        "http://{}/torrents/{}.torrent",
        moved.tracker_listen,
        layer(0)
    );
    let torrent = voi::agent::transfers::server_link::fetch_torrent(&url)
        .await
        .expect("torrent");
    let meta = voi::bt::meta::TorrentMeta::parse(&torrent).expect("parse");
    assert!(
        meta.announce
            .iter()
            .all(|a| a.contains(&moved.tracker_listen)),
        "the served torrent announces {:?}, not {}",
        meta.announce,
        moved.tracker_listen
    );
    let tpath = dir.path().join("layer.torrent");
    std::fs::write(&tpath, &torrent).expect("write");
    let get = dir.path().join("aria-get");
    let mut leecher = aria2c(&[
        &format!("--dir={}", get.display()),
        "--seed-time=0",
        &format!("--listen-port={}", free_port()),
        tpath.to_str().expect("utf8"),
    ])
    .spawn()
    .expect("aria2c");
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(s) = leecher.try_wait().expect("wait") {
            break s;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "aria2c stalled");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(status.success(), "aria2c: {status}");
    assert_eq!(
        std::fs::read(get.join(layer(0))).expect("got"),
        std::fs::read(lib.join(layer(0))).expect("lib")
    );
    h.stop().await;
}
