//! TLS on the terminal port: a real server with a certificate from a test
//! CA, real agents that trust the CA or pin the certificate, and the ones
//! that must not get in.

mod common;

use common::pki::make_pki;
use common::*;
use serde_json::json;
use std::time::Duration;
use voi::protocol::ServiceCode;
use voi::server::Server;
use voi::tls::AgentTlsConfig;

async fn logs_in_within(agent: &voi::agent::Agent, secs: u64) -> bool {
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(secs) {
        if agent.live().session.starts_with("logged_in") {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_that_trust_the_server_log_in_over_tls_and_others_do_not() {
    let dir = tempfile::tempdir().expect("tmp");
    let pki = make_pki(dir.path());
    let mut cfg = server_config(&dir.path().join("s"), "127.0.0.1:0");
    cfg.tls_cert = Some(pki.cert.clone());
    cfg.tls_key = Some(pki.key.clone());
    init_log();
    let h = Server::start(cfg).await.expect("server");
    let port = h.addr.port();
    let pin = voi::tls::fingerprint_file(&pki.cert).expect("fingerprint");

    let agent_with = |name: &str, mac: &str, tls: AgentTlsConfig| {
        let mut c = agent_config(&dir.path().join(name), port, mac);
        c.tls = tls;
        c
    };

    // 1. Trusts the CA and names the server as its certificate does. The
    // whole protocol runs inside: login, heartbeats, a command.
    let by_ca = AgentTlsConfig {
        enabled: true,
        ca: Some(pki.ca.clone()),
        pin_sha256: None,
        server_name: Some("voi-server.test".into()),
        ..Default::default()
    };
    let mut events = h.server.registry.events.subscribe();
    let (a1, t1) = start_agent(agent_with("a1", "AA:00:00:00:71:01", by_ca.clone()));
    wait_event(&mut events, 20, is_login("AA:00:00:00:71:01")).await;
    wait_event(&mut events, 10, is_heartbeat("AA:00:00:00:71:01")).await;
    let (_, env) = h
        .server
        .push(
            "AA:00:00:00:71:01",
            ServiceCode::UpdateName,
            json!({"batch_no": 1, "name": "tls-1"}),
            Duration::from_secs(10),
        )
        .await
        .expect("update_name over TLS");
    assert_eq!(env.code, 0);
    assert_eq!(a1.state.read(|s| s.terminal.name.clone()), "tls-1");

    // 2. Pins the certificate, no CA, connecting by IP.
    let by_pin = AgentTlsConfig {
        enabled: true,
        ca: None,
        pin_sha256: Some(pin.to_uppercase()),
        server_name: None,
        ..Default::default()
    };
    let (a2, t2) = start_agent(agent_with("a2", "AA:00:00:00:71:02", by_pin));
    assert!(logs_in_within(&a2, 20).await, "pinned agent logs in");

    // 3. A pin of another certificate, 4. a CA that did not sign it, 5. the
    // right CA but a name the certificate does not carry, 6. plain TCP to
    // the TLS port: none of them gets a session.
    let refused = [
        AgentTlsConfig {
            enabled: true,
            ca: None,
            pin_sha256: Some("ab".repeat(32)),
            server_name: None,
            ..Default::default()
        },
        AgentTlsConfig {
            enabled: true,
            ca: Some(pki.stranger.clone()),
            pin_sha256: None,
            server_name: Some("voi-server.test".into()),
            ..Default::default()
        },
        AgentTlsConfig {
            server_name: Some("elsewhere.test".into()),
            ..by_ca.clone()
        },
        AgentTlsConfig::default(),
    ];
    let mut losers = Vec::new();
    for (i, tls) in refused.into_iter().enumerate() {
        let mac = format!("AA:00:00:00:72:0{i}");
        losers.push(start_agent(agent_with(&format!("r{i}"), &mac, tls)));
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    for (i, (agent, _)) in losers.iter().enumerate() {
        let live = agent.live();
        assert_eq!(live.logins, 0, "case {i} got in: {live:?}");
        assert!(
            h.server
                .store
                .terminal(&format!("AA:00:00:00:72:0{i}"))
                .expect("store")
                .is_none(),
            "case {i} reached the server"
        );
    }
    assert!(
        losers[0]
            .0
            .live()
            .last_end
            .unwrap_or_default()
            .contains("TLS"),
        "a TLS failure says so"
    );

    // 7. TLS on with nothing to trust is a configuration error at start.
    let mut bad = agent_config(&dir.path().join("bad"), port, "AA:00:00:00:73:01");
    bad.tls = AgentTlsConfig {
        enabled: true,
        ..Default::default()
    };
    let err = voi::agent::Agent::new(bad).err().expect("refused");
    assert!(err.to_string().contains("pin_sha256"), "{err}");

    // The first agents are still fine.
    assert!(a1.live().session.starts_with("logged_in"));
    for (agent, task) in losers.into_iter().chain([(a1, t1), (a2, t2)]) {
        agent.shutdown.cancel();
        let _ = task.await;
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_lets_in_only_a_terminal_with_its_own_certificate() {
    let dir = tempfile::tempdir().expect("tmp");
    let pki = make_pki(dir.path());
    let mut cfg = server_config(&dir.path().join("s"), "127.0.0.1:0");
    cfg.tls_cert = Some(pki.cert.clone());
    cfg.tls_key = Some(pki.key.clone());
    cfg.tls_client_ca = Some(pki.ca.clone());
    init_log();
    let h = Server::start(cfg).await.expect("server");
    let port = h.addr.port();
    let tls_with = |cert: Option<(std::path::PathBuf, std::path::PathBuf)>| AgentTlsConfig {
        enabled: true,
        ca: Some(pki.ca.clone()),
        server_name: Some("voi-server.test".into()),
        cert: cert.as_ref().map(|c| c.0.clone()),
        key: cert.map(|c| c.1),
        ..Default::default()
    };
    let agent_with = |name: &str, mac: &str, tls: AgentTlsConfig| {
        let mut c = agent_config(&dir.path().join(name), port, mac);
        c.tls = tls;
        c
    };
    let good = "AA:00:00:00:74:01";
    let (other_mac, thief_mac, old_mac, bare_mac) = (
        "AA:00:00:00:74:02",
        "AA:00:00:00:74:03",
        "AA:00:00:00:74:04",
        "AA:00:00:00:74:05",
    );
    let good_cert = pki.client(dir.path(), good, false);
    let other_cert = pki.client(dir.path(), other_mac, false);
    let old_cert = pki.client(dir.path(), old_mac, true);

    // A terminal with its own, current certificate: the whole protocol
    // runs as usual.
    let mut events = h.server.registry.events.subscribe();
    let (a, ta) = start_agent(agent_with("good", good, tls_with(Some(good_cert))));
    wait_event(&mut events, 20, is_login(good)).await;
    let (_, env) = h
        .server
        .push(
            good,
            ServiceCode::UpdateName,
            json!({"batch_no": 1, "name": "mtls-1"}),
            Duration::from_secs(10),
        )
        .await
        .expect("update_name under mutual TLS");
    assert_eq!(env.code, 0);

    // Another terminal's certificate: TLS succeeds (the CA issued it), the
    // login as a different MAC is refused with 60001 and closed.
    let (thief, tt) = start_agent(agent_with("thief", thief_mac, tls_with(Some(other_cert))));
    let refused = wait_event(&mut events, 20, |e| {
        matches!(e, voi::server::registry::ServerEvent::Refused { mac, .. } if mac == thief_mac)
    })
    .await;
    let voi::server::registry::ServerEvent::Refused { reason, .. } = refused else {
        unreachable!()
    };
    assert!(reason.contains(other_mac), "{reason}");
    // No certificate, and an expired one: no TLS session at all.
    let (bare, tb) = start_agent(agent_with("bare", bare_mac, tls_with(None)));
    let (old, to) = start_agent(agent_with("old", old_mac, tls_with(Some(old_cert))));
    tokio::time::sleep(Duration::from_secs(4)).await;
    for (agent, mac) in [(&thief, thief_mac), (&bare, bare_mac), (&old, old_mac)] {
        let live = agent.live();
        assert_eq!(live.logins, 0, "{mac} got in: {live:?}");
        assert!(
            h.server.store.terminal(mac).expect("store").is_none(),
            "{mac} left a record"
        );
    }
    assert!(
        thief.live().last_end.unwrap_or_default().contains("60001"),
        "the refusal reaches the terminal: {:?}",
        thief.live().last_end
    );
    // Half a client certificate is a configuration error at start.
    let mut half = agent_config(&dir.path().join("half"), port, "AA:00:00:00:74:06");
    half.tls = AgentTlsConfig {
        key: None,
        ..tls_with(Some(pki.client(dir.path(), "AA:00:00:00:74:06", false)))
    };
    assert!(voi::agent::Agent::new(half).is_err());

    assert!(a.live().session.starts_with("logged_in"));
    for (agent, task) in [(a, ta), (thief, tt), (bare, tb), (old, to)] {
        agent.shutdown.cancel();
        let _ = task.await;
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_console_and_api_over_tls() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().expect("tmp");
    let pki = make_pki(dir.path());
    let mut cfg = server_config(&dir.path().join("s"), "127.0.0.1:0");
    cfg.api_tls_cert = Some(pki.cert.clone());
    cfg.api_tls_key = Some(pki.key.clone());
    init_log();
    let h = Server::start(cfg).await.expect("server");
    let connector = voi::tls::Connector::new(
        &AgentTlsConfig {
            enabled: true,
            ca: Some(pki.ca.clone()),
            server_name: Some("voi-server.test".into()),
            ..Default::default()
        },
        "127.0.0.1",
    )
    .expect("connector");
    let get = |path: String, token: Option<String>| {
        let connector = connector.clone();
        let addr = h.api_addr;
        async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.expect("tcp");
            let mut tls = connector.connect(tcp).await.expect("TLS to the console");
            let auth = token
                .map(|t| format!("Authorization: Bearer {t}\r\n"))
                .unwrap_or_default();
            let req = format!(
                "GET {path} HTTP/1.1\r\nHost: voi-server.test\r\n{auth}Connection: close\r\n\r\n"
            );
            tls.write_all(req.as_bytes()).await.expect("write");
            let mut out = Vec::new();
            let _ = tls.read_to_end(&mut out).await;
            String::from_utf8_lossy(&out).into_owned()
        }
    };
    let page = get("/".into(), None).await;
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(page.contains("voi-server console"));
    assert!(page
        .to_ascii_lowercase()
        .contains("content-security-policy"));
    let api = get("/api/v1/terminals".into(), Some(h.server.api_token.clone())).await;
    assert!(api.starts_with("HTTP/1.1 200"), "{api}");
    assert!(api.contains("\"terminals\""), "{api}");
    let refused = get("/api/v1/terminals".into(), None).await;
    assert!(refused.starts_with("HTTP/1.1 401"), "{refused}");
    // Plain HTTP to the TLS listener gets nothing useful.
    let mut plain = tokio::net::TcpStream::connect(h.api_addr)
        .await
        .expect("tcp");
    plain
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut buf)).await;
    assert!(!String::from_utf8_lossy(&buf).contains("voi-server console"));
    h.stop().await;
}
