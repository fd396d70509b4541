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
