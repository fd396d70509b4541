//! P4, server scale: a load
//! generator opens N real TCP sessions against a voi-server child process;
//! each logs in with its own MAC and heartbeats every 10 s, as terminals
//! do. It reports heartbeat latency (p50/p99/max), sessions dropped, and
//! the server's RSS per terminal.

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

use voi::protocol::{ClientType, Frame, FrameCodec, ServiceCode};

#[derive(Debug, serde::Serialize)]
pub struct ScaleResult {
    pub sessions: usize,
    pub logged_in: usize,
    pub dropped: u64,
    pub heartbeats: usize,
    pub failed_heartbeats: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub server_rss_kb: u64,
    pub server_rss_per_terminal_kb: f64,
    pub server_idle_rss_kb: u64,
    pub login_secs: f64,
}

impl ScaleResult {
    pub fn markdown_row(&self) -> String {
        format!(
            "| {} | {} | {} | {} | {:.2} | {:.2} | {:.2} | {} | {:.1} |",
            self.sessions,
            self.logged_in,
            self.dropped,
            self.heartbeats,
            self.p50_ms,
            self.p99_ms,
            self.max_ms,
            self.server_rss_kb,
            self.server_rss_per_terminal_kb
        )
    }
}

pub fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

pub struct Child(pub std::process::Child);
impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A voi-server child process on a loopback port with a fresh data dir,
/// once it accepts connections: (data dir, process, terminal address).
pub async fn start_server(bins: &std::path::Path) -> anyhow::Result<(PathBuf, Child, String)> {
    let dir = tempfile_dir()?;
    let port = free_port()?;
    let exe = bins.join("voi-server");
    let child = Child(
        std::process::Command::new(&exe)
            .args(["run", "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .args([
                "--api-listen",
                "127.0.0.1:0",
                "--tracker-listen",
                "127.0.0.1:0",
            ])
            .args(["--bt-listen-port", "0", "--data-dir"])
            .arg(&dir)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .spawn()
            .map_err(|e| anyhow::anyhow!("{}: {e}", exe.display()))?,
    );
    let addr = format!("127.0.0.1:{port}");
    let start = Instant::now();
    while TcpStream::connect(&addr).await.is_err() {
        if start.elapsed() > Duration::from_secs(30) {
            anyhow::bail!("voi-server did not start");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok((dir, child, addr))
}

/// The `p` quantile of sorted values (NaN for none).
pub fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

pub async fn scale(
    bins: &std::path::Path,
    n: usize,
    duration: Duration,
    login_rate: u64,
) -> anyhow::Result<ScaleResult> {
    let (dir, child, addr) = start_server(bins).await?;
    let idle_rss = rss_kb(child.0.id());

    let latencies = Arc::new(Mutex::new(Vec::<f64>::new()));
    let measuring = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let dropped = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let logged_in = Arc::new(AtomicU64::new(0));
    let stop = tokio_util::sync::CancellationToken::new();
    let ramp = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        // Steady login rate, like a room powering on, not a thundering herd.
        let due = Duration::from_secs_f64(i as f64 / login_rate.max(1) as f64);
        if let Some(wait) = due.checked_sub(ramp.elapsed()) {
            tokio::time::sleep(wait).await;
        }
        let mac = format!(
            "02:{:02X}:{:02X}:{:02X}:{:02X}:{:02X}",
            (i >> 32) & 0xff,
            (i >> 24) & 0xff,
            (i >> 16) & 0xff,
            (i >> 8) & 0xff,
            i & 0xff
        );
        let s = Session {
            addr: addr.clone(),
            index: i,
            mac,
            latencies: latencies.clone(),
            measuring: measuring.clone(),
            dropped: dropped.clone(),
            failed: failed.clone(),
            logged_in: logged_in.clone(),
            stop: stop.clone(),
        };
        tasks.push(tokio::spawn(s.run()));
    }
    // Wait for the logins to finish, then measure a steady window.
    let deadline = Instant::now() + Duration::from_secs(60);
    while (logged_in.load(Ordering::Relaxed) as usize) < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let login_secs = ramp.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(10)).await;
    measuring.store(true, Ordering::Relaxed);
    tokio::time::sleep(duration).await;
    measuring.store(false, Ordering::Relaxed);
    let server_rss = rss_kb(child.0.id());
    stop.cancel();
    for t in tasks {
        let _ = t.await;
    }
    drop(child);
    let _ = std::fs::remove_dir_all(&dir);

    let mut l = latencies.lock().unwrap_or_else(|p| p.into_inner()).clone();
    l.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| pct(&l, p);
    let logged = logged_in.load(Ordering::Relaxed) as usize;
    Ok(ScaleResult {
        sessions: n,
        logged_in: logged,
        dropped: dropped.load(Ordering::Relaxed),
        heartbeats: l.len(),
        failed_heartbeats: failed.load(Ordering::Relaxed),
        p50_ms: pct(0.5),
        p99_ms: pct(0.99),
        max_ms: l.last().copied().unwrap_or(f64::NAN),
        server_rss_kb: server_rss,
        server_rss_per_terminal_kb: server_rss.saturating_sub(idle_rss) as f64 / n.max(1) as f64,
        server_idle_rss_kb: idle_rss,
        login_secs,
    })
}

pub fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let d = std::env::temp_dir().join(format!(
        "voi-bench-{}-{}",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

struct Session {
    addr: String,
    /// Which terminal: its loopback address (`lan_address`).
    index: usize,
    mac: String,
    latencies: Arc<Mutex<Vec<f64>>>,
    measuring: Arc<std::sync::atomic::AtomicBool>,
    dropped: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    logged_in: Arc<AtomicU64>,
    stop: tokio_util::sync::CancellationToken,
}

impl Session {
    async fn run(self) {
        let Ok(stream) = crate::lan_address::connect_as(self.index, &self.addr).await else {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let mut io = Framed::new(stream, FrameCodec::default());
        let mut seq = 1u32;
        let body = json!({ "mac": self.mac, "ip": "127.0.0.1" });
        let Ok(login) = Frame::request_json(
            ServiceCode::TerminalLogin,
            seq,
            ClientType::Linux,
            &bytes::Bytes::new(),
            &body,
        ) else {
            return;
        };
        if io.send(login).await.is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let token = match tokio::time::timeout(Duration::from_secs(30), io.next()).await {
            Ok(Some(Ok(f))) => f.token,
            _ => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        self.logged_in.fetch_add(1, Ordering::Relaxed);
        // Spread the heartbeats over the 10 s period.
        let phase = Duration::from_millis(fastrand::u64(0..10_000));
        tokio::select! {
            _ = tokio::time::sleep(phase) => {}
            _ = self.stop.cancelled() => return,
        }
        let mut tick = tokio::time::interval(Duration::from_secs(10));
        let hb = json!({ "mac": self.mac });
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.stop.cancelled() => return,
            }
            seq = seq.wrapping_add(1);
            let Ok(f) =
                Frame::request_json(ServiceCode::Heartbeat, seq, ClientType::Linux, &token, &hb)
            else {
                return;
            };
            let sent = Instant::now();
            if io.send(f).await.is_err() {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
            let answered = loop {
                match tokio::time::timeout(Duration::from_secs(10), io.next()).await {
                    Ok(Some(Ok(f))) if f.service_code == ServiceCode::Heartbeat as u32 => {
                        break true
                    }
                    Ok(Some(Ok(_))) => continue,
                    Ok(_) => {
                        self.dropped.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    Err(_) => break false,
                }
            };
            if !answered {
                self.failed.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            if self.measuring.load(Ordering::Relaxed) {
                let ms = sent.elapsed().as_secs_f64() * 1000.0;
                self.latencies
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(ms);
            }
        }
    }
}
