//! A fault-injecting TCP proxy between a real agent and a real server. Each
//! scenario ends with the agent logged in, the server's view right, and no
//! command applied twice (counted in the recording platform's journal).

mod common;

use bytes::{Bytes, BytesMut};
use common::*;
use serde_json::json;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::Decoder;
use tokio_util::sync::CancellationToken;
use voi::agent::platform::{JournalEntry, RecordingPlatform};
use voi::protocol::{FrameCodec, ServiceCode};

/// What the proxy does to traffic. One-shot faults act on the next frame
/// from the server with that service code, then revert to `Pass`.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    Pass,
    /// Forward the first half of the frame, then close both sides.
    Cut(u32),
    /// Hold every frame, both ways, this long.
    Delay(Duration),
    /// Forward nothing, both ways, until then (connections stay open).
    StallUntil(Instant),
    /// Forward the frame twice.
    Duplicate(u32),
    /// Flip the first byte of the frame's body.
    Flip(u32),
    /// Forward the frame, then close both sides before any reply.
    DropAfter(u32),
}

struct Proxy {
    port: u16,
    fault: Arc<Mutex<Fault>>,
    /// How many one-shot faults have fired.
    fired: Arc<AtomicUsize>,
}

impl Proxy {
    async fn start(upstream: std::net::SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let fault = Arc::new(Mutex::new(Fault::Pass));
        let fired = Arc::new(AtomicUsize::new(0));
        let (f, n) = (fault.clone(), fired.clone());
        tokio::spawn(async move {
            while let Ok((agent, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(upstream).await else {
                    continue;
                };
                let close = CancellationToken::new();
                let (ar, aw) = agent.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(pump(ar, sw, f.clone(), n.clone(), close.clone(), false));
                tokio::spawn(pump(sr, aw, f.clone(), n.clone(), close, true));
            }
        });
        Proxy { port, fault, fired }
    }

    fn set(&self, f: Fault) {
        *self.fault.lock().expect("lock") = f;
    }
}

/// Copies frames from `rd` to `wr`, applying the fault. `from_server` marks
/// the direction one-shot faults act on.
async fn pump(
    mut rd: tokio::net::tcp::OwnedReadHalf,
    mut wr: tokio::net::tcp::OwnedWriteHalf,
    fault: Arc<Mutex<Fault>>,
    fired: Arc<AtomicUsize>,
    close: CancellationToken,
    from_server: bool,
) {
    let mut codec = FrameCodec::default();
    let mut buf = BytesMut::new();
    loop {
        // Decode whole frames so faults land on frame boundaries.
        let frame = loop {
            match codec.decode(&mut buf) {
                Ok(Some(f)) => break f,
                Ok(None) => {}
                Err(_) => return close.cancel(),
            }
            tokio::select! {
                n = rd.read_buf(&mut buf) => if !matches!(n, Ok(k) if k > 0) { return close.cancel() },
                _ = close.cancelled() => return,
            }
        };
        let bytes: Bytes = frame.to_bytes();
        loop {
            let now = *fault.lock().expect("lock");
            match now {
                Fault::StallUntil(t) if Instant::now() < t => {
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                        _ = close.cancelled() => return,
                    }
                }
                _ => break,
            }
        }
        let now = *fault.lock().expect("lock");
        let code = frame.service_code;
        let mine = |c: u32| from_server && c == code && !frame.is_response();
        let once = |f: Fault| {
            let mut g = fault.lock().expect("lock");
            if *g == f {
                *g = Fault::Pass;
                fired.fetch_add(1, Ordering::SeqCst);
            }
        };
        let ok = match now {
            Fault::Delay(d) => {
                tokio::time::sleep(d).await;
                wr.write_all(&bytes).await.is_ok()
            }
            Fault::Cut(c) if mine(c) => {
                once(now);
                let _ = wr.write_all(&bytes[..bytes.len() / 2]).await;
                return close.cancel();
            }
            Fault::Duplicate(c) if mine(c) => {
                once(now);
                wr.write_all(&bytes).await.is_ok() && wr.write_all(&bytes).await.is_ok()
            }
            Fault::Flip(c) if mine(c) => {
                once(now);
                let mut b = bytes.to_vec();
                let body = b.len() - frame.payload.len();
                b[body] ^= 0xff;
                wr.write_all(&b).await.is_ok()
            }
            Fault::DropAfter(c) if mine(c) => {
                once(now);
                let _ = wr.write_all(&bytes).await;
                let _ = wr.flush().await;
                return close.cancel();
            }
            _ => wr.write_all(&bytes).await.is_ok(),
        };
        if !ok {
            return close.cancel();
        }
    }
}

struct Rig {
    h: voi::server::ServerHandle,
    proxy: Proxy,
    agent: Arc<voi::agent::Agent>,
    task: tokio::task::JoinHandle<()>,
    mac: &'static str,
    _dir: tempfile::TempDir,
}

impl Rig {
    async fn start(mac: &'static str) -> Rig {
        let dir = tempfile::tempdir().expect("tmp");
        let h = start_server(&dir.path().join("s")).await;
        let proxy = Proxy::start(h.addr).await;
        let mut events = h.server.registry.events.subscribe();
        let (agent, task) = start_agent(agent_config(&dir.path().join("a"), proxy.port, mac));
        wait_event(&mut events, 20, is_login(mac)).await;
        let rig = Rig {
            h,
            proxy,
            agent,
            task,
            mac,
            _dir: dir,
        };
        rig.assert_logged_in().await;
        rig
    }

    fn journal(&self) -> Vec<JournalEntry> {
        RecordingPlatform::read_journal(&self.agent.cfg.journal_path())
    }

    fn count(&self, pred: impl Fn(&JournalEntry) -> bool) -> usize {
        self.journal().iter().filter(|e| pred(e)).count()
    }

    async fn push(&self, code: ServiceCode, params: serde_json::Value, secs: u64) -> Option<i64> {
        self.h
            .server
            .push(self.mac, code, params, Duration::from_secs(secs))
            .await
            .ok()
            .map(|(_, env)| env.code)
    }

    /// Pushes until the agent answers (it may be between sessions).
    async fn push_until_answered(&self, code: ServiceCode, params: serde_json::Value) -> i64 {
        let start = Instant::now();
        loop {
            if let Some(c) = self.push(code, params.clone(), 5).await {
                return c;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "the agent never answered {code:?} again"
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// The end of every scenario: logged in, and the server sees it online.
    async fn assert_logged_in(&self) {
        let start = Instant::now();
        while self.h.server.registry.with(self.mac, |_| ()).is_none()
            || !self.agent.live().session.starts_with("logged_in")
        {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "not logged in again"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn stop(self) {
        self.agent.shutdown.cancel();
        let _ = self.task.await;
        self.h.stop().await;
    }
}

fn hostname(name: &str) -> impl Fn(&JournalEntry) -> bool + '_ {
    move |e| matches!(e, JournalEntry::SetHostname { name: n } if n == name)
}

fn reboot(e: &JournalEntry) -> bool {
    matches!(e, JournalEntry::Reboot)
}

fn server_name(rig: &Rig) -> String {
    rig.h
        .server
        .store
        .terminal(rig.mac)
        .ok()
        .flatten()
        .map(|r| r.config.name)
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_cut_in_half_is_applied_once_after_the_retry() {
    let rig = Rig::start("AA:00:00:00:0F:01").await;
    let logins = rig.agent.live().logins;
    rig.proxy.set(Fault::Cut(ServiceCode::UpdateName as u32));
    let cmd = json!({"batch_no": 501, "name": "cut-1", "conf_version": 7});
    assert_eq!(
        rig.push(ServiceCode::UpdateName, cmd.clone(), 3).await,
        None
    );
    assert_eq!(rig.proxy.fired.load(Ordering::SeqCst), 1);
    assert_eq!(
        rig.push_until_answered(ServiceCode::UpdateName, cmd).await,
        0
    );
    rig.assert_logged_in().await;
    assert!(rig.agent.live().logins > logins, "it logged in again");
    assert_eq!(rig.count(hostname("cut-1")), 1);
    assert_eq!(rig.agent.state.read(|s| s.terminal.name.clone()), "cut-1");
    assert_eq!(server_name(&rig), "cut-1");
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_link_keeps_its_session_and_applies_once() {
    let rig = Rig::start("AA:00:00:00:0F:02").await;
    let logins = rig.agent.live().logins;
    rig.proxy.set(Fault::Delay(Duration::from_millis(300)));
    let cmd = json!({"batch_no": 502, "name": "slow-1", "conf_version": 7});
    assert_eq!(rig.push(ServiceCode::UpdateName, cmd, 10).await, Some(0));
    tokio::time::sleep(Duration::from_secs(3)).await;
    rig.proxy.set(Fault::Pass);
    rig.assert_logged_in().await;
    assert_eq!(
        rig.agent.live().logins,
        logins,
        "300 ms each way is not a failure"
    );
    assert_eq!(rig.count(hostname("slow-1")), 1);
    assert_eq!(server_name(&rig), "slow-1");
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_link_is_abandoned_and_the_command_applied_once() {
    let rig = Rig::start("AA:00:00:00:0F:03").await;
    let logins = rig.agent.live().logins;
    rig.proxy
        .set(Fault::StallUntil(Instant::now() + Duration::from_secs(5)));
    let cmd = json!({"batch_no": 503});
    // The restart sits in the stalled proxy; the agent gives up on the
    // silent link (missed heartbeats) and logs in again once it flows.
    assert_eq!(rig.push(ServiceCode::Restart, cmd.clone(), 2).await, None);
    assert_eq!(rig.push_until_answered(ServiceCode::Restart, cmd).await, 0);
    rig.assert_logged_in().await;
    assert!(rig.agent.live().logins > logins);
    tokio::time::sleep(voi::agent::commands::POWER_DELAY * 2).await;
    assert_eq!(rig.count(reboot), 1, "{:?}", rig.journal());
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicated_command_is_applied_once_and_answered_twice() {
    let rig = Rig::start("AA:00:00:00:0F:04").await;
    let logins = rig.agent.live().logins;
    rig.proxy.set(Fault::Duplicate(ServiceCode::Restart as u32));
    assert_eq!(
        rig.push(ServiceCode::Restart, json!({"batch_no": 504}), 5)
            .await,
        Some(0)
    );
    assert_eq!(rig.proxy.fired.load(Ordering::SeqCst), 1);
    tokio::time::sleep(voi::agent::commands::POWER_DELAY * 2).await;
    assert_eq!(rig.count(reboot), 1, "{:?}", rig.journal());
    let answered = rig.agent.state.read(|s| {
        s.commands
            .iter()
            .filter(|c| c.batch_no.as_int() == Some(504))
            .count()
    });
    assert_eq!(
        answered, 1,
        "one record: the second copy was answered from it"
    );
    rig.assert_logged_in().await;
    assert_eq!(rig.agent.live().logins, logins);
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_body_is_refused_and_the_clean_retry_applied_once() {
    let rig = Rig::start("AA:00:00:00:0F:05").await;
    rig.proxy.set(Fault::Flip(ServiceCode::UpdateName as u32));
    let cmd = json!({"batch_no": 505, "name": "flip-1", "conf_version": 7});
    // The corrupt body is answered 88888 with no batch the server can match,
    // so the push times out; nothing is applied.
    let first = rig.push(ServiceCode::UpdateName, cmd.clone(), 3).await;
    assert!(first.is_none() || first == Some(88888), "{first:?}");
    assert_eq!(
        rig.count(hostname("flip-1")),
        0,
        "the corrupt command did nothing"
    );
    assert_eq!(rig.proxy.fired.load(Ordering::SeqCst), 1);
    assert_eq!(
        rig.push_until_answered(ServiceCode::UpdateName, cmd.clone())
            .await,
        0
    );
    assert_eq!(
        rig.push_until_answered(ServiceCode::UpdateName, cmd).await,
        0
    );
    rig.assert_logged_in().await;
    assert_eq!(rig.count(hostname("flip-1")), 1);
    assert_eq!(server_name(&rig), "flip-1");
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_dropped_during_a_command_does_not_apply_it_twice() {
    let rig = Rig::start("AA:00:00:00:0F:06").await;
    let logins = rig.agent.live().logins;
    rig.proxy.set(Fault::DropAfter(ServiceCode::Restart as u32));
    let cmd = json!({"batch_no": 506});
    assert_eq!(rig.push(ServiceCode::Restart, cmd.clone(), 3).await, None);
    // The server never saw the answer, so the operator sends it again.
    assert_eq!(rig.push_until_answered(ServiceCode::Restart, cmd).await, 0);
    rig.assert_logged_in().await;
    assert!(rig.agent.live().logins > logins);
    tokio::time::sleep(voi::agent::commands::POWER_DELAY * 2).await;
    assert_eq!(rig.count(reboot), 1, "{:?}", rig.journal());
    rig.stop().await;
}
