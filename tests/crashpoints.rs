//! The crash-point harness. A clean run of the real `voi-agent` binary lists
//! every durable write it makes (`VOI_CRASH_LOG`): state files, command
//! records, chain changes, transfer records, download completion, platform
//! effects. Then, for each point, a fresh agent runs the same script and is
//! killed with SIGKILL right after that write (`VOI_CRASH_AT`), restarted,
//! and the script is driven again (the operator retries the same batches).
//! After every restart:
//!   * state.json is readable (never moved aside as corrupt);
//!   * every layer on disk passes `qemu-img check`, and the base is
//!     byte-identical to the server's;
//!   * downloads resume and finish;
//!   * no batch has more than one final record, a reboot is recorded at
//!     most once, and the host name is set again only when the agent died
//!     inside that very command (its record was left pending).
//!
//! By default the harness kills at every point of the clean run;
//! `VOI_CRASH_POINTS=sites` only at the first and last of each write site.

mod common;

use common::*;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use voi::agent::platform::{JournalEntry, RecordingPlatform};
use voi::agent::state::AgentState;
use voi::protocol::messages::DesktopGroup;
use voi::protocol::ServiceCode;
use voi::server::ServerHandle;

const U: &str = "7a0e4f3c-2b1d-4c5e-8f6a-9b0c1d2e3f4a";
const G: &str = "3c2b1a09-8f7e-4d6c-b5a4-938271605f4e";
const NAME: &str = "drill-1";

fn layer(level: u8) -> String {
    format!("voi_{level}_{U}")
}

fn group(levels: &[i64]) -> DesktopGroup {
    layer_group("drill", G, U, levels)
}

struct Drill {
    h: ServerHandle,
    lib: PathBuf,
    root: PathBuf,
}

/// How a run of the script ended.
#[derive(Debug, PartialEq)]
enum Ran {
    Finished,
    Died,
}

impl Drill {
    fn agent_dir(&self, mac: &str) -> PathBuf {
        self.root.join(mac.replace(':', ""))
    }

    fn spawn(&self, mac: &str, crash_at: Option<u64>, log: &Path, tag: &str) -> Proc {
        let dir = self.agent_dir(mac);
        std::fs::create_dir_all(&dir).expect("dir");
        let cfg = dir.join("agent.toml");
        std::fs::write(
            &cfg,
            format!(
                "server_ip = \"127.0.0.1\"\nserver_port = {}\nmac = \"{mac}\"\ndata_dir = \"{}\"\nheartbeat_secs = 1\nconnect_retry_ms = 200\nperformance_secs = 0\n[bt]\nlisten_port = 0\nprogress_secs = 1\n[platform]\npower = \"recording\"\nboot = \"recording\"\nhostname = \"recording\"\nnetwork = \"recording\"\n",
                self.h.addr.port(),
                dir.join("data").display()
            ),
        )
        .expect("cfg");
        let mut c = Command::new(env!("CARGO_BIN_EXE_voi-agent"));
        c.arg("--config")
            .arg(&cfg)
            .arg("run")
            .env("RUST_LOG", "info")
            .env("VOI_CRASH_LOG", log)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join(format!("agent-{tag}.log"))).expect("log"));
        if let Some(n) = crash_at {
            c.env("VOI_CRASH_AT", n.to_string());
        }
        Proc(c.spawn().expect("voi-agent"))
    }

    fn report(&self, mac: &str, key: &str) -> Option<Value> {
        report(&self.h, mac, key)
    }

    /// Drives the script against the agent until it is done or the agent
    /// dies: three commands, both layers fetched, then the diff dropped.
    async fn script(&self, mac: &str, agent: &mut Proc, tag: &str) -> Ran {
        let log = self.agent_dir(mac).join(format!("agent-{tag}.log"));
        let tail = || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(60)..].join("\n")
        };
        let dead = |p: &mut Proc| p.0.try_wait().ok().flatten().is_some();
        self.h
            .server
            .store
            .put_group(&group(&[0, 1]))
            .expect("group");
        let start = Instant::now();
        let mut restart_answered = start;
        let steps: [(ServiceCode, Value); 3] = [
            (
                ServiceCode::UpdateName,
                json!({"batch_no": 901, "name": NAME, "conf_version": 50}),
            ),
            (
                ServiceCode::WatermarkSwitch,
                json!({"batch_no": 902, "switch": 1}),
            ),
            (ServiceCode::Restart, json!({"batch_no": 903})),
        ];
        for (code, params) in steps {
            loop {
                if dead(agent) {
                    return Ran::Died;
                }
                let r = self
                    .h
                    .server
                    .push(mac, code, params.clone(), Duration::from_secs(3))
                    .await;
                if let Ok((_, env)) = r {
                    assert_eq!(env.code, 0, "{code:?}: {}", env.msg);
                    restart_answered = Instant::now();
                    break;
                }
                assert!(
                    start.elapsed() < Duration::from_secs(90),
                    "{mac}: {code:?} never answered; the agent's log ends:\n{}",
                    tail()
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        // In the chain, and reported (a report may be from before a crash,
        // so the file is what says this run's download is done).
        let disks = self.agent_dir(mac).join("data/disks");
        let landed = |l: u8| {
            disks.join(layer(l)).exists()
                && self
                    .report(mac, &format!("task_result:{}", layer(l)))
                    .is_some_and(|r| r["result"] == 1)
        };
        while !(landed(0) && landed(1)) {
            if dead(agent) {
                return Ran::Died;
            }
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "{mac}: layers never landed; the agent's log ends:\n{}",
                tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // A chain change: the server drops the diff, the agent deletes it.
        self.h.server.store.put_group(&group(&[0])).expect("group");
        let diff = self.agent_dir(mac).join("data/disks").join(layer(1));
        loop {
            if dead(agent) {
                return Ran::Died;
            }
            if !diff.exists() {
                break;
            }
            let _ = self
                .h
                .server
                .push(
                    mac,
                    ServiceCode::UpdateDesktopGroupInfo,
                    json!({}),
                    Duration::from_secs(3),
                )
                .await;
            assert!(
                start.elapsed() < Duration::from_secs(150),
                "{mac}: the diff was never dropped; the agent's log ends:\n{}",
                tail()
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        // Give the last writes (reports, seeding records, the reboot that
        // follows 1002 by POWER_DELAY) time to happen.
        let settle = restart_answered + voi::agent::commands::POWER_DELAY * 2;
        tokio::time::sleep_until(settle.into()).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        if dead(agent) {
            Ran::Died
        } else {
            Ran::Finished
        }
    }

    /// The checks after a restart. Returns what was seen, for the report.
    fn check(&self, mac: &str, pending_at_crash: &[i64]) -> String {
        let data = self.agent_dir(mac).join("data");
        let raw = std::fs::read(data.join("state.json")).expect("state.json exists");
        let state: AgentState = serde_json::from_slice(&raw).expect("state.json is readable");
        let corrupt: Vec<_> = std::fs::read_dir(&data)
            .expect("data")
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains("corrupt"))
            .collect();
        assert!(corrupt.is_empty(), "state was moved aside: {corrupt:?}");
        assert_eq!(state.terminal.name, NAME);
        assert!(state.watermark);

        let disks = data.join("disks");
        let mut layers = Vec::new();
        for e in std::fs::read_dir(&disks).expect("disks").flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if name.starts_with("voi_") && e.path().is_file() {
                voi::disk::qemu_img::check(&e.path())
                    .unwrap_or_else(|err| panic!("qemu-img check {name}: {err}"));
                layers.push(name);
            }
        }
        layers.sort();
        assert_eq!(layers, vec![layer(0)], "the chain is the base alone");
        assert!(
            std::fs::read(disks.join(layer(0))).expect("base")
                == std::fs::read(self.lib.join(layer(0))).expect("lib"),
            "the base is byte-identical to the server's"
        );

        let mut finals: BTreeMap<i64, usize> = BTreeMap::new();
        for r in state.commands.iter().filter(|r| !r.pending) {
            if let Some(b) = r.batch_no.as_int() {
                *finals.entry(b).or_default() += 1;
            }
        }
        for b in [901, 902, 903] {
            assert_eq!(finals.get(&b), Some(&1), "batch {b}: {:?}", state.commands);
        }
        let journal = RecordingPlatform::read_journal(&data.join("platform-journal.jsonl"));
        let reboots = journal
            .iter()
            .filter(|e| matches!(e, JournalEntry::Reboot))
            .count();
        let names = journal
            .iter()
            .filter(|e| matches!(e, JournalEntry::SetHostname { name } if name == NAME))
            .count();
        assert!(reboots <= 1, "rebooted {reboots} times");
        let name_limit = if pending_at_crash.contains(&901) {
            2
        } else {
            1
        };
        assert!(
            (1..=name_limit).contains(&names),
            "host name set {names} times (pending at crash: {pending_at_crash:?})"
        );
        format!("ok: reboots {reboots}, host name set {names}")
    }
}

/// The points a run reached, from its crash log.
fn points(log: &Path) -> Vec<(u64, String)> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (n, label) = l.split_once(' ')?;
            Some((n.parse().ok()?, label.to_string()))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_after_every_durable_write_loses_nothing_and_applies_nothing_twice() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut cfg = server_config(&dir.path().join("s"), "127.0.0.1:0");
    cfg.heartbeat_secs = 1;
    let h = voi::server::Server::start(cfg).await.expect("server");
    let lib = h.server.images.dir().to_path_buf();
    make_base(&lib.join(layer(0)), 8);
    make_diff(&lib, &layer(1), &layer(0), 2, 7);
    h.server.images.scan().await.expect("scan");
    let drill = Drill {
        h,
        lib,
        root: dir.path().join("agents"),
    };

    // The clean run lists the points.
    let mac0 = "AA:00:00:00:C0:00";
    let list = dir.path().join("points-clean.log");
    let mut agent = drill.spawn(mac0, None, &list, "clean");
    assert_eq!(drill.script(mac0, &mut agent, "clean").await, Ran::Finished);
    drop(agent);
    drill.check(mac0, &[]);
    let all = points(&list);
    assert!(all.len() > 10, "only {} durable writes seen", all.len());
    let mut first_last: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for (n, label) in &all {
        first_last
            .entry(label.clone())
            .and_modify(|e| e.1 = *n)
            .or_insert((*n, *n));
    }
    let mut chosen: Vec<u64> = match std::env::var("VOI_CRASH_POINTS").as_deref() {
        Ok("sites") => first_last.values().flat_map(|&(a, b)| [a, b]).collect(),
        _ => all.iter().map(|(n, _)| *n).collect(),
    };
    chosen.sort_unstable();
    chosen.dedup();
    eprintln!(
        "{} durable writes at {} sites in a clean run; killing after {} of them",
        all.len(),
        first_last.len(),
        chosen.len()
    );

    let mut outcomes = Vec::new();
    for (i, n) in chosen.iter().enumerate() {
        let mac = format!("AA:00:00:00:C1:{:02X}", i % 256);
        let log = dir.path().join(format!("points-{n}.log"));
        let mut agent = drill.spawn(&mac, Some(*n), &log, "crash");
        let ran = drill.script(&mac, &mut agent, "crash").await;
        drop(agent);
        let reached = points(&log).last().cloned();
        let killed_at = match (&ran, reached) {
            (Ran::Died, Some((k, label))) if k == *n => label,
            (Ran::Died, other) => panic!("point {n}: the agent died elsewhere ({other:?})"),
            (Ran::Finished, _) => {
                // The run took another path (timing) and never got there.
                outcomes.push(format!("{n:>3} not reached in this run"));
                continue;
            }
        };
        // What a restart finds: which commands were in flight.
        let pending: Vec<i64> = std::fs::read(drill.agent_dir(&mac).join("data/state.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<AgentState>(&b).ok())
            .map(|s| {
                s.commands
                    .iter()
                    .filter(|r| r.pending)
                    .filter_map(|r| r.batch_no.as_int())
                    .collect()
            })
            .unwrap_or_default();
        let mut again = drill.spawn(
            &mac,
            None,
            &dir.path().join(format!("points-{n}-after.log")),
            "after",
        );
        assert_eq!(
            drill.script(&mac, &mut again, "after").await,
            Ran::Finished,
            "point {n} ({killed_at}): the restarted agent died"
        );
        drop(again);
        let seen = drill.check(&mac, &pending);
        outcomes.push(format!("{n:>3} {killed_at:<40} {seen}"));
    }
    eprintln!("crash points:\n{}", outcomes.join("\n"));
    drill.h.stop().await;
}

/// Copies an agent's data dir, hard links as hard links (the transfers
/// hold the chain's files by a second name).
fn copy_data(from: &Path, to: &Path) {
    let _ = std::fs::remove_dir_all(to);
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent).expect("dir");
    }
    run(Command::new("cp").arg("-a").arg(from).arg(to));
}

/// The terminal after a restart that followed a kill: every layer passes
/// `qemu-img check`, the base is the library's new one, and the boot plan
/// (what the boot loader and `ctl boot` use) finds a complete chain.
fn bootable_with(drill: &Drill, mac: &str, new_base: &[u8]) -> Result<(), String> {
    let dir = drill.agent_dir(mac);
    let disks = dir.join("data/disks");
    let base = std::fs::read(disks.join(layer(0))).map_err(|e| format!("no base: {e}"))?;
    if base != new_base {
        return Err("the base is not the library's new one".into());
    }
    for e in std::fs::read_dir(&disks)
        .map_err(|e| e.to_string())?
        .flatten()
    {
        let name = e.file_name().to_string_lossy().to_string();
        if name.starts_with("voi_") && e.path().is_file() {
            voi::disk::qemu_img::check(&e.path()).map_err(|err| format!("{name}: {err}"))?;
        }
    }
    let out = Command::new(env!("CARGO_BIN_EXE_voi-agent"))
        .arg("--config")
        .arg(dir.join("agent.toml"))
        .args(["boot-plan", G])
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "boot-plan: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

/// Issue 37.3: an agent that restarts after the server replaced a layer
/// deletes its copy and fetches the new one. Killed after every durable
/// write of that (including between the decision that deletes and the
/// restore of the old transfer), it must come back bootable on its own:
/// never a transfer "already seeding" a layer the chain no longer holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_during_a_deletion_and_refetch_leaves_the_terminal_bootable() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut cfg = server_config(&dir.path().join("s"), "127.0.0.1:0");
    cfg.heartbeat_secs = 1;
    // Every agent here is 127.0.0.1 on a random port, and a killed one
    // never says "stopped": on a LAN each terminal has its own address and
    // a fixed port, and replaces its own entry when it restarts.
    cfg.limits.tracker_max_peers_per_address = 1000;
    let h = voi::server::Server::start(cfg).await.expect("server");
    let lib = h.server.images.dir().to_path_buf();
    // Large enough that the restored transfer's check outlasts the login
    // and the decision that deletes its layer: the order that stranded
    // terminals.
    make_base(&lib.join(layer(0)), 48);
    // As the server's own loop scans: the layer's version is recorded.
    h.server.scan_library().await.expect("scan");
    h.server.store.put_group(&group(&[0])).expect("group");
    let drill = Drill {
        h,
        lib: lib.clone(),
        root: dir.path().join("agents"),
    };
    // The terminal as it was before the update: the old base in its chain.
    let mac0 = "AA:00:00:00:C3:00";
    let mut a = drill.spawn(mac0, None, &dir.path().join("first.log"), "first");
    let disks0 = drill.agent_dir(mac0).join("data/disks");
    let start = Instant::now();
    while !(disks0.join(layer(0)).exists()
        && drill
            .report(mac0, &format!("task_result:{}", layer(0)))
            .is_some_and(|r| r["result"] == 1))
    {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the old base never landed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(a.0.kill());
    let _ = a.0.wait();
    let before = dir.path().join("before-update");
    copy_data(&drill.agent_dir(mac0).join("data"), &before);

    // The server's base is replaced while the terminal is off.
    make_base(&lib.join("voi-new-base.tmp"), 48);
    std::fs::rename(lib.join("voi-new-base.tmp"), lib.join(layer(0))).expect("rename");
    drill.h.server.scan_library().await.expect("scan");
    let new_base = std::fs::read(lib.join(layer(0))).expect("new base");

    // A clean run from that state lists the points.
    let run_until_bootable =
        |mac: &'static str, crash: Option<u64>, log: PathBuf, tag: &'static str| {
            let drill = &drill;
            let new_base = new_base.clone();
            async move {
                let mut p = drill.spawn(mac, crash, &log, tag);
                let start = Instant::now();
                loop {
                    if p.0.try_wait().ok().flatten().is_some() {
                        return (Ran::Died, start.elapsed());
                    }
                    let landed =
                        std::fs::read(drill.agent_dir(mac).join("data/disks").join(layer(0)))
                            .is_ok_and(|b| b == new_base);
                    if crash.is_none() && landed {
                        let took = start.elapsed();
                        // Let the adoption's last writes land, then stop the
                        // agent before the offline checks open its disks.
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        drop(p.0.kill());
                        let _ = p.0.wait();
                        if let Err(why) = bootable_with(drill, mac, &new_base) {
                            let log = std::fs::read_to_string(
                                drill.agent_dir(mac).join(format!("agent-{tag}.log")),
                            )
                            .unwrap_or_default();
                            panic!("{mac} ({tag}): the new base landed but: {why}\n{log}");
                        }
                        return (Ran::Finished, took);
                    }
                    if crash.is_some() && start.elapsed() > Duration::from_secs(10) {
                        // This run took another path and never got there.
                        drop(p.0.kill());
                        let _ = p.0.wait();
                        return (Ran::Finished, start.elapsed());
                    }
                    if start.elapsed() > Duration::from_secs(90) {
                        let why = bootable_with(drill, mac, &new_base)
                            .err()
                            .unwrap_or_default();
                        drop(p.0.kill());
                        let _ = p.0.wait();
                        let log = std::fs::read_to_string(
                            drill.agent_dir(mac).join(format!("agent-{tag}.log")),
                        )
                        .unwrap_or_default();
                        let tail: Vec<&str> = log.lines().rev().take(40).collect();
                        panic!(
                            "{mac} ({tag}, crash at {crash:?}): not bootable after {:?}: {why}\n{}",
                            start.elapsed(),
                            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                        );
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
    let mac_clean = "AA:00:00:00:C3:01";
    copy_data(&before, &drill.agent_dir(mac_clean).join("data"));
    let list = dir.path().join("refetch-clean.log");
    let (ran, took) = run_until_bootable(mac_clean, None, list.clone(), "clean").await;
    assert_eq!(ran, Ran::Finished);
    let all = points(&list);
    assert!(
        all.len() > 3,
        "only {} durable writes seen: {all:?}",
        all.len()
    );
    eprintln!(
        "deletion and re-download: {} durable writes, bootable {took:?} after start: {}",
        all.len(),
        all.iter()
            .map(|(n, l)| format!("{n} {l}"))
            .collect::<Vec<_>>()
            .join("; ")
    );

    // Then a kill after each point, from the same state, and a restart.
    let macs: Vec<&'static str> = (0..all.len())
        .map(|i| &*Box::leak(format!("AA:00:00:00:C4:{:02X}", i % 256).into_boxed_str()))
        .collect();
    let mut outcomes = Vec::new();
    for ((n, label), mac) in all.iter().zip(macs) {
        copy_data(&before, &drill.agent_dir(mac).join("data"));
        let log = dir.path().join(format!("refetch-{n}.log"));
        let (ran, _) = run_until_bootable(mac, Some(*n), log.clone(), "crash").await;
        let reached = points(&log).last().map(|(k, _)| *k);
        if ran != Ran::Died || reached != Some(*n) {
            if std::env::var_os("VOI_DRILL_VERBOSE").is_some() {
                let text = std::fs::read_to_string(drill.agent_dir(mac).join("agent-crash.log"))
                    .unwrap_or_default();
                eprintln!("--- point {n} not reached; the agent's log:\n{text}");
            }
            outcomes.push(format!(
                "{n:>3} {label:<40} not reached in this run (it reached {:?})",
                points(&log).last()
            ));
            continue;
        }
        let (ran, took) = run_until_bootable(
            mac,
            None,
            dir.path().join(format!("refetch-{n}-after.log")),
            "after",
        )
        .await;
        assert_eq!(ran, Ran::Finished);
        outcomes.push(format!(
            "{n:>3} {label:<40} bootable {took:.1?} after the restart"
        ));
    }
    eprintln!("crash points:\n{}", outcomes.join("\n"));
    drill.h.stop().await;
}
