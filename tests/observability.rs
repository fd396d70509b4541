//! Health, readiness and version: what a supervisor or an integrator asks
//! before anything else, and the audit trail's record of an action.

mod common;

use common::*;
use serde_json::json;
use std::process::Command;

#[tokio::test]
async fn health_ready_version_and_the_audit_trail() {
    let dir = tempfile::tempdir().expect("tmp");
    let h = start_server(&dir.path().join("s")).await;
    let base = format!("http://{}", h.api_addr);
    let http = reqwest::Client::new();
    for (path, want) in [("/healthz", "ok"), ("/readyz", "ready")] {
        let r = http.get(format!("{base}{path}")).send().await.expect(path);
        assert_eq!(r.status(), 200, "{path}");
        let v: serde_json::Value = r.json().await.expect("json");
        assert_eq!(v["status"], want, "{path}");
    }
    let v = api(&h).get("/api/v1/version").await.expect("version");
    let data = v.data.expect("data");
    assert_eq!(data["version"], env!("CARGO_PKG_VERSION"));
    assert!(data["commit"].as_str().is_some_and(|c| !c.is_empty()));
    for bin in [
        env!("CARGO_BIN_EXE_voi-server"),
        env!("CARGO_BIN_EXE_voi-agent"),
    ] {
        let out = Command::new(bin)
            .arg("--version")
            .output()
            .expect("--version");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("(commit "), "{bin}: {text}");
    }

    // An operator action is in the trail, refused or not; a read is not.
    let env = api(&h)
        .put(
            "/api/v1/schedule",
            &json!([{"room": "301", "at": "25:00", "action": "wake"}]),
        )
        .await
        .expect("put");
    assert_ne!(env.code, 0);
    let _ = api(&h).get("/api/v1/terminals").await.expect("read");
    let trail = api(&h).get("/api/v1/audit").await.expect("audit");
    let entries = trail.data.expect("data")["entries"].clone();
    assert_eq!(entries.as_array().map(|a| a.len()), Some(1), "{entries}");
    assert_eq!(entries[0]["action"], "PUT /api/v1/schedule");
    assert_eq!(entries[0]["status"], 400);
    assert!(entries[0]["result"]
        .as_str()
        .unwrap_or("")
        .contains("HH:MM"));
    assert_eq!(entries[0]["who"], "operator");
    h.stop().await;
}

/// `GET <base>/metrics` with `token`, as text.
async fn scrape(base: &str, token: &str) -> String {
    reqwest::Client::new()
        .get(format!("{base}/metrics"))
        .bearer_auth(token)
        .send()
        .await
        .expect("scrape")
        .text()
        .await
        .expect("text")
}

fn parse(text: &str) -> prometheus_parse::Scrape {
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .unwrap_or_else(|e| panic!("not Prometheus text: {e}\n{text}"))
}

fn value(s: &prometheus_parse::Scrape, name: &str, label: Option<(&str, &str)>) -> Option<f64> {
    s.samples
        .iter()
        .find(|x| x.metric == name && label.is_none_or(|(k, v)| x.labels.get(k) == Some(v)))
        .map(|x| match x.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => f64::NAN,
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_programs_export_prometheus_metrics() {
    let dir = tempfile::tempdir().expect("tmp");
    let h = start_server(&dir.path().join("s")).await;
    let mac = "AA:00:00:00:30:01";
    let mut cfg = agent_config(&dir.path().join("a"), h.addr.port(), mac);
    let port = free_port();
    cfg.metrics_listen = Some(format!("127.0.0.1:{port}"));
    let mut ev = h.server.registry.events.subscribe();
    let (agent, task) = start_agent(cfg);
    wait_event(&mut ev, 20, is_heartbeat(mac)).await;
    // A command, so there is a latency to show.
    let r = api(&h)
        .push(mac, "watermark_switch", json!({"switch": 1}), 10)
        .await
        .expect("push");
    assert_eq!(r.code, 0, "{r:?}");

    let http = reqwest::Client::new();
    let url = format!("http://{}/metrics", h.api_addr);
    let anon = http.get(&url).send().await.expect("scrape");
    assert_eq!(anon.status(), 401, "the API's token is needed");
    let text = http
        .get(&url)
        .bearer_auth(&h.server.api_token)
        .send()
        .await
        .expect("scrape")
        .text()
        .await
        .expect("text");
    let server_text = text.clone();
    let s = parse(&text);
    assert_eq!(
        value(&s, "voi_server_terminals", Some(("state", "online"))),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(&s, "voi_server_logins_total", None),
        Some(1.0),
        "{text}"
    );
    assert!(value(&s, "voi_server_sessions_opened_total", None) >= Some(1.0));
    assert_eq!(
        value(
            &s,
            "voi_server_commands_total",
            Some(("command", "watermark_switch"))
        ),
        Some(1.0),
        "{text}"
    );
    assert!(
        s.samples
            .iter()
            .any(|x| x.metric.starts_with("voi_server_command_duration_seconds")),
        "{text}"
    );
    for name in [
        "voi_server_tracker_swarms",
        "voi_server_tracker_peers",
        "voi_server_store_bytes",
        "voi_server_event_readers",
    ] {
        assert!(value(&s, name, None).is_some(), "{name} missing:\n{text}");
    }
    assert!(
        text.contains("voi_server_store_commit_duration_seconds_bucket"),
        "{text}"
    );

    let text = http
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await
        .expect("agent scrape")
        .text()
        .await
        .expect("text");
    let s = parse(&text);
    assert_eq!(
        value(&s, "voi_agent_session_logged_in", None),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(&s, "voi_agent_logins_total", None),
        Some(1.0),
        "{text}"
    );
    assert!(
        value(&s, "voi_agent_disk_free_bytes", None).is_some_and(|v| v > 0.0),
        "{text}"
    );
    assert_eq!(
        value(&s, "voi_agent_desktop_state", Some(("state", "off"))),
        Some(1.0),
        "{text}"
    );
    dashboard_matches(&server_text, &text);
    agent.shutdown.cancel();
    let _ = task.await;
    h.stop().await;
}

/// Both programs as they run in production, one with `log_format = "json"`
/// in its config and one with `VOI_LOG_FORMAT=json`: every line is one JSON
/// object, and the lines about a terminal carry its MAC as a field.
#[test]
fn json_logs_from_both_programs_name_the_terminal() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    const MAC: &str = "52:54:00:30:00:01";
    let dir = tempfile::tempdir().expect("tmp");
    let (port, api_port, tracker) = (free_port(), free_port(), free_port());
    let server_cfg = dir.path().join("server.toml");
    std::fs::write(
        &server_cfg,
        format!(
            "listen = \"127.0.0.1:{port}\"\napi_listen = \"127.0.0.1:{api_port}\"\ntracker_listen = \"127.0.0.1:{tracker}\"\nbt_listen_port = 0\ndata_dir = \"{}\"\nlog_format = \"json\"\n",
            dir.path().join("s").display()
        ),
    )
    .expect("config");
    let agent_cfg = dir.path().join("agent.toml");
    std::fs::write(
        &agent_cfg,
        format!(
            "server_ip = \"127.0.0.1\"\nserver_port = {port}\nmac = \"{MAC}\"\nheartbeat_secs = 1\ndata_dir = \"{}\"\n[platform]\npower = \"recording\"\nboot = \"recording\"\nhostname = \"recording\"\nnetwork = \"recording\"\n[bt]\nlisten_port = 0\n",
            dir.path().join("a").display()
        ),
    )
    .expect("config");
    let mut server = Command::new(env!("CARGO_BIN_EXE_voi-server"))
        .args(["run", "--config"])
        .arg(&server_cfg)
        .env_remove("VOI_LOG_FORMAT")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("server");
    let mut agent = Command::new(env!("CARGO_BIN_EXE_voi-agent"))
        .arg("--config")
        .arg(&agent_cfg)
        .arg("run")
        .env("VOI_LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("agent");
    // The server's lines until the login, then a few more seconds of both.
    let server_err = server.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(server_err).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut server_lines = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !server_lines
        .iter()
        .any(|l: &String| l.contains("logged in from"))
    {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        assert!(
            !left.is_zero(),
            "no login in the server's log: {server_lines:#?}"
        );
        if let Ok(l) = rx.recv_timeout(left) {
            server_lines.push(l);
        }
    }
    std::thread::sleep(std::time::Duration::from_secs(2));
    for child in [&mut agent, &mut server] {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = child.wait();
    }
    server_lines.extend(rx.try_iter());
    let mut agent_text = String::new();
    std::io::Read::read_to_string(&mut agent.stderr.take().expect("stderr"), &mut agent_text)
        .expect("agent stderr");
    let parse = |who: &str, lines: &[String]| -> Vec<serde_json::Value> {
        lines
            .iter()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("{who}: not one JSON object a line ({e}): {l}"));
                for key in ["ts", "level", "target", "msg"] {
                    assert!(v[key].is_string(), "{who}: no {key}: {l}");
                }
                v
            })
            .collect()
    };
    let server_json = parse("server", &server_lines);
    let login = server_json
        .iter()
        .find(|v| {
            v["msg"]
                .as_str()
                .is_some_and(|m| m.contains("logged in from"))
        })
        .expect("login line");
    assert_eq!(login["mac"], MAC, "{login}");
    assert_eq!(login["ip"], "127.0.0.1", "{login}");
    assert_eq!(login["level"], "INFO");
    let agent_lines: Vec<String> = agent_text.lines().map(String::from).collect();
    let agent_json = parse("agent", &agent_lines);
    assert!(
        agent_json
            .iter()
            .any(|v| v["msg"].as_str().is_some_and(|m| m.contains("logged in"))),
        "{agent_text}"
    );
    for v in agent_json.iter().filter(|v| {
        v["target"]
            .as_str()
            .is_some_and(|t| t.starts_with("voi::agent"))
    }) {
        assert_eq!(v["mac"], MAC, "every agent line names its terminal: {v}");
    }
    eprintln!(
        "{} server and {} agent lines, each one JSON object",
        server_json.len(),
        agent_json.len()
    );
}

/// Named tokens: the trail says whose token did what; a read-only one
/// reads and is refused the rest; a caller without a valid token is in the
/// trail as such.
#[tokio::test]
async fn named_tokens_sign_the_audit_trail_and_read_only_ones_only_read() {
    use voi::server::tokens::NamedToken;
    let dir = tempfile::tempdir().expect("tmp");
    init_log();
    let mut cfg = server_config(&dir.path().join("s"), "127.0.0.1:0");
    let grafana = "grafana-reads-the-room-01";
    let grafana_sha = {
        use sha2::Digest;
        voi::bt::manifest::to_hex(&sha2::Sha256::digest(grafana.as_bytes()))
    };
    cfg.api_tokens = vec![
        NamedToken {
            name: "teacher-101".into(),
            token: Some("teacher-101-secret-token".into()),
            token_sha256: None,
            read_only: false,
        },
        NamedToken {
            name: "grafana".into(),
            token: None,
            token_sha256: Some(grafana_sha),
            read_only: true,
        },
    ];
    let audit_max = 50;
    cfg.audit_max_entries = audit_max;
    cfg.limits.max_event_readers = 6;
    cfg.limits.event_readers_kept_for_operators = 2;
    let h = voi::server::Server::start(cfg).await.expect("server");
    let base = format!("http://{}", h.api_addr);
    let as_ = |token: &str| voi::server::client::ApiClient::new(base.clone(), token.to_string());
    let schedule = json!([{"room": "101", "at": "07:50", "action": "wake"}]);
    let env = as_("teacher-101-secret-token")
        .put("/api/v1/schedule", &schedule)
        .await
        .expect("teacher");
    assert_eq!(env.code, 0, "{}", env.msg);
    let env = as_(grafana)
        .get("/api/v1/terminals")
        .await
        .expect("grafana reads");
    assert_eq!(env.code, 0, "{}", env.msg);
    let env = as_(grafana)
        .put("/api/v1/schedule", &json!([]))
        .await
        .expect("grafana writes");
    assert_ne!(env.code, 0);
    assert!(env.msg.contains("read-only"), "{}", env.msg);
    let env = as_("not-a-token-at-all")
        .put("/api/v1/schedule", &json!([]))
        .await
        .expect("stranger");
    assert_ne!(env.code, 0);
    // The schedule is the teacher's still.
    assert_eq!(
        h.server.store.schedule().expect("schedule").len(),
        1,
        "refused callers changed nothing"
    );
    let trail = api(&h).get("/api/v1/audit").await.expect("audit");
    let entries = trail.data.expect("data")["entries"].clone();
    let who: Vec<(String, u64)> = entries
        .as_array()
        .expect("entries")
        .iter()
        .rev()
        .map(|e| {
            (
                e["who"].as_str().unwrap_or("").to_string(),
                e["status"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    // Refused writes are counted, not audited (issue 38.9): the trail
    // holds what token holders did, and a flood of refusals from anyone
    // who reaches the port (or holds a read-only token) evicts none of it,
    // however small the trail.
    assert_eq!(who, vec![("teacher-101".to_string(), 200)]);
    let started = std::time::Instant::now();
    for _ in 0..300 {
        let _ = as_("not-a-token-at-all")
            .post("/api/v1/wake", &json!({"macs": []}))
            .await;
        let _ = as_(grafana).put("/api/v1/schedule", &json!([])).await;
    }
    let flood_secs = started.elapsed().as_secs_f64();
    let trail = api(&h).get("/api/v1/audit").await.expect("audit");
    let entries = trail.data.expect("data")["entries"].clone();
    let whos: Vec<&str> = entries
        .as_array()
        .expect("entries")
        .iter()
        .filter_map(|e| e["who"].as_str())
        .collect();
    let text = scrape(&base, "teacher-101-secret-token").await;
    let s = parse(&text);
    let unauth = value(
        &s,
        "voi_server_api_refusals_total",
        Some(("reason", "unauthenticated")),
    );
    let read_only = value(
        &s,
        "voi_server_api_refusals_total",
        Some(("reason", "read_only")),
    );
    eprintln!(
        "observability | 600 refused writes in {flood_secs:.1} s against a trail of {} entries | trail now {whos:?} | refusals counted: unauthenticated {unauth:?}, read_only {read_only:?}",
        audit_max
    );
    assert_eq!(whos, vec!["teacher-101"]);
    assert_eq!(unauth, Some(301.0));
    assert_eq!(read_only, Some(301.0));

    // Issue 38.16: the read-only token opens every event stream it can,
    // from another host; the teacher still gets one.
    let from_elsewhere = reqwest::Client::builder()
        .local_address(Some("127.0.0.2".parse().expect("ip")))
        .build()
        .expect("client");
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..8 {
        let r = from_elsewhere
            .get(format!("{base}/api/v1/events"))
            .bearer_auth(grafana)
            .send()
            .await
            .expect("grafana stream");
        if r.status() == 200 {
            held.push(r);
        } else {
            refused += 1;
        }
    }
    let teacher = reqwest::Client::new()
        .get(format!("{base}/api/v1/events"))
        .bearer_auth("teacher-101-secret-token")
        .send()
        .await
        .expect("teacher stream");
    eprintln!(
        "observability | a read-only token asks for 8 event streams of 6 from 127.0.0.2: {} held, {refused} refused | the operator's stream: {}",
        held.len(),
        teacher.status()
    );
    assert_eq!(held.len(), 4);
    assert_eq!(teacher.status(), 200);
    drop(held);
    h.stop().await;

    // A wrong entry stops the server at start, with the reason.
    let mut bad = server_config(&dir.path().join("t"), "127.0.0.1:0");
    bad.api_tokens = vec![NamedToken {
        name: "x".into(),
        token: Some("short".into()),
        token_sha256: None,
        read_only: false,
    }];
    let err = voi::server::Server::start(bad)
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("shorter than"), "{err}");
}

/// The metric families a scrape declares (`# TYPE name kind`).
fn families(text: &str) -> std::collections::BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(String::from)
        .collect()
}

/// `docs/grafana/voi-dashboard.json` queries only families the programs
/// export, and shows every one of them.
fn dashboard_matches(server: &str, agent: &str) {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/grafana/voi-dashboard.json"
    );
    let dash: serde_json::Value =
        serde_json::from_slice(&std::fs::read(path).expect("dashboard")).expect("dashboard JSON");
    let mut queried = std::collections::BTreeSet::new();
    for panel in dash["panels"].as_array().expect("panels") {
        for t in panel["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().expect("expr");
            let mut rest = expr;
            while let Some(i) = rest.find("voi_") {
                let name: String = rest[i..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                rest = &rest[i + name.len()..];
                let family = ["_bucket", "_count", "_sum", "_total"]
                    .iter()
                    .find_map(|suffix| name.strip_suffix(suffix))
                    .unwrap_or(&name)
                    .to_string();
                queried.insert(family);
            }
        }
    }
    let exported: std::collections::BTreeSet<String> =
        families(server).union(&families(agent)).cloned().collect();
    let unknown: Vec<_> = queried.difference(&exported).collect();
    assert!(
        unknown.is_empty(),
        "the dashboard queries what nothing exports: {unknown:?}"
    );
    let unshown: Vec<_> = exported.difference(&queried).collect();
    assert!(
        unshown.is_empty(),
        "exported but not on the dashboard: {unshown:?}"
    );
}

/// Issue 38.6: ten made-up terminals report transfers (9025) whose `state`
/// carries a forged exposition line, a quote and 4 kB of junk. The scrape
/// still parses, holds no forged sample, and its transfer series stay
/// within the fixed set of states.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminal_reports_cannot_write_into_the_metrics() {
    let dir = tempfile::tempdir().expect("tmp");
    let h = start_server(&dir.path().join("s")).await;
    let forged = [
        "x\"} 1\nvoi_server_terminals{state=\"online\",generation=\"voi-agent\"} 31337\n# TYPE evil gauge\nevil 1\n#".to_string(),
        "a\"b\\c".to_string(),
        "z".repeat(4000),
    ];
    let mut sessions = Vec::new();
    for t in 0..10u32 {
        let mac = format!("AA:00:00:00:66:{t:02X}");
        let mut c = RawClient::connect(h.addr).await;
        assert!(c.login(&mac).await.is_ok());
        for (i, state) in forged.iter().enumerate() {
            for level in 0..8 {
                let u = format!("3c1e9f20-7d4b-4a8e-b6c2-5f0a1d9e8b{:02x}", i * 16 + level);
                let _ = c
                    .request(
                        voi::protocol::ServiceCode::BtTaskState,
                        &json!({"mac": mac, "torrent_name": format!("voi_{level}_{u}.torrent"),
                                "progress": 50, "state": format!("{state}{t}{level}")}),
                    )
                    .await;
            }
        }
        sessions.push(c);
    }
    let text = scrape(&format!("http://{}", h.api_addr), &h.server.api_token).await;
    let s = parse(&text);
    let transfer_series = s
        .samples
        .iter()
        .filter(|x| x.metric == "voi_server_transfers")
        .count();
    let online = value(&s, "voi_server_terminals", Some(("state", "online")));
    let families = families(&text);
    eprintln!(
        "observability | 240 forged 9025 states from 10 made-up MACs | scrape {} bytes, {} transfer series, online terminals {online:?}, families {}",
        text.len(),
        transfer_series,
        families.len()
    );
    assert!(!text.contains("31337"), "{text}");
    assert!(!families.contains("evil"), "{families:?}");
    assert_eq!(online, Some(10.0));
    assert!(transfer_series <= 12, "{transfer_series} series");
    assert!(text.len() < 64 * 1024, "{} bytes", text.len());
    h.stop().await;
}
