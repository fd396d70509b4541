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
    agent.shutdown.cancel();
    let _ = task.await;
    h.stop().await;
}
