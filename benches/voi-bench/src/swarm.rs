//! P1, swarm: voi-server and K agents, each in its own network namespace,
//! joined by a bridge; every link shaped with tc to the same rate in both
//! directions. One layer of S bytes goes to all K terminals over BitTorrent,
//! to one terminal alone, and to all K by HTTP unicast (curl from a plain
//! HTTP server in the server's namespace). Progress is sampled every 0.5 s.

use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::scale::Child;
use voi::agent::control_socket::{self, ControlRequest};

const U: &str = "91f9d1ba-cb4a-41ba-971a-618f9e306571";
const G: &str = "f15a1759-789e-4e17-a3e1-e723121e9314";

fn sh(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(args[0]).args(&args[1..]).output()?;
    if !out.status.success() {
        anyhow::bail!(
            "{}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The bridge, the namespaces and their shaped veths; removed on drop.
pub struct Lab {
    tag: String,
    bridge: String,
    subnet: u32,
    pub rate: String,
    namespaces: Vec<String>,
    host_ifs: Vec<String>,
}

impl Lab {
    pub fn new(rate: &str) -> anyhow::Result<Lab> {
        let pid = std::process::id() % 10000;
        let lab = Lab {
            tag: format!("vb{pid}"),
            bridge: format!("vb{pid}br"),
            subnet: 150 + pid % 100,
            rate: rate.to_string(),
            namespaces: Vec::new(),
            host_ifs: Vec::new(),
        };
        sh(&["ip", "link", "add", &lab.bridge, "type", "bridge"])?;
        sh(&[
            "ip",
            "addr",
            "add",
            &format!("{}/24", lab.ip(1)),
            "dev",
            &lab.bridge,
        ])?;
        sh(&["ip", "link", "set", &lab.bridge, "up"])?;
        Ok(lab)
    }

    pub fn ip(&self, host: u32) -> String {
        format!("10.203.{}.{host}", self.subnet)
    }

    fn tbf(&self, dev: &str, ns: Option<&str>) -> anyhow::Result<()> {
        let mut a = Vec::new();
        if let Some(ns) = ns {
            a.extend(["ip", "netns", "exec", ns]);
        }
        a.extend([
            "tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate", &self.rate, "burst", "256kb",
            "latency", "100ms",
        ]);
        sh(&a).map(drop)
    }

    /// A namespace with address `.host`, its link shaped both ways.
    pub fn add(&mut self, name: &str, host: u32) -> anyhow::Result<String> {
        let ns = format!("{}{name}", self.tag);
        let h = format!("{}h{host}", self.tag);
        sh(&["ip", "netns", "add", &ns])?;
        self.namespaces.push(ns.clone());
        sh(&[
            "ip", "link", "add", &h, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ])?;
        self.host_ifs.push(h.clone());
        sh(&["ip", "link", "set", &h, "master", &self.bridge, "up"])?;
        let exec = |a: &[&str]| {
            let mut v = vec!["ip", "netns", "exec", ns.as_str()];
            v.extend_from_slice(a);
            sh(&v).map(drop)
        };
        exec(&["ip", "link", "set", "lo", "up"])?;
        exec(&[
            "ip",
            "addr",
            "add",
            &format!("{}/24", self.ip(host)),
            "dev",
            "eth0",
        ])?;
        exec(&["ip", "link", "set", "eth0", "up"])?;
        self.tbf("eth0", Some(&ns))?;
        self.tbf(&h, None)?;
        Ok(ns)
    }

    pub fn tx_bytes(ns: &str) -> u64 {
        Self::counter(ns, "tx_bytes")
    }

    /// Everything the terminals in `nss` have received so far.
    pub fn rx_bytes_sum(nss: &[String]) -> u64 {
        nss.iter().map(|ns| Self::counter(ns, "rx_bytes")).sum()
    }

    fn counter(ns: &str, name: &str) -> u64 {
        sh(&[
            "ip",
            "netns",
            "exec",
            ns,
            "cat",
            &format!("/sys/class/net/eth0/statistics/{name}"),
        ])
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in &self.namespaces {
            let _ = sh(&["ip", "netns", "del", ns]);
        }
        for h in &self.host_ifs {
            let _ = sh(&["ip", "link", "del", h]);
        }
        let _ = sh(&["ip", "link", "del", &self.bridge]);
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Run {
    pub method: String,
    pub terminals: usize,
    /// Seconds until every terminal held a verified (BT) or complete (HTTP) copy.
    pub all_done_secs: f64,
    pub done_secs: Vec<f64>,
    pub server_egress_bytes: u64,
    /// What all terminals received together (from the server and from each
    /// other, protocol overhead included); K·S when nothing came twice.
    pub terminals_ingress_bytes: u64,
    /// (seconds, bytes held) per terminal.
    pub progress: Vec<Vec<(f64, u64)>>,
    /// Our agents only: piece bytes each engine received over the layer
    /// (duplicates included), and the pieces it stole from a slow peer.
    pub engine_copies: Vec<f64>,
    pub steals: Vec<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SwarmReport {
    pub layer_bytes: u64,
    pub rate: String,
    pub bt_all: Run,
    pub bt_one: Run,
    /// None with `--no-http` (it is the slowest part: K copies from one link).
    pub http_all: Option<Run>,
    /// bt_all time / bt_one time (goal <= 1.5).
    pub time_ratio: f64,
    /// server egress / S in the BT run (goal <= 1.5).
    pub egress_ratio: f64,
    pub http_egress_ratio: Option<f64>,
    pub http_vs_bt_time: Option<f64>,
    /// What the terminals received over K·S in the BitTorrent run: above 1
    /// by the pieces fetched twice (plus ~3% of headers).
    pub ingress_ratio: f64,
    pub aria2_ingress_ratio: Option<f64>,
    /// The reference swarm nobody here wrote: aria2c seeding from the
    /// server's namespace, K aria2c leechers, our tracker, same links.
    pub aria2_all: Option<Run>,
    /// Our K-terminal time over aria2c's (below 1: ours is faster).
    pub bt_vs_aria2_time: Option<f64>,
    pub aria2_egress_ratio: Option<f64>,
}

struct Server {
    ns: String,
    _child: Child,
    data: PathBuf,
}

fn start_server(
    lab: &Lab,
    ns: &str,
    bins: &Path,
    work: &Path,
    image: &Path,
) -> anyhow::Result<Server> {
    let data = work.join("server");
    std::fs::create_dir_all(data.join("images"))?;
    let layer = format!("voi_0_{U}");
    if !data.join("images").join(&layer).exists() {
        std::fs::hard_link(image, data.join("images").join(&layer))
            .or_else(|_| std::fs::copy(image, data.join("images").join(&layer)).map(drop))?;
    }
    let cfg = work.join("server.toml");
    std::fs::write(
        &cfg,
        format!(
            "listen = \"0.0.0.0:50007\"\napi_listen = \"0.0.0.0:50080\"\ntracker_listen = \"0.0.0.0:50021\"\ndata_dir = \"{}\"\napi_token = \"bench\"\nadvertise_ip = \"{}\"\nbt_listen_port = 6880\n",
            data.display(),
            lab.ip(2)
        ),
    )?;
    let child = Child(
        Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(bins.join("voi-server"))
            .args(["run", "--config"])
            .arg(&cfg)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(work.join("server.log"))?)
            .spawn()?,
    );
    Ok(Server {
        ns: ns.to_string(),
        _child: child,
        data,
    })
}

pub async fn wait_seeding(api: &voi::server::client::ApiClient) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        if let Ok(env) = api.get("/api/v1/images").await {
            if env
                .data
                .as_ref()
                .is_some_and(|d| d["images"][0]["state"] == "seeding")
            {
                return Ok(());
            }
        }
        if start.elapsed() > Duration::from_secs(300) {
            anyhow::bail!("the server never started seeding");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

struct AgentProc {
    _child: Child,
    socket: PathBuf,
    disks: PathBuf,
    log: PathBuf,
}

/// (engine copies received, steals) from an agent's "every piece is here
/// (received N bytes for M: X copies, S steals)" line.
fn swarm_costs(log: &Path) -> Option<(f64, u64)> {
    let text = std::fs::read_to_string(log).ok()?;
    let line = text
        .lines()
        .find(|l| l.contains("every piece is here (received"))?;
    let inner = line.split('(').nth(1)?.split(')').next()?;
    let copies = inner
        .split(": ")
        .nth(1)?
        .split(" copies")
        .next()?
        .parse()
        .ok()?;
    let steals = inner.split(", ").nth(1)?.split(' ').next()?.parse().ok()?;
    Some((copies, steals))
}

fn start_agent(
    lab: &Lab,
    ns: &str,
    i: usize,
    bins: &Path,
    work: &Path,
) -> anyhow::Result<AgentProc> {
    let dir = work.join(format!("agent{i}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let cfg = dir.join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            "server_ip = \"{}\"\nmac = \"AA:00:00:00:0B:{:02X}\"\ndata_dir = \"{}\"\nperformance_secs = 0\n[bt]\nlisten_port = 6881\n[platform]\npower = \"recording\"\nboot = \"recording\"\nhostname = \"recording\"\nnetwork = \"recording\"\n",
            lab.ip(2),
            i,
            dir.display()
        ),
    )?;
    let child = Child(
        Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(bins.join("voi-agent"))
            .args(["--config"])
            .arg(&cfg)
            .arg("run")
            // The transfer lines carry what each terminal received and
            // how many pieces it stole (read back by `swarm_costs`).
            .env("RUST_LOG", "warn,voi::agent::transfers=info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("agent.log"))?)
            .spawn()?,
    );
    Ok(AgentProc {
        _child: child,
        socket: dir.join("control.sock"),
        disks: dir.join("disks"),
        log: dir.join("agent.log"),
    })
}

/// (bytes held, verified and in the chain)
async fn agent_progress(a: &AgentProc, layer: &str) -> (u64, bool) {
    if a.disks.join(layer).exists() {
        let len = std::fs::metadata(a.disks.join(layer))
            .map(|m| m.len())
            .unwrap_or(0);
        return (len, true);
    }
    match control_socket::call(&a.socket, &ControlRequest::Transfers).await {
        Ok(r) => {
            let have = r
                .data
                .as_ref()
                .and_then(|d| d["transfers"].as_array().cloned())
                .unwrap_or_default()
                .iter()
                .find(|t| t["transfer"]["layer"] == layer)
                .and_then(|t| t["have_bytes"].as_u64())
                .unwrap_or(0);
            (have, false)
        }
        Err(_) => (0, false),
    }
}

async fn bt_run(
    lab: &Lab,
    server: &Server,
    agent_ns: &[String],
    bins: &Path,
    work: &Path,
    layer: &str,
) -> anyhow::Result<Run> {
    let tx0 = Lab::tx_bytes(&server.ns);
    let rx0 = Lab::rx_bytes_sum(agent_ns);
    let started = Instant::now();
    let mut agents = Vec::new();
    for (i, ns) in agent_ns.iter().enumerate() {
        agents.push(start_agent(lab, ns, i, bins, work)?);
    }
    let k = agents.len();
    let mut progress = vec![Vec::new(); k];
    let mut done: Vec<Option<f64>> = vec![None; k];
    while done.iter().any(Option::is_none) {
        let t = started.elapsed().as_secs_f64();
        for (i, a) in agents.iter().enumerate() {
            let (have, ok) = agent_progress(a, layer).await;
            progress[i].push((t, have));
            if ok && done[i].is_none() {
                done[i] = Some(t);
            }
        }
        if started.elapsed() > Duration::from_secs(1800) {
            anyhow::bail!("BitTorrent run with {k} terminals not done in 30 min: {done:?}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let egress = Lab::tx_bytes(&server.ns).saturating_sub(tx0);
    let ingress = Lab::rx_bytes_sum(agent_ns).saturating_sub(rx0);
    let costs: Vec<(f64, u64)> = agents
        .iter()
        .map(|a| swarm_costs(&a.log).unwrap_or((f64::NAN, 0)))
        .collect();
    drop(agents);
    let done: Vec<f64> = done.into_iter().map(|d| d.unwrap_or(f64::NAN)).collect();
    Ok(Run {
        method: "bittorrent".into(),
        terminals: k,
        all_done_secs: done.iter().copied().fold(0.0, f64::max),
        done_secs: done,
        server_egress_bytes: egress,
        terminals_ingress_bytes: ingress,
        engine_copies: costs.iter().map(|c| c.0).collect(),
        steals: costs.iter().map(|c| c.1).collect(),
        progress,
    })
}

async fn http_run(
    lab: &Lab,
    server: &Server,
    agent_ns: &[String],
    work: &Path,
    layer: &str,
    size: u64,
) -> anyhow::Result<Run> {
    let _http = Child(
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &server.ns,
                "python3",
                "-m",
                "http.server",
                "8000",
                "--bind",
                "0.0.0.0",
                "--directory",
            ])
            .arg(server.data.join("images"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let url = format!("http://{}:8000/{layer}", lab.ip(2));
    let tx0 = Lab::tx_bytes(&server.ns);
    let rx0 = Lab::rx_bytes_sum(agent_ns);
    let started = Instant::now();
    let mut curls = Vec::new();
    let mut outs = Vec::new();
    for (i, ns) in agent_ns.iter().enumerate() {
        let out = work.join(format!("http{i}.img"));
        let _ = std::fs::remove_file(&out);
        curls.push(Child(
            Command::new("ip")
                .args(["netns", "exec", ns, "curl", "-sf", "-o"])
                .arg(&out)
                .arg(&url)
                .spawn()?,
        ));
        outs.push(out);
    }
    let k = curls.len();
    let mut progress = vec![Vec::new(); k];
    let mut done: Vec<Option<f64>> = vec![None; k];
    while done.iter().any(Option::is_none) {
        let t = started.elapsed().as_secs_f64();
        for i in 0..k {
            let have = std::fs::metadata(&outs[i]).map(|m| m.len()).unwrap_or(0);
            progress[i].push((t, have));
            if done[i].is_none() {
                if let Ok(Some(st)) = curls[i].0.try_wait() {
                    if !st.success() {
                        anyhow::bail!("curl {i} failed: {st}");
                    }
                    done[i] = Some(t);
                }
            }
        }
        if started.elapsed() > Duration::from_secs(3600) {
            anyhow::bail!("HTTP run not done in an hour");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let egress = Lab::tx_bytes(&server.ns).saturating_sub(tx0);
    let ingress = Lab::rx_bytes_sum(agent_ns).saturating_sub(rx0);
    for o in &outs {
        if std::fs::metadata(o).map(|m| m.len()).unwrap_or(0) != size {
            anyhow::bail!("{} is incomplete", o.display());
        }
        let _ = std::fs::remove_file(o);
    }
    let done: Vec<f64> = done.into_iter().map(|d| d.unwrap_or(f64::NAN)).collect();
    Ok(Run {
        method: "http".into(),
        terminals: k,
        all_done_secs: done.iter().copied().fold(0.0, f64::max),
        done_secs: done,
        server_egress_bytes: egress,
        terminals_ingress_bytes: ingress,
        engine_copies: Vec::new(),
        steals: Vec::new(),
        progress,
    })
}

/// aria2c on a closed LAN: no DHT, LPD or PEX, no preallocation (the
/// swarm's and `single`'s aria2c runs both use these).
pub const ARIA2C_CLOSED_LAN: [&str; 8] = [
    "--enable-dht=false",
    "--enable-dht6=false",
    "--bt-enable-lpd=false",
    "--enable-peer-exchange=false",
    "--file-allocation=none",
    "--allow-overwrite=true",
    "--console-log-level=warn",
    "--summary-interval=0",
];

/// Writes the script aria2c runs when a download completes (before it seeds
/// on, `--on-bt-download-complete`): it marks the file `<file>.done`, which
/// is how completion is seen. (aria2c's control file lingers until its next
/// auto-save, up to a minute later.)
pub fn write_done_hook(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, "#!/bin/sh\n: > \"$3.done\"\n")?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
}

/// aria2c in namespace `ns`.
fn aria2c(ns: &str) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns, "aria2c"])
        .args(ARIA2C_CLOSED_LAN)
        // Seed on after finishing, as the agents do.
        .arg("--seed-ratio=0.0");
    c.stdout(Stdio::null()).stderr(Stdio::null());
    c
}

/// The same transfer with aria2c at both ends: the file under another name
/// (so the voi-server seeder, which announces the layer's own torrent,
/// is not in this swarm), a torrent with the same piece length announcing
/// to our tracker, aria2c seeding in the server's namespace.
async fn aria2_run(
    lab: &Lab,
    server: &Server,
    agent_ns: &[String],
    work: &Path,
    layer: &str,
    size: u64,
) -> anyhow::Result<Run> {
    let seed_dir = work.join("aria-seed");
    std::fs::create_dir_all(&seed_dir)?;
    let name = "aria2-reference.img";
    let original = server.data.join("images").join(layer);
    let seed_file = seed_dir.join(name);
    if !seed_file.exists() {
        std::fs::hard_link(&original, &seed_file)
            .or_else(|_| std::fs::copy(&original, &seed_file).map(drop))?;
    }
    let torrent = voi::bt::torrent::create(
        &seed_file,
        &format!("http://{}:50021/announce", lab.ip(2)),
        voi::bt::torrent::piece_length_for(size),
    )?;
    let torrent_path = work.join("aria2-reference.torrent");
    std::fs::write(&torrent_path, &torrent.bytes)?;
    let _seeder = Child(
        aria2c(&server.ns)
            .args(["--bt-seed-unverified=true", "--listen-port=6890", "-d"])
            .arg(&seed_dir)
            .arg(&torrent_path)
            .spawn()?,
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let tx0 = Lab::tx_bytes(&server.ns);
    let rx0 = Lab::rx_bytes_sum(agent_ns);
    let started = Instant::now();
    let hook = work.join("aria2-done.sh");
    write_done_hook(&hook)?;
    let mut leechers = Vec::new();
    let mut dirs = Vec::new();
    for (i, ns) in agent_ns.iter().enumerate() {
        let dir = work.join(format!("aria{i}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        leechers.push(Child(
            aria2c(ns)
                .arg(format!("--on-bt-download-complete={}", hook.display()))
                .args(["--listen-port=6881", "-d"])
                .arg(&dir)
                .arg(&torrent_path)
                .spawn()?,
        ));
        dirs.push(dir);
    }
    let k = leechers.len();
    let mut progress = vec![Vec::new(); k];
    let mut done: Vec<Option<f64>> = vec![None; k];
    while done.iter().any(Option::is_none) {
        let t = started.elapsed().as_secs_f64();
        for i in 0..k {
            let file = dirs[i].join(name);
            let marker = dirs[i].join(format!("{name}.done"));
            // Bytes on disk (the file is sparse until it is complete).
            let have = {
                use std::os::unix::fs::MetadataExt;
                std::fs::metadata(&file)
                    .map(|m| (m.blocks() * 512).min(size))
                    .unwrap_or(0)
            };
            let complete = marker.exists();
            progress[i].push((t, if complete { size } else { have }));
            if complete && done[i].is_none() {
                done[i] = Some(t);
            }
        }
        if started.elapsed() > Duration::from_secs(1800) {
            anyhow::bail!("aria2c run with {k} terminals not done in 30 min: {done:?}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let egress = Lab::tx_bytes(&server.ns).saturating_sub(tx0);
    let ingress = Lab::rx_bytes_sum(agent_ns).saturating_sub(rx0);
    drop(leechers);
    let want = std::fs::read(&original)?;
    for d in &dirs {
        if std::fs::read(d.join(name))? != want {
            anyhow::bail!("aria2c's copy in {} differs", d.display());
        }
        let _ = std::fs::remove_dir_all(d);
    }
    let done: Vec<f64> = done.into_iter().map(|d| d.unwrap_or(f64::NAN)).collect();
    Ok(Run {
        method: "aria2c".into(),
        terminals: k,
        all_done_secs: done.iter().copied().fold(0.0, f64::max),
        done_secs: done,
        server_egress_bytes: egress,
        terminals_ingress_bytes: ingress,
        engine_copies: Vec::new(),
        steals: Vec::new(),
        progress,
    })
}

pub fn make_layer(path: &Path, mib: u64) -> anyhow::Result<()> {
    let raw = path.with_extension("raw");
    sh(&[
        "sh",
        "-c",
        &format!("head -c {mib}M /dev/urandom > '{}'", raw.display()),
    ])?;
    sh(&[
        "qemu-img",
        "convert",
        "-q",
        "-f",
        "raw",
        "-O",
        "qcow2",
        &raw.to_string_lossy(),
        &path.to_string_lossy(),
    ])?;
    std::fs::remove_file(&raw)?;
    Ok(())
}

pub async fn run(
    bins: &Path,
    k: usize,
    mib: u64,
    rate: &str,
    with_http: bool,
) -> anyhow::Result<SwarmReport> {
    let work = crate::scale::tempfile_dir()?;
    let result = run_in(bins, k, mib, rate, with_http, &work).await;
    let _ = std::fs::remove_dir_all(&work);
    result
}

async fn run_in(
    bins: &Path,
    k: usize,
    mib: u64,
    rate: &str,
    with_http: bool,
    work: &Path,
) -> anyhow::Result<SwarmReport> {
    let image = work.join("layer.qcow2");
    make_layer(&image, mib)?;
    let size = std::fs::metadata(&image)?.len();
    let layer = format!("voi_0_{U}");
    let mut lab = Lab::new(rate)?;
    let server_ns = lab.add("s", 2)?;
    let mut agent_ns = Vec::new();
    for i in 0..k {
        agent_ns.push(lab.add(&format!("a{i}"), 10 + i as u32)?);
    }
    let server = start_server(&lab, &server_ns, bins, work, &image)?;
    let api = voi::server::client::ApiClient::new(format!("http://{}:50080", lab.ip(2)), "bench");
    wait_seeding(&api).await?;
    let group = serde_json::json!({
        "desktop_group_uuid": G, "desktop_group_name": "bench", "default_desktop_group": true,
        "disks": [{"uuid": U, "type": 0, "dif_level": 0, "prefix": "voi", "max_dif": 0}],
    });
    api.put("/api/v1/desktop_groups", &group).await?;

    eprintln!("[swarm] one terminal, BitTorrent, {rate}");
    let bt_one = bt_run(&lab, &server, &agent_ns[..1], bins, work, &layer).await?;
    eprintln!(
        "[swarm] {:.1} s; {k} terminals, BitTorrent",
        bt_one.all_done_secs
    );
    let bt_all = bt_run(&lab, &server, &agent_ns, bins, work, &layer).await?;
    eprintln!(
        "[swarm] {:.1} s, server sent {:.2} copies, terminals received {:.2}; engines received {:?} copies, stole {:?} pieces",
        bt_all.all_done_secs,
        bt_all.server_egress_bytes as f64 / size as f64,
        bt_all.terminals_ingress_bytes as f64 / (k as u64 * size) as f64,
        bt_all.engine_copies,
        bt_all.steals
    );
    let http_all = if with_http {
        eprintln!("[swarm] {k} terminals, HTTP unicast");
        let r = http_run(&lab, &server, &agent_ns, work, &layer, size).await?;
        eprintln!("[swarm] {:.1} s", r.all_done_secs);
        Some(r)
    } else {
        None
    };
    eprintln!("[swarm] {k} terminals, aria2c (reference swarm)");
    let aria2_all = if Command::new("aria2c").arg("--version").output().is_ok() {
        let r = aria2_run(&lab, &server, &agent_ns, work, &layer, size).await?;
        eprintln!("[swarm] {:.1} s", r.all_done_secs);
        Some(r)
    } else {
        eprintln!("[swarm] aria2c is not installed (apt-get install aria2): no reference swarm");
        None
    };
    drop(server);
    drop(lab);
    Ok(SwarmReport {
        layer_bytes: size,
        rate: rate.to_string(),
        time_ratio: bt_all.all_done_secs / bt_one.all_done_secs,
        egress_ratio: bt_all.server_egress_bytes as f64 / size as f64,
        http_egress_ratio: http_all
            .as_ref()
            .map(|h| h.server_egress_bytes as f64 / size as f64),
        http_vs_bt_time: http_all
            .as_ref()
            .map(|h| h.all_done_secs / bt_all.all_done_secs),
        ingress_ratio: bt_all.terminals_ingress_bytes as f64 / (k as u64 * size) as f64,
        aria2_ingress_ratio: aria2_all
            .as_ref()
            .map(|a| a.terminals_ingress_bytes as f64 / (k as u64 * size) as f64),
        bt_vs_aria2_time: aria2_all
            .as_ref()
            .map(|a| bt_all.all_done_secs / a.all_done_secs),
        aria2_egress_ratio: aria2_all
            .as_ref()
            .map(|a| a.server_egress_bytes as f64 / size as f64),
        aria2_all,
        bt_all,
        bt_one,
        http_all,
    })
}
