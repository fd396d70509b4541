//! The desktop runtime with real guests: a tiny desktop built from Debian
//! packages (tests/guest/build.sh) is level 0 of a group in voi-server's
//! library, a level 1 changes its "course content"; a real agent gets both
//! over BitTorrent and boots them under QEMU (TCG: the same everywhere).
//! The guest prints what it sees on its serial console, writes a marker,
//! syncs, and goes down by ACPI when the agent gets 1001.
//!
//! Shown in one run: restore (the marker is gone at the next boot),
//! persistent (it stays), SIGKILL of QEMU mid-session (the next boot comes
//! up, the user layer passes qemu-img check), an update arriving while the
//! guest runs (the guest is unaffected; the next boot takes it), a broken
//! level rolled back and reported to the server, and an offline auto-boot.
//! Base and server levels keep their sha256 throughout.

mod common;

use common::*;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use voi::agent::Agent;
use voi::protocol::messages::DesktopGroup;
use voi::protocol::Sectors;

const U: &str = "5e0d1c2b-3a49-4857-a6b5-c4d3e2f1a001";
const G: &str = "5e0d1c2b-3a49-4857-a6b5-c4d3e2f1a0ff";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn sha256(path: &Path) -> String {
    use sha2::Digest;
    let bytes = std::fs::read(path).expect("read layer");
    voi::bt::manifest::to_hex(&sha2::Sha256::digest(&bytes))
}

fn group(levels: &[i64], restore: bool) -> DesktopGroup {
    let mut g = layer_group("lesson", G, U, levels);
    g.desktop_group_restore = i64::from(restore);
    g.os_sys_type = 0;
    for d in &mut g.disks {
        d.real_size = Sectors(64 << 11);
        d.operate_id = 1;
    }
    g
}

/// Writes `text` into a layer at the content offset (40 MiB).
fn write_content(layer: &Path, text: &str) {
    let src = layer.with_extension("content");
    let mut block = text.as_bytes().to_vec();
    block.resize(512, 0);
    std::fs::write(&src, &block).expect("content");
    run(Command::new("qemu-io")
        .args(["-f", "qcow2", "-c"])
        .arg(format!("write -s {} 40M 512", src.display()))
        .arg(layer));
    std::fs::remove_file(&src).expect("rm");
}

fn serial(agent: &Agent) -> String {
    std::fs::read_to_string(agent.desktop.serial_log()).unwrap_or_default()
}

fn line<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines()
        .filter_map(|l| l.split_once(key).map(|(_, v)| v.trim()))
        .next_back()
}

/// Waits for the guest to say it is ready; returns (content, marker,
/// what it wrote, seconds it took).
async fn booted(agent: &Agent, after: u32, secs: u64) -> (String, String, String, f64) {
    let start = Instant::now();
    loop {
        // A boot after `after` (the runtime starts each with an empty log).
        let fresh = agent.desktop.status().boots > after;
        let s = if fresh { serial(agent) } else { String::new() };
        if s.contains("VOI-BUTTON") {
            return (
                line(&s, "VOI-CONTENT:").unwrap_or_default().to_string(),
                line(&s, "VOI-MARKER:").unwrap_or_default().to_string(),
                line(&s, "VOI-WROTE:").unwrap_or_default().to_string(),
                start.elapsed().as_secs_f64(),
            );
        }
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "the guest never came up: state {:?}; serial:\n{s}",
            agent.desktop.status()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn off(agent: &Agent, secs: u64) {
    wait_for("the desktop to be off", secs, || {
        agent.desktop.status().state == "off"
    })
    .await;
}

fn desktop_agent(dir: &Path, port: u16, mac: &str) -> voi::agent::config::AgentConfig {
    let mut cfg = agent_config(dir, port, mac);
    cfg.desktop.accel = "tcg".into();
    cfg.desktop.display = "none".into();
    cfg.desktop.network = "none".into();
    cfg.desktop.vcpus = 1;
    cfg.desktop.memory_mib = 256;
    cfg.desktop.stop_timeout_secs = 30;
    cfg.desktop.healthy_secs = 20;
    cfg.desktop.max_failed_boots = 2;
    cfg.desktop.countdown_secs = 1;
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_delivered_desktop_boots_restores_persists_updates_and_rolls_back() {
    let test = "a_delivered_desktop_boots_restores_persists_updates_and_rolls_back";
    if !has(test, &[QEMU_SYSTEM, SYSLINUX, MTOOLS, BUSYBOX, KERNEL]) {
        return;
    }
    init_log();
    let dir = tempfile::tempdir().expect("tmp");
    let h = start_server(&dir.path().join("s")).await;
    let lib = h.server.images.dir().to_path_buf();
    let base = lib.join(format!("voi_0_{U}"));
    run(Command::new(root().join("tests/guest/build.sh"))
        .arg(&base)
        .arg("course v1"));
    let base_size = std::fs::metadata(&base).expect("base").len();
    assert!(base_size < 64 << 20, "the test guest is {base_size} bytes");
    make_overlay(&lib, &format!("voi_1_{U}"), &format!("voi_0_{U}"));
    write_content(&lib.join(format!("voi_1_{U}")), "course v2");
    h.server.images.scan().await.expect("scan");
    let mac = "AA:00:00:00:D0:01";
    let adir = dir.path().join("a");
    let (agent, task) = start_agent(desktop_agent(&adir, h.addr.port(), mac));
    let env = api(&h)
        .put("/api/v1/desktop_groups", &group(&[0, 1], true))
        .await
        .expect("put");
    assert_eq!(env.code, 0, "{env:?}");
    for l in [0, 1] {
        wait_for("the layers over BitTorrent", 120, || {
            seeding(&agent, &format!("voi_{l}_{U}"))
        })
        .await;
    }
    let disk = |l: u8| agent.desktops.store.dir().join(format!("voi_{l}_{U}"));
    let sums: Vec<String> = [0, 1].iter().map(|&l| sha256(&disk(l))).collect();
    let groups = || agent.state.read(|s| s.desktop_groups.clone());

    // Restore group, first boot: level 1's content, no marker yet.
    let b = agent.desktop.status().boots;
    agent.desktop.boot(groups(), G).expect("boot");
    let (content, marker, wrote, secs) = booted(&agent, b, 120).await;
    eprintln!("first boot (TCG): ready {secs:.1} s after boot was asked");
    assert_eq!(content, "course v2");
    assert_eq!(marker, "");
    assert!(wrote.starts_with("written"), "{wrote}");
    let status = agent.desktop.status();
    assert_eq!(status.state, "running");
    assert_eq!(status.accelerator, "tcg");
    // The server hears which desktop runs, on which accelerator.
    wait_for("9024 on the server", 20, || {
        report(&h, mac, &format!("desktop_login:{G}")).is_some_and(|v| v["accelerator"] == "tcg")
    })
    .await;
    let env = api(&h)
        .get(&format!("/api/v1/terminals/{mac}"))
        .await
        .expect("terminal");
    let running = &env.data.expect("data")["running_desktop"];
    assert_eq!(running["desktop_group_name"], "lesson", "{running}");
    assert_eq!(running["accelerator"], "tcg", "{running}");
    // A picture for the README.
    let png = root().join("docs/desktop-guest.png");
    agent.desktop.screendump(&png).await.expect("screendump");
    assert!(std::fs::read(&png).expect("png").starts_with(b"\x89PNG"));

    // 1001 from the server: ACPI powerdown through the guest.
    let env = api(&h)
        .post(
            &format!("/api/v1/terminals/{mac}/commands"),
            &json!({"command": "shutdown", "params": {}}),
        )
        .await
        .expect("push");
    assert_eq!(env.code, 0, "{env:?}");
    off(&agent, 60).await;
    assert!(
        serial(&agent).contains("VOI-POWERDOWN"),
        "not an ACPI powerdown"
    );

    // Second boot of a restore group: the marker is gone.
    let b = agent.desktop.status().boots;
    agent.desktop.boot(groups(), G).expect("boot");
    let (_, marker, _, _) = booted(&agent, b, 120).await;
    assert_eq!(marker, "", "a restore group kept what the student wrote");
    agent.desktop.stop().await;

    // Persistent: the marker survives a reboot.
    let env = api(&h)
        .put("/api/v1/desktop_groups", &group(&[0, 1], false))
        .await
        .expect("put");
    assert_eq!(env.code, 0, "{env:?}");
    wait_for("the group to become persistent", 20, || {
        groups()
            .iter()
            .any(|g| g.desktop_group_uuid == G && g.desktop_group_restore == 0)
    })
    .await;
    let b = agent.desktop.status().boots;
    agent.desktop.boot(groups(), G).expect("boot");
    let (_, _, wrote, _) = booted(&agent, b, 120).await;
    agent.desktop.stop().await;
    let b = agent.desktop.status().boots;
    agent.desktop.boot(groups(), G).expect("boot");
    let (_, marker, wrote2, _) = booted(&agent, b, 120).await;
    assert_eq!(
        marker, wrote,
        "a persistent group lost what the student wrote"
    );

    // SIGKILL of QEMU mid-session: the runtime boots it again, and the
    // user layer is sound.
    let b = agent.desktop.status().boots;
    let killed = Command::new("pkill")
        .args(["-KILL", "-f", &format!("voi-{G}")])
        .status()
        .expect("pkill");
    assert!(killed.success());
    let (_, marker, _, _) = booted(&agent, b, 120).await;
    assert_eq!(marker, wrote2, "the marker synced before the kill is gone");
    let user = disk(4);
    voi::disk::qemu_img::check(&user).expect("the user layer after SIGKILL");

    // An update while the guest runs: level 2 is delivered and seeded, the
    // running chain is untouched. This level is broken (its boot sector
    // zeroed), so the next boot fails and the runtime rolls back.
    let l2 = lib.join(format!("voi_2_{U}"));
    make_overlay(&lib, &format!("voi_2_{U}"), &format!("voi_1_{U}"));
    run(Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", "write -z 0 4096"])
        .arg(&l2));
    h.server.images.scan().await.expect("scan");
    let boots = agent.desktop.status().boots;
    let env = api(&h)
        .put("/api/v1/desktop_groups", &group(&[0, 1, 2], false))
        .await
        .expect("put");
    assert_eq!(env.code, 0, "{env:?}");
    wait_for("level 2 while the desktop runs", 120, || {
        seeding(&agent, &format!("voi_2_{U}"))
    })
    .await;
    let st = agent.desktop.status();
    assert_eq!(st.state, "running");
    assert_eq!(
        st.boots, boots,
        "the running guest was restarted by an update"
    );
    agent.desktop.stop().await;

    let b = agent.desktop.status().boots;
    agent.desktop.boot(groups(), G).expect("boot");
    let (content, _, _, _) = booted(&agent, b, 180).await;
    assert_eq!(content, "course v2", "the rollback boots level 1");
    let st = agent.desktop.status();
    let rolled = st.rolled_back.clone().expect("rolled back");
    assert_eq!(rolled.broken, format!("voi_2_{U}"));
    assert_eq!(rolled.booted, format!("voi_1_{U}"));
    wait_for("the failure reported to the server", 30, || {
        report(&h, mac, &format!("task_result:voi_2_{U}")).is_some_and(|v| {
            v["result"] == 2
                && v["msg"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("rolled back")
        })
    })
    .await;
    agent.desktop.stop().await;

    // Offline: no server, the agent restarted, the default desktop boots
    // by itself.
    agent.shutdown.cancel();
    let _ = task.await;
    drop(agent);
    h.stop().await;
    let mut cfg = desktop_agent(&adir, free_port(), mac);
    cfg.desktop.auto_boot = true;
    let (agent, task) = start_agent(cfg);
    let (content, _, _, _) = booted(&agent, 0, 180).await;
    assert_eq!(content, "course v2");
    agent.desktop.stop().await;

    // Nobody wrote the base or the server's levels.
    let disk = |l: u8| agent.desktops.store.dir().join(format!("voi_{l}_{U}"));
    for (l, before) in [0u8, 1].iter().zip(&sums) {
        assert_eq!(&sha256(&disk(*l)), before, "level {l} changed");
    }
    for l in [0u8, 1, 2, 4] {
        voi::disk::qemu_img::check(&disk(l)).unwrap_or_else(|e| panic!("level {l}: {e}"));
    }
    agent.shutdown.cancel();
    let _ = task.await;
}

/// A QEMU that aborts as soon as it is given KVM, as on hardware where
/// `kvm_buf_set_msrs` fails ("failed to set MSR 0x10a"): the real QEMU
/// otherwise. A fault injector, not a mock: the guest that boots is real.
fn aborting_kvm_qemu(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join("qemu-kvm-aborts");
    std::fs::write(
        &p,
        "#!/bin/sh\n\
         for a in \"$@\"; do\n\
           if [ \"$a\" = kvm ]; then\n\
             echo 'qemu-system-x86_64: error: failed to set MSR 0x10a to 0x69' >&2\n\
             echo \"qemu-system-x86_64: ../../target/i386/kvm/kvm.c:3273: kvm_buf_set_msrs: Assertion 'ret == cpu->kvm_msr_buf->nmsrs' failed.\" >&2\n\
             kill -ABRT $$\n\
           fi\n\
         done\n\
         exec qemu-system-x86_64 \"$@\"\n",
    )
    .expect("wrapper");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_kvm_that_aborts_is_left_for_tcg_and_no_layer_is_blamed() {
    let test = "a_kvm_that_aborts_is_left_for_tcg_and_no_layer_is_blamed";
    if !has(test, &[QEMU_SYSTEM, SYSLINUX, MTOOLS, BUSYBOX, KERNEL]) {
        return;
    }
    init_log();
    let dir = tempfile::tempdir().expect("tmp");
    let h = start_server(&dir.path().join("s")).await;
    let lib = h.server.images.dir().to_path_buf();
    run(Command::new(root().join("tests/guest/build.sh"))
        .arg(lib.join(format!("voi_0_{U}")))
        .arg("course v1"));
    make_overlay(&lib, &format!("voi_1_{U}"), &format!("voi_0_{U}"));
    write_content(&lib.join(format!("voi_1_{U}")), "course v2");
    h.server.images.scan().await.expect("scan");
    let mac = "AA:00:00:00:D0:02";
    let mut cfg = desktop_agent(&dir.path().join("a"), h.addr.port(), mac);
    // "auto" tries KVM: its device must open, whether or not this machine
    // has /dev/kvm; the wrapper then aborts on it.
    cfg.desktop.accel = "auto".into();
    let fake_kvm = dir.path().join("kvm-device");
    std::fs::write(&fake_kvm, b"").expect("device");
    cfg.desktop.kvm_device = fake_kvm;
    cfg.desktop.qemu = Some(aborting_kvm_qemu(dir.path()));
    let (agent, task) = start_agent(cfg);
    let env = api(&h)
        .put("/api/v1/desktop_groups", &group(&[0, 1], true))
        .await
        .expect("put");
    assert_eq!(env.code, 0, "{env:?}");
    for l in [0, 1] {
        wait_for("the layers over BitTorrent", 120, || {
            seeding(&agent, &format!("voi_{l}_{U}"))
        })
        .await;
    }
    let groups = agent.state.read(|s| s.desktop_groups.clone());
    agent.desktop.boot(groups, G).expect("boot");
    let (content, _, _, secs) = booted(&agent, 0, 120).await;
    eprintln!("KVM aborted, then TCG: the guest was ready {secs:.1} s after boot was asked");
    let st = agent.desktop.status();
    assert_eq!(content, "course v2", "the same chain, level 1 on top");
    assert_eq!(st.accelerator, "tcg");
    assert!(st.accel_note.contains("KVM failed"), "{st:?}");
    assert!(
        st.rolled_back.is_none(),
        "a good layer was rolled back: {st:?}"
    );
    assert_eq!(st.boots, 2, "one start on KVM, one on TCG: {st:?}");
    wait_for("9024 on tcg", 20, || {
        report(&h, mac, &format!("desktop_login:{G}")).is_some_and(|v| v["accelerator"] == "tcg")
    })
    .await;
    assert!(
        report(&h, mac, &format!("task_result:voi_1_{U}")).is_none_or(|r| r["result"] != 2),
        "the server was told a good layer failed"
    );
    // TCG is kept: the next boot does not try KVM again.
    agent.desktop.stop().await;
    let b = agent.desktop.status().boots;
    let groups = agent.state.read(|s| s.desktop_groups.clone());
    agent.desktop.boot(groups, G).expect("boot");
    booted(&agent, b, 120).await;
    assert_eq!(agent.desktop.status().boots, b + 1);
    assert_eq!(agent.desktop.status().accelerator, "tcg");
    agent.desktop.stop().await;
    agent.shutdown.cancel();
    let _ = task.await;
    h.stop().await;
}

/// The API's `desktop` of a terminal, polled until `pred` holds; fails
/// after `secs`. Returns it and how long it took.
async fn api_desktop(
    h: &voi::server::ServerHandle,
    mac: &str,
    secs: f64,
    what: &str,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> (serde_json::Value, f64) {
    let start = Instant::now();
    loop {
        let env = api(h)
            .get(&format!("/api/v1/terminals/{mac}"))
            .await
            .expect("terminal");
        let v = env.data.expect("data");
        if pred(&v) {
            return (v, start.elapsed().as_secs_f64());
        }
        assert!(
            start.elapsed().as_secs_f64() < secs,
            "the API did not show {what} within {secs} s: desktop {} running_desktop {}",
            v["desktop"],
            v["running_desktop"]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_api_shows_what_each_desktop_does_within_2_s() {
    let test = "the_api_shows_what_each_desktop_does_within_2_s";
    if !has(test, &[QEMU_SYSTEM, SYSLINUX, MTOOLS, BUSYBOX, KERNEL]) {
        return;
    }
    init_log();
    const BROKEN: &str = "5e0d1c2b-3a49-4857-a6b5-c4d3e2f1a0b1";
    const BROKEN_G: &str = "5e0d1c2b-3a49-4857-a6b5-c4d3e2f1a0bf";
    let dir = tempfile::tempdir().expect("tmp");
    let h = start_server(&dir.path().join("s")).await;
    let lib = h.server.images.dir().to_path_buf();
    run(Command::new(root().join("tests/guest/build.sh"))
        .arg(lib.join(format!("voi_0_{U}")))
        .arg("course v1"));
    // A desktop that never boots: the same guest with its boot sector
    // zeroed, alone in its group (nothing to roll back to).
    std::fs::copy(
        lib.join(format!("voi_0_{U}")),
        lib.join(format!("voi_0_{BROKEN}")),
    )
    .expect("copy");
    run(Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", "write -z 0 4096"])
        .arg(lib.join(format!("voi_0_{BROKEN}"))));
    h.server.images.scan().await.expect("scan");
    let mut broken = layer_group("broken", BROKEN_G, BROKEN, &[0]);
    broken.os_sys_type = 0;
    broken.default_desktop_group = false;
    for d in &mut broken.disks {
        d.real_size = Sectors(64 << 11);
    }
    for g in [group(&[0], true), broken] {
        let env = api(&h)
            .put("/api/v1/desktop_groups", &g)
            .await
            .expect("put");
        assert_eq!(env.code, 0, "{env:?}");
    }
    let mac = "AA:00:00:00:D0:03";
    let adir = dir.path().join("a");
    let mut cfg = desktop_agent(&adir, h.addr.port(), mac);
    cfg.desktop.max_failed_boots = 1;
    let (agent, task) = start_agent(cfg);
    for l in [format!("voi_0_{U}"), format!("voi_0_{BROKEN}")] {
        wait_for("the layers over BitTorrent", 120, || seeding(&agent, &l)).await;
    }
    let groups = || agent.state.read(|s| s.desktop_groups.clone());
    let mut figures = Vec::new();

    // Boot: running, with the accelerator and the group.
    let b = agent.desktop.status().boots;
    agent.desktop.boot(groups(), G).expect("boot");
    booted(&agent, b, 120).await;
    let (v, t) = api_desktop(&h, mac, 2.0, "running", |v| {
        v["desktop"]["state"] == "running" && v["running_desktop"]["desktop_group_uuid"] == G
    })
    .await;
    assert_eq!(v["desktop"]["accelerator"], "tcg");
    assert_eq!(v["running_desktop"]["desktop_group_name"], "lesson");
    figures.push(("boot", t));

    // Stop: off, and nothing running.
    agent.desktop.stop().await;
    let (_, t) = api_desktop(&h, mac, 2.0, "off", |v| {
        v["desktop"]["state"] == "off" && v["running_desktop"].is_null()
    })
    .await;
    figures.push(("stop", t));

    // A desktop that does not boot: failed, with the reason.
    agent.desktop.boot(groups(), BROKEN_G).expect("boot");
    wait_for("the broken desktop to fail", 120, || {
        agent.desktop.status().state == "failed"
    })
    .await;
    let (v, t) = api_desktop(&h, mac, 2.0, "failed", |v| {
        v["desktop"]["state"] == "failed" && v["running_desktop"].is_null()
    })
    .await;
    assert!(
        !v["desktop"]["reason"]
            .as_str()
            .unwrap_or_default()
            .is_empty(),
        "{}",
        v["desktop"]
    );
    figures.push(("fail", t));

    // Boot again: running; the other group's failure stays its own.
    let b = agent.desktop.status().boots;
    agent.desktop.boot(groups(), G).expect("boot");
    booted(&agent, b, 120).await;
    let (_, t) = api_desktop(&h, mac, 2.0, "running again", |v| {
        v["desktop"]["state"] == "running" && v["running_desktop"]["desktop_group_uuid"] == G
    })
    .await;
    figures.push(("boot again", t));

    // The agent goes away while the desktop runs: never shown running.
    agent.shutdown.cancel();
    let _ = task.await;
    let (v, t) = api_desktop(&h, mac, 2.0, "the last known state", |v| {
        v["desktop"]["state"] == "unknown" && v["running_desktop"].is_null()
    })
    .await;
    assert!(v["desktop"]["last_state"].is_string(), "{}", v["desktop"]);
    figures.push(("agent gone", t));
    let env = api(&h).get("/api/v1/terminals").await.expect("list");
    let listed = env.data.expect("data")["terminals"]
        .as_array()
        .expect("terminals")
        .iter()
        .find(|t| t["mac"] == mac)
        .cloned()
        .expect("listed");
    assert_eq!(
        listed["desktop"], v["desktop"],
        "the list and the record agree"
    );
    eprintln!(
        "the API showed the truth after: {}",
        figures
            .iter()
            .map(|(what, t)| format!("{what} {t:.2} s"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    h.stop().await;
}

/// `voi-agent ctl …` against this agent's control socket.
fn agent_ctl(agent: &Agent, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_voi-agent"))
        .args(["ctl", "--socket"])
        .arg(agent.cfg.control_socket_path())
        .args(args)
        .output()
        .expect("voi-agent ctl");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Waits for boot number `n` (counted by the runtime) to say VOI-READY;
/// returns its marker line.
async fn ready_at_boot(agent: &Agent, n: u32, secs: u64) -> String {
    let start = Instant::now();
    loop {
        let st = agent.desktop.status();
        let s = serial(agent);
        if st.boots == n && st.state == "running" && s.contains("VOI-READY") {
            return line(&s, "VOI-MARKER:").unwrap_or_default().to_string();
        }
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "boot {n} never got ready: {st:?}; serial:\n{s}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_student_restarting_or_shutting_down_from_inside_and_the_terminals_own_buttons() {
    let test = "a_student_restarting_or_shutting_down_from_inside_and_the_terminals_own_buttons";
    if !has(test, &[QEMU_SYSTEM, SYSLINUX, MTOOLS, BUSYBOX, KERNEL]) {
        return;
    }
    init_log();
    const REBOOTS: &str = "5e0d1c2b-3a49-4857-a6b5-c4d3e2f1a0c1";
    const REBOOTS_G: &str = "5e0d1c2b-3a49-4857-a6b5-c4d3e2f1a0cf";
    const OFF: &str = "5e0d1c2b-3a49-4857-a6b5-c4d3e2f1a0d1";
    const OFF_G: &str = "5e0d1c2b-3a49-4857-a6b5-c4d3e2f1a0df";
    let dir = tempfile::tempdir().expect("tmp");
    let h = start_server(&dir.path().join("s")).await;
    let lib = h.server.images.dir().to_path_buf();
    for (disk, content) in [
        (U, "course v1"),
        (REBOOTS, "course v1 +reboot"),
        (OFF, "course v1 +poweroff"),
    ] {
        run(Command::new(root().join("tests/guest/build.sh"))
            .arg(lib.join(format!("voi_0_{disk}")))
            .arg(content));
    }
    h.server.images.scan().await.expect("scan");
    let make = |name: &str, g: &str, disk: &str, restore: bool| {
        let mut grp = layer_group(name, g, disk, &[0]);
        grp.os_sys_type = 0;
        grp.default_desktop_group = false;
        grp.desktop_group_restore = i64::from(restore);
        for d in &mut grp.disks {
            d.real_size = Sectors(64 << 11);
        }
        grp
    };
    for g in [
        group(&[0], false),
        make("reboots", REBOOTS_G, REBOOTS, true),
        make("powers off", OFF_G, OFF, false),
    ] {
        let env = api(&h)
            .put("/api/v1/desktop_groups", &g)
            .await
            .expect("put");
        assert_eq!(env.code, 0, "{env:?}");
    }
    let mac = "AA:00:00:00:D0:04";
    let mut cfg = desktop_agent(&dir.path().join("a"), h.addr.port(), mac);
    // The test guest restarts itself 5 s after it is ready.
    cfg.desktop.healthy_secs = 4;
    let (agent, task) = start_agent(cfg);
    for d in [U, REBOOTS, OFF] {
        wait_for("the layers over BitTorrent", 120, || {
            seeding(&agent, &format!("voi_0_{d}"))
        })
        .await;
    }
    let groups = || agent.state.read(|s| s.desktop_groups.clone());

    // A restart from inside a restore desktop: it comes back by itself,
    // clean, again and again, and nothing is rolled back.
    let b = agent.desktop.status().boots;
    agent.desktop.boot(groups(), REBOOTS_G).expect("boot");
    let first = ready_at_boot(&agent, b + 1, 120).await;
    let second = ready_at_boot(&agent, b + 2, 120).await;
    assert_eq!(first, "");
    assert_eq!(
        second, "",
        "a restore desktop kept what was written before the restart"
    );
    let st = agent.desktop.status();
    assert!(st.rolled_back.is_none(), "{st:?}");
    agent.desktop.stop().await;

    // The same in persistent mode: what was written survives the restart.
    let env = api(&h)
        .put(
            "/api/v1/desktop_groups",
            &make("reboots", REBOOTS_G, REBOOTS, false),
        )
        .await
        .expect("put");
    assert_eq!(env.code, 0, "{env:?}");
    wait_for("the group to become persistent", 20, || {
        groups()
            .iter()
            .any(|g| g.desktop_group_uuid == REBOOTS_G && g.desktop_group_restore == 0)
    })
    .await;
    let b = agent.desktop.status().boots;
    agent.desktop.boot(groups(), REBOOTS_G).expect("boot");
    ready_at_boot(&agent, b + 1, 120).await;
    let wrote = line(&serial(&agent), "VOI-WROTE:")
        .unwrap_or_default()
        .to_string();
    let marker = ready_at_boot(&agent, b + 2, 120).await;
    assert_eq!(
        marker, wrote,
        "a persistent desktop lost what was written before the restart"
    );
    agent.desktop.stop().await;

    // A shutdown from inside: the desktop is off, and stays off.
    let b = agent.desktop.status().boots;
    agent.desktop.boot(groups(), OFF_G).expect("boot");
    ready_at_boot(&agent, b + 1, 120).await;
    wait_for("the desktop to be off", 60, || {
        agent.desktop.status().state == "off"
    })
    .await;
    assert!(serial(&agent).contains("VOI-SELF-POWEROFF"));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(agent.desktop.status().state, "off");
    assert_eq!(agent.desktop.status().boots, b + 1, "it was started again");

    // The terminal's own buttons, without QMP: reset boots it again...
    let b = agent.desktop.status().boots;
    agent.desktop.boot(groups(), G).expect("boot");
    booted(&agent, b, 120).await;
    let (ok, out) = agent_ctl(&agent, &["desktop", "reset"]);
    assert!(ok, "{out}");
    booted(&agent, b + 1, 120).await;
    assert!(agent.desktop.status().rolled_back.is_none());
    // ...and the power button powers it down through the guest.
    let (ok, out) = agent_ctl(&agent, &["desktop", "powerdown"]);
    assert!(ok, "{out}");
    assert_eq!(agent.desktop.status().state, "off", "{out}");
    assert!(
        serial(&agent).contains("VOI-POWERDOWN"),
        "not an ACPI powerdown"
    );
    let (ok, out) = agent_ctl(&agent, &["desktop", "reset"]);
    assert!(!ok && out.contains("no desktop is running"), "{out}");
    agent.shutdown.cancel();
    let _ = task.await;
    h.stop().await;
}
