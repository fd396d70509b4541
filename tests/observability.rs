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
