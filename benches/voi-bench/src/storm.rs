//! P6, login storm: the building's power comes back and every terminal
//! boots at once. N real TCP sessions are opened within one second against
//! a voi-server child process; each logs in and runs the start-up requests
//! a terminal sends (9004, 9005, 9007, 9019) and a first heartbeat. The
//! figures: time until all are online, login and start-up latency, drops,
//! and the server's CPU time and RSS.

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

use crate::scale::{pct, rss_kb, start_server};
use voi::protocol::{ClientType, Frame, FrameCodec, ServiceCode};

#[derive(Debug, Clone, serde::Serialize)]
pub struct StormResult {
    /// "first boot" (no terminal known to the server) or "power back"
    /// (every terminal known: the same MACs again, after all disconnected).
    pub wave: String,
    pub sessions: usize,
    pub online: usize,
    pub dropped: usize,
    /// From the first connect to the last terminal's heartbeat answer.
    pub all_online_secs: f64,
    pub login_p50_ms: f64,
    pub login_p99_ms: f64,
    /// Login to the first heartbeat's answer, start-up requests included.
    pub startup_p50_ms: f64,
    pub startup_p99_ms: f64,
    /// Server CPU time during the storm, in seconds (user + system).
    pub server_cpu_secs: f64,
    pub server_rss_kb: u64,
}

impl StormResult {
    pub fn markdown_row(&self, run: usize) -> String {
        format!(
            "| {run} | {} | {} | {} | {} | {:.2} | {:.0} | {:.0} | {:.0} | {:.0} | {:.2} | {} |",
            self.wave,
            self.sessions,
            self.online,
            self.dropped,
            self.all_online_secs,
            self.login_p50_ms,
            self.login_p99_ms,
            self.startup_p50_ms,
            self.startup_p99_ms,
            self.server_cpu_secs,
            self.server_rss_kb
        )
    }
}

/// utime + stime of a process, in seconds.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name, which is in parentheses.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // state is field 3 of stat, so utime (14) and stime (15) are 11 and 12 here.
    // USER_HZ: 100 on every Linux architecture we build for.
    (ticks(11) + ticks(12)) / 100.0
}

/// Two waves against one server: every terminal's first boot ever, then
/// (all disconnected) the power coming back with the same terminals.
pub async fn storm(bins: &std::path::Path, n: usize) -> anyhow::Result<Vec<StormResult>> {
    let (dir, child, addr) = start_server(bins).await?;
    let mut out = Vec::new();
    for wave in ["first boot", "power back"] {
        out.push(wave_of(&addr, child.0.id(), n, wave).await);
        // Every session closed; let the server notice before the next wave.
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    drop(child);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(out)
}

async fn wave_of(addr: &str, pid: u32, n: usize, wave: &str) -> StormResult {
    let logins = Arc::new(Mutex::new(Vec::<f64>::with_capacity(n)));
    let startups = Arc::new(Mutex::new(Vec::<f64>::with_capacity(n)));
    let online_at = Arc::new(Mutex::new(Vec::<f64>::with_capacity(n)));
    let cpu_before = cpu_secs(pid);
    let t0 = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        // All within one second.
        let due = Duration::from_secs_f64(i as f64 / n as f64);
        if let Some(wait) = due.checked_sub(t0.elapsed()) {
            tokio::time::sleep(wait).await;
        }
        let mac = format!(
            "02:00:{:02X}:{:02X}:{:02X}:{:02X}",
            (i >> 24) & 0xff,
            (i >> 16) & 0xff,
            (i >> 8) & 0xff,
            i & 0xff
        );
        let (addr, logins, startups, online_at) = (
            addr.to_string(),
            logins.clone(),
            startups.clone(),
            online_at.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let r = terminal(&addr, i, &mac).await;
            if let Some((login, startup, _io)) = &r {
                let lock = |m: &Mutex<Vec<f64>>, v: f64| {
                    m.lock().unwrap_or_else(|p| p.into_inner()).push(v)
                };
                lock(&logins, *login);
                lock(&startups, *startup);
                lock(&online_at, t0.elapsed().as_secs_f64());
            }
            // The session stays open until the whole wave is in.
            r.map(|(_, _, io)| io)
        }));
    }
    let mut sessions = Vec::with_capacity(n);
    for t in tasks {
        if let Ok(Some(io)) = t.await {
            sessions.push(io);
        }
    }
    let online = sessions.len();
    let cpu = cpu_secs(pid) - cpu_before;
    let rss = rss_kb(pid);
    drop(sessions);
    let sorted = |m: &Mutex<Vec<f64>>| {
        let mut v = m.lock().unwrap_or_else(|p| p.into_inner()).clone();
        v.sort_by(|a, b| a.total_cmp(b));
        v
    };
    let (l, s, o) = (sorted(&logins), sorted(&startups), sorted(&online_at));
    StormResult {
        wave: wave.to_string(),
        sessions: n,
        online,
        dropped: n - online,
        all_online_secs: o.last().copied().unwrap_or(f64::NAN),
        login_p50_ms: pct(&l, 0.5),
        login_p99_ms: pct(&l, 0.99),
        startup_p50_ms: pct(&s, 0.5),
        startup_p99_ms: pct(&s, 0.99),
        server_cpu_secs: cpu,
        server_rss_kb: rss,
    }
}

/// One terminal's boot: login, 9004, 9005, 9007, 9019, a heartbeat.
/// Returns (login ms, login-to-online ms, the open session), or None if
/// it was dropped.
async fn terminal(
    addr: &str,
    i: usize,
    mac: &str,
) -> Option<(f64, f64, Framed<TcpStream, FrameCodec>)> {
    const PATIENCE: Duration = Duration::from_secs(60);
    let begun = Instant::now();
    let stream = tokio::time::timeout(PATIENCE, crate::lan_address::connect_as(i, addr))
        .await
        .ok()?
        .ok()?;
    let _ = stream.set_nodelay(true);
    let mut io = Framed::new(stream, FrameCodec::default());
    let mut token = bytes::Bytes::new();
    let mut login_ms = 0.0;
    let steps: [(ServiceCode, Value); 6] = [
        (
            ServiceCode::TerminalLogin,
            json!({"mac": mac, "ip": "127.0.0.1"}),
        ),
        (
            ServiceCode::GetConfigVersionId,
            json!({"mac": mac, "platform": "x86", "soft_version": "storm", "disk_residue": 100.0}),
        ),
        (ServiceCode::GetConfigInfo, json!({"mac": mac})),
        (
            ServiceCode::GetDesktopGroupList,
            json!({"mac": mac, "ip": "127.0.0.1"}),
        ),
        (ServiceCode::BtTracker, json!({"mac": mac})),
        (ServiceCode::Heartbeat, json!({"mac": mac})),
    ];
    for (seq, (code, body)) in steps.into_iter().enumerate() {
        let f = Frame::request_json(code, seq as u32 + 1, ClientType::Linux, &token, &body).ok()?;
        tokio::time::timeout(PATIENCE, io.send(f))
            .await
            .ok()?
            .ok()?;
        let answer = loop {
            let f = tokio::time::timeout(PATIENCE, io.next())
                .await
                .ok()??
                .ok()?;
            if f.service_code == code as u32 {
                break f;
            }
        };
        if code == ServiceCode::TerminalLogin {
            let env: voi::protocol::Envelope<Value> = answer.json().ok()?;
            if !env.is_ok() {
                return None;
            }
            token = answer.token.clone();
            login_ms = begun.elapsed().as_secs_f64() * 1000.0;
        }
    }
    Some((login_ms, begun.elapsed().as_secs_f64() * 1000.0, io))
}
