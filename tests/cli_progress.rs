//! The CLIs' live progress, as an operator runs them: `voi-server ctl
//! download-desktop --wait` and `voi-agent ctl transfers --watch`, real
//! processes against a real server and agent. Without a terminal they print
//! plain lines; both end when the layer is in the agent's chain.

mod common;

use common::*;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::Command;

const U: &str = "2f6b7c1d-9e0a-4b3c-8d2e-1f0a9b8c7d6e";
const G: &str = "8a7b6c5d-4e3f-4a1b-9c0d-e1f2a3b4c5d6";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn download_desktop_wait_and_transfers_watch_follow_a_layer_to_the_end() {
    let dir = tempfile::tempdir().expect("tmp");
    let h = start_server(&dir.path().join("s")).await;
    let layer = format!("voi_0_{U}");
    make_base(&h.server.images.dir().join(&layer), 64);
    h.server.images.scan().await.expect("scan");
    let mac = "AA:00:00:00:0D:01";
    let mut cfg = agent_config(&dir.path().join("a"), h.addr.port(), mac);
    // Slow enough that the watcher sees it in flight.
    cfg.bt.download_limit = 16 << 20;
    let socket = cfg.control_socket_path();
    let mut ev = h.server.registry.events.subscribe();
    let (agent, task) = start_agent(cfg);
    wait_event(&mut ev, 20, is_heartbeat(mac)).await;
    h.server
        .store
        .put_group(&layer_group("cli", G, U, &[0]))
        .expect("group");

    let server_ctl = Command::new(env!("CARGO_BIN_EXE_voi-server"))
        .args(["ctl", "--api", &format!("http://{}", h.api_addr)])
        .args(["--token", &h.server.api_token])
        .args(["download-desktop", mac, G, "--wait", "--wait-secs", "120"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("voi-server ctl");

    let start = Instant::now();
    while agent
        .transfers
        .get()
        .is_none_or(|t| t.get(&layer).is_none())
    {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no transfer began"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let agent_ctl = Command::new(env!("CARGO_BIN_EXE_voi-agent"))
        .args(["ctl", "--socket"])
        .arg(&socket)
        .args(["transfers", "--watch"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("voi-agent ctl");

    let server_out = tokio::time::timeout(Duration::from_secs(150), server_ctl.wait_with_output())
        .await
        .expect("download-desktop --wait ended")
        .expect("output");
    let agent_out = tokio::time::timeout(Duration::from_secs(60), agent_ctl.wait_with_output())
        .await
        .expect("transfers --watch ended")
        .expect("output");
    let s = String::from_utf8_lossy(&server_out.stdout);
    let a = String::from_utf8_lossy(&agent_out.stdout);
    eprintln!(
        "voi-server ctl download-desktop --wait:\n{s}\nvoi-agent ctl transfers --watch:\n{a}"
    );
    assert!(
        server_out.status.success(),
        "{s}{}",
        String::from_utf8_lossy(&server_out.stderr)
    );
    assert!(
        agent_out.status.success(),
        "{a}{}",
        String::from_utf8_lossy(&agent_out.stderr)
    );
    // Plain lines (no terminal here): progress, then the end.
    assert!(s.contains(&format!("{mac} {layer}: 0% sent")), "{s}");
    assert!(s.contains(&format!("{mac} {layer}: done")), "{s}");
    assert!(a.contains(&format!("{layer}: done in its chain")), "{a}");
    assert!(a.lines().count() >= 2, "the watcher saw it in flight: {a}");

    agent.shutdown.cancel();
    let _ = task.await;
    h.stop().await;
}
