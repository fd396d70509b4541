//! voi-bench: the figures we claim, measured side by side in one run and
//! written to `docs/benchmarks.md` (+ JSON, + PNG). Never part of the tests'
//! pass/fail.
//!
//!   cargo run --release -p voi-bench -- all        # everything (root: P1 needs netns + tc)
//!   cargo run --release -p voi-bench -- swarm --agents 8 --size-mib 256 --rate 100mbit
//!   cargo run --release -p voi-bench -- single | scale | merge

mod lan_address;
mod plot;
mod scale;
mod single;
mod storm;
mod swarm;

use clap::{Parser, Subcommand};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

#[derive(Parser)]
#[command(name = "voi-bench")]
struct Cli {
    /// Where the report goes.
    #[arg(long, default_value = "docs")]
    out: PathBuf,
    /// Take the binaries from this directory instead of building them: an
    /// older build of voi-server, to measure a change against it in one
    /// sitting (`benches/observability-overhead.sh`).
    #[arg(long)]
    bins: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Clone)]
enum Cmd {
    /// P1–P5 and the report.
    All {
        #[command(flatten)]
        swarm: SwarmArgs,
        #[arg(long, default_value = "1000,5000,10000")]
        sessions: String,
    },
    /// P1: K terminals in network namespaces behind shaped links.
    Swarm(SwarmArgs),
    /// P2 + P3: one download on loopback (agent, librqbit, curl) and the
    /// agent's memory.
    Single {
        #[arg(long, default_value_t = 512)]
        size_mib: u64,
        /// Limit every client to this link speed (their own rate limiters):
        /// the P2b run, a shaped 1 Gbit/s link, is `--link-mbit 1000`.
        #[arg(long)]
        link_mbit: Option<u32>,
        /// Rounds of the three clients, the agent first in every other one;
        /// the report gives their medians (this machine's noise is larger
        /// than the differences measured).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// P4: server scale.
    Scale {
        #[arg(long, default_value = "1000,5000,10000")]
        sessions: String,
        #[arg(long, default_value_t = 60)]
        duration: u64,
    },
    /// P5: merge, agent vs bare qemu-img commit.
    Merge,
    /// P6: login storm, N terminals booting within one second.
    Storm {
        #[arg(long, default_value_t = 10000)]
        sessions: usize,
        /// Separate runs, each with a fresh server.
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
    /// The manifest check's cost: sha256 of a file, ours vs sha256sum
    /// (printed, not added to the report).
    Hash {
        #[arg(long, default_value_t = 1024)]
        size_mib: u64,
    },
    /// Re-render benchmarks.md from benchmarks.json (after editing the
    /// hand-written analysis in benchmarks-analysis.md).
    Report,
}

#[derive(clap::Args, Clone)]
struct SwarmArgs {
    #[arg(long, default_value_t = 8)]
    agents: usize,
    #[arg(long, default_value_t = 256)]
    size_mib: u64,
    /// tc rate of every link.
    #[arg(long, default_value = "100mbit")]
    rate: String,
    /// Skip the HTTP unicast run (K full copies over the server's link, the
    /// slowest part); the report then has no HTTP row.
    #[arg(long)]
    no_http: bool,
}

#[derive(Default, Serialize)]
struct Report {
    machine: serde_json::Value,
    swarm: Option<swarm::SwarmReport>,
    single: Option<single::SingleReport>,
    scale: Vec<scale::ScaleResult>,
    storm: Vec<storm::StormResult>,
    /// P2b: the same download over a link limited to 1 Gbit/s.
    single_link: Option<single::SingleReport>,
    merge: Option<serde_json::Value>,
    binaries: serde_json::Value,
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn build_bins() -> anyhow::Result<PathBuf> {
    let st = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(root())
        .args([
            "build",
            "--release",
            "--locked",
            // The default members, as the README's commands build them: one
            // feature set, so this reuses their dependency build.
            "--bins",
        ])
        .status()?;
    if !st.success() {
        anyhow::bail!("building the release binaries failed");
    }
    Ok(root().join("target/release"))
}

fn machine() -> serde_json::Value {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpu = read("/proc/cpuinfo")
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("")
        .trim()
        .to_string();
    let mem = read("/proc/meminfo")
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .nth(1)
        .and_then(|k| k.parse::<u64>().ok())
        .unwrap_or(0);
    let out = |c: &str, a: &[&str]| {
        Command::new(c)
            .args(a)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    serde_json::json!({
        "cpu": cpu,
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "memory_gib": (mem as f64 / 1048576.0 * 10.0).round() / 10.0,
        "kernel": out("uname", &["-r"]),
        "qemu_img": out("qemu-img", &["--version"]).lines().next().unwrap_or("").to_string(),
        "date": out("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        "commit": out("git", &["-C", &root().to_string_lossy(), "rev-parse", "--short", "HEAD"]),
    })
}

fn binaries() -> serde_json::Value {
    let size = |p: PathBuf| std::fs::metadata(p).ok().map(|m| m.len());
    let r = root();
    serde_json::json!({
        "x86_64_voi_agent": size(r.join("target/release/voi-agent")),
        "x86_64_voi_server": size(r.join("target/release/voi-server")),
        "aarch64_voi_agent": size(r.join("target/cross/aarch64-unknown-linux-gnu/release/voi-agent")),
        "aarch64_voi_server": size(r.join("target/cross/aarch64-unknown-linux-gnu/release/voi-server")),
    })
}

fn merge() -> anyhow::Result<serde_json::Value> {
    let out = Command::new(root().join("benches/merge.sh"))
        .arg("3")
        .output()?;
    if !out.status.success() {
        anyhow::bail!("merge.sh: {}", String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let median = |prefix: &str| {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit("median ").next())
            .and_then(|v| v.trim_end_matches(" s").trim().parse::<f64>().ok())
    };
    let a = median("agent merge");
    let b = median("bare qemu-img");
    Ok(serde_json::json!({
        "agent_secs": a, "bare_secs": b,
        "ratio": a.zip(b).map(|(a, b)| a / b),
        "output": text,
    }))
}

fn sessions(s: &str) -> anyhow::Result<Vec<usize>> {
    s.split(',')
        .filter(|x| !x.is_empty())
        .map(|x| Ok(x.trim().parse()?))
        .collect()
}

fn main() -> std::process::ExitCode {
    let _ = env_logger::try_init();
    let cli = Cli::parse();
    // Each session is a socket in this process and one in the server.
    voi::cli_support::raise_open_file_limit();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("voi-bench: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("voi-bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// sha256 throughput of the manifest check against coreutils, best of 3.
fn hash(size_mib: u64) -> anyhow::Result<()> {
    let dir = tempfile_dir()?;
    let path = dir.join("hash.bin");
    let ok = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "head -c {size_mib}M /dev/urandom > '{}'",
            path.display()
        ))
        .status()?
        .success();
    anyhow::ensure!(ok, "could not write the test file");
    let best = |f: &dyn Fn() -> anyhow::Result<()>| -> anyhow::Result<f64> {
        let mut best = f64::MAX;
        for _ in 0..3 {
            let t = std::time::Instant::now();
            f()?;
            best = best.min(t.elapsed().as_secs_f64());
        }
        Ok(best)
    };
    let ours = best(&|| {
        voi::bt::manifest::sha256_file(&path)?;
        Ok(())
    })?;
    let coreutils = best(&|| {
        anyhow::ensure!(Command::new("sha256sum")
            .arg(&path)
            .output()?
            .status
            .success());
        Ok(())
    })?;
    let mb = size_mib as f64 * 1.048576;
    println!(
        "sha256 of {size_mib} MiB (page cache, best of 3): voi {:.0} MB/s ({ours:.2} s), sha256sum {:.0} MB/s ({coreutils:.2} s)",
        mb / ours,
        mb / coreutils
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let d = std::env::temp_dir().join(format!("voi-bench-hash-{}", std::process::id()));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    if let Cmd::Hash { size_mib } = &cli.cmd {
        return hash(*size_mib);
    }
    let json_path = cli.out.join("benchmarks.json");
    if matches!(cli.cmd, Cmd::Report) {
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json_path)?)?;
        std::fs::write(cli.out.join("benchmarks.md"), markdown(&v, &cli.out))?;
        return Ok(());
    }
    let bins = match &cli.bins {
        Some(dir) => dir.clone(),
        None => build_bins()?,
    };
    std::fs::create_dir_all(&cli.out)?;
    // Partial runs update their part of an existing report.
    let mut report: Report = Report {
        machine: machine(),
        binaries: binaries(),
        ..Default::default()
    };
    let previous: serde_json::Value = std::fs::read(&json_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let (do_swarm, do_single, do_scale, do_merge) = match &cli.cmd {
        Cmd::All { .. } => (true, true, true, true),
        Cmd::Swarm(_) => (true, false, false, false),
        Cmd::Single { .. } => (false, true, false, false),
        Cmd::Scale { .. } => (false, false, true, false),
        Cmd::Merge => (false, false, false, true),
        Cmd::Report | Cmd::Hash { .. } | Cmd::Storm { .. } => (false, false, false, false),
    };
    let storm_runs = match &cli.cmd {
        Cmd::Storm { sessions, runs } => Some((*sessions, *runs)),
        Cmd::All { .. } => Some((10000, 3)),
        _ => None,
    };
    if let Some((n, runs)) = storm_runs {
        for run in 1..=runs {
            eprintln!("[storm] run {run}: {n} terminals within one second");
            for r in storm::storm(&bins, n).await? {
                eprintln!("[storm] {}", r.markdown_row(run));
                report.storm.push(r);
            }
        }
    }
    if do_single {
        let (mib, link, rounds) = match &cli.cmd {
            Cmd::Single {
                size_mib,
                link_mbit,
                rounds,
            } => (*size_mib, *link_mbit, *rounds),
            _ => (512, None, 3),
        };
        let link_bps = link.map(|m| m.saturating_mul(125_000));
        eprintln!("[single] {mib} MiB on loopback (link {link:?} Mbit/s): librqbit, curl, agent");
        let r = single::run(&bins, mib, link_bps, rounds).await?;
        if link.is_some() {
            report.single_link = Some(r);
        } else {
            report.single = Some(r);
        }
    }
    if do_merge {
        eprintln!("[merge] benches/merge.sh 3");
        report.merge = Some(merge()?);
    }
    if do_scale {
        let (list, duration) = match &cli.cmd {
            Cmd::Scale {
                sessions: s,
                duration,
            } => (sessions(s)?, *duration),
            Cmd::All { sessions: s, .. } => (sessions(s)?, 60),
            _ => (Vec::new(), 60),
        };
        for n in list {
            eprintln!("[scale] {n} sessions");
            let r = scale::scale(&bins, n, Duration::from_secs(duration), 500).await?;
            eprintln!("[scale] {}", r.markdown_row());
            report.scale.push(r);
        }
    }
    if do_swarm {
        let a = match &cli.cmd {
            Cmd::Swarm(a) | Cmd::All { swarm: a, .. } => a.clone(),
            _ => unreachable!("only swarm and all run P1"),
        };
        let r = swarm::run(&bins, a.agents, a.size_mib, &a.rate, !a.no_http).await?;
        // One chart per method that ran (HTTP is off with --no-http,
        // aria2c when it is not installed).
        for (file, method, run) in [
            ("swarm-bittorrent.png", "BitTorrent", Some(&r.bt_all)),
            ("swarm-http.png", "HTTP unicast", r.http_all.as_ref()),
            (
                "swarm-aria2.png",
                "aria2c reference swarm",
                r.aria2_all.as_ref(),
            ),
        ] {
            if let Some(run) = run {
                plot::progress(
                    &cli.out.join(file),
                    &format!(
                        "{method}: {} terminals, {} MiB layer, every link {}",
                        a.agents, a.size_mib, a.rate
                    ),
                    r.layer_bytes,
                    &run.progress,
                )?;
            }
        }
        report.swarm = Some(r);
    }
    // Keep the parts this run did not measure.
    let mut value = serde_json::to_value(&report)?;
    for key in ["swarm", "single", "merge", "single_link"] {
        if value[key].is_null() && !previous[key].is_null() {
            value[key] = previous[key].clone();
        }
    }
    for key in ["scale", "storm"] {
        if value[key].as_array().is_some_and(|a| a.is_empty()) {
            if let Some(p) = previous.get(key) {
                value[key] = p.clone();
            }
        }
    }
    let mut slim = value.clone();
    for run in ["bt_all", "bt_one", "http_all", "aria2_all"] {
        if let Some(r) = slim["swarm"].get_mut(run) {
            r["progress"] = serde_json::Value::Null;
        }
    }
    std::fs::write(&json_path, serde_json::to_vec_pretty(&slim)?)?;
    std::fs::write(cli.out.join("benchmarks.md"), markdown(&value, &cli.out))?;
    eprintln!("wrote {} and benchmarks.md", json_path.display());
    Ok(())
}

fn f(v: &serde_json::Value, digits: usize) -> String {
    v.as_f64()
        .map(|x| format!("{x:.digits$}"))
        .unwrap_or_else(|| "–".into())
}

fn mb(v: &serde_json::Value) -> String {
    v.as_u64()
        .map(|x| format!("{:.1} MB", x as f64 / 1e6))
        .unwrap_or_else(|| "not built".into())
}

fn markdown(v: &serde_json::Value, out: &Path) -> String {
    let m = &v["machine"];
    let mut s = String::new();
    s += "# Benchmarks\n\n";
    s += "Generated by `cargo run --release -p voi-bench -- all` (as root: P1 builds network namespaces). ";
    s += "Each section can be re-run alone (`swarm`, `single`, `scale`, `merge`); the others are kept from the last run. ";
    s += "Figures are ratios measured side by side in one run, because the machines are noisy. Nothing here is asserted by the tests.\n\n";
    s += &format!(
        "Machine: {}, {} cores, {} GiB, kernel {}, {}; commit {}, {}.\n\n",
        m["cpu"].as_str().unwrap_or(""),
        m["cores"],
        m["memory_gib"],
        m["kernel"].as_str().unwrap_or(""),
        m["qemu_img"].as_str().unwrap_or(""),
        m["commit"].as_str().unwrap_or(""),
        m["date"].as_str().unwrap_or("")
    );
    let sw = &v["swarm"];
    s += "## P1: swarm distribution\n\n";
    if sw.is_null() {
        s += "Not measured yet (needs root: `cargo run --release -p voi-bench -- swarm`).\n\n";
    } else {
        let k = &sw["bt_all"]["terminals"];
        s += &format!(
            "voi-server and {k} agents, each in its own network namespace, joined by a Linux bridge. Every link is shaped with `tc tbf` to {} in both directions, so the server's one link is the bottleneck a classroom has. The layer is a {:.1} MiB qcow2 image of random data. Times run from the agents' start (login, 9007, 9023, torrent fetch) until each holds a copy whose every piece and qcow2 header verified and which is linked into its chain. Server egress is the `tx_bytes` of the server namespace's interface (everything it sent, protocol overhead included).\n\n",
            sw["rate"].as_str().unwrap_or(""),
            sw["layer_bytes"].as_f64().unwrap_or(0.0) / 1048576.0
        );
        s += "| run | all done (s) | server egress / S | terminals received / (K·S) |\n|---|---|---|---|\n";
        let layer = sw["layer_bytes"].as_f64().unwrap_or(1.0);
        let row = |name: &str, r: &serde_json::Value| {
            let per = |key: &str, n: f64| {
                r[key]
                    .as_f64()
                    .map(|e| format!("{:.2}", e / (n * layer)))
                    .unwrap_or_else(|| "–".into())
            };
            let n = r["terminals"].as_f64().unwrap_or(1.0);
            format!(
                "| {name} | {} | {} | {} |\n",
                f(&r["all_done_secs"], 1),
                per("server_egress_bytes", 1.0),
                per("terminals_ingress_bytes", n)
            )
        };
        s += &row("BitTorrent, one terminal alone", &sw["bt_one"]);
        s += &row(&format!("BitTorrent, {k} terminals"), &sw["bt_all"]);
        if !sw["http_all"].is_null() {
            s += &row(
                &format!("HTTP unicast (curl), {k} terminals"),
                &sw["http_all"],
            );
        }
        if !sw["aria2_all"].is_null() {
            s += &row(
                &format!("aria2c swarm (reference: aria2c seeding, {k} aria2c leechers, our tracker), {k} terminals"),
                &sw["aria2_all"],
            );
        }
        s += &format!(
            "\n* Time for {k} over time for one: **{}** (goal ≤ 1.2).\n* Server egress over S with BitTorrent: **{}** (goal ≤ 1.2); with HTTP unicast {}.\n* HTTP unicast took {}× as long as BitTorrent (– : not run, `--no-http`).\n\n",
            f(&sw["time_ratio"], 2),
            f(&sw["egress_ratio"], 2),
            f(&sw["http_egress_ratio"], 2),
            f(&sw["http_vs_bt_time"], 1)
        );
        s += &format!(
            "Reproduce (root): `cargo run --release -p voi-bench -- swarm --agents {k} --size-mib {} --rate {}`.\n\n",
            (sw["layer_bytes"].as_u64().unwrap_or(0) >> 20),
            sw["rate"].as_str().unwrap_or("")
        );
        if !sw["aria2_all"].is_null() {
            s += &format!(
                "* Against the aria2c reference swarm in the same run: ours took **{}×** its time (below 1: faster), server egress {} copies against aria2c's {}. aria2c's terminals are done when aria2c has every piece checked; ours when the layer is verified and in its chain.\n\n",
                f(&sw["bt_vs_aria2_time"], 2),
                f(&sw["egress_ratio"], 2),
                f(&sw["aria2_egress_ratio"], 2)
            );
        }
        s += "![BitTorrent progress per terminal](swarm-bittorrent.png)\n\n";
        if !sw["http_all"].is_null() {
            s += "![HTTP unicast progress per terminal](swarm-http.png)\n\n";
        }
        if !sw["aria2_all"].is_null() {
            s += "![aria2c reference swarm, progress per terminal](swarm-aria2.png)\n\n";
        }
    }
    let si = &v["single"];
    s += "## P2: one download on loopback\n\n";
    if si.is_null() {
        s += "Not measured yet.\n\n";
    } else {
        s += &format!(
            "A {:.1} MiB layer seeded by voi-server, fetched once each way on loopback. The agent's time runs from the operator's 1024 until the layer is in its chain: 9007, the decision, 9023, the torrent over HTTP, the download (the engine's two disk writers, behind a 16 MiB queue, write each piece and check it, SHA-1 against the torrent and sha256 for the manifest's piece list in one read; the agent fdatasyncs what is checked as it goes), the manifest, `qemu-img check`, and the link. Plain librqbit (default options: no write queue, no sha256, no fsync) stops when its last piece is checked; aria2c fetches the same torrent from the same seeder, checks every piece's SHA-1 and exits when complete (`--seed-time=0`); curl fetches the file from `python3 -m http.server`. Each round runs all four back to back, the agent first in every other round; the table gives the medians of the rounds.\n\n",
            si["layer_bytes"].as_f64().unwrap_or(0.0) / 1048576.0
        );
        s += "| client | seconds | MB/s |\n|---|---|---|\n";
        s += &format!(
            "| voi-agent | {} | {} |\n",
            f(&si["agent_secs"], 2),
            f(&si["agent_mb_s"], 0)
        );
        s += &format!(
            "| plain librqbit | {} | {} |\n",
            f(&si["librqbit_secs"], 2),
            f(&si["librqbit_mb_s"], 0)
        );
        s += &format!(
            "| curl over HTTP | {} | {} |\n",
            f(&si["curl_secs"], 2),
            f(&si["curl_mb_s"], 0)
        );
        s += &aria2c_row(si);
        if let Some(t) = si["agent_tail_secs"].as_f64() {
            let download = si["agent_secs"].as_f64().unwrap_or(f64::NAN) - t;
            s += &format!(
                "\nThe tail, from the engine holding every piece to the layer in its chain: **{t:.2} s**, {:.1}% of the rest of the agent's time; pieces checked before the last one arrived: {}.\n",
                100.0 * t / download,
                si["agent_checked_ahead"].as_str().unwrap_or("?")
            );
        }
        s += &rounds_table(si);
        s += &format!(
            "\nAgent throughput over plain librqbit, median of the rounds: **{}**; over aria2c: **{}**; over curl: **{}**. Reproduce: `cargo run --release -p voi-bench -- single --size-mib 512 --rounds 6` (also gives P3's RSS, from the first round).\n\n",
            f(&si["agent_vs_librqbit"], 2),
            f(&si["agent_vs_aria2c"], 2),
            f(&si["agent_vs_curl"], 2)
        );
    }
    s += "## P3: footprint\n\nRSS from the P2 run (`single`); sizes of the release binaries in `target/release` and of `cross/build.sh aarch64`'s output.\n\n| what | value |\n|---|---|\n";
    let kb = |x: &serde_json::Value| {
        x.as_u64()
            .map(|k| format!("{:.1} MB", k as f64 / 1024.0))
            .unwrap_or_else(|| "–".into())
    };
    s += &format!(
        "| agent RSS, idle (logged in, heartbeating, engine up) | {} |\n",
        kb(&si["agent_idle_rss_kb"])
    );
    s += &format!(
        "| agent RSS, downloading (peak) | {} |\n",
        kb(&si["agent_download_rss_kb"])
    );
    s += &format!(
        "| agent RSS, seeding (5 s after the layer landed) | {} ({} threads) |\n",
        kb(&si["agent_seeding_rss_kb"]),
        si["agent_seeding_threads"]
    );
    let b = &v["binaries"];
    s += &format!(
        "| voi-agent, x86_64, stripped | {} |\n",
        mb(&b["x86_64_voi_agent"])
    );
    s += &format!(
        "| voi-server, x86_64, stripped | {} |\n",
        mb(&b["x86_64_voi_server"])
    );
    s += &format!(
        "| voi-agent, aarch64, static, stripped (`cross/build.sh aarch64`) | {} |\n",
        mb(&b["aarch64_voi_agent"])
    );
    s += &format!(
        "| voi-server, aarch64, static, stripped | {} |\n\n",
        mb(&b["aarch64_voi_server"])
    );
    s += "## P4: server scale\n\n";
    s += "A load generator in this process opens N real TCP sessions to a voi-server child process; each logs in with its own MAC (500 logins/s) and sends 9000 every 10 s with a random phase, as terminals do. Latency is measured over 60 s of steady state, from writing the heartbeat to reading its answer. RSS per terminal is (RSS with N terminals − RSS idle) / N.\n\n";
    s += "Reproduce: `cargo run --release -p voi-bench -- scale --sessions 1000,5000,10000`.\n\n";
    s += "| sessions | logged in | dropped | heartbeats measured | p50 ms | p99 ms | max ms | server RSS kB | RSS per terminal kB |\n|---|---|---|---|---|---|---|---|---|\n";
    if let Some(list) = v["scale"].as_array() {
        for r in list {
            s += &format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                r["sessions"],
                r["logged_in"],
                r["dropped"],
                r["heartbeats"],
                f(&r["p50_ms"], 2),
                f(&r["p99_ms"], 2),
                f(&r["max_ms"], 1),
                r["server_rss_kb"],
                f(&r["server_rss_per_terminal_kb"], 1)
            );
        }
    }
    let sustained = v["scale"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| {
            r["dropped"].as_u64() == Some(0)
                && r["logged_in"] == r["sessions"]
                && r["p99_ms"].as_f64().is_some_and(|p| p < 50.0)
        })
        .filter_map(|r| r["sessions"].as_u64())
        .max();
    s += &match sustained {
        Some(n) => format!("\nLargest N tried that the server sustained (p99 < 50 ms, nothing dropped): **{n}**.\n\n"),
        None => "\nNo N tried met p99 < 50 ms with nothing dropped.\n\n".into(),
    };
    let sl = &v["single_link"];
    if !sl.is_null() {
        s += "## P2b: one download over a 1 Gbit/s link\n\n";
        s += "As P2, with every client held to 125 MB/s by its own rate limiter (librqbit's and the agent's engine limit, aria2c's --max-overall-download-limit, curl's --limit-rate): the speed of a 1 Gbit/s classroom link, where hashing keeps up with the network.\n\n";
        s += "| client | seconds | MB/s |\n|---|---|---|\n";
        s += &format!(
            "| voi-agent | {} | {} |\n| plain librqbit | {} | {} |\n| curl over HTTP | {} | {} |\n",
            f(&sl["agent_secs"], 2),
            f(&sl["agent_mb_s"], 0),
            f(&sl["librqbit_secs"], 2),
            f(&sl["librqbit_mb_s"], 0),
            f(&sl["curl_secs"], 2),
            f(&sl["curl_mb_s"], 0)
        );
        s += &aria2c_row(sl);
        if let Some(t) = sl["agent_tail_secs"].as_f64() {
            let download = sl["agent_secs"].as_f64().unwrap_or(f64::NAN) - t;
            s += &format!(
                "\nAgent over plain librqbit, median of the rounds: **{}**; over aria2c: **{}**. The tail: **{t:.2} s**, {:.1}% of the transfer before it (goal ≤ 5%); pieces checked before the last one arrived: {}.\n",
                f(&sl["agent_vs_librqbit"], 2),
                f(&sl["agent_vs_aria2c"], 2),
                100.0 * t / download,
                sl["agent_checked_ahead"].as_str().unwrap_or("?")
            );
        }
        s += &rounds_table(sl);
        s += "\nReproduce: `cargo run --release -p voi-bench -- single --size-mib 512 --link-mbit 1000 --rounds 3`.\n\n";
    }
    let me = &v["merge"];
    s += "## P5: merge\n\n";
    s += &format!(
        "The agent's merge of a 512 MiB diff into a 2 GiB base (`commit -d`, `rebase -u` of the layer above, unlink, journal fsyncs) against bare `qemu-img commit` plus `sync`, median of 3, warm page cache: agent {} s, bare {} s, ratio **{}**. Reproduce: `benches/merge.sh 3`.\n",
        f(&me["agent_secs"], 3),
        f(&me["bare_secs"], 3),
        f(&me["ratio"], 2)
    );
    if let Some(list) = v["storm"].as_array().filter(|l| !l.is_empty()) {
        s += "\n## P6: login storm\n\n";
        s += "Every terminal of a building boots at once: N real TCP sessions from this process open within one second against a voi-server child process; each logs in, sends 9004, 9005, 9007 and 9019, then a first heartbeat, one request at a time as a terminal does. *All online* is from the first connect to the last heartbeat answer; login latency runs from connect to the login answer, start-up from connect to the heartbeat answer. The load generator shares the 2 cores with the server. Goal: all online within 10 s, nothing dropped.\n\n";
        s +=
            "Reproduce: `cargo run --release -p voi-bench -- storm --sessions 10000 --runs 3`.\n\n";
        s += "Each run is two waves on one server: every terminal's first boot ever (each login creates its record, committed durably), then, all disconnected, the power coming back for the same terminals.\n\n";
        s += "| run | wave | sessions | online | dropped | all online (s) | login p50 ms | login p99 ms | start-up p50 ms | start-up p99 ms | server CPU s | server RSS kB |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n";
        for (i, r) in list.iter().enumerate() {
            s += &format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                i / 2 + 1,
                r["wave"].as_str().unwrap_or(""),
                r["sessions"],
                r["online"],
                r["dropped"],
                f(&r["all_online_secs"], 2),
                f(&r["login_p50_ms"], 0),
                f(&r["login_p99_ms"], 0),
                f(&r["startup_p50_ms"], 0),
                f(&r["startup_p99_ms"], 0),
                f(&r["server_cpu_secs"], 2),
                r["server_rss_kb"]
            );
        }
    }
    // The hand-written reading of these figures (goals missed and why).
    if let Ok(a) = std::fs::read_to_string(out.join("benchmarks-analysis.md")) {
        s += "\n";
        s += &a;
    }
    s
}

/// P2's rounds, one row each (empty for a report from before rounds).
fn rounds_table(single: &serde_json::Value) -> String {
    let Some(runs) = single["runs"].as_array().filter(|r| !r.is_empty()) else {
        return String::new();
    };
    let mut s = "\n| round | first | voi-agent s | plain librqbit s | curl s | aria2c s | agent / librqbit | tail s |\n|---|---|---|---|---|---|---|---|\n".to_string();
    for (i, r) in runs.iter().enumerate() {
        s += &format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
            i + 1,
            if r["agent_first"].as_bool().unwrap_or(false) {
                "agent"
            } else {
                "librqbit"
            },
            f(&r["agent_secs"], 2),
            f(&r["librqbit_secs"], 2),
            f(&r["curl_secs"], 2),
            f(&r["aria2c_secs"], 2),
            f(&r["agent_vs_librqbit"], 3),
            f(&r["agent_tail_secs"], 3)
        );
    }
    s
}

/// aria2c's row in a P2 table, when it was measured.
fn aria2c_row(single: &serde_json::Value) -> String {
    if single["aria2c_secs"].is_null() {
        return String::new();
    }
    format!(
        "| aria2c (BitTorrent) | {} | {} |\n",
        f(&single["aria2c_secs"], 2),
        f(&single["aria2c_mb_s"], 0)
    )
}
