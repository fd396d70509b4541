//! Powering terminals on with real packets, only inside namespaces this
//! test makes and removes:
//!
//! * one LAN: the server wakes a terminal that is off; a raw socket in the
//!   terminal's namespace checks the magic packet's bytes and ports, and the
//!   terminal "powers on" (its agent starts) when it arrives;
//! * two subnets joined by a router namespace: the server's directed
//!   broadcast does not cross the router, and an agent of ours on the
//!   terminal's subnet relays the wake (1900) when one is online;
//! * the class schedule, with a clock the test sets.
//!
//! Needs root and iproute2; skips with one line without them.

mod common;

use common::capture::{Capture, Datagram};
use common::lan::{spawn_in, Lan};
use common::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use voi::agent::platform::{JournalEntry, RecordingPlatform};
use voi::server::client::ApiClient;
use voi::wake_on_lan::{magic_packet, parse_mac};

const TOKEN: &str = "wake-test-token";

struct Terminal {
    config: PathBuf,
    data: PathBuf,
    log: PathBuf,
    ns: String,
    proc: Option<Proc>,
}

impl Terminal {
    fn new(dir: &Path, name: &str, mac: &str, ns: &str, server_ip: &str) -> Terminal {
        let t = Terminal {
            config: dir.join(format!("{name}.toml")),
            data: dir.join(name),
            log: dir.join(format!("{name}.log")),
            ns: ns.into(),
            proc: None,
        };
        // Power and boot are recorded; wake is real: the relay must send.
        std::fs::write(
            &t.config,
            format!(
                "server_ip = \"{server_ip}\"\nserver_port = 50007\nmac = \"{mac}\"\ndata_dir = \"{}\"\nheartbeat_secs = 1\nconnect_retry_ms = 300\nrequest_timeout_secs = 3\nperformance_secs = 0\n[bt]\nlisten_port = 6881\n[platform]\npower = \"recording\"\nboot = \"recording\"\nhostname = \"recording\"\nnetwork = \"recording\"\nwake = \"linux\"\n",
                t.data.display()
            ),
        )
        .expect("agent toml");
        t
    }

    /// Powered on: the agent starts.
    fn start(&mut self) {
        let cfg = self.config.to_string_lossy().into_owned();
        self.proc = Some(spawn_in(
            &self.ns,
            env!("CARGO_BIN_EXE_voi-agent"),
            &["--config", &cfg, "run"],
            &self.log,
        ));
    }

    /// Off: SIGKILL, as the power going.
    fn off(&mut self) {
        self.proc = None;
    }
}

fn start_server_in(dir: &Path, ns: &str, server_ip: &str) -> Proc {
    let data = dir.join("server");
    let toml = dir.join("server.toml");
    std::fs::write(
        &toml,
        format!(
            "listen = \"0.0.0.0:50007\"\napi_listen = \"0.0.0.0:50080\"\ntracker_listen = \"0.0.0.0:50021\"\ndata_dir = \"{}\"\napi_token = \"{TOKEN}\"\nadvertise_ip = \"{server_ip}\"\nbt_listen_port = 6880\nheartbeat_secs = 2\n",
            data.display()
        ),
    )
    .expect("server.toml");
    let cfg = toml.to_string_lossy().into_owned();
    spawn_in(
        ns,
        env!("CARGO_BIN_EXE_voi-server"),
        &["run", "--config", &cfg],
        &dir.join("server.log"),
    )
}

async fn wait_until<F, Fut>(what: &str, secs: u64, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !f().await {
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "timed out after {secs} s waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn record(api: &ApiClient, mac: &str) -> Value {
    api.get(&format!("/api/v1/terminals/{mac}"))
        .await
        .ok()
        .and_then(|e| e.data)
        .unwrap_or(Value::Null)
}

async fn online(api: &ApiClient, mac: &str) -> bool {
    record(api, mac).await["online"] == true
}

fn is_magic_for(mac: &str) -> impl Fn(&Datagram) -> bool {
    let want = magic_packet(parse_mac(mac).expect("mac")).to_vec();
    move |d: &Datagram| d.payload == want
}

/// `voi-server ctl wake … --wait`, its stdout read as it comes.
fn ctl_wake(api_url: &str, args: &[&str]) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_voi-server"))
        .args(["ctl", "--api", api_url, "--token", TOKEN, "wake"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ctl wake")
}

fn finish(child: std::process::Child) -> (bool, String) {
    let out = child.wait_with_output().expect("ctl wake ends");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminal_that_is_off_gets_the_magic_packet_and_comes_online() {
    let test = "a_terminal_that_is_off_gets_the_magic_packet_and_comes_online";
    if !has(test, &[Need::Root, IP]) {
        return;
    }
    init_log();
    let subnet = format!("10.206.{}", 100 + std::process::id() % 100);
    // Host 0 is the server, host 1 the terminal.
    let lan = Lan::create(&subnet, 2).unwrap_or_else(|e| panic!("cannot build the LAN: {e}"));
    let server_ip = format!("{subnet}.1");
    let dir = tempfile::tempdir().expect("tmp");
    let _server = start_server_in(dir.path(), &lan.hosts[0], &server_ip);
    let api_url = format!("http://{server_ip}:50080");
    let api = ApiClient::new(api_url.clone(), TOKEN);
    let mac = "52:54:00:29:00:01";
    let mut t = Terminal::new(dir.path(), "t", mac, &lan.hosts[1], &server_ip);
    t.start();
    wait_until("the terminal online", 60, || online(&api, mac)).await;
    // 9004 told the server about its NIC: a veth has no wake-on-LAN, and
    // that is reported, not an error.
    wait_until("its wake report", 20, || async {
        record(&api, mac).await["wake"]["interface"] == "eth0"
    })
    .await;
    let wake = record(&api, mac).await["wake"].clone();
    assert_eq!(wake["supported"], false, "{wake}");
    assert!(
        wake["detail"]
            .as_str()
            .unwrap_or("")
            .contains("wake-on-LAN"),
        "{wake}"
    );
    assert_eq!(wake["ip"], format!("{subnet}.2"));
    assert_eq!(wake["prefix"], 24);

    // 1001: the agent arms wake before it powers off.
    let env = api
        .post(
            &format!("/api/v1/terminals/{mac}/commands"),
            &json!({"command": "shutdown"}),
        )
        .await
        .expect("shutdown");
    assert_eq!(env.code, 0, "{env:?}");
    let journal = t.data.join("platform-journal.jsonl");
    wait_until("the power-off", 20, || async {
        RecordingPlatform::read_journal(&journal).contains(&JournalEntry::PowerOff)
    })
    .await;
    let log = std::fs::read_to_string(&t.log).unwrap_or_default();
    assert!(
        log.contains("wake-on-LAN on eth0: not supported"),
        "the arming ran before the power-off and said why it could not: {log}"
    );
    t.off();
    wait_until("the terminal offline", 30, || async {
        !online(&api, mac).await
    })
    .await;

    // Off. What reaches its link when the operator wakes it:
    let mut cap = Capture::start(&lan.hosts[1], "eth0", 60).expect("capture");
    let started = Instant::now();
    let ctl = ctl_wake(&api_url, &[mac, "--wait", "--timeout", "60"]);
    let first = cap
        .wait_for(20, is_magic_for(mac))
        .expect("the magic packet reached the terminal's link");
    println!(
        "magic packet on the terminal's link {} ms after ctl wake started",
        started.elapsed().as_millis()
    );
    // The NIC "powers the machine on".
    t.start();
    assert_eq!(
        first.dst,
        format!("{subnet}.255")
            .parse::<std::net::Ipv4Addr>()
            .expect("ip")
    );
    assert_eq!(
        first.src,
        server_ip.parse::<std::net::Ipv4Addr>().expect("ip")
    );
    assert_eq!(first.payload.len(), 102);
    assert_eq!(&first.payload[..6], &[0xFF; 6]);
    let mac_bytes = parse_mac(mac).expect("mac");
    for i in 0..16 {
        assert_eq!(&first.payload[6 + 6 * i..12 + 6 * i], &mac_bytes);
    }
    let both_ports = cap.wait_for(5, |d| {
        d.payload == first.payload && d.dst_port != first.dst_port
    });
    let mut ports = vec![
        first.dst_port,
        both_ports.expect("the second port").dst_port,
    ];
    ports.sort();
    assert_eq!(ports, vec![7, 9]);
    let (ok, out) = finish(ctl);
    println!(
        "ctl wake --wait ({:.1} s):\n{out}",
        started.elapsed().as_secs_f64()
    );
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!("sent (broadcast {subnet}.255 on eth0)")),
        "{out}"
    );
    assert!(out.contains("online after"), "{out}");

    // An online terminal is not sent anything.
    let (ok, out) = finish(ctl_wake(&api_url, &[mac]));
    assert!(ok, "{out}");
    assert!(out.contains("already online"), "{out}");
    // A MAC that is not one is refused before anything is sent.
    let (ok, out) = finish(ctl_wake(&api_url, &["01:00:5e:00:00:01"]));
    assert!(!ok && out.contains("not a unicast MAC"), "{out}");
}

/// A router namespace between two switches, forwarding between them.
struct Router {
    ns: String,
    legs: Vec<String>,
}

impl Router {
    fn join(lans: &[(&Lan, &str)]) -> Result<Router, String> {
        let ns = format!("voi-wake-{}-rt", std::process::id() % 100000);
        sh(&["ip", "netns", "add", &ns])?;
        let mut r = Router {
            ns: ns.clone(),
            legs: Vec::new(),
        };
        for (i, (lan, subnet)) in lans.iter().enumerate() {
            let leg = format!("{}x{i}", lan.tag);
            let inner = format!("leg{i}");
            sh(&[
                "ip", "link", "add", &leg, "type", "veth", "peer", "name", &inner, "netns", &ns,
            ])?;
            r.legs.push(leg.clone());
            sh(&["ip", "link", "set", &leg, "netns", &lan.switch])?;
            sh(&[
                "ip",
                "-n",
                &lan.switch,
                "link",
                "set",
                &leg,
                "master",
                "br0",
                "up",
            ])?;
            sh(&[
                "ip",
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{subnet}.253/24"),
                "dev",
                &inner,
            ])?;
            sh(&["ip", "-n", &ns, "link", "set", &inner, "up"])?;
        }
        sh(&["ip", "-n", &ns, "link", "set", "lo", "up"])?;
        sh(&[
            "ip",
            "netns",
            "exec",
            &ns,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ])?;
        Ok(r)
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        let _ = sh(&["ip", "netns", "del", &self.ns]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_drops_the_directed_broadcast_and_a_relay_on_the_subnet_wakes_the_terminal() {
    let test = "a_router_drops_the_directed_broadcast_and_a_relay_on_the_subnet_wakes_the_terminal";
    if !has(test, &[Need::Root, IP]) {
        return;
    }
    init_log();
    let n = 100 + std::process::id() % 100;
    let (sa, sb) = (format!("10.207.{n}"), format!("10.208.{n}"));
    // LAN A: the server. LAN B: terminal R (the relay) and terminal T.
    let lan_a = Lan::create_tagged("a", &sa, 1).unwrap_or_else(|e| panic!("LAN A: {e}"));
    let lan_b = Lan::create_tagged("b", &sb, 2).unwrap_or_else(|e| panic!("LAN B: {e}"));
    let router =
        Router::join(&[(&lan_a, &sa), (&lan_b, &sb)]).unwrap_or_else(|e| panic!("router: {e}"));
    for (ns, gw) in [
        (&lan_a.hosts[0], format!("{sa}.253")),
        (&lan_b.hosts[0], format!("{sb}.253")),
        (&lan_b.hosts[1], format!("{sb}.253")),
    ] {
        sh(&["ip", "-n", ns, "route", "add", "default", "via", &gw]).expect("route");
    }
    let server_ip = format!("{sa}.1");
    let dir = tempfile::tempdir().expect("tmp");
    let _server = start_server_in(dir.path(), &lan_a.hosts[0], &server_ip);
    let api_url = format!("http://{server_ip}:50080");
    let api = ApiClient::new(api_url.clone(), TOKEN);
    let (rmac, tmac) = ("52:54:00:29:01:01", "52:54:00:29:01:02");
    let mut relay = Terminal::new(dir.path(), "relay", rmac, &lan_b.hosts[0], &server_ip);
    let mut target = Terminal::new(dir.path(), "target", tmac, &lan_b.hosts[1], &server_ip);
    relay.start();
    target.start();
    for m in [rmac, tmac] {
        wait_until(&format!("{m} online across the router"), 60, || {
            online(&api, m)
        })
        .await;
        wait_until("its wake report", 20, || async {
            record(&api, m).await["wake"]["ip"]
                .as_str()
                .is_some_and(|ip| ip.starts_with(&sb))
        })
        .await;
    }
    relay.off();
    target.off();
    for m in [rmac, tmac] {
        wait_until(&format!("{m} offline"), 30, || async {
            !online(&api, m).await
        })
        .await;
    }

    // No agent of ours is up on B: the server has only the directed
    // broadcast, which reaches the router and stops there.
    let mut at_router = Capture::start(&router.ns, "leg0", 30).expect("capture at the router");
    let mut at_target = Capture::start(&lan_b.hosts[1], "eth0", 30).expect("capture at T");
    let (ok, out) = finish(ctl_wake(&api_url, &[tmac, "--wait", "--timeout", "4"]));
    println!("with no relay:\n{out}");
    assert!(!ok, "it cannot come up: {out}");
    assert!(
        out.contains(&format!("directed broadcast {sb}.255")),
        "{out}"
    );
    assert!(out.contains("did not come up within 4 s"), "{out}");
    // (The server's own subnet gets its broadcast too.)
    let magic = is_magic_for(tmac);
    let directed = format!("{sb}.255");
    at_router
        .wait_for(5, |d| magic(d) && d.dst.to_string() == directed)
        .expect("the directed broadcast left the server and reached the router");
    assert!(
        at_target.wait_for(2, is_magic_for(tmac)).is_none(),
        "a router forwards no directed broadcast; T's link saw {:?}",
        at_target.seen
    );

    // R comes up (a teacher switched it on): the server asks it to relay.
    relay.start();
    wait_until("the relay online", 60, || online(&api, rmac)).await;
    let mut at_target = Capture::start(&lan_b.hosts[1], "eth0", 60).expect("capture at T");
    let relay_started = Instant::now();
    let ctl = ctl_wake(&api_url, &[tmac, "--wait", "--timeout", "60"]);
    let relayed = at_target
        .wait_for(20, is_magic_for(tmac))
        .expect("the relayed magic packet reached T's link");
    println!(
        "relayed magic packet on T's link {} ms after ctl wake started",
        relay_started.elapsed().as_millis()
    );
    target.start();
    assert_eq!(relayed.src.to_string(), format!("{sb}.1"), "sent by R");
    assert_eq!(relayed.dst.to_string(), format!("{sb}.255"));
    let (ok, out) = finish(ctl);
    println!("with R as relay:\n{out}");
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!("relayed by {rmac} on {sb}.255")),
        "{out}"
    );
    assert!(out.contains("online after"), "{out}");
    drop(router);
}

fn at(s: &str) -> chrono::NaiveDateTime {
    chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S").expect("time")
}

fn runs(h: &voi::server::ServerHandle, what: &str) -> Vec<voi::server::wake::ScheduleRun> {
    h.server
        .schedule_runs
        .runs()
        .into_iter()
        .filter(|r| r.what == what)
        .collect()
}

fn power_offs(agent: &voi::agent::Agent) -> usize {
    RecordingPlatform::read_journal(&agent.cfg.journal_path())
        .iter()
        .filter(|e| **e == JournalEntry::PowerOff)
        .count()
}

/// The schedule with a clock the test sets: a wake at 07:50 reaches the
/// room's terminal that is off (and not the other room), a shutdown at 17:30
/// is announced 5 min before to our agents and then skips the terminal that
/// is off, and after a restart across 17:30, or a jump of the clock, nothing
/// is replayed. Server and agents run in this process, inside a network
/// namespace of the test's own, so the wake's broadcast goes only to the
/// namespace link the test watches.
#[test]
fn the_class_schedule_wakes_warns_and_shuts_down_by_a_clock_the_test_sets() {
    let test = "the_class_schedule_wakes_warns_and_shuts_down_by_a_clock_the_test_sets";
    if !has(test, &[Need::Root, IP]) {
        return;
    }
    // SAFETY: moves only this thread (and what it starts from now on) into
    // a new network namespace.
    if unsafe { nix::libc::unshare(nix::libc::CLONE_NEWNET) } != 0 {
        panic!("unshare: {}", std::io::Error::last_os_error());
    }
    let pid = std::process::id() % 100000;
    let subnet = format!("10.209.{}", 100 + pid % 100);
    let room_ns = format!("voi-wake-{pid}-room");
    sh(&["ip", "link", "set", "lo", "up"]).expect("lo");
    sh(&["ip", "netns", "add", &room_ns]).expect("room ns");
    struct Gone(String);
    impl Drop for Gone {
        fn drop(&mut self) {
            let _ = sh(&["ip", "netns", "del", &self.0]);
        }
    }
    let _gone = Gone(room_ns.clone());
    for a in [
        vec![
            "ip", "link", "add", "wk0", "type", "veth", "peer", "name", "eth0", "netns", &room_ns,
        ],
        vec!["ip", "addr", "add", &format!("{subnet}.1/24"), "dev", "wk0"],
        vec!["ip", "link", "set", "wk0", "up"],
        vec![
            "ip",
            "-n",
            &room_ns,
            "addr",
            "add",
            &format!("{subnet}.2/24"),
            "dev",
            "eth0",
        ],
        vec!["ip", "-n", &room_ns, "link", "set", "eth0", "up"],
    ] {
        sh(&a).expect("link");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(schedule_run(&subnet, &room_ns));
}

async fn schedule_run(subnet: &str, room_ns: &str) {
    use voi::server::wake::ManualClock;
    use voi::server::Server;
    init_log();
    let dir = tempfile::tempdir().expect("tmp");
    let port = free_port();
    let mut cfg = server_config(&dir.path().join("server"), &format!("127.0.0.1:{port}"));
    cfg.wake.schedule_tick_ms = 100;
    cfg.wake.timeout_secs = 30;
    // Monday.
    let clock = std::sync::Arc::new(ManualClock::new(at("2026-11-30 07:49:00")));
    let h = Server::start_with_clock(cfg.clone(), clock.clone())
        .await
        .expect("server");
    let (a_mac, b_mac, c_mac) = (
        "52:54:00:29:02:01",
        "52:54:00:29:02:02",
        "52:54:00:29:02:03",
    );
    let (a, _a_task) = start_agent(agent_config(&dir.path().join("a"), port, a_mac));
    let (b, b_task) = start_agent(agent_config(&dir.path().join("b"), port, b_mac));
    let (c, _c_task) = start_agent(agent_config(&dir.path().join("c"), port, c_mac));
    wait_for("three terminals with their wake reports", 30, || {
        [a_mac, b_mac, c_mac].iter().all(|m| {
            h.server
                .store
                .terminal(m)
                .ok()
                .flatten()
                .is_some_and(|r| r.wake.is_some())
        })
    })
    .await;
    // B is switched off.
    b.shutdown.cancel();
    let _ = b_task.await;
    wait_for("B offline", 30, || {
        !h.server.registry.macs().contains(&b_mac.to_string())
    })
    .await;

    let api = api(&h);
    for (m, room) in [(a_mac, "301"), (b_mac, "301"), (c_mac, "302")] {
        let env = api
            .put(
                &format!("/api/v1/terminals/{m}/room"),
                &json!({ "room": room }),
            )
            .await
            .expect("room");
        assert_eq!(env.code, 0, "{env:?}");
    }
    let bad = api
        .put(
            "/api/v1/schedule",
            &json!([{"room": "301", "at": "7:5x", "action": "wake", "days": ["mon"]}]),
        )
        .await
        .expect("bad schedule");
    assert_ne!(bad.code, 0);
    assert!(bad.msg.contains("HH:MM"), "{bad:?}");
    let env = api
        .put(
            "/api/v1/schedule",
            &json!([
                {"room": "301", "at": "07:50", "action": "wake", "days": ["mon", "tue", "wed", "thu", "fri"]},
                {"room": "301", "at": "17:30", "action": "shutdown", "warn_secs": 300},
            ]),
        )
        .await
        .expect("schedule");
    assert_eq!(env.code, 0, "{env:?}");

    // 07:50: B, which is off, gets its magic packet on its link.
    let mut cap = Capture::start(room_ns, "eth0", 30).expect("capture");
    clock.set(at("2026-11-30 07:49:59"));
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(runs(&h, "wake").is_empty(), "not before its time");
    clock.set(at("2026-11-30 07:50:03"));
    wait_for("the 07:50 wake", 10, || !runs(&h, "wake").is_empty()).await;
    let wake = &runs(&h, "wake")[0];
    let text_of = |run: &voi::server::wake::ScheduleRun, m: &str| {
        run.terminals
            .iter()
            .find(|(mac, _)| mac == m)
            .map(|(_, t)| t.clone())
            .unwrap_or_default()
    };
    assert!(
        text_of(wake, b_mac).starts_with(&format!("sent (broadcast {subnet}.255 on wk0)")),
        "{wake:?}"
    );
    assert_eq!(text_of(wake, a_mac), "already online: nothing sent");
    assert!(
        text_of(wake, c_mac).is_empty(),
        "room 302 is not woken: {wake:?}"
    );
    let packet = cap
        .wait_for(5, is_magic_for(b_mac))
        .expect("B's magic packet on its link");
    assert_eq!(packet.dst.to_string(), format!("{subnet}.255"));

    // 17:25: our agents of room 301 are told; 17:30: they are shut down,
    // the one that is off is skipped, room 302 is left alone.
    // A jump of hours fires nothing (below): come up to 17:25 first.
    clock.set(at("2026-11-30 17:24:59"));
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(runs(&h, "warn").is_empty());
    clock.set(at("2026-11-30 17:25:01"));
    wait_for("the warning", 10, || !runs(&h, "warn").is_empty()).await;
    wait_for("A's notice", 10, || {
        a.state.read(|s| {
            s.notices
                .iter()
                .any(|n| n.contains("will shut down in 5 min: class schedule (301 17:30)"))
        })
    })
    .await;
    assert!(
        c.state.read(|s| s.notices.is_empty()),
        "room 302 was not warned"
    );
    clock.set(at("2026-11-30 17:30:01"));
    wait_for("the 17:30 shutdown", 10, || {
        !runs(&h, "shutdown").is_empty()
    })
    .await;
    let shut = &runs(&h, "shutdown")[0];
    assert_eq!(text_of(shut, a_mac), "shutting down", "{shut:?}");
    assert_eq!(text_of(shut, b_mac), "off: skipped", "{shut:?}");
    wait_for("A's power-off", 10, || power_offs(&a) == 1).await;
    assert_eq!(power_offs(&c), 0, "room 302 stays on");

    // Tuesday: the server is down from 17:29 to 17:31. The 17:30 shutdown
    // is not replayed when it comes back, nor is what a jump of the clock
    // passes over.
    h.stop().await;
    let clock = std::sync::Arc::new(ManualClock::new(at("2026-12-01 17:31:00")));
    let h = Server::start_with_clock(cfg, clock.clone())
        .await
        .expect("server again");
    wait_for("A back", 30, || {
        h.server.registry.macs().contains(&a_mac.to_string())
    })
    .await;
    clock.set(at("2026-12-01 17:31:30"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    clock.set(at("2026-12-02 07:55:00"));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        h.server.schedule_runs.runs().is_empty(),
        "{:?}",
        h.server.schedule_runs.runs()
    );
    assert_eq!(power_offs(&a), 1, "no second shutdown");
    let kept = common::api(&h)
        .get("/api/v1/schedule")
        .await
        .expect("schedule");
    assert_eq!(
        kept.data
            .as_ref()
            .and_then(|d| d["entries"].as_array().map(|e| e.len())),
        Some(2),
        "the schedule survived the restart: {kept:?}"
    );
    h.stop().await;
}

/// 1900 and 1901 are checked before anything is done, reach only terminals
/// that announced them, and every power-off is preceded by arming the NIC.
/// In this process, with the platform recording: nothing is sent.
#[tokio::test]
async fn our_commands_are_checked_and_sent_only_to_terminals_that_announced_them() {
    let dir = tempfile::tempdir().expect("tmp");
    let h = start_server(&dir.path().join("s")).await;
    let mac = "AA:00:00:00:29:01";
    let mut cfg = agent_config(&dir.path().join("a"), h.addr.port(), mac);
    cfg.interface = Some("lo".into());
    let (agent, task) = start_agent(cfg);
    wait_for("its wake report", 20, || {
        h.server
            .store
            .terminal(mac)
            .ok()
            .flatten()
            .is_some_and(|r| r.wake.is_some_and(|w| w.interface == "lo" && !w.supported))
    })
    .await;
    let api = common::api(&h);
    let push = |command: &'static str, params: Value| {
        let api = &api;
        async move {
            let r = api.push(mac, command, params, 10).await.expect("api");
            if r.is_ok() {
                r.data.expect("data")["reply"].clone()
            } else {
                json!({"code": r.code, "msg": r.msg})
            }
        }
    };
    let journal = || RecordingPlatform::read_journal(&agent.cfg.journal_path());
    for bad in [
        json!({"macs": []}),
        json!({"macs": ["zz"]}),
        json!({"macs": ["01:00:5e:00:00:01"]}),
        json!({}),
    ] {
        let r = push("voi_wake_relay", bad.clone()).await;
        assert_eq!(r["code"], 88888, "{bad} → {r}");
    }
    assert!(
        journal().is_empty(),
        "nothing sent for a bad request: {:?}",
        journal()
    );
    let r = push("voi_wake_relay", json!({"macs": ["52:54:00:29:03:01"]})).await;
    assert_eq!(r["code"], 0, "{r}");
    assert_eq!(r["data"]["sent"], json!(["52:54:00:29:03:01"]));
    assert_eq!(r["data"]["broadcast"], "127.255.255.255");
    assert_eq!(
        journal(),
        vec![JournalEntry::SendWake {
            mac: "52:54:00:29:03:01".into(),
            broadcast: "127.255.255.255".parse().expect("ip"),
        }]
    );
    // The same MAC again at once: answered, not sent twice (issue 38.15).
    let r = push("voi_wake_relay", json!({"macs": ["52:54:00:29:03:01"]})).await;
    assert_eq!(r["code"], 0, "{r}");
    assert_eq!(r["data"]["sent"], json!([]), "{r}");
    assert_eq!(journal().len(), 1, "{:?}", journal());
    let r = push(
        "voi_power_notice",
        json!({"action": "explode", "in_secs": 5}),
    )
    .await;
    assert_eq!(r["code"], 88888, "{r}");
    let r = push(
        "voi_power_notice",
        json!({"action": "shutdown", "in_secs": 120, "reason": "end of class"}),
    )
    .await;
    assert_eq!(r["code"], 0, "{r}");
    assert!(agent.state.read(|s| s
        .notices
        .iter()
        .any(|n| n == "this terminal will shut down in 2 min: end of class")));

    // A terminal that never announced them (the vendor's) is not sent them.
    let vendor = "AA:00:00:00:29:02";
    let mut raw = RawClient::connect(h.addr).await;
    assert_eq!(raw.login(vendor).await.code, 0);
    let r = api
        .push(
            vendor,
            "voi_wake_relay",
            json!({"macs": ["52:54:00:29:03:01"]}),
            5,
        )
        .await
        .expect("api");
    assert_eq!(r.code, 88888, "{r:?}");
    assert!(r.msg.contains("has not announced it"), "{r:?}");

    // 1001: the NIC is armed, then the machine goes off.
    let r = push("shutdown", json!({})).await;
    assert_eq!(r["code"], 0, "{r}");
    wait_for("the power-off", 10, || {
        journal().contains(&JournalEntry::PowerOff)
    })
    .await;
    let j = journal();
    let arm = j.iter().position(|e| {
        *e == JournalEntry::ArmWakeOnLan {
            interface: "lo".into(),
        }
    });
    let off = j.iter().position(|e| *e == JournalEntry::PowerOff);
    assert!(
        arm.is_some() && arm < off,
        "armed before the power-off: {j:?}"
    );
    agent.shutdown.cancel();
    let _ = task.await;
    h.stop().await;
}

/// Issue 38.15: a relay answers 1900 "sent" and sends nothing. When the
/// terminal is not up by half the timeout, the server adds the directed
/// broadcast (on loopback here: 127.77.0.255) and another relay on the
/// subnet, and the wake's result names both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_does_not_bring_the_terminal_up_is_followed_by_other_routes() {
    let dir = tempfile::tempdir().expect("tmp");
    let h = start_server(&dir.path().join("s")).await;
    let wake = |ip: &str| json!({"interface": "eth0", "supported": true, "ip": ip, "prefix": 24});
    let target = "AA:00:00:00:29:11";
    {
        let mut t = RawClient::connect(h.addr).await;
        assert!(t.login(target).await.is_ok());
        let (_, env) = t
            .request(
                voi::protocol::ServiceCode::GetConfigVersionId,
                &json!({"mac": target, "wake": wake("127.77.0.9")}),
            )
            .await;
        assert!(env.is_ok(), "{env:?}");
    }
    wait_for("the target offline", 10, || {
        !h.server.registry.macs().contains(&target.to_string())
    })
    .await;
    // Two relays on its subnet; each answers 1900 "sent" and sends nothing.
    let asked = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut relays = Vec::new();
    for (mac, ip) in [
        ("AA:00:00:00:29:21", "127.77.0.5"),
        ("AA:00:00:00:29:22", "127.77.0.6"),
    ] {
        let mut c = RawClient::connect(h.addr).await;
        assert!(c.login(mac).await.is_ok());
        let (_, env) = c
            .request(
                voi::protocol::ServiceCode::GetConfigVersionId,
                &json!({"mac": mac, "wake": wake(ip)}),
            )
            .await;
        assert!(env.is_ok(), "{env:?}");
        let asked = asked.clone();
        relays.push(tokio::spawn(async move {
            while let Some(f) = c.recv().await {
                if f.service_code == voi::protocol::ServiceCode::WakeRelay as u32 && !f.is_response() {
                    asked.lock().expect("lock").push(mac.to_string());
                    let batch = f.json::<Value>().ok().map(|b| b["batch_no"].clone()).unwrap_or_default();
                    let reply = voi::protocol::Frame::response_json(
                        &f,
                        voi::protocol::ClientType::Linux,
                        &c.token,
                        &json!({"code": 0, "msg": "Success", "data": {"batch_no": batch, "mac": mac, "sent": [target], "broadcast": "127.77.0.255"}}),
                    )
                    .expect("reply");
                    c.send_raw(&reply.to_bytes()).await;
                }
            }
        }));
    }
    // The wake as `wake` records it after its first relay said "sent"
    // (a whole wake would also broadcast on this machine's interfaces).
    use voi::server::wake::book::{WakeResult, WakeState};
    use voi::server::wake::plan::{Relay, Route, Subnet};
    let subnet = |ip: &str| Subnet {
        ip: ip.parse().expect("ip"),
        prefix: 24,
    };
    let broadcast: std::net::Ipv4Addr = "127.77.0.255".parse().expect("ip");
    let mut first = WakeResult::new(target, WakeState::Sent, voi::server::registry::now_ms(), 6);
    first.routes.push(Route::Relay {
        mac: "AA:00:00:00:29:21".into(),
        broadcast,
    });
    h.server.wakes.record(first);
    let relay_list = vec![
        Relay {
            mac: "AA:00:00:00:29:21".into(),
            subnet: subnet("127.77.0.5"),
        },
        Relay {
            mac: "AA:00:00:00:29:22".into(),
            subnet: subnet("127.77.0.6"),
        },
    ];
    h.server
        .clone()
        .follow_relays(
            vec![(
                target.to_string(),
                "AA:00:00:00:29:21".to_string(),
                broadcast,
            )],
            [(target.to_string(), subnet("127.77.0.9"))]
                .into_iter()
                .collect(),
            relay_list,
            Duration::from_secs(3),
        )
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let api = common::api(&h);
    let env = api
        .get(&format!("/api/v1/wake?macs={target}"))
        .await
        .expect("results");
    let text = env.data.as_ref().map(|d| d.to_string()).unwrap_or_default();
    eprintln!(
        "wake | a relay that says sent and sends nothing | asked: {:?} | result: {text}",
        asked.lock().expect("lock")
    );
    let asked = asked.lock().expect("lock").clone();
    assert_eq!(
        asked,
        vec!["AA:00:00:00:29:22".to_string()],
        "the other relay asked"
    );
    assert!(text.contains("relayed by AA:00:00:00:29:21"), "{text}");
    assert!(text.contains("directed broadcast 127.77.0.255"), "{text}");
    assert!(text.contains("relayed by AA:00:00:00:29:22"), "{text}");
    for r in relays {
        r.abort();
    }
    h.stop().await;
}
