//! P2, one download on loopback, three ways, side by side in one run: the
//! agent (voi-server seeds, voi-agent fetches over BitTorrent, verifies and
//! links), a plain librqbit client of the same torrent from the same seeder,
//! and curl over HTTP. P3's download and seeding RSS come from the agent run.

use serde::Serialize;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::scale::{free_port, rss_kb, Child};

const U: &str = "91f9d1ba-cb4a-41ba-971a-618f9e306571";
const G: &str = "f15a1759-789e-4e17-a3e1-e723121e9314";

#[derive(Debug, Clone, Serialize)]
pub struct SingleReport {
    pub layer_bytes: u64,
    pub agent_secs: f64,
    pub librqbit_secs: f64,
    pub curl_secs: f64,
    pub agent_mb_s: f64,
    pub librqbit_mb_s: f64,
    pub curl_mb_s: f64,
    /// agent / librqbit and agent / curl throughput.
    pub agent_vs_librqbit: f64,
    pub agent_vs_curl: f64,
    /// aria2c, a BitTorrent client nobody here wrote, fetching the same
    /// torrent from the same seeder (None: aria2c is not installed).
    pub aria2c_secs: Option<f64>,
    pub aria2c_mb_s: Option<f64>,
    pub agent_vs_aria2c: Option<f64>,
    pub agent_idle_rss_kb: u64,
    pub agent_download_rss_kb: u64,
    pub agent_seeding_rss_kb: u64,
    pub agent_seeding_threads: u64,
    /// From the engine holding every piece to the layer in its chain
    /// (manifest, the pieces not yet checked, qemu-img check, link), from
    /// the agent's log.
    pub agent_tail_secs: Option<f64>,
    /// Pieces checked while downloading / all, from the same log.
    pub agent_checked_ahead: Option<String>,
    /// Every round; the seconds and ratios above are their medians, the
    /// memory figures and the checked-ahead share come from the first.
    pub runs: Vec<SingleRun>,
}

/// Seconds of the day of an env_logger line's `[2026-11-26T04:49:58.123Z`.
fn log_time(line: &str) -> Option<f64> {
    let t = line.split('T').nth(1)?.get(..12)?;
    let (h, rest) = t.split_once(':')?;
    let (m, s) = rest.split_once(':')?;
    Some(h.parse::<f64>().ok()? * 3600.0 + m.parse::<f64>().ok()? * 60.0 + s.parse::<f64>().ok()?)
}

/// The tail and the checked-ahead share, read from the agent's log.
fn tail_from_log(log: &str) -> (Option<f64>, Option<String>) {
    let at = |needle: &str| log.lines().find(|l| l.contains(needle)).and_then(log_time);
    let tail = match (at("every piece is here"), at("verified and in its chain")) {
        (Some(a), Some(b)) if b >= a => Some(b - a),
        _ => None,
    };
    let ahead = log
        .lines()
        .find(|l| l.contains("were checked while downloading"))
        .and_then(|l| l.split(": ").nth(1))
        .and_then(|l| l.split(" pieces").next())
        .map(str::to_string);
    (tail, ahead)
}

fn threads(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Threads"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn mb_s(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / 1e6 / secs
}

/// One round: each client once, back to back.
#[derive(Debug, Clone, Serialize)]
pub struct SingleRun {
    pub agent_secs: f64,
    pub librqbit_secs: f64,
    pub curl_secs: f64,
    pub aria2c_secs: Option<f64>,
    pub agent_vs_librqbit: f64,
    pub agent_tail_secs: Option<f64>,
    /// Whether the agent went first this round (rounds alternate, so a
    /// machine that slows down or speeds up favours neither side).
    pub agent_first: bool,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// `link_bps`: every client limited to this many bytes per second (the
/// engines' own limiters, curl's --limit-rate), a link of that speed.
/// `rounds`: how many times the three clients run, the agent first in every
/// other round; the report's seconds and ratios are the rounds' medians.
pub async fn run(
    bins: &Path,
    mib: u64,
    link_bps: Option<u32>,
    rounds: usize,
) -> anyhow::Result<SingleReport> {
    let work = crate::scale::tempfile_dir()?;
    let r = run_in(bins, mib, &work, link_bps, rounds.max(1)).await;
    let _ = std::fs::remove_dir_all(&work);
    r
}

/// The seeder and the files every client fetches from.
struct Seed {
    bins: std::path::PathBuf,
    work: std::path::PathBuf,
    layer: String,
    port: u16,
    api: voi::server::client::ApiClient,
    torrent: bytes::Bytes,
    http_port: u16,
    link_bps: Option<u32>,
}

async fn run_in(
    bins: &Path,
    mib: u64,
    work: &Path,
    link_bps: Option<u32>,
    rounds: usize,
) -> anyhow::Result<SingleReport> {
    let layer = format!("voi_0_{U}");
    let data = work.join("server");
    std::fs::create_dir_all(data.join("images"))?;
    crate::swarm::make_layer(&data.join("images").join(&layer), mib)?;
    let size = std::fs::metadata(data.join("images").join(&layer))?.len();
    let (port, api_port, tracker_port) = (free_port()?, free_port()?, free_port()?);
    let server = Child(
        Command::new(bins.join("voi-server"))
            .args(["run", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--api-listen", &format!("127.0.0.1:{api_port}")])
            .args(["--tracker-listen", &format!("127.0.0.1:{tracker_port}")])
            .args(["--bt-listen-port", "0", "--data-dir"])
            .arg(&data)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()?,
    );
    let start = Instant::now();
    while !data.join("api-token").exists() {
        if start.elapsed() > Duration::from_secs(30) {
            anyhow::bail!("voi-server did not start");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let token = std::fs::read_to_string(data.join("api-token"))?;
    let api =
        voi::server::client::ApiClient::new(format!("http://127.0.0.1:{api_port}"), token.trim());
    crate::swarm::wait_seeding(&api).await?;
    let torrent = voi::agent::transfers::server_link::fetch_torrent(&format!(
        "http://127.0.0.1:{tracker_port}/torrents/{layer}.torrent"
    ))
    .await
    .map_err(|e| anyhow::anyhow!(e))?;
    // curl's peer: a plain HTTP server of the same file.
    let http_port = free_port()?;
    let _http = Child(
        Command::new("python3")
            .args([
                "-m",
                "http.server",
                &http_port.to_string(),
                "--bind",
                "127.0.0.1",
                "--directory",
            ])
            .arg(data.join("images"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let seed = Seed {
        bins: bins.to_path_buf(),
        work: work.to_path_buf(),
        layer,
        port,
        api,
        torrent,
        http_port,
        link_bps,
    };

    let has_aria2c = Command::new("aria2c")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !has_aria2c {
        eprintln!("[single] aria2c is not installed (apt-get install aria2): no aria2c figures");
    }
    let mut runs = Vec::new();
    let mut first_agent = None;
    for round in 0..rounds {
        let agent_first = round % 2 == 1;
        let mut agent = None;
        if agent_first {
            agent = Some(agent_once(&seed, round).await?);
        }
        let librqbit_secs = librqbit_once(&seed).await?;
        let curl_secs = curl_once(&seed)?;
        let aria2c_secs = if has_aria2c {
            Some(aria2c_once(&seed).await?)
        } else {
            None
        };
        let agent = match agent {
            Some(a) => a,
            None => agent_once(&seed, round).await?,
        };
        let (agent_tail_secs, _) = tail_from_log(&agent.log);
        let run = SingleRun {
            agent_secs: agent.secs,
            librqbit_secs,
            curl_secs,
            aria2c_secs,
            agent_vs_librqbit: librqbit_secs / agent.secs,
            agent_tail_secs,
            agent_first,
        };
        eprintln!(
            "[single] round {}: agent {:.2} s, librqbit {:.2} s, curl {:.2} s, aria2c {:.2} s: agent/librqbit {:.3}, tail {:.3} s{}",
            round + 1,
            run.agent_secs,
            run.librqbit_secs,
            run.curl_secs,
            run.aria2c_secs.unwrap_or(f64::NAN),
            run.agent_vs_librqbit,
            run.agent_tail_secs.unwrap_or(f64::NAN),
            if agent_first { " (agent first)" } else { "" }
        );
        runs.push(run);
        first_agent.get_or_insert(agent);
    }
    drop(server);
    let Some(agent) = first_agent else {
        anyhow::bail!("no round ran");
    };
    if let Some(keep) = std::env::var_os("VOI_BENCH_AGENT_LOG") {
        let _ = std::fs::write(keep, &agent.log);
    }
    let (_, agent_checked_ahead) = tail_from_log(&agent.log);
    let pick = |f: fn(&SingleRun) -> f64| median(runs.iter().map(f).collect());
    let agent_secs = pick(|r| r.agent_secs);
    let librqbit_secs = pick(|r| r.librqbit_secs);
    let curl_secs = pick(|r| r.curl_secs);
    let tails: Vec<f64> = runs.iter().filter_map(|r| r.agent_tail_secs).collect();
    let aria2c: Vec<f64> = runs.iter().filter_map(|r| r.aria2c_secs).collect();
    let aria2c_secs = (!aria2c.is_empty()).then(|| median(aria2c));
    let agent_vs_aria2c = aria2c_secs.map(|_| {
        median(
            runs.iter()
                .filter_map(|r| r.aria2c_secs.map(|a| a / r.agent_secs))
                .collect(),
        )
    });
    Ok(SingleReport {
        layer_bytes: size,
        agent_secs,
        librqbit_secs,
        curl_secs,
        agent_mb_s: mb_s(size, agent_secs),
        librqbit_mb_s: mb_s(size, librqbit_secs),
        curl_mb_s: mb_s(size, curl_secs),
        agent_vs_librqbit: pick(|r| r.agent_vs_librqbit),
        agent_vs_curl: median(runs.iter().map(|r| r.curl_secs / r.agent_secs).collect()),
        aria2c_secs,
        aria2c_mb_s: aria2c_secs.map(|a| mb_s(size, a)),
        agent_vs_aria2c,
        agent_idle_rss_kb: agent.idle_rss_kb,
        agent_download_rss_kb: agent.peak_rss_kb,
        agent_seeding_rss_kb: agent.seeding_rss_kb,
        agent_seeding_threads: agent.seeding_threads,
        agent_tail_secs: (!tails.is_empty()).then(|| median(tails)),
        agent_checked_ahead,
        runs,
    })
}

/// Plain librqbit, same torrent, same seeder.
async fn librqbit_once(seed: &Seed) -> anyhow::Result<f64> {
    let out = seed.work.join("librqbit");
    let session = librqbit::Session::new_with_opts(
        out.clone(),
        librqbit::SessionOptions {
            disable_dht: true,
            disable_dht_persistence: true,
            listen_port_range: Some({
                let p = free_port()?;
                p..p + 1
            }),
            enable_upnp_port_forwarding: false,
            ratelimits: librqbit::limits::LimitsConfig {
                upload_bps: None,
                download_bps: seed.link_bps.and_then(std::num::NonZeroU32::new),
            },
            ..Default::default()
        },
    )
    .await?;
    let t0 = Instant::now();
    let h = session
        .add_torrent(
            librqbit::AddTorrent::from_bytes(seed.torrent.clone()),
            Some(librqbit::AddTorrentOptions {
                output_folder: Some(out.to_string_lossy().into_owned()),
                overwrite: true,
                ..Default::default()
            }),
        )
        .await?
        .into_handle()
        .ok_or_else(|| anyhow::anyhow!("no handle"))?;
    h.wait_until_completed().await?;
    let secs = t0.elapsed().as_secs_f64();
    session.stop().await;
    drop(session);
    let _ = std::fs::remove_dir_all(&out);
    Ok(secs)
}

/// curl over HTTP from a plain server on the same machine.
fn curl_once(seed: &Seed) -> anyhow::Result<f64> {
    let out = seed.work.join("curl.img");
    let t0 = Instant::now();
    let mut curl = Command::new("curl");
    if let Some(bps) = seed.link_bps {
        curl.arg("--limit-rate").arg(bps.to_string());
    }
    let st = curl
        .args(["-sf", "-o"])
        .arg(&out)
        .arg(format!(
            "http://127.0.0.1:{}/{}",
            seed.http_port, seed.layer
        ))
        .status()?;
    let secs = t0.elapsed().as_secs_f64();
    if !st.success() {
        anyhow::bail!("curl failed: {st}");
    }
    let _ = std::fs::remove_file(&out);
    Ok(secs)
}

/// aria2c as a plain BitTorrent client of the same torrent and seeder. It
/// checks every piece's SHA-1; its time ends when it calls its
/// download-complete hook (it would then announce and linger about a
/// second before exiting).
async fn aria2c_once(seed: &Seed) -> anyhow::Result<f64> {
    let out = seed.work.join("aria2c");
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out)?;
    let torrent_path = seed.work.join("layer.torrent");
    std::fs::write(&torrent_path, &seed.torrent)?;
    let hook = seed.work.join("aria2c-done.sh");
    crate::swarm::write_done_hook(&hook)?;
    let mut cmd = tokio::process::Command::new("aria2c");
    cmd.args(crate::swarm::ARIA2C_CLOSED_LAN)
        .arg("--seed-time=0");
    if let Some(bps) = seed.link_bps {
        cmd.arg(format!("--max-overall-download-limit={bps}"));
    }
    cmd.arg(format!("--on-bt-download-complete={}", hook.display()))
        .arg("-d")
        .arg(&out)
        .arg(&torrent_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    let marker = out.join(format!("{}.done", seed.layer));
    let t0 = Instant::now();
    let mut child = cmd.spawn()?;
    while !marker.exists() {
        if let Some(st) = child.try_wait()? {
            if !marker.exists() {
                anyhow::bail!("aria2c exited ({st}) before its download was complete");
            }
        }
        if t0.elapsed() > Duration::from_secs(900) {
            anyhow::bail!("aria2c did not finish in 15 min");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let secs = t0.elapsed().as_secs_f64();
    let _ = child.kill().await;
    let _ = std::fs::remove_dir_all(&out);
    Ok(secs)
}

struct AgentRun {
    secs: f64,
    idle_rss_kb: u64,
    peak_rss_kb: u64,
    seeding_rss_kb: u64,
    seeding_threads: u64,
    log: String,
}

/// The agent: login, 9007, 9023, torrent, download, verify, link. A new
/// terminal (MAC) with an empty disk each round; the desktop group is
/// created once it is logged in and idle, so the 1024 starts the download.
async fn agent_once(seed: &Seed, round: usize) -> anyhow::Result<AgentRun> {
    let mac = format!("AA:00:00:00:0C:{:02X}", round % 256);
    let adir = seed.work.join(format!("agent-{round}"));
    std::fs::create_dir_all(&adir)?;
    let _ = seed
        .api
        .delete(&format!("/api/v1/desktop_groups/{G}"))
        .await;
    let cfg = adir.join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            "server_ip = \"127.0.0.1\"\nserver_port = {}\nmac = \"{mac}\"\ndata_dir = \"{}\"\nperformance_secs = 0\n[bt]\nlisten_port = 0\ndownload_limit = {}\n[platform]\npower = \"recording\"\nboot = \"recording\"\nhostname = \"recording\"\nnetwork = \"recording\"\n",
            seed.port,
            adir.display(),
            seed.link_bps.unwrap_or(0)
        ),
    )?;
    let agent = Child(
        Command::new(seed.bins.join("voi-agent"))
            .args(["--config"])
            .arg(&cfg)
            .arg("run")
            .env("RUST_LOG", "warn,voi::agent::transfers::tasks=info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(adir.join("agent.log"))?)
            .spawn()?,
    );
    let pid = agent.0.id();
    let t_login = Instant::now();
    let sock = adir.join("control.sock");
    // Idle: logged in, before the desktop exists on the server.
    loop {
        if let Ok(r) = voi::agent::control_socket::call(
            &sock,
            &voi::agent::control_socket::ControlRequest::Status,
        )
        .await
        {
            if r.data
                .as_ref()
                .is_some_and(|d| d["live"]["logins"].as_u64().unwrap_or(0) > 0)
            {
                break;
            }
        }
        if t_login.elapsed() > Duration::from_secs(30) {
            anyhow::bail!("the agent did not log in");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle = rss_kb(pid);
    let group = serde_json::json!({
        "desktop_group_uuid": G, "desktop_group_name": "bench", "default_desktop_group": true,
        "disks": [{"uuid": U, "type": 0, "dif_level": 0, "prefix": "voi", "max_dif": 0}],
    });
    seed.api.put("/api/v1/desktop_groups", &group).await?;
    let t0 = Instant::now();
    // 1024: fetch the desktop list again, so the download starts now.
    seed.api
        .post(
            &format!("/api/v1/terminals/{mac}/commands"),
            &serde_json::json!({"command": "update_desktop_group_info", "params": {}}),
        )
        .await?;
    let final_path = adir.join("disks").join(&seed.layer);
    let mut peak = 0;
    while !final_path.exists() {
        peak = peak.max(rss_kb(pid));
        if t0.elapsed() > Duration::from_secs(900) {
            anyhow::bail!("the agent download did not finish");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let secs = t0.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let seeding_rss_kb = rss_kb(pid);
    let seeding_threads = threads(pid);
    drop(agent);
    let log = std::fs::read_to_string(adir.join("agent.log")).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&adir);
    Ok(AgentRun {
        secs,
        idle_rss_kb: idle,
        peak_rss_kb: peak,
        seeding_rss_kb,
        seeding_threads,
        log,
    })
}
