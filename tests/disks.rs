//! qcow2 chains on real files, checked with qemu-img.

mod common;

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use voi::disk::name::LayerName;
use voi::disk::qemu_img;
use voi::disk::{DiskStore, Problem};

const U: &str = "91f9d1ba-cb4a-41ba-971a-618f9e306571";
const MIB: u64 = 1 << 20;

fn name(level: u8) -> LayerName {
    LayerName::new("voi", i64::from(level), U).expect("name")
}

fn qemu_io(img: &Path, cmd: &str) {
    let ok = Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", cmd])
        .arg(img)
        .output()
        .expect("qemu-io");
    assert!(
        ok.status.success(),
        "qemu-io {cmd}: {}",
        String::from_utf8_lossy(&ok.stderr)
    );
}

/// base(0) ← 1 ← 2 ← 4, each with its own pattern at its own offset, plus
/// overwrites so the merge order matters.
fn build_chain(store: &DiskStore, size: u64, diff_bytes: u64) {
    store.create_image(&name(0), size).expect("base");
    qemu_io(&store.path(&name(0)), "write -P 0x10 0 4M");
    store.create_overlay(&name(1), &name(0)).expect("l1");
    qemu_io(&store.path(&name(1)), "write -P 0x11 1M 2M");
    store.create_overlay(&name(2), &name(1)).expect("l2");
    qemu_io(
        &store.path(&name(2)),
        &format!("write -P 0x12 2M {diff_bytes}"),
    );
    store.create_overlay(&name(4), &name(2)).expect("l4");
    qemu_io(&store.path(&name(4)), "write -P 0x14 3M 512k");
}

fn snapshot(top: &Path, out: &Path) {
    let ok = Command::new("qemu-img")
        .args(["convert", "-U", "-O", "qcow2"])
        .arg(top)
        .arg(out)
        .status()
        .expect("convert");
    assert!(ok.success());
}

fn assert_all_check(store: &DiskStore) {
    let inv = store.inventory().expect("inventory");
    assert!(inv.problems.is_empty(), "{:?}", inv.problems);
    for l in inv.layers.keys() {
        qemu_img::check(&store.dir().join(l)).unwrap_or_else(|e| panic!("{l}: {e}"));
    }
    for c in &inv.chains {
        assert!(c.complete, "{c:?}");
    }
}

#[test]
fn overlays_use_relative_backing_and_explicit_format() {
    let d = tempfile::tempdir().expect("tmp");
    let store = DiskStore::new(d.path(), 0).expect("store");
    store.create_image(&name(0), 64 * MIB).expect("base");
    store.create_overlay(&name(1), &name(0)).expect("overlay");
    let info = qemu_img::info(&store.path(&name(1))).expect("info");
    assert_eq!(info["backing-filename"], name(0).to_string());
    assert_eq!(info["backing-filename-format"], "qcow2");
    assert_eq!(info["virtual-size"], 64 * MIB);
    let inv = store.inventory().expect("inv");
    let l1 = &inv.layers[&name(1).to_string()];
    assert_eq!(
        l1.header.backing_file.as_deref(),
        Some(name(0).to_string().as_str())
    );
    assert_eq!(l1.header.backing_format.as_deref(), Some("qcow2"));
    assert_eq!(l1.header.cluster_size, 65536);
    assert_eq!(
        inv.chains[0].layers,
        vec![name(0).to_string(), name(1).to_string()]
    );
    assert_all_check(&store);
    // Nothing left under temporary names.
    let stray: Vec<_> = std::fs::read_dir(d.path())
        .expect("ls")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".tmp"))
        .collect();
    assert!(stray.is_empty());
    // Wrong direction is refused.
    assert!(store.create_overlay(&name(0), &name(1)).is_err());
}

#[test]
fn merge_keeps_the_guest_view_and_repoints_the_layer_above() {
    let d = tempfile::tempdir().expect("tmp");
    let store = DiskStore::new(d.path().join("disks"), 0).expect("store");
    build_chain(&store, 64 * MIB, 2 * MIB);
    let reference = d.path().join("ref.qcow2");
    snapshot(&store.path(&name(4)), &reference);

    let into = store.merge(&name(2)).expect("merge");
    assert_eq!(into, name(1));
    assert!(!store.path(&name(2)).exists());
    let info = qemu_img::info(&store.path(&name(4))).expect("info");
    assert_eq!(info["backing-filename"], name(1).to_string());
    assert!(qemu_img::same_content(&store.path(&name(4)), &reference).expect("compare"));
    assert_all_check(&store);
    assert!(store.pending_intent().expect("journal").is_none());
}

#[test]
fn inventory_reports_every_kind_of_problem() {
    let d = tempfile::tempdir().expect("tmp");
    let dir = d.path();
    let store = DiskStore::new(dir, 0).expect("store");
    let other = "22222222-cb4a-41ba-971a-618f9e306571";
    let n = |l: u8, u: &str| {
        LayerName::new("voi", i64::from(l), u)
            .expect("n")
            .to_string()
    };
    let create = |file: &str, backing: Option<&str>| {
        let mut c = Command::new("qemu-img");
        c.args(["create", "-q", "-f", "qcow2"]);
        if let Some(b) = backing {
            c.args(["-u", "-b", b, "-F", "qcow2"]);
        }
        assert!(c
            .arg(dir.join(file))
            .arg("16M")
            .status()
            .expect("qemu-img")
            .success());
    };
    // Broken link: level 1 on a base that does not exist.
    create(&n(1, U), Some(&n(0, U)));
    // Outside the data dir.
    let third = "33333333-cb4a-41ba-971a-618f9e306571";
    create(&n(0, third), None);
    create(&n(1, third), Some("/etc/passwd"));
    // Level mismatch: level 1 on a level-2 sibling; cycle between 1 and 2.
    let fourth = "44444444-cb4a-41ba-971a-618f9e306571";
    create(&n(0, fourth), None);
    create(&n(2, fourth), Some(&n(1, fourth)));
    create(&n(1, fourth), Some(&n(2, fourth)));
    // Orphan: two children of one base, only the top is on the chain.
    create(&n(0, other), None);
    create(&n(1, other), Some(&n(0, other)));
    create(&n(2, other), Some(&n(0, other)));
    // Not a layer name at all; and garbage with a layer name.
    std::fs::write(dir.join("notes.txt"), b"x").expect("write");
    let fifth = "55555555-cb4a-41ba-971a-618f9e306571";
    std::fs::write(dir.join(n(0, fifth)), b"QFI\xfbgarbage").expect("write");

    let inv = store.inventory().expect("inv");
    let has = |pred: &dyn Fn(&Problem) -> bool| inv.problems.iter().any(pred);
    assert!(
        has(&|p| matches!(p, Problem::BrokenLink { layer, .. } if *layer == n(1, U))),
        "{:?}",
        inv.problems
    );
    assert!(has(
        &|p| matches!(p, Problem::OutsideDataDir { backing, .. } if backing == "/etc/passwd")
    ));
    assert!(has(
        &|p| matches!(p, Problem::LevelMismatch { layer, .. } if *layer == n(1, fourth))
    ));
    assert!(has(
        &|p| matches!(p, Problem::Orphan { layer } if *layer == n(1, other))
    ));
    assert!(has(
        &|p| matches!(p, Problem::ForeignFile { file } if file == "notes.txt")
    ));
    assert!(has(
        &|p| matches!(p, Problem::Unreadable { layer, .. } if *layer == n(0, fifth))
    ));
    assert!(!inv.chain(U).expect("chain").complete);
    assert!(inv.chain(other).expect("chain").complete);
}

#[test]
fn cycle_is_detected() {
    let d = tempfile::tempdir().expect("tmp");
    let store = DiskStore::new(d.path(), 0).expect("store");
    store.create_image(&name(0), 16 * MIB).expect("base");
    store.create_overlay(&name(1), &name(0)).expect("1");
    store.create_overlay(&name(2), &name(1)).expect("2");
    // Point 1 at 2: 2 → 1 → 2. (qemu-img refuses to open such chains, so
    // rewrite the header field directly.)
    let p = store.path(&name(1));
    let mut bytes = std::fs::read(&p).expect("read");
    let off = u64::from_be_bytes(bytes[8..16].try_into().expect("8")) as usize;
    let len = u32::from_be_bytes(bytes[16..20].try_into().expect("4")) as usize;
    let new = name(2).to_string();
    assert_eq!(new.len(), len);
    bytes[off..off + len].copy_from_slice(new.as_bytes());
    std::fs::write(&p, bytes).expect("write");
    let inv = store.inventory().expect("inv");
    assert!(
        inv.problems
            .iter()
            .any(|p| matches!(p, Problem::LevelMismatch { .. } | Problem::Cycle { .. })),
        "{:?}",
        inv.problems
    );
    assert!(!inv.chain(U).expect("chain").complete);
}

#[test]
fn delete_reset_and_clear() {
    let d = tempfile::tempdir().expect("tmp");
    let store = DiskStore::new(d.path(), 0).expect("store");
    build_chain(&store, 32 * MIB, MIB);
    // Reset the user layer: its writes are gone, the chain is intact.
    let before = d
        .path()
        .join("..")
        .join(format!("before-{}.qcow2", std::process::id()));
    snapshot(&store.path(&name(2)), &before);
    store.reset_user_layer(&name(2)).expect("reset");
    assert!(qemu_img::same_content(&store.path(&name(4)), &before).expect("compare"));
    let _ = std::fs::remove_file(&before);
    assert_all_check(&store);
    let removed = store.delete_above(U, 1).expect("delete");
    assert_eq!(removed.len(), 2);
    assert!(store.path(&name(1)).exists() && !store.path(&name(2)).exists());
    assert_all_check(&store);
    store.clear_all().expect("clear");
    assert!(store.inventory().expect("inv").layers.is_empty());
}

#[test]
fn space_guard_refuses_before_writing() {
    let d = tempfile::tempdir().expect("tmp");
    let store = DiskStore::new(d.path(), u64::MAX / 2).expect("store");
    let err = store.create_image(&name(0), MIB).expect_err("no space");
    assert!(err.to_string().contains("not enough space"), "{err}");
    assert!(!store.path(&name(0)).exists());
}

// ---------------------------------------------------------------- crashes

fn agent_config(dir: &Path) -> PathBuf {
    let cfg = dir.join("agent.toml");
    std::fs::write(
        &cfg,
        format!("server_ip = \"127.0.0.1\"\nmac = \"AA:00:00:00:03:01\"\ndata_dir = \"{}\"\ndisk_margin_mb = 0\n", dir.join("data").display()),
    )
    .expect("config");
    cfg
}

fn journal_step(dir: &Path) -> Option<String> {
    let b = std::fs::read(dir.join(".journal.json")).ok()?;
    let v: Value = serde_json::from_slice(&b).ok()?;
    v["step"].as_str().map(String::from)
}

/// Kills `voi-agent disk merge` (its whole process group, qemu-img
/// included, as a power cut would) once the journal shows `target`.
/// Returns the step that was in force when the kill landed, if any.
fn merge_and_kill_at(cfg: &Path, disk_dir: &Path, target: &str, delay_us: u64) -> Option<String> {
    use std::os::unix::process::CommandExt;
    let mut child = Command::new(env!("CARGO_BIN_EXE_voi-agent"))
        .args(["--config"])
        .arg(cfg)
        .args(["disk", "merge", &name(2).to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .spawn()
        .expect("spawn");
    let pgid = nix::unistd::Pid::from_raw(child.id() as i32);
    let start = std::time::Instant::now();
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            return None;
        }
        if journal_step(disk_dir).as_deref() == Some(target) {
            std::thread::sleep(std::time::Duration::from_micros(delay_us));
            let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
            let _ = child.wait();
            return journal_step(disk_dir).or(Some("done".into()));
        }
        if start.elapsed().as_secs() > 60 {
            let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
            panic!("merge never reached {target}");
        }
        std::thread::sleep(std::time::Duration::from_micros(200));
    }
}

#[test]
fn merge_killed_at_each_step_recovers_to_a_clean_chain() {
    let mut hit = std::collections::BTreeSet::new();
    for (target, delay_us) in [
        ("commit", 0),
        ("commit", 30_000),
        ("rebase", 0),
        ("drop", 0),
    ] {
        for _attempt in 0..8 {
            let d = tempfile::tempdir().expect("tmp");
            let cfg = agent_config(d.path());
            let disk_dir = d.path().join("data").join("disks");
            let store = DiskStore::new(&disk_dir, 0).expect("store");
            build_chain(&store, 256 * MIB, 96 * MIB);
            let reference = d.path().join("ref.qcow2");
            snapshot(&store.path(&name(4)), &reference);

            let landed = merge_and_kill_at(&cfg, &disk_dir, target, delay_us);
            // Restart: opening the store replays the journal.
            let out = Command::new(env!("CARGO_BIN_EXE_voi-agent"))
                .args(["--config"])
                .arg(&cfg)
                .args(["disk", "recover"])
                .output()
                .expect("recover");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert_all_check(&store);
            assert!(
                qemu_img::same_content(&store.path(&name(4)), &reference).expect("compare"),
                "content after kill at {landed:?}"
            );
            let merged = !store.path(&name(2)).exists();
            let untouched = store.path(&name(2)).exists()
                && qemu_img::info(&store.path(&name(4))).expect("info")["backing-filename"]
                    == name(2).to_string();
            assert!(
                merged || untouched,
                "neither complete nor rolled back after kill at {landed:?}"
            );
            assert!(store.pending_intent().expect("journal").is_none());
            if let Some(step) = landed {
                eprintln!(
                    "killed during {step} (target {target}): {}",
                    if merged { "completed" } else { "rolled back" }
                );
                if step == target {
                    hit.insert(step);
                    break;
                }
            }
        }
    }
    for step in ["commit", "rebase", "drop"] {
        assert!(hit.contains(step), "no kill landed during {step}: {hit:?}");
    }
    eprintln!("crash points hit: {hit:?}");
}

#[tokio::test]
async fn agent_reports_chains_and_applies_the_decision() {
    use common::*;
    let dir = tempfile::tempdir().expect("tmp");
    let h = start_server(&dir.path().join("s")).await;
    let adir = dir.path().join("a");
    // A terminal that already holds 0 ← 1 ← 2 ← 4 of a desktop.
    let store = DiskStore::new(adir.join("disks"), 0).expect("store");
    build_chain(&store, 32 * MIB, MIB);
    let mut cat = voi::disk::Catalog::default();
    for (l, op) in [(0u8, 0i64), (1, 1), (2, 1)] {
        cat.layers.insert(
            name(l).to_string(),
            voi::disk::LayerMeta {
                operate_id: op,
                disk_type: 0,
                group_uuid: String::new(),
                local_only: false,
                enabled: true,
                restore: false,
            },
        );
    }
    cat.save(store.dir()).expect("catalog");
    let reference = dir.path().join("ref.qcow2");
    snapshot(&store.path(&name(2)), &reference);

    // The server committed its 2 into 1 and made a new 2 (merge mode).
    let group = json!({"desktop_group_uuid": "f15a1759-789e-4e17-a3e1-e723121e9314", "desktop_group_name": "lab",
        "default_desktop_group": true, "diff_mode": 1, "desktop_group_restore": 1,
        "disks": [
            {"uuid": U, "type": 0, "dif_level": 0, "prefix": "voi", "operate_id": 0, "max_dif": 2, "real_size": "65536", "reserve_size": "0"},
            {"uuid": U, "type": 0, "dif_level": 1, "prefix": "voi", "operate_id": 2, "max_dif": 2, "real_size": "65536", "reserve_size": "0"},
            {"uuid": U, "type": 0, "dif_level": 2, "prefix": "voi", "operate_id": 2, "max_dif": 2, "real_size": "65536", "reserve_size": "0"}]});
    // Straight into the store: the server's library has none of these
    // layers (the API would refuse the group), the agent has them all.
    h.server
        .store
        .put_group(&serde_json::from_value(group).expect("a desktop group"))
        .expect("group");
    let mac = "AA:00:00:00:03:02";
    let mut ev = h.server.registry.events.subscribe();
    let (agent, task) = start_agent(agent_config_for(&adir, h.addr.port(), mac));
    wait_event(&mut ev, 20, is_heartbeat(mac)).await;

    // Local 2 was merged into 1; the user layer on the old 2 is gone; the
    // new 2 is queued for download.
    assert!(!store.path(&name(2)).exists());
    assert!(!store.path(&name(4)).exists());
    assert!(qemu_img::same_content(&store.path(&name(1)), &reference).expect("compare"));
    assert_all_check(&store);
    let pending = agent.state.read(|s| s.pending_downloads.clone());
    assert_eq!(pending.iter().map(|d| d.level).collect::<Vec<_>>(), vec![2]);
    assert_eq!(
        voi::disk::Catalog::load(store.dir()).layers[&name(1).to_string()].operate_id,
        2
    );

    // Reported to the server: 9026 and 9011.
    let rec = h.server.store.terminal(mac).expect("store").expect("rec");
    assert_eq!(rec.reports["desktop_groups"], U);
    assert_eq!(rec.reports["desktop_info"]["disks"][0]["dif_level"], 1);
    assert_eq!(
        rec.reports["desktop_info"]["disks"][0]["real_size"],
        (32 * MIB / 512).to_string()
    );

    // ctl disks shows the chain.
    let disks = voi::agent::control_socket::call(
        &agent.cfg.control_socket_path(),
        &voi::agent::control_socket::ControlRequest::Disks,
    )
    .await
    .expect("ctl");
    assert_eq!(
        disks.data.expect("data")["chains"][0]["layers"]
            .as_array()
            .expect("layers")
            .len(),
        2
    );

    // add_data_disk, with its bad input; then clear_all_desktop.
    let a = api(&h);
    let bad = a
        .push(
            mac,
            "add_data_disk",
            json!({"enable": 1, "restore": 0, "size": -3}),
            10,
        )
        .await
        .expect("api");
    assert_eq!(bad.data.expect("data")["reply"]["code"], 88888);
    let ok = a
        .push(
            mac,
            "add_data_disk",
            json!({"enable": 1, "restore": 1, "size": 2}),
            10,
        )
        .await
        .expect("api");
    let reply = ok.data.expect("data")["reply"].clone();
    assert_eq!(reply["code"], 0, "{reply}");
    let data_disk = reply["data"]["disk"]
        .as_str()
        .expect("disk name")
        .to_string();
    let info = qemu_img::info(&adir.join("disks").join(&data_disk)).expect("info");
    assert_eq!(info["virtual-size"], 2u64 << 30);
    let shrink = a
        .push(
            mac,
            "add_data_disk",
            json!({"enable": 1, "restore": 1, "size": 1}),
            10,
        )
        .await
        .expect("api");
    assert_eq!(shrink.data.expect("data")["reply"]["code"], 88888);

    // boot-plan, as the boot loader runs it: restore group → fresh user layer.
    agent.shutdown.cancel();
    let _ = task.await;
    let cfgp = adir.join("agent.toml");
    std::fs::write(
        &cfgp,
        format!(
            "server_ip = \"127.0.0.1\"\nmac = \"{mac}\"\ndata_dir = \"{}\"\ndisk_margin_mb = 0\n",
            adir.display()
        ),
    )
    .expect("cfg");
    let out = Command::new(env!("CARGO_BIN_EXE_voi-agent"))
        .args(["--config"])
        .arg(&cfgp)
        .args([
            "boot-plan",
            "f15a1759-789e-4e17-a3e1-e723121e9314",
            "--prepare",
        ])
        .output()
        .expect("boot-plan");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plan: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(
        plan["system"]["top"],
        adir.join("disks")
            .join(name(4).to_string())
            .display()
            .to_string()
    );
    assert_eq!(
        plan["system"]["base"],
        adir.join("disks")
            .join(name(0).to_string())
            .display()
            .to_string()
    );
    assert_eq!(plan["restore"], true);
    assert_eq!(
        plan["local_data"]["path"],
        adir.join("disks").join(&data_disk).display().to_string()
    );
    let bad_plan = Command::new(env!("CARGO_BIN_EXE_voi-agent"))
        .args(["--config"])
        .arg(&cfgp)
        .args(["boot-plan", "../../etc"])
        .output()
        .expect("boot-plan");
    assert!(!bad_plan.status.success());

    let (agent, task) = start_agent(agent_config_for(&adir, h.addr.port(), mac));
    wait_event(&mut ev, 20, is_heartbeat(mac)).await;
    let r = a
        .push(mac, "clear_all_desktop", json!({}), 20)
        .await
        .expect("api");
    assert_eq!(r.data.expect("data")["reply"]["code"], 0);
    assert!(store.inventory().expect("inv").layers.is_empty());
    agent.shutdown.cancel();
    let _ = task.await;
    h.stop().await;
}

fn agent_config_for(dir: &Path, port: u16, mac: &str) -> voi::agent::config::AgentConfig {
    let mut c = common::agent_config(dir, port, mac);
    c.disk_margin_mb = 0;
    c
}
