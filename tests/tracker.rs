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

    // The tracker keeps swarms only for the server's layers (issue 38.4).
    let lib = h.server.images.dir().to_path_buf();
    make_base(&lib.join("voi_0_5c0a5b1e-1d7e-4c36-9c43-3f0c7b7b0501"), 1);
    h.server.scan_library().await.expect("scan");
    let hex = h.server.images.status()[0].info_hash.clone();
    let mut hash = [0u8; 20];
    for (i, b) in hash.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex");
    }
    let http = reqwest::Client::new();
    let unknown = http
        .get(format!("{url}?{}", query(&[0x5a; 20], &[1; 20], 7001, 0)))
        .send()
        .await
        .expect("http")
        .text()
        .await
        .expect("body");
    assert!(unknown.starts_with("d14:failure reason"), "{unknown}");
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
    // The server's own seeder first, then the peer that announced.
    let at = body.windows(6).position(|w| w == b"5:peer").expect("peers") + 7;
    let colon = at + body[at..].iter().position(|b| *b == b':').expect("len");
    let n: usize = std::str::from_utf8(&body[at..colon])
        .expect("n")
        .parse()
        .expect("n");
    let peers: Vec<([u8; 4], u16)> = body[colon + 1..colon + 1 + n]
        .chunks(6)
        .map(|c| ([c[0], c[1], c[2], c[3]], u16::from_be_bytes([c[4], c[5]])))
        .collect();
    let seeder_port = h.server.images.listen_port().expect("seeder port");
    assert_eq!(peers[0], ([127, 0, 0, 1], seeder_port), "{peers:?}");
    assert!(peers.contains(&([127, 0, 0, 1], 7001)), "{peers:?}");

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
