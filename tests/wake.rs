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

fn start_server(dir: &Path, ns: &str, server_ip: &str) -> Proc {
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
    let _server = start_server(dir.path(), &lan.hosts[0], &server_ip);
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
    let _server = start_server(dir.path(), &lan_a.hosts[0], &server_ip);
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
    let ctl = ctl_wake(&api_url, &[tmac, "--wait", "--timeout", "60"]);
    let relayed = at_target
        .wait_for(20, is_magic_for(tmac))
        .expect("the relayed magic packet reached T's link");
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
