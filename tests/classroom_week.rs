//! A week in a classroom (issue 37), as a school runs it: one voi-server
//! and three terminals, each in its own network namespace on a bridge, the
//! real test guest (tests/guest/build.sh) booted under TCG as the desktop,
//! and the server's clock stepped by the test. Each school day:
//!
//! * 07:50 the class schedule wakes the room (the magic packets go to the
//!   test's bridge only), and the terminals' agents start as a powered-on
//!   machine would; every desktop boots by itself;
//! * during the lesson the course's level 1 is published again: it
//!   downloads while the guests run;
//! * the group is saved from the console with no change (the old
//!   console's operate_id + 1 included): nothing moves;
//! * an edit adds level 2: only level 2 moves;
//! * one agent is SIGKILLed at a random point and started again, and the
//!   server is restarted once;
//! * one student presses Ctrl-Alt-Del: the guest restarts itself, clean;
//! * 17:30 the schedule warns, then shuts the room down by ACPI.
//!
//! At the end of every day: each terminal holds the group's chain and runs
//! it, the API says of each terminal what QEMU does, the bytes the server
//! sent are at most 1.3 × the bytes newly published that day (per terminal,
//! with a MiB of protocol), and the restore desktop came back clean. The
//! day's figures are printed so a regression shows in the log.
//!
//! Needs root, iproute2 and the guest's packages; `VOI_WEEK_DAYS` (3 by
//! default) sets how many days.

mod common;

use common::lan::Lan;
use common::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use voi::protocol::Sectors;
use voi::server::wake::ManualClock;
use voi::server::{Server, ServerConfig};

const U: &str = "9c4e2a10-3b5d-4e6f-8a7b-1c2d3e4f5a01";
const G: &str = "9c4e2a10-3b5d-4e6f-8a7b-1c2d3e4f5aff";
const ROOM: &str = "101";

fn layer(level: u8) -> String {
    format!("voi_{level}_{U}")
}

fn at(s: &str) -> chrono::NaiveDateTime {
    chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S").expect("time")
}

/// The room's desktop group: restore mode, Linux (virtio), 64 MiB disk.
fn group(levels: &[i64]) -> voi::protocol::messages::DesktopGroup {
    let mut g = layer_group("Room 101 Lab", G, U, levels);
    g.desktop_group_restore = 1;
    g.os_sys_type = 0;
    for d in &mut g.disks {
        d.real_size = Sectors(64 << 11);
    }
    g
}

/// A level of the course: an overlay whose content sector says `text`,
/// copied into the library under a temporary name and renamed, as the
/// README tells a school to.
fn publish(lib: &Path, level: u8, text: &str) -> u64 {
    let tmp = format!("voi-course-{level}.part");
    let _ = std::fs::remove_file(lib.join(&tmp));
    make_overlay(lib, &tmp, &layer(level - 1));
    let src = lib.join("content.part");
    let mut block = text.as_bytes().to_vec();
    block.resize(512, 0);
    std::fs::write(&src, &block).expect("content");
    run(Command::new("qemu-io")
        .current_dir(lib)
        .args(["-f", "qcow2", "-c"])
        .arg(format!("write -s {} 40M 512", src.display()))
        .arg(&tmp));
    std::fs::remove_file(&src).expect("rm");
    std::fs::rename(lib.join(&tmp), lib.join(layer(level))).expect("rename into place");
    std::fs::metadata(lib.join(layer(level)))
        .expect("published")
        .len()
}

struct Terminal {
    mac: String,
    ns: String,
    dir: PathBuf,
    agent: Option<Proc>,
}

impl Terminal {
    fn config(&self) -> PathBuf {
        self.dir.join("agent.toml")
    }

    fn start(&mut self) {
        let log = self.dir.join("agent.log");
        self.agent = Some(lan::spawn_in(
            &self.ns,
            env!("CARGO_BIN_EXE_voi-agent"),
            &["--config", &self.config().display().to_string(), "run"],
            &log,
        ));
    }

    fn kill(&mut self) {
        if let Some(mut p) = self.agent.take() {
            // The `ip netns exec` wrapper execs the agent: same pid.
            let _ = p.0.kill();
            let _ = p.0.wait();
        }
    }

    fn ctl(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_voi-agent"))
            .arg("--config")
            .arg(self.config())
            .arg("ctl")
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

    fn desktop(&self) -> Value {
        let (ok, out) = self.ctl(&["desktop"]);
        if !ok {
            return Value::Null;
        }
        serde_json::from_str::<Value>(&out)
            .map(|v| v.get("data").cloned().unwrap_or(v))
            .unwrap_or(Value::Null)
    }

    /// Whether this terminal holds `layer` at `info_hash` whole: in its
    /// chain, or fetched and waiting for the desktop to be off.
    fn has_whole(&self, layer: &str, info_hash: &str) -> bool {
        let (ok, out) = self.ctl(&["transfers"]);
        if !ok {
            return false;
        }
        let v: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
        let data = v.get("data").unwrap_or(&v);
        data["transfers"].as_array().is_some_and(|list| {
            list.iter().any(|x| {
                x["transfer"]["layer"] == layer
                    && x["transfer"]["info_hash"] == info_hash
                    && x["have_bytes"].as_u64().is_some()
                    && x["have_bytes"] == x["transfer"]["length"]
            })
        })
    }

    fn serial(&self) -> String {
        std::fs::read_to_string(self.dir.join("data/desktop/serial.log")).unwrap_or_default()
    }

    /// Whether a QEMU of this terminal runs (its serial log is in its data
    /// dir, so the command line names it).
    fn qemu_runs(&self) -> bool {
        let needle = self
            .dir
            .join("data/desktop/serial.log")
            .display()
            .to_string();
        Command::new("pgrep")
            .args(["-f", &needle])
            .output()
            .is_ok_and(|o| o.status.success())
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- {} ({}): the agent's log ends:\n{}",
                self.mac,
                self.ns,
                self.log_tail()
            );
        }
        self.kill();
        let needle = self.dir.join("data/desktop").display().to_string();
        let _ = Command::new("pkill")
            .args(["-KILL", "-f", &needle])
            .status();
    }
}

async fn terminal_view(h: &voi::server::ServerHandle, mac: &str) -> Value {
    api(h)
        .get(&format!("/api/v1/terminals/{mac}"))
        .await
        .ok()
        .and_then(|e| e.data)
        .unwrap_or(Value::Null)
}

async fn wait_until(what: &str, secs: u64, mut f: impl AsyncFnMut() -> bool) -> f64 {
    let start = Instant::now();
    loop {
        if f().await {
            return start.elapsed().as_secs_f64();
        }
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "timed out after {secs} s waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[test]
fn a_week_in_a_classroom() {
    let test = "a_week_in_a_classroom";
    if !has(
        test,
        &[
            Need::Root,
            IP,
            QEMU_SYSTEM,
            SYSLINUX,
            MTOOLS,
            BUSYBOX,
            KERNEL,
        ],
    ) {
        return;
    }
    // SAFETY: moves only this thread (and what it starts) into a network
    // namespace of its own: the server's wake broadcasts reach only the
    // test's bridge, never the machine's own LAN.
    if unsafe { nix::libc::unshare(nix::libc::CLONE_NEWNET) } != 0 {
        panic!("unshare: {}", std::io::Error::last_os_error());
    }
    sh(&["ip", "link", "set", "lo", "up"]).expect("lo");
    let subnet = format!("10.237.{}", 10 + std::process::id() % 200);
    let lan = Lan::create(&subnet, 3).expect("lan");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(week(&lan, &subnet));
}

async fn week(lan: &Lan, subnet: &str) {
    init_log();
    let days: u32 = std::env::var("VOI_WEEK_DAYS")
        .ok()
        .and_then(|d| d.parse().ok())
        .unwrap_or(3);
    let dir = tempfile::tempdir().expect("tmp");
    let port = free_port();
    let mut cfg: ServerConfig =
        server_config(&dir.path().join("server"), &format!("0.0.0.0:{port}"));
    cfg.api_listen = format!("127.0.0.1:{}", free_port());
    cfg.tracker_listen = format!("0.0.0.0:{}", free_port());
    cfg.bt_listen_port = free_port();
    cfg.advertise_ip = Some(format!("{subnet}.254"));
    cfg.wake.schedule_tick_ms = 100;
    cfg.wake.timeout_secs = 60;
    cfg.api_token = Some("week".into());
    // Monday.
    let clock = std::sync::Arc::new(ManualClock::new(at("2026-11-30 07:00:00")));
    let mut h = Server::start_with_clock(cfg.clone(), clock.clone())
        .await
        .expect("server");
    let lib = h.server.images.dir().to_path_buf();
    run(
        Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/guest/build.sh"))
            .arg(lib.join(layer(0)))
            .arg("course day 0"),
    );
    publish(&lib, 1, "course day 0");
    h.server.scan_library().await.expect("scan");
    let env = api(&h)
        .put("/api/v1/desktop_groups", &group(&[0, 1]))
        .await
        .expect("group");
    assert_eq!(env.code, 0, "{env:?}");
    let env = api(&h)
        .put(
            "/api/v1/schedule",
            &json!([
                {"room": ROOM, "at": "07:50", "action": "wake"},
                {"room": ROOM, "at": "17:30", "action": "shutdown", "warn_secs": 60},
            ]),
        )
        .await
        .expect("schedule");
    assert_eq!(env.code, 0, "{env:?}");

    let mut room: Vec<Terminal> = (0..3)
        .map(|i| {
            let mac = format!("52:54:00:37:00:{:02x}", i + 1);
            let tdir = dir.path().join(format!("t{i}"));
            std::fs::create_dir_all(&tdir).expect("dir");
            let t = Terminal {
                mac: mac.clone(),
                ns: lan.ns(i),
                dir: tdir.clone(),
                agent: None,
            };
            std::fs::write(
                t.config(),
                format!(
                    "server_ip = \"{subnet}.254\"\nserver_port = {port}\nmac = \"{mac}\"\ndata_dir = \"{}\"\n\
                     heartbeat_secs = 1\nconnect_retry_ms = 300\nperformance_secs = 0\n\
                     [bt]\nlisten_port = 6881\nprogress_secs = 1\n\
                     [platform]\npower = \"recording\"\nboot = \"recording\"\nhostname = \"recording\"\nnetwork = \"recording\"\nwake = \"recording\"\n\
                     [desktop]\naccel = \"tcg\"\ndisplay = \"none\"\nnetwork = \"none\"\nvnc = \"off\"\nvcpus = 1\nmemory_mib = 192\n\
                     healthy_secs = 4\nstop_timeout_secs = 30\nauto_boot = true\ncountdown_secs = 3\n",
                    tdir.join("data").display()
                ),
            )
            .expect("config");
            t
        })
        .collect();

    // Before the first day: the terminals are installed once and fetch
    // the desktop (not counted in any day).
    for t in room.iter_mut() {
        t.start();
    }
    for t in &room {
        let mac = t.mac.clone();
        wait_until("each terminal on the server", 60, async || {
            h.server.registry.macs().contains(&mac)
        })
        .await;
        let env = api(&h)
            .put(
                &format!("/api/v1/terminals/{mac}/room"),
                &json!({ "room": ROOM }),
            )
            .await
            .expect("room");
        assert_eq!(env.code, 0, "{env:?}");
    }
    for t in &room {
        wait_until("the first desktop", 180, async || {
            t.desktop()["state"] == "running"
        })
        .await;
    }
    // The evening before: off.
    for t in room.iter_mut() {
        let (ok, out) = t.ctl(&["stop"]);
        assert!(ok, "{out}");
        t.kill();
    }

    let mut seed: u64 = 0x5eed_0037;
    let mut rand = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let mut report = Vec::new();
    for day in 0..days {
        // Monday 30 November, then December.
        let date = match day {
            0 => "2026-11-30".to_string(),
            d => format!("2026-12-{d:02}"),
        };
        // The admin's evening edit is undone in the morning: level 2 goes
        // (it costs nothing: a level removed is deleted, nothing fetched).
        let env = api(&h)
            .put("/api/v1/desktop_groups", &group(&[0, 1]))
            .await
            .expect("group");
        assert_eq!(env.code, 0, "{env:?}");
        let _ = std::fs::remove_file(lib.join(layer(2)));
        h.server.scan_library().await.expect("scan");
        let sent_at_start = h.server.images.uploaded_total();
        let mut published = 0u64;

        // 07:50: the schedule wakes the room; the machines come up.
        clock.set(at(&format!("{date} 07:49:58")));
        tokio::time::sleep(Duration::from_millis(300)).await;
        clock.set(at(&format!("{date} 07:50:02")));
        let wake_started = Instant::now();
        wait_until("the morning wake", 20, async || {
            h.server
                .schedule_runs
                .runs()
                .iter()
                .any(|r| r.what == "wake" && r.at.starts_with(&date))
        })
        .await;
        let run = h
            .server
            .schedule_runs
            .runs()
            .into_iter()
            .rfind(|r| r.what == "wake")
            .expect("run");
        for t in &room {
            let said = run
                .terminals
                .iter()
                .find(|(m, _)| m == &t.mac)
                .map(|(_, w)| w.clone())
                .unwrap_or_default();
            assert!(said.starts_with("sent"), "{}: {said}", t.mac);
        }
        for t in room.iter_mut() {
            t.start();
        }
        for t in &room {
            let mac = t.mac.clone();
            wait_until("every desktop to boot by itself", 180, async || {
                terminal_view(&h, &mac).await["desktop"]["state"] == "running"
            })
            .await;
        }
        let ready = wake_started.elapsed().as_secs_f64();
        // Each boots what the server holds: yesterday's level 1, taken in
        // while it was off (this morning's list dropped level 2).
        if day > 0 {
            let want = format!("course day {day}");
            for t in &room {
                wait_until("the guest to say what it runs", 120, async || {
                    t.serial().contains("VOI-CONTENT:")
                })
                .await;
                let content = t
                    .serial()
                    .lines()
                    .filter_map(|l| {
                        l.split_once("VOI-CONTENT:")
                            .map(|(_, v)| v.trim().to_string())
                    })
                    .next_back()
                    .unwrap_or_default();
                assert_eq!(
                    content, want,
                    "{}: boots another chain than the server's",
                    t.mac
                );
            }
        }

        // The lesson; a new level 1 is published during it.
        let boots_before: Vec<u64> = room
            .iter()
            .map(|t| t.desktop()["boots"].as_u64().unwrap_or(0))
            .collect();
        published += publish(&lib, 1, &format!("course day {}", day + 1));
        let env = api(&h)
            .post("/api/v1/images", &json!({}))
            .await
            .expect("rescan");
        assert_eq!(env.code, 0, "{env:?}");
        // One agent is SIGKILLed at a random point of it.
        let victim = (day as usize) % room.len();
        tokio::time::sleep(Duration::from_millis(rand(3000))).await;
        room[victim].kill();
        tokio::time::sleep(Duration::from_millis(500)).await;
        room[victim].start();
        // Each terminal fetches it while its guest runs (the chain keeps
        // the copy the guest has open until the desktop is off).
        let new_hash = h.server.images.get(&layer(1)).expect("published").info_hash;
        for t in &room {
            wait_until(
                "the new level 1 fetched on every terminal",
                120,
                async || t.has_whole(&layer(1), &new_hash),
            )
            .await;
        }
        // The guests ran on; the update waits for the next boot (except on
        // the terminal whose agent was killed, which booted again).
        for (i, t) in room.iter().enumerate() {
            if i != victim {
                assert_eq!(
                    t.desktop()["boots"].as_u64().unwrap_or(0),
                    boots_before[i],
                    "{}: an update restarted a running desktop",
                    t.mac
                );
            }
        }

        // A console save with no change, as the old console sent it.
        let mut stored = api(&h).get("/api/v1/desktop_groups").await.expect("get");
        let mut g = stored.data.take().expect("data")["desktop_group_list"][0].clone();
        for d in g["disks"].as_array_mut().expect("disks") {
            d["operate_id"] = json!(d["operate_id"].as_i64().unwrap_or(0) + 1);
        }
        let mut sent = h.server.images.uploaded_total() - sent_at_start;
        let env = api(&h)
            .put("/api/v1/desktop_groups", &g)
            .await
            .expect("save");
        assert_eq!(env.code, 0, "{env:?}");

        // The server restarts once.
        let token = cfg.api_token.clone();
        h.stop().await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut again = cfg.clone();
        again.api_token = token;
        // The old server's tasks let go of its store as they end.
        let started = Instant::now();
        h = loop {
            match Server::start_with_clock(again.clone(), clock.clone()).await {
                Ok(h) => break h,
                Err(e) if started.elapsed() < Duration::from_secs(15) => {
                    eprintln!("server not up again yet: {e:#}");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => panic!("server again: {e:#}"),
            }
        };
        for t in &room {
            let mac = t.mac.clone();
            wait_until("each terminal back on the server", 60, async || {
                h.server.registry.macs().contains(&mac)
            })
            .await;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        // (A new server's seeder counts from zero.)
        let save_cost = h.server.images.uploaded_total();
        assert!(
            save_cost <= 1 << 20,
            "a save with no change (and a restart) sent {save_cost} bytes"
        );

        // An edit adding a level.
        published += publish(&lib, 2, &format!("course day {} part 2", day + 1));
        h.server.scan_library().await.expect("scan");
        let env = api(&h)
            .put("/api/v1/desktop_groups", &group(&[0, 1, 2]))
            .await
            .expect("edit");
        assert_eq!(env.code, 0, "{env:?}");
        let l2_hash = h.server.images.get(&layer(2)).expect("published").info_hash;
        for t in &room {
            wait_until("level 2 fetched on every terminal", 120, async || {
                t.has_whole(&layer(2), &l2_hash)
            })
            .await;
        }

        // A student presses Ctrl-Alt-Del: the guest restarts itself, clean.
        let student = ((day + 1) as usize) % room.len();
        let s = &room[student];
        let b = s.desktop()["boots"].as_u64().unwrap_or(0);
        wait_until("the student's guest ready", 120, async || {
            s.serial().contains("VOI-BUTTON")
        })
        .await;
        let (ok, out) = s.ctl(&["desktop", "ctrl-alt-delete"]);
        assert!(ok, "{out}");
        wait_until("the guest back by itself", 120, async || {
            let d = s.desktop();
            d["boots"].as_u64().unwrap_or(0) > b
                && d["state"] == "running"
                && s.serial().contains("VOI-READY")
        })
        .await;
        let serial = s.serial();
        let marker = serial
            .lines()
            .filter_map(|l| {
                l.split_once("VOI-MARKER:")
                    .map(|(_, v)| v.trim().to_string())
            })
            .next_back()
            .unwrap_or_default();
        assert_eq!(
            marker, "",
            "{}: a restore desktop kept what was written",
            s.mac
        );
        assert!(
            s.desktop()["rolled_back"].is_null(),
            "a restart blamed a layer"
        );

        // End of the day's lesson: the checks.
        for t in &room {
            let v = terminal_view(&h, &t.mac).await;
            let runs = t.qemu_runs();
            assert_eq!(
                v["desktop"]["state"] == "running",
                runs,
                "{}: the API says {} and QEMU {}\n{}",
                t.mac,
                v["desktop"],
                if runs { "runs" } else { "does not run" },
                t.log_tail()
            );
            assert!(runs, "{}: its desktop does not run", t.mac);
        }
        sent += h.server.images.uploaded_total();
        let budget = (1.3 * published as f64) as u64 * room.len() as u64 + (1 << 20);

        let boots: Vec<u64> = room
            .iter()
            .map(|t| t.desktop()["boots"].as_u64().unwrap_or(0))
            .collect();

        // 17:30: the schedule warns at 17:29, then shuts the room down.
        // (A jump of more than 5 min fires nothing: the clock is stepped
        // to just before, then over the warning.)
        clock.set(at(&format!("{date} 17:28:55")));
        tokio::time::sleep(Duration::from_millis(300)).await;
        clock.set(at(&format!("{date} 17:29:01")));
        for t in &room {
            wait_until("the shutdown warning on each terminal", 20, async || {
                t.ctl(&["status"]).1.contains("will shut down in")
            })
            .await;
        }
        clock.set(at(&format!("{date} 17:30:01")));
        for t in &room {
            let mac = t.mac.clone();
            wait_until("each desktop off by ACPI", 90, async || {
                terminal_view(&h, &mac).await["desktop"]["state"] == "off" && !t.qemu_runs()
            })
            .await;
            assert!(
                t.serial().contains("VOI-POWERDOWN"),
                "{}: not by ACPI",
                t.mac
            );
        }
        // Off, the terminals take the day's levels into their chains.
        for t in &room {
            for l in [1u8, 2] {
                let want = std::fs::read(lib.join(layer(l))).expect("lib");
                wait_until("the day's levels in every chain", 60, async || {
                    std::fs::read(t.dir.join("data/disks").join(layer(l))).is_ok_and(|b| b == want)
                })
                .await;
            }
        }
        // The machines power off (the recording platform only journals it).
        for t in room.iter_mut() {
            t.kill();
        }
        // Each holds the group's chain, sound, and can boot it.
        for t in &room {
            for l in 0..3u8 {
                voi::disk::qemu_img::check(&t.dir.join("data/disks").join(layer(l)))
                    .unwrap_or_else(|e| panic!("{}: {}: {e}", t.mac, layer(l)));
            }
            let out = Command::new(env!("CARGO_BIN_EXE_voi-agent"))
                .arg("--config")
                .arg(t.config())
                .args(["boot-plan", G])
                .output()
                .expect("boot-plan");
            assert!(
                out.status.success(),
                "{}: {}",
                t.mac,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        for t in &room {
            let mac = t.mac.clone();
            wait_until("the API to stop calling it running", 10, async || {
                terminal_view(&h, &mac).await["running_desktop"].is_null()
            })
            .await;
        }
        let line = format!(
            "day {}: room ready {ready:.1} s after the wake; published {published} bytes, the server sent {sent} (budget {budget}); boots {}",
            day + 1,
            boots.iter().map(|b| b.to_string()).collect::<Vec<_>>().join("/")
        );
        eprintln!("{line}");
        report.push(line);
        assert!(
            sent <= budget,
            "day {}: the server sent {sent} bytes for {published} newly published (budget {budget})",
            day + 1
        );
    }
    eprintln!("the week:\n{}", report.join("\n"));
    h.stop().await;
}
