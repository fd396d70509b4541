//! End to end on real TCP: the reference server and the agent.

mod common;

use common::*;
use serde_json::json;
use std::time::{Duration, Instant};
use voi::protocol::{token_for, ErrorCode, ServiceCode};
use voi::server::registry::ServerEvent;

#[tokio::test]
async fn login_issues_md5_token_in_header_and_data() {
    let dir = tempfile::tempdir().expect("tmp");
    let h = start_server(dir.path()).await;
    let mut c = RawClient::connect(h.addr).await;
    let (frame, env) = c
        .request(
            ServiceCode::TerminalLogin,
            &json!({"mac": "aa:bb:cc:dd:ee:01", "ip": "127.0.0.1"}),
        )
        .await;
    assert!(env.is_ok(), "{env:?}");
    let expected = token_for(&c.local_addr());
    assert_eq!(frame.token_str(), expected);
    assert_eq!(env.data.expect("data")["token"], expected);
    assert_eq!(frame.req_or_res, 2);
    assert_eq!(frame.client_type, 4);
    h.stop().await;
}

#[tokio::test]
async fn heartbeat_answers_datetime_and_keeps_terminal_online() {
    let dir = tempfile::tempdir().expect("tmp");
    let h = start_server(dir.path()).await;
    let mut c = RawClient::connect(h.addr).await;
    c.login("AA:BB:CC:DD:EE:02").await;
    let (_, env) = c
        .request(ServiceCode::Heartbeat, &json!({"mac": "AA:BB:CC:DD:EE:02"}))
        .await;
    assert!(env.is_ok());
    let dt = env.data.expect("data")["datetime"]
        .as_str()
        .expect("string")
        .to_string();
    assert_eq!(dt.len(), "2020-04-02 09:22:33".len(), "{dt}");
    let list = api(&h).get("/api/v1/terminals").await.expect("api");
    let t = &list.data.expect("data")["terminals"][0];
    assert_eq!(t["mac"], "AA:BB:CC:DD:EE:02");
    assert_eq!(t["online"], true);
    h.stop().await;
}

#[tokio::test]
async fn offline_after_three_missed_heartbeats() {
    let dir = tempfile::tempdir().expect("tmp");
    let h = start_server(dir.path()).await; // heartbeat_secs = 1
    let mut events = h.server.registry.events.subscribe();
    let mut c = RawClient::connect(h.addr).await;
    c.login("AA:BB:CC:DD:EE:0A").await;
    wait_event(
        &mut events,
        10,
        |e| matches!(e, ServerEvent::Offline { mac } if mac == "AA:BB:CC:DD:EE:0A"),
    )
    .await;
    let list = api(&h).get("/api/v1/terminals").await.expect("api");
    assert_eq!(list.data.expect("data")["terminals"][0]["online"], false);
    h.stop().await;
}

#[tokio::test]
async fn wrong_or_missing_token_gets_60000() {
    let dir = tempfile::tempdir().expect("tmp");
    let h = start_server(dir.path()).await;
    let mut c = RawClient::connect(h.addr).await;
    c.login("AA:BB:CC:DD:EE:03").await;
    let good = c.token.clone();

    c.token = bytes::Bytes::from_static(b"00000000000000000000000000000000");
    let (_, env) = c
        .request(ServiceCode::Heartbeat, &json!({"mac": "AA:BB:CC:DD:EE:03"}))
        .await;
    assert_eq!(env.code, i64::from(ErrorCode::TerminalTokenError.code()));

    c.token = bytes::Bytes::new();
    let (_, env) = c
        .request(
            ServiceCode::GetDateTime,
            &json!({"mac": "AA:BB:CC:DD:EE:03"}),
        )
        .await;
    assert_eq!(env.code, 60000);

    c.token = good;
    let (_, env) = c
        .request(ServiceCode::Heartbeat, &json!({"mac": "AA:BB:CC:DD:EE:03"}))
        .await;
    assert!(env.is_ok(), "the session still works after bad packets");
    h.stop().await;
}

#[tokio::test]
async fn request_before_login_gets_60002_and_close() {
    let dir = tempfile::tempdir().expect("tmp");
    let h = start_server(dir.path()).await;
    let mut c = RawClient::connect(h.addr).await;
    // The token this socket would get, but no login was made.
    c.token = token_for(&c.local_addr()).into_bytes().into();
    let (_, env) = c
        .request(ServiceCode::Heartbeat, &json!({"mac": "AA:BB:CC:DD:EE:04"}))
        .await;
    assert_eq!(env.code, 60002);
    assert!(c.closed().await);
    h.stop().await;
}

#[tokio::test]
async fn agent_logs_in_runs_startup_and_heartbeats() {
    let dir = tempfile::tempdir().expect("tmp");
    let h = start_server(&dir.path().join("s")).await;
    let mut events = h.server.registry.events.subscribe();
    let mac = "AA:BB:CC:DD:EE:05";
    let (agent, task) = start_agent(agent_config(&dir.path().join("a"), h.addr.port(), mac));
    wait_event(&mut events, 10, is_login(mac)).await;
    // A terminal the server never configured: 9004 answers -1 and the
    // agent uploads its own configuration (9006), as the vendor intends.
    for service in [
        "get_config_version_id",
        "update_config_info",
        "get_desktop_group_list",
        "bt_tracker",
    ] {
        wait_event(
            &mut events,
            10,
            |e| matches!(e, ServerEvent::Request { service: s, .. } if s == service),
        )
        .await;
    }
    wait_event(&mut events, 10, is_heartbeat(mac)).await;
    wait_event(&mut events, 10, is_heartbeat(mac)).await;
    // Results of the startup sequence are persisted.
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("a/state.json")).expect("state"))
            .expect("json");
    // The server took the uploaded configuration as version 0; the agent
    // learns it with 9005 at its next login.
    let rec = h
        .server
        .store
        .terminal(mac)
        .expect("store")
        .expect("record");
    assert_eq!(rec.config.conf_version, 0);
    assert!(!rec.config.name.is_empty(), "the agent's name was uploaded");
    assert_eq!(state["terminal"]["conf_version"], -1);
    assert!(state["trackers"][0]
        .as_str()
        .expect("tracker")
        .ends_with("/announce"));
    agent.shutdown.cancel();
    task.await.expect("agent stops");
    h.stop().await;
}

#[tokio::test]
async fn command_round_trip_matches_batch_no() {
    let dir = tempfile::tempdir().expect("tmp");
    let h = start_server(&dir.path().join("s")).await;
    let mut events = h.server.registry.events.subscribe();
    let mac = "AA:BB:CC:DD:EE:06";
    let (agent, task) = start_agent(agent_config(&dir.path().join("a"), h.addr.port(), mac));
    wait_event(&mut events, 10, is_heartbeat(mac)).await;
    let a = api(&h);

    let r = a
        .push(mac, "watermark_switch", json!({"switch": 1}), 10)
        .await
        .expect("api");
    assert!(r.is_ok(), "{r:?}");
    let data = r.data.expect("data");
    assert_eq!(data["reply"]["code"], 0);
    assert_eq!(data["reply"]["data"]["mac"], mac);
    assert_eq!(data["reply"]["data"]["batch_no"], data["batch_no"]);
    assert!(agent.state.read(|s| s.watermark));

    // Two pushes get two different batches, each matched to its own reply.
    let r2 = a
        .push(mac, "1022", json!({"switch": 0}), 10)
        .await
        .expect("api");
    let d2 = r2.data.expect("data");
    assert_ne!(d2["batch_no"], data["batch_no"]);
    assert_eq!(d2["reply"]["data"]["batch_no"], d2["batch_no"]);
    assert!(!agent.state.read(|s| s.watermark));

    // 1026 with no P2V running: nothing to cancel, said so (issue 39.4).
    let r4 = a
        .push(mac, "cancel_p_to_v", json!({}), 10)
        .await
        .expect("api");
    let reply = &r4.data.expect("data")["reply"];
    assert_eq!(reply["code"], 0, "{reply}");
    assert!(reply.to_string().contains("nothing"), "{reply}");

    // 1016 upload_desktop takes 1020's path (issue 39.4): a disk not on
    // this terminal is refused by name before anything is uploaded.
    let r6 = a
        .push(
            mac,
            "upload_desktop",
            json!({"mac": mac, "desktop": {"uuid": "5c0a5b1e-1d7e-4c36-9c43-3f0c7b7b0c99", "disks": [{"uuid": "5c0a5b1e-1d7e-4c36-9c43-3f0c7b7b0c98", "type": 0, "dif_level": 1, "prefix": "voi"}]}}),
            10,
        )
        .await
        .expect("api");
    let reply = &r6.data.expect("data")["reply"];
    assert_eq!(reply["code"], 88888, "{reply}");
    assert!(!reply.to_string().contains("NotImplemented"), "{reply}");

    // A command this agent does not carry out is refused, never "Success".
    let r3 = a
        .push(mac, "ssh_upload_desktop", json!({}), 10)
        .await
        .expect("api");
    let reply = &r3.data.expect("data")["reply"];
    assert_ne!(reply["code"], 0);
    assert!(
        reply["msg"]
            .as_str()
            .expect("msg")
            .contains("NotImplemented"),
        "{reply}"
    );

    // 1030 without a signed package to fetch is refused, with why.
    let r5 = a
        .push(
            mac,
            "terminal_upgrade",
            json!({"upgrade_package":"x","version":"1","os_name":"linux"}),
            10,
        )
        .await
        .expect("api");
    let reply = &r5.data.expect("data")["reply"];
    assert_eq!(reply["code"], 88888, "{reply}");
    assert!(
        reply["msg"]
            .as_str()
            .unwrap_or("")
            .contains("no manifest_url"),
        "{reply}"
    );

    // A bad body gets 88888 from the agent.
    let r4 = a
        .push(mac, "watermark_switch", json!({"switch": "on"}), 10)
        .await
        .expect("api");
    assert_eq!(r4.data.expect("data")["reply"]["code"], 88888);

    // An offline terminal: 60017, immediately.
    let r5 = a
        .push("AA:BB:CC:DD:EE:99", "shutdown", json!({}), 2)
        .await
        .expect("api");
    assert_eq!(r5.code, 60017);

    agent.shutdown.cancel();
    task.await.expect("agent stops");
    h.stop().await;
}

#[tokio::test]
async fn agent_logs_in_again_after_server_restart() {
    let dir = tempfile::tempdir().expect("tmp");
    let sdir = dir.path().join("s");
    let h = start_server(&sdir).await;
    let addr = h.addr;
    let mac = "AA:BB:CC:DD:EE:07";
    let mut events = h.server.registry.events.subscribe();
    let (agent, task) = start_agent(agent_config(&dir.path().join("a"), addr.port(), mac));
    wait_event(&mut events, 10, is_login(mac)).await;
    api(&h)
        .push(mac, "update_name", json!({"name": "PC-7"}), 10)
        .await
        .expect("api");
    h.stop().await;

    // Down for a while, so the agent is well into its retry loop.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let h2 = voi::server::Server::start(server_config(&sdir, &addr.to_string()))
        .await
        .expect("restart");
    let t0 = Instant::now();
    let mut events = h2.server.registry.events.subscribe();
    wait_event(&mut events, 15, is_login(mac)).await;
    eprintln!(
        "agent logged in again {:?} after the server came back",
        t0.elapsed()
    );
    wait_event(&mut events, 10, is_heartbeat(mac)).await;

    // The store survived the restart.
    let t = api(&h2)
        .get(&format!("/api/v1/terminals/{mac}"))
        .await
        .expect("api");
    assert_eq!(t.data.expect("data")["name"], "PC-7");
    agent.shutdown.cancel();
    task.await.expect("agent stops");
    h2.stop().await;
}
