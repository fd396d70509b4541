//! Bad bytes, oversize frames, bad JSON and a misbehaving server: neither
//! side crashes; the answer is 88888 or a clean close.

mod common;

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use std::time::Duration;
use voi::protocol::{ClientType, Envelope, Frame, Header, ServiceCode};

#[tokio::test]
async fn server_survives_random_bytes_and_oversize_frames() {
    let dir = tempfile::tempdir().expect("tmp");
    let h = start_server(dir.path()).await;

    let mut rng = fastrand::Rng::with_seed(42);
    for _ in 0..20 {
        let mut c = RawClient::connect(h.addr).await;
        let junk: Vec<u8> = (0..rng.usize(24..400)).map(|_| rng.u8(..)).collect();
        c.send_raw(&junk).await;
        assert!(c.closed().await, "garbage must close the connection");
    }

    // A valid header that announces 4 GiB.
    let mut c = RawClient::connect(h.addr).await;
    let mut hdr = Frame::request_json(
        ServiceCode::Heartbeat,
        1,
        ClientType::Linux,
        &bytes::Bytes::new(),
        &json!({}),
    )
    .expect("frame")
    .header();
    hdr.data_size = u32::MAX;
    c.send_raw(&hdr.to_bytes()).await;
    assert!(c.closed().await, "oversize must close the connection");

    // Still serving.
    let mut ok = RawClient::connect(h.addr).await;
    assert!(ok.login("AA:BB:CC:DD:EE:10").await.is_ok());
    h.stop().await;
}

#[tokio::test]
async fn server_answers_88888_to_bad_json_and_unknown_codes() {
    let dir = tempfile::tempdir().expect("tmp");
    let h = start_server(dir.path()).await;
    let mut c = RawClient::connect(h.addr).await;

    // Bad JSON on login.
    let mut f = Frame::request_json(
        ServiceCode::TerminalLogin,
        1,
        ClientType::Linux,
        &bytes::Bytes::new(),
        &json!({}),
    )
    .expect("frame");
    f.payload = bytes::Bytes::from_static(b"{\"mac\": ");
    c.io.send(f).await.expect("send");
    let env: Envelope<serde_json::Value> = c.recv().await.expect("answer").json().expect("env");
    assert_eq!(env.code, 88888);

    c.login("AA:BB:CC:DD:EE:11").await;
    let mut f = Frame::request_json(
        ServiceCode::GetDesktopGroupList,
        2,
        ClientType::Linux,
        &c.token,
        &json!({}),
    )
    .expect("frame");
    f.payload = bytes::Bytes::from_static(b"\xff\xfe not json");
    c.io.send(f).await.expect("send");
    let env: Envelope<serde_json::Value> = c.recv().await.expect("answer").json().expect("env");
    assert_eq!(env.code, 88888);

    // Missing required field.
    let (_, env) = c
        .request(
            ServiceCode::OrderConfirm,
            &json!({"mac": "AA:BB:CC:DD:EE:11"}),
        )
        .await;
    assert_eq!(env.code, 88888);

    // A mac that is not this session's.
    let (_, env) = c
        .request(ServiceCode::Heartbeat, &json!({"mac": "AA:BB:CC:DD:EE:12"}))
        .await;
    assert_eq!(env.code, 60005);

    // An unknown service code.
    let mut f = Frame::request_json(
        ServiceCode::Heartbeat,
        3,
        ClientType::Linux,
        &c.token,
        &json!({}),
    )
    .expect("frame");
    f.service_code = 4242;
    c.io.send(f).await.expect("send");
    let a = c.recv().await.expect("answer");
    assert_eq!(a.service_code, 4242);
    assert_eq!(
        a.json::<Envelope<serde_json::Value>>().expect("env").code,
        88888
    );

    let (_, env) = c
        .request(ServiceCode::Heartbeat, &json!({"mac": "AA:BB:CC:DD:EE:11"}))
        .await;
    assert!(env.is_ok(), "the session survived");
    h.stop().await;
}

#[tokio::test]
async fn agent_answers_bad_command_json_with_88888() {
    let fake = FakeServer::new().await;
    let dir = tempfile::tempdir().expect("tmp");
    let (agent, task) = start_agent(agent_config(dir.path(), fake.port(), "AA:BB:CC:DD:EE:20"));
    let mut conn = fake.accept().await;
    FakeServer::serve_startup(&mut conn).await;

    conn.send(command(1004, b"{\"batch_no\": 5, \"name\": "))
        .await
        .expect("send");
    let r = FakeServer::next_reply(&mut conn).await;
    assert_eq!(r.service_code, 1004);
    assert_eq!(r.sequence_code, 77, "sequence echoed");
    assert_eq!(r.req_or_res, 2);
    assert_eq!(r.token_str(), "tok", "the session token is carried");
    assert_eq!(
        r.json::<Envelope<serde_json::Value>>().expect("env").code,
        88888
    );

    // A name over 13 bytes: 60009, and nothing changes.
    conn.send(command(
        1004,
        br#"{"batch_no": 6, "name": "a-very-long-name", "conf_version": 3}"#,
    ))
    .await
    .expect("send");
    let r = FakeServer::next_reply(&mut conn).await;
    let env: Envelope<serde_json::Value> = r.json().expect("env");
    assert_eq!(env.code, 60009);
    assert_eq!(env.data.expect("data")["batch_no"], 6);
    assert_eq!(agent.state.read(|s| s.terminal.name.clone()), "");

    // The same batch twice is applied once and answered twice.
    conn.send(command(1022, br#"{"batch_no": 7, "switch": 1}"#))
        .await
        .expect("send");
    assert_eq!(
        FakeServer::next_reply(&mut conn)
            .await
            .json::<Envelope<serde_json::Value>>()
            .expect("env")
            .code,
        0
    );
    agent.state.update(|s| s.watermark = false).expect("reset");
    conn.send(command(1022, br#"{"batch_no": 7, "switch": 1}"#))
        .await
        .expect("send");
    assert_eq!(
        FakeServer::next_reply(&mut conn)
            .await
            .json::<Envelope<serde_json::Value>>()
            .expect("env")
            .code,
        0
    );
    assert!(
        !agent.state.read(|s| s.watermark),
        "a repeated batch is not applied again"
    );

    agent.shutdown.cancel();
    task.await.expect("stops");
}

#[tokio::test]
async fn agent_reconnects_after_garbage_oversize_60002_and_silence() {
    let fake = FakeServer::new().await;
    let dir = tempfile::tempdir().expect("tmp");
    let (agent, task) = start_agent(agent_config(dir.path(), fake.port(), "AA:BB:CC:DD:EE:21"));

    // 1. Garbage bytes.
    let mut conn = fake.accept().await;
    FakeServer::serve_startup(&mut conn).await;
    {
        use tokio::io::AsyncWriteExt;
        conn.get_mut()
            .write_all(b"\x07garbage garbage garbage garbage")
            .await
            .expect("write");
    }
    // 2. An oversize header.
    let mut conn = fake.accept().await;
    FakeServer::serve_startup(&mut conn).await;
    let mut h: Header = command(1001, b"{}").header();
    h.data_size = 512 * 1024 * 1024;
    {
        use tokio::io::AsyncWriteExt;
        conn.get_mut()
            .write_all(&h.to_bytes())
            .await
            .expect("write");
    }
    // 3. 60002 on a heartbeat.
    let mut conn = fake.accept().await;
    FakeServer::serve_startup(&mut conn).await;
    let hb = loop {
        let f = conn.next().await.expect("open").expect("frame");
        if f.service_code == ServiceCode::Heartbeat as u32 {
            break f;
        }
    };
    conn.send(FakeServer::answer(
        &hb,
        json!({"code": 60002, "msg": "TerminalNotLogin"}),
    ))
    .await
    .expect("send");
    // 4. Heartbeats never answered: the agent gives up after two.
    let mut conn = fake.accept().await;
    FakeServer::serve_startup(&mut conn).await;
    let silent = tokio::spawn(async move {
        // Read and ignore everything.
        while let Some(Ok(_)) = conn.next().await {}
    });
    let mut again = fake.accept().await;
    FakeServer::serve_startup(&mut again).await;
    silent.abort();
    agent.shutdown.cancel();
    task.await.expect("stops");
}

#[tokio::test]
async fn agent_refuses_bad_bodies_of_every_batch_command_and_does_nothing() {
    let fake = FakeServer::new().await;
    let dir = tempfile::tempdir().expect("tmp");
    let (agent, task) = start_agent(agent_config(dir.path(), fake.port(), "AA:BB:CC:DD:EE:22"));
    let mut conn = fake.accept().await;
    FakeServer::serve_startup(&mut conn).await;
    let bodies: [&[u8]; 4] = [
        b"{\"batch_no\": [1]}",
        b"not json",
        b"",
        b"{\"batch_no\": {}}",
    ];
    for code in [1001u32, 1002, 1003, 1006, 1014, 1019, 1024] {
        for body in bodies {
            conn.send(command(code, body)).await.expect("send");
            let r = FakeServer::next_reply(&mut conn).await;
            assert_eq!(r.service_code, code);
            let env: Envelope<serde_json::Value> = r.json().expect("env");
            assert_eq!(
                env.code,
                88888,
                "{code} {:?}",
                String::from_utf8_lossy(body)
            );
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let journal = voi::agent::platform::RecordingPlatform::read_journal(&agent.cfg.journal_path());
    assert!(journal.is_empty(), "nothing was done: {journal:?}");
    assert_eq!(agent.live().logins, 1, "no reconnect either");
    agent.shutdown.cancel();
    task.await.expect("stops");
}
