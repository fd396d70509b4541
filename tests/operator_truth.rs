//! What the operator is told is true: a command the server or the terminal
//! refuses changes no record; a delete takes the session with the record;
//! `ctl push` fails when the terminal's answer is not success.

mod common;

use common::*;
use serde_json::json;
use std::process::Command;
use std::time::Duration;

use voi::protocol::ServiceCode;
use voi::server::admission::AdmissionPolicy;
use voi::server::Server;

fn record_name(h: &voi::server::ServerHandle, mac: &str) -> Option<String> {
    h.server
        .store
        .terminal(mac)
        .ok()
        .flatten()
        .map(|r| r.config.name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refused_commands_change_no_record_and_a_delete_takes_the_session() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut cfg = server_config(&dir.path().join("s"), "127.0.0.1:0");
    cfg.admission = AdmissionPolicy::Pending;
    init_log();
    let h = Server::start(cfg).await.expect("server");
    let port = h.addr.port();
    let mut ev = h.server.registry.events.subscribe();

    // A pending terminal: a rename is refused, and its record keeps the
    // old name, before and after it is accepted.
    let mac = "AA:00:00:00:91:01";
    let (a, ta) = start_agent(agent_config(&dir.path().join("a"), port, mac));
    wait_event(&mut ev, 20, is_login(mac)).await;
    let old = record_name(&h, mac).expect("record");
    let pushed = api(&h)
        .post(
            &format!("/api/v1/terminals/{mac}/commands"),
            &json!({"command": "update_name", "params": {"name": "sneaky"}}),
        )
        .await
        .expect("api");
    assert_ne!(pushed.code, 0, "{pushed:?}");
    assert_eq!(
        record_name(&h, mac).as_deref(),
        Some(old.as_str()),
        "refused, yet the record changed"
    );
    let env = api(&h)
        .put(
            &format!("/api/v1/terminals/{mac}/admission"),
            &json!({"admission": "accepted"}),
        )
        .await
        .expect("api");
    assert_eq!(env.code, 0);
    wait_event(&mut ev, 20, is_heartbeat(mac)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let name = a.state.read(|s| s.terminal.name.clone());
    assert_ne!(name, "sneaky");
    let old = record_name(&h, mac).expect("record");
    assert_ne!(old, "sneaky", "the refused rename became the record's name");

    // The terminal refuses a command (a body it cannot read): unchanged,
    // and `ctl push` fails with the terminal's code.
    let out = Command::new(env!("CARGO_BIN_EXE_voi-server"))
        .args(["ctl", "--api"])
        .arg(h.api_addr.to_string())
        .args([
            "--token",
            &h.server.api_token,
            "push",
            mac,
            "update_name",
            r#"{"name": 7}"#,
        ])
        .output()
        .expect("ctl");
    let said = String::from_utf8_lossy(&out.stderr);
    eprintln!("ctl push: {} {said}", out.status);
    assert!(!out.status.success(), "ctl push exited 0 on a refusal");
    assert!(said.contains("88888"), "{said}");
    assert_eq!(record_name(&h, mac).as_deref(), Some(old.as_str()));

    // A rename it confirms changes the record.
    let (_, env) = h
        .server
        .push(
            mac,
            ServiceCode::UpdateName,
            json!({"name": "room-1"}),
            Duration::from_secs(10),
        )
        .await
        .expect("push");
    assert_eq!(env.code, 0);
    assert_eq!(record_name(&h, mac).as_deref(), Some("room-1"));

    // An offline terminal's delete is refused (409) and keeps its record.
    let mac2 = "AA:00:00:00:91:02";
    let (b, tb) = start_agent(agent_config(&dir.path().join("b"), port, mac2));
    wait_event(&mut ev, 20, is_login(mac2)).await;
    b.shutdown.cancel();
    let _ = tb.await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let del = api(&h)
        .post(
            &format!("/api/v1/terminals/{mac2}/commands"),
            &json!({"command": "delete", "params": {}}),
        )
        .await
        .expect("api");
    assert_ne!(del.code, 0, "{del:?}");
    assert!(
        record_name(&h, mac2).is_some(),
        "a refused delete removed the record"
    );

    // An online terminal's delete: the record and the session go together.
    let mut ev = h.server.registry.events.subscribe();
    let (_, env) = h
        .server
        .push(mac, ServiceCode::Delete, json!({}), Duration::from_secs(10))
        .await
        .expect("delete");
    assert_eq!(env.code, 0, "{}", env.msg);
    wait_event(&mut ev, 10, |e| {
        matches!(e, voi::server::registry::ServerEvent::Disconnected { mac: m, .. } if m == mac)
    })
    .await;
    a.shutdown.cancel();
    let _ = ta.await;
    h.stop().await;
}

/// Groups follow the operator: a group put or deleted through the API
/// reaches an online terminal at once (1024, then its 9007), not at its
/// next login; a deleted group is gone from the terminal.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_group_put_or_deleted_reaches_online_terminals_at_once() {
    const U: &str = "6b2d8f14-3c5a-4e7b-9d1f-0a2b3c4d5e6f";
    const G: &str = "1f2e3d4c-5b6a-4789-8abc-def012345678";
    let dir = tempfile::tempdir().expect("tmp");
    let h = start_server(&dir.path().join("s")).await;
    let lib = h.server.images.dir().to_path_buf();
    make_base(&lib.join(format!("voi_0_{U}")), 2);
    h.server.images.scan().await.expect("scan");
    let mac = "AA:00:00:00:92:01";
    let mut ev = h.server.registry.events.subscribe();
    let (a, ta) = start_agent(agent_config(&dir.path().join("a"), h.addr.port(), mac));
    wait_event(&mut ev, 20, is_heartbeat(mac)).await;
    let logins = a.live().logins;
    let knows = |a: &voi::agent::Agent| {
        a.state
            .read(|s| s.desktop_groups.iter().any(|g| g.desktop_group_uuid == G))
    };
    assert!(!knows(&a));

    let group = layer_group("lab", G, U, &[0]);
    let env = api(&h)
        .put("/api/v1/desktop_groups", &group)
        .await
        .expect("put");
    assert_eq!(env.code, 0, "{env:?}");
    let started = std::time::Instant::now();
    while !knows(&a) {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the online terminal never heard of the new group"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "a new group reached the online terminal in {:?}",
        started.elapsed()
    );
    let env = api(&h)
        .delete(&format!("/api/v1/desktop_groups/{G}"))
        .await
        .expect("delete");
    assert_eq!(env.code, 0, "{env:?}");
    let started = std::time::Instant::now();
    while knows(&a) {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the terminal kept a deleted group"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(a.live().logins, logins, "no new login was needed");
    a.shutdown.cancel();
    let _ = ta.await;
    h.stop().await;
}

/// `ctl push --help` lists every command with its body, so an operator
/// does not guess (issue: a guessed shape got 88888).
#[test]
fn ctl_push_help_lists_the_commands_and_their_bodies() {
    let out = Command::new(env!("CARGO_BIN_EXE_voi-server"))
        .args(["ctl", "push", "--help"])
        .output()
        .expect("help");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    for (name, body) in [
        ("update_name", r#"{"name": "PC-1"}"#),
        ("update_ip", r#""mask""#),
        ("shutdown", "{}"),
        ("update_desktop_group_info", "{}"),
    ] {
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with(name))
            .unwrap_or_else(|| panic!("{name} missing from:\n{text}"));
        assert!(line.contains(body), "{line}");
    }
}

/// Two agents configured with one MAC kick each other off; each side says
/// why: the server logs the conflict (console: `conflict`), and the agents
/// say another terminal may use their MAC.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_agents_with_one_mac_are_told_on_both_sides() {
    let dir = tempfile::tempdir().expect("tmp");
    let h = start_server(&dir.path().join("s")).await;
    let mac = "AA:00:00:00:95:01";
    let (a, ta) = start_agent(agent_config(&dir.path().join("a"), h.addr.port(), mac));
    let (b, tb) = start_agent(agent_config(&dir.path().join("b"), h.addr.port(), mac));
    let said = |x: &voi::agent::Agent| {
        x.live()
            .last_error
            .is_some_and(|e| e.contains("another terminal may use MAC"))
    };
    wait_for("an agent to name the MAC conflict", 60, || {
        said(&a) || said(&b)
    })
    .await;
    assert!(
        h.server.registry.conflict(mac).is_some(),
        "the server saw no conflict"
    );
    for (x, t) in [(a, ta), (b, tb)] {
        x.shutdown.cancel();
        let _ = t.await;
    }
    h.stop().await;
}
