//! The server's tracker over real HTTP, reached through the URL 9019 gives.

mod common;

use common::*;

fn query(hash: &[u8; 20], id: &[u8; 20], port: u16, left: u64) -> String {
    let enc = |b: &[u8]| b.iter().map(|x| format!("%{x:02X}")).collect::<String>();
    format!(
        "info_hash={}&peer_id={}&port={port}&uploaded=0&downloaded=0&left={left}&compact=1&event=started",
        enc(hash),
        enc(id)
    )
}

#[tokio::test]
async fn agent_gets_the_tracker_url_and_the_tracker_answers_compact_peers() {
    let dir = tempfile::tempdir().expect("tmp");
    let h = start_server(&dir.path().join("s")).await;
    let mac = "AA:00:00:00:05:01";
    let mut ev = h.server.registry.events.subscribe();
    let (agent, task) = start_agent(agent_config(&dir.path().join("a"), h.addr.port(), mac));
    wait_event(&mut ev, 10, is_heartbeat(mac)).await;
    let url = agent
        .state
        .read(|s| s.trackers.first().cloned())
        .expect("a tracker");
    assert_eq!(
        url,
        format!("http://127.0.0.1:{}/announce", h.server.tracker_addr.port())
    );

    let http = reqwest::Client::new();
    let hash = [0x5a; 20];
    let seed = http
        .get(format!("{url}?{}", query(&hash, &[1; 20], 7001, 0)))
        .send()
        .await
        .expect("http");
    assert!(seed.status().is_success());
    let body = http
        .get(format!("{url}?{}", query(&hash, &[2; 20], 7002, 1000)))
        .send()
        .await
        .expect("http")
        .bytes()
        .await
        .expect("body");
    let mut peers = b"5:peers6:".to_vec();
    peers.extend_from_slice(&[127, 0, 0, 1]);
    peers.extend_from_slice(&7001u16.to_be_bytes());
    assert!(
        body.windows(peers.len()).any(|w| w == peers.as_slice()),
        "{body:?}"
    );

    let bad = http
        .get(format!("{url}?info_hash=short&port=1"))
        .send()
        .await
        .expect("http");
    let text = bad.text().await.expect("body");
    assert!(text.starts_with("d14:failure reason"), "{text}");
    agent.shutdown.cancel();
    let _ = task.await;
    h.stop().await;
}
