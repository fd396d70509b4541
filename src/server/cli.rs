//! `voi-server`: run the reference server, run the demo, or drive a running
//! server through its operator API.

use clap::{Parser, Subcommand};
use serde_json::Value;
use std::path::PathBuf;

use crate::server::client::ApiClient;
use crate::server::{Server, ServerConfig};

#[derive(Parser)]
#[command(
    name = "voi-server",
    version = crate::cli_support::VERSION,
    about = "VOI reference management server"
)]
pub struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve terminals on TCP 50007 and the operator API on loopback.
    Run {
        /// Server configuration (TOML); every key has a default.
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[arg(long)]
        listen: Option<String>,
        #[arg(long)]
        api_listen: Option<String>,
        /// BitTorrent tracker listener (default 0.0.0.0:50021).
        #[arg(long)]
        tracker_listen: Option<String>,
        /// BitTorrent peer port of the image seeder (default 6880; 0 = any).
        #[arg(long)]
        bt_listen_port: Option<u16>,
        /// Address terminals reach this server at (9005, torrent URLs,
        /// tracker announce); needed beyond loopback.
        #[arg(long)]
        advertise_ip: Option<String>,
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Start a server and an agent on loopback, show them talking, exit 0.
    Demo {
        /// Keep both running until Ctrl-C.
        #[arg(long)]
        keep_running: bool,
    },
    /// Print the operator API's OpenAPI 3.1 description (JSON), as
    /// `/api/v1/openapi.json` serves it.
    Openapi,
    /// Operator commands against a running server. Tables for a person;
    /// `--json` prints the API's envelope for scripts. The exit code is
    /// non-zero when the server refused.
    Ctl {
        /// The operator API; default: the config's api_listen, else
        /// http://127.0.0.1:50080.
        #[arg(long, env = "VOI_API")]
        api: Option<String>,
        /// Bearer token; default: the config's api_token, else
        /// <data-dir>/api-token.
        #[arg(long, env = "VOI_API_TOKEN")]
        token: Option<String>,
        /// The server's config file, to find its API, token and data dir
        /// (default /etc/voi-server/server.toml when it exists).
        #[arg(long, short, env = "VOI_SERVER_CONFIG")]
        config: Option<PathBuf>,
        /// Default: the config's data_dir, else /var/lib/voi-server.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Print the API's JSON envelope instead of tables.
        #[arg(long, global = true)]
        json: bool,
        #[command(subcommand)]
        what: CtlCmd,
    },
}

/// `ctl push --help`: every command by name and code, and the bodies of
/// those that take more than the batch_no the server adds.
fn push_help() -> String {
    use crate::protocol::ServiceCode;
    const BODIES: &[(&str, &str)] = &[
        ("update_name", r#"{"name": "PC-1"}   (at most 13 bytes)"#),
        (
            "update_ip",
            r#"{"ip": "172.16.1.40", "mask": "255.255.255.0", "gateway": "172.16.1.1", "dns1": "114.114.114.114", "dns2": ""}"#,
        ),
        (
            "update_config",
            r#"{"mode": {"show_desktop_type": 0, "auto_desktop": 1}, "program": {"server_ip": "172.16.1.29"}}"#,
        ),
        (
            "add_data_disk",
            r#"{"size": 100, "enable": 1, "restore": 0}   (size in GB of 2^30 bytes)"#,
        ),
        (
            "push_task_result",
            r#"{"torrent_id": "<id>", "result": 1, "msg": ""}"#,
        ),
        (
            "wakeup",
            "not a TCP command: wake-on-LAN is a UDP magic packet",
        ),
        (
            "send_torrent",
            "a binary struct: use `ctl download-desktop`",
        ),
        (
            "upload_disk",
            r#"{"desktop": {"uuid": "<group uuid>", "disks": [{"uuid": "<disk uuid>", "type": 0, "dif_level": 1, "prefix": "voi"}]}}"#,
        ),
    ];
    let mut out = String::from("Commands (name or code); the server adds batch_no:\n");
    for c in ServiceCode::ALL.iter().filter(|c| c.is_command()) {
        // Commands whose body is only the batch_no (`BatchCmd`).
        const BATCH_ONLY: &[&str] = &[
            "shutdown",
            "restart",
            "delete",
            "enter_maintenance_mode",
            "clear_all_desktop",
            "pxe_start",
            "enter_maintain",
            "update_desktop_group_info",
            "cancel_send_desktop",
            "cancel_p_to_v",
        ];
        let body = BODIES
            .iter()
            .find(|(n, _)| *n == c.name())
            .map(|(_, b)| *b)
            .unwrap_or(if BATCH_ONLY.contains(&c.name()) {
                "{}"
            } else {
                "(its body: ../shared/spec/voi-terminal-api.zh.md)"
            });
        out.push_str(&format!("  {:<28} {:>4}  {body}\n", c.name(), *c as u32));
    }
    out.push_str(
        "Desktops go out with `ctl download-desktop`, which picks 1015 or 1017 per terminal.\n",
    );
    out
}

#[derive(Subcommand)]
enum CtlCmd {
    /// All terminals with online state.
    Terminals,
    /// One terminal with everything it reported.
    Terminal { mac: String },
    /// Forget a terminal's record without telling it (a retired machine);
    /// refused while it is connected.
    Forget { mac: String },
    /// Push a command (name or code) and wait for the terminal's reply.
    #[command(after_long_help = push_help())]
    Push {
        mac: String,
        command: String,
        /// JSON object of parameters, e.g. '{"name":"PC-1"}'.
        #[arg(default_value = "{}")]
        params: String,
        #[arg(long, default_value_t = 30)]
        timeout: u64,
    },
    /// List desktop groups.
    Groups,
    /// Add or replace a desktop group from a JSON file.
    GroupPut { file: PathBuf },
    /// Delete a desktop group.
    GroupDelete { uuid: String },
    /// Show the numbering session.
    Order,
    /// Start numbering at START_ID (all connected terminals unless MACs given).
    OrderStart { start_id: i64, macs: Vec<String> },
    /// End numbering.
    OrderCancel,
    /// The image library: layers seeded, bytes sent, uploads, and each
    /// terminal's download progress (9025).
    Images,
    /// Rescan the image directory now (it is rescanned every 30 s).
    ImagesRescan,
    /// How desktops reach a terminal: 1015 (1008 then a 1015 per layer),
    /// 1017 (send_desktop with URLs), or auto (from its software version).
    Delivery { mac: String, style: String },
    /// Let a terminal join (also puts a MAC on the allow-list before it
    /// ever connects).
    Accept { mac: String },
    /// Refuse a terminal from now on (it is disconnected if online).
    Reject { mac: String },
    /// Put a terminal back to waiting for a decision.
    Pend { mac: String },
    /// Send a desktop group's layers to terminals, in the style each one's
    /// generation understands (1008 + 1015 each, or 1017).
    DownloadDesktop {
        /// One MAC, or several separated by commas.
        mac: String,
        group_uuid: String,
        #[arg(long, default_value_t = 30)]
        timeout: u64,
        /// Then show each terminal's progress per layer until every layer
        /// is in its chain or failed (bars on a terminal, lines otherwise).
        #[arg(long)]
        wait: bool,
        /// Give up waiting after this many seconds.
        #[arg(long, default_value_t = 3600)]
        wait_secs: u64,
    },
    /// Power terminals on by wake-on-LAN: MACs (comma-separated), a room,
    /// or all. Prints the routes each packet took.
    Wake {
        macs: Option<String>,
        /// Every terminal of this room (group of terminals).
        #[arg(long, alias = "group")]
        room: Option<String>,
        #[arg(long)]
        all: bool,
        /// Then wait for each to log in ("online after N s") or time out.
        #[arg(long)]
        wait: bool,
        /// Seconds a terminal has to log in (default `[wake] timeout_secs`).
        #[arg(long)]
        timeout: Option<u64>,
    },
    /// Put terminals (comma-separated MACs) in a room; "" takes them out.
    Room { macs: String, room: String },
    /// Let a terminal upload its desktop on its own (a teacher's machine),
    /// or stop it: `on` or `off`.
    MayUpload { mac: String, on_off: String },
    /// Accept an uploaded layer awaiting review (its torrent id, from
    /// `ctl images`): it goes into the library, signed and seeded.
    UploadAccept { torrent_id: String },
    /// Reject an uploaded layer awaiting review: its bytes are deleted.
    UploadReject { torrent_id: String },
    /// Put an agent build in the library for terminals (stamped with the
    /// version, signed with the release key).
    UpgradePublish {
        file: PathBuf,
        #[arg(long)]
        platform: String,
        #[arg(long)]
        version: String,
        /// Store a file that has no version slot as it is.
        #[arg(long)]
        raw: bool,
    },
    /// Agent packages, and which terminal runs which version.
    Upgrades,
    /// The audit trail: who did what, to which terminals, and how it ended.
    Audit {
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Upgrade terminals' agent (1030), a batch at a time; each batch must
    /// run the version (or roll back) before the next is sent.
    Upgrade {
        /// MAC[,MAC…] VERSION, or VERSION with --all.
        #[arg(num_args = 1..=2, value_names = ["MACS", "VERSION"])]
        args: Vec<String>,
        /// Every online terminal not running the version yet.
        #[arg(long)]
        all: bool,
        #[arg(long, default_value_t = 5)]
        batch: usize,
        /// Allow a downgrade.
        #[arg(long)]
        force: bool,
        /// Send and return, without waiting for the outcomes.
        #[arg(long)]
        no_wait: bool,
        #[arg(long, default_value_t = 300)]
        wait_secs: u64,
    },
    /// The class schedule: wake and shut down rooms by the clock.
    Schedule {
        #[command(subcommand)]
        what: Option<crate::server::wake::cli::ScheduleCmd>,
    },
}

async fn admission(
    c: &ApiClient,
    mac: &str,
    state: &str,
) -> anyhow::Result<crate::protocol::Envelope<Value>> {
    c.put(
        &format!("/api/v1/terminals/{mac}/admission"),
        &serde_json::json!({ "admission": state }),
    )
    .await
}

/// `ctl download-desktop`: sends the group to each terminal and, with
/// `--wait`, follows the event stream until every layer sent has its 9015.
async fn download_desktop(
    c: &ApiClient,
    macs: &str,
    group_uuid: &str,
    timeout: u64,
    wait: bool,
    wait_secs: u64,
) -> anyhow::Result<()> {
    use std::collections::BTreeMap;
    let macs: Vec<String> = macs
        .split(',')
        .map(|m| {
            crate::protocol::normalize_mac(m).ok_or_else(|| anyhow::anyhow!("{m:?} is not a MAC"))
        })
        .collect::<anyhow::Result<_>>()?;
    // Subscribed before anything is sent, so no progress is missed.
    let mut events = if wait { Some(c.events().await?) } else { None };
    let mut board = crate::cli_support::ProgressBoard::new();
    let mut failures = 0;
    // (mac, layer) -> still to come
    let mut expected: BTreeMap<(String, String), ()> = BTreeMap::new();
    let mut snapshots = BTreeMap::new();
    for mac in &macs {
        if wait {
            snapshots.insert(
                mac.clone(),
                terminal_reports(c, mac).await.unwrap_or_default(),
            );
        }
        let env = c
            .post(
                &format!("/api/v1/terminals/{mac}/download_desktop"),
                &serde_json::json!({ "group_uuid": group_uuid, "timeout_secs": timeout }),
            )
            .await?;
        if !wait {
            crate::cli_support::print_line(&serde_json::to_string_pretty(&env)?);
        }
        if !env.is_ok() {
            failures += 1;
            eprintln!("{mac}: {} {}", env.code, env.msg);
            continue;
        }
        let sent = env
            .data
            .as_ref()
            .and_then(|d| d["sent"].as_array().cloned())
            .unwrap_or_default();
        for s in sent {
            let layer = s["layer"].as_str().unwrap_or_default().to_string();
            let key = format!("{mac} {layer}");
            if s["code"] != 0 {
                board.finish(&key, false, s["msg"].as_str().unwrap_or_default());
            } else if s["already_present"] == true {
                board.finish(&key, true, "(already here)");
            } else {
                board.update(&key, 0, "sent");
                expected.insert((mac.clone(), layer), ());
            }
        }
    }
    let Some(events) = events.take() else {
        anyhow::ensure!(failures == 0, "{failures} terminal(s) refused");
        return Ok(());
    };
    let mut wait = DeliveryWait::new(c, group_uuid, &macs, expected, snapshots).await;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(wait_secs);
    let mut events = Some(events);
    loop {
        wait.settle(&mut board);
        if wait.done() {
            break;
        }
        let Some(stream) = events.as_mut() else {
            // The stream was lost (a server restart): reconnect, then read
            // the records for whatever happened meanwhile.
            if tokio::time::Instant::now() >= deadline {
                anyhow::bail!("gave up after {wait_secs} s; {}", wait.still_waiting());
            }
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            match c.events().await {
                Ok(s) => {
                    eprintln!("reconnected to the server's event stream");
                    events = Some(s);
                    wait.catch_up(c, &mut board).await;
                }
                Err(e) => log::debug!("event stream: {e:#}"),
            }
            continue;
        };
        let tick = (tokio::time::Instant::now() + std::time::Duration::from_secs(1)).min(deadline);
        let ev = match tokio::time::timeout_at(tick, stream.next()).await {
            Err(_) if tick >= deadline => {
                anyhow::bail!("gave up after {wait_secs} s; {}", wait.still_waiting())
            }
            Err(_) => continue,
            Ok(Ok(Some(ev))) => ev,
            Ok(Ok(None)) | Ok(Err(_)) => {
                eprintln!("lost the server's event stream; reconnecting");
                events = None;
                continue;
            }
        };
        wait.event(&ev, &mut board);
    }
    let failed = board.failed() + failures;
    anyhow::ensure!(failed == 0, "{failed} transfer(s) or terminal(s) failed");
    Ok(())
}

/// How long a terminal that never sent 9011 has, after its last layer, to
/// report the group before its layer results are taken as the answer.
const REPORT_GRACE: std::time::Duration = std::time::Duration::from_secs(15);

/// What `download-desktop --wait` still waits for, per terminal: each
/// layer's result, then (for terminals that report their desktops with
/// 9011, as ours does) the group held with every disk's chain complete at
/// the group's levels — what `voi-agent boot-plan` would boot.
struct DeliveryWait {
    group_uuid: String,
    /// disk uuid -> the group's highest level of it.
    levels: std::collections::BTreeMap<String, i64>,
    terminals: std::collections::BTreeMap<String, TerminalWait>,
}

struct TerminalWait {
    layers: std::collections::BTreeSet<String>,
    /// The terminal reports its desktops (9011), so its chain is awaited.
    reports_desktops: bool,
    holds_group: bool,
    /// When its last layer came in: a terminal that has never reported
    /// its desktops gets a while to do so before it is taken at its word.
    layers_done_at: Option<std::time::Instant>,
    /// Reports as they were before anything was sent: a stale result read
    /// on catch-up is not taken for a new one.
    before: serde_json::Map<String, Value>,
    settled: bool,
}

impl DeliveryWait {
    async fn new(
        c: &ApiClient,
        group_uuid: &str,
        macs: &[String],
        expected: std::collections::BTreeMap<(String, String), ()>,
        snapshots: std::collections::BTreeMap<String, serde_json::Map<String, Value>>,
    ) -> DeliveryWait {
        let mut levels = std::collections::BTreeMap::new();
        if let Ok(env) = c.get("/api/v1/desktop_groups").await {
            let list = env
                .data
                .as_ref()
                .and_then(|d| d["desktop_group_list"].as_array().cloned())
                .unwrap_or_default();
            for g in list
                .iter()
                .filter(|g| g["desktop_group_uuid"] == group_uuid)
            {
                for d in g["disks"].as_array().into_iter().flatten() {
                    let (Some(u), Some(l)) = (d["uuid"].as_str(), d["dif_level"].as_i64()) else {
                        continue;
                    };
                    let e = levels.entry(u.to_string()).or_insert(l);
                    *e = (*e).max(l);
                }
            }
        }
        let mut terminals = std::collections::BTreeMap::new();
        for mac in macs {
            let Some(before) = snapshots.get(mac).cloned() else {
                continue;
            };
            let layers = expected
                .keys()
                .filter(|(m, _)| m == mac)
                .map(|(_, l)| l.clone())
                .collect();
            let reports_desktops = before.keys().any(|k| k.starts_with("desktop_info"));
            let mut t = TerminalWait {
                layers,
                reports_desktops,
                holds_group: false,
                layers_done_at: None,
                before,
                settled: false,
            };
            let key = format!("desktop_info:{group_uuid}");
            if let Some(info) = t.before.get(&key).cloned() {
                t.holds_group = chain_complete(&levels, &info);
            }
            terminals.insert(mac.clone(), t);
        }
        DeliveryWait {
            group_uuid: group_uuid.to_string(),
            levels,
            terminals,
        }
    }

    fn done(&self) -> bool {
        self.terminals.values().all(|t| t.settled)
    }

    fn still_waiting(&self) -> String {
        let mut parts = Vec::new();
        for (mac, t) in &self.terminals {
            if t.settled {
                continue;
            }
            if t.layers.is_empty() {
                parts.push(format!(
                    "{mac} has every layer but has not reported group {} with its chain complete",
                    self.group_uuid
                ));
            } else {
                let l: Vec<&str> = t.layers.iter().map(String::as_str).collect();
                parts.push(format!("{mac} still owes {}", l.join(", ")));
            }
        }
        parts.join("; ")
    }

    /// Marks terminals whose layers are all in and whose chain is held.
    fn settle(&mut self, board: &mut crate::cli_support::ProgressBoard) {
        for (mac, t) in &mut self.terminals {
            if t.settled || !t.layers.is_empty() {
                continue;
            }
            let row = format!("{mac} group {}", self.group_uuid);
            let done_at = *t.layers_done_at.get_or_insert_with(std::time::Instant::now);
            if t.holds_group {
                t.settled = true;
                board.finish(&row, true, "holds the group, chain complete: bootable");
            } else if !t.reports_desktops && done_at.elapsed() > REPORT_GRACE {
                t.settled = true;
                board.finish(
                    &row,
                    true,
                    "(layers delivered; this terminal's software does not report its desktops)",
                );
            } else {
                board.update(&row, 99, "waiting for the terminal to report the group");
            }
        }
    }

    fn report(
        &mut self,
        mac: &str,
        key: &str,
        value: &Value,
        board: &mut crate::cli_support::ProgressBoard,
    ) {
        let Some(t) = self.terminals.get_mut(mac) else {
            return;
        };
        let (kind, what) = key.split_once(':').unwrap_or((key, ""));
        match kind {
            "bt_task" if t.layers.contains(what) => board.update(
                &format!("{mac} {what}"),
                value["progress"].as_u64().unwrap_or(0),
                value["state"].as_str().unwrap_or_default(),
            ),
            "task_result" if t.layers.contains(what) => {
                let ok = value["result"] == 1;
                let why = value["msg"].as_str().filter(|m| !m.is_empty());
                let msg = match (ok, why) {
                    (true, _) => String::new(),
                    (false, Some(m)) => m.to_string(),
                    (false, None) => "(the terminal gave no reason; see its log)".into(),
                };
                board.finish(&format!("{mac} {what}"), ok, &msg);
                t.layers.remove(what);
                if !ok {
                    // A failed layer: the group cannot be complete.
                    t.settled = true;
                    t.layers.clear();
                }
            }
            "desktop_info" if what == self.group_uuid => {
                t.reports_desktops = true;
                t.holds_group = chain_complete(&self.levels, value);
            }
            _ => {}
        }
    }

    fn event(&mut self, ev: &Value, board: &mut crate::cli_support::ProgressBoard) {
        let Some(mac) = ev["mac"].as_str() else {
            return;
        };
        match ev["event"].as_str() {
            Some("report") => {
                if let Some(key) = ev["key"].as_str() {
                    self.report(mac, key, &ev["value"], board);
                }
            }
            Some("offline") | Some("disconnected")
                if self.terminals.get(mac).is_some_and(|t| !t.settled) =>
            {
                let why = ev["reason"].as_str().unwrap_or("no heartbeat");
                eprintln!("{mac} dropped off ({why}); waiting for it to come back");
            }
            Some("login") if self.terminals.get(mac).is_some_and(|t| !t.settled) => {
                eprintln!("{mac} is back online");
            }
            _ => {}
        }
    }

    /// Reads each terminal's record after a lost stream: results that
    /// arrived meanwhile count, results from before the command do not.
    async fn catch_up(&mut self, c: &ApiClient, board: &mut crate::cli_support::ProgressBoard) {
        let macs: Vec<String> = self.terminals.keys().cloned().collect();
        for mac in macs {
            let Some(reports) = terminal_reports(c, &mac).await else {
                continue;
            };
            for (k, v) in reports {
                let fresh = self
                    .terminals
                    .get(&mac)
                    .is_some_and(|t| t.before.get(&k) != Some(&v));
                if fresh {
                    self.report(&mac, &k, &v, board);
                }
            }
        }
    }
}

/// Whether a 9011 report holds every disk of the group at its level.
fn chain_complete(levels: &std::collections::BTreeMap<String, i64>, info: &Value) -> bool {
    let disks = info["disks"].as_array().cloned().unwrap_or_default();
    !levels.is_empty()
        && levels.iter().all(|(uuid, level)| {
            disks.iter().any(|d| {
                d["uuid"] == uuid.as_str() && d["dif_level"].as_i64().is_some_and(|l| l >= *level)
            })
        })
}

async fn terminal_reports(c: &ApiClient, mac: &str) -> Option<serde_json::Map<String, Value>> {
    let env = c.get(&format!("/api/v1/terminals/{mac}")).await.ok()?;
    env.data
        .as_ref()
        .and_then(|d| d["reports"].as_object().cloned())
}

/// Runs `voi-server demo`: a server and an agent in one process. The binary
/// passes it in, so the server itself never links the agent's code paths.
pub type DemoRunner = fn(bool) -> futures_util::future::BoxFuture<'static, anyhow::Result<()>>;

pub fn main(demo: DemoRunner) -> std::process::ExitCode {
    crate::cli_support::init_logging();
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("voi-server: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async move {
        match cli.cmd {
            Cmd::Run {
                config,
                listen,
                api_listen,
                tracker_listen,
                bt_listen_port,
                advertise_ip,
                data_dir,
            } => {
                let mut cfg = match config {
                    Some(p) => ServerConfig::load(&p)?,
                    None => ServerConfig::default(),
                };
                if let Some(l) = listen {
                    cfg.listen = l;
                }
                if let Some(l) = api_listen {
                    cfg.api_listen = l;
                }
                if let Some(l) = tracker_listen {
                    cfg.tracker_listen = l;
                }
                if let Some(p) = bt_listen_port {
                    cfg.bt_listen_port = p;
                }
                if advertise_ip.is_some() {
                    cfg.advertise_ip = advertise_ip;
                }
                if let Some(d) = data_dir {
                    cfg.data_dir = d;
                }
                crate::cli_support::set_log_format(cfg.log_format);
                let handle = Server::start(cfg).await?;
                println!(
                    "voi-server listening on {} (API http://{})",
                    handle.addr, handle.api_addr
                );
                crate::sdnotify::notify_logged("READY=1");
                crate::cli_support::wait_for_signal().await;
                handle.stop().await;
                Ok(())
            }
            Cmd::Demo { keep_running } => demo(keep_running).await,
            Cmd::Openapi => {
                println!("{}", super::api::openapi().to_pretty_json()?);
                Ok(())
            }
            Cmd::Ctl {
                api,
                token,
                config,
                data_dir,
                json,
                what,
            } => {
                let (api, token, data_dir) = ctl_target(api, token, config, data_dir)?;
                ctl(api, token, data_dir, json, what).await
            }
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("voi-server: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Where `ctl` talks and with which token: the flags, else the server's
/// config file (given, or the default one when it exists), else defaults.
fn ctl_target(
    api: Option<String>,
    token: Option<String>,
    config: Option<PathBuf>,
    data_dir: Option<PathBuf>,
) -> anyhow::Result<(String, Option<String>, PathBuf)> {
    const DEFAULT_CONFIG: &str = "/etc/voi-server/server.toml";
    let config = match config {
        Some(p) => Some(crate::server::ServerConfig::load(&p)?),
        None if std::path::Path::new(DEFAULT_CONFIG).exists() => {
            crate::server::ServerConfig::load(std::path::Path::new(DEFAULT_CONFIG)).ok()
        }
        None => None,
    };
    let api = api
        .or_else(|| {
            config.as_ref().map(|c| {
                // A wildcard listener is reached on loopback.
                c.api_listen
                    .replace("0.0.0.0:", "127.0.0.1:")
                    .replace("[::]:", "[::1]:")
            })
        })
        .unwrap_or_else(|| "http://127.0.0.1:50080".into());
    let token = token.or_else(|| config.as_ref().and_then(|c| c.api_token.clone()));
    let data_dir = data_dir
        .or_else(|| config.as_ref().map(|c| c.data_dir.clone()))
        .unwrap_or_else(|| PathBuf::from("/var/lib/voi-server"));
    Ok((api, token, data_dir))
}

async fn ctl(
    api: String,
    token: Option<String>,
    data_dir: PathBuf,
    json: bool,
    what: CtlCmd,
) -> anyhow::Result<()> {
    let token = match token {
        Some(t) => t,
        None => std::fs::read_to_string(data_dir.join("api-token"))
            .map_err(|e| {
                anyhow::anyhow!(
                    "no --token and cannot read {}/api-token: {e}",
                    data_dir.display()
                )
            })?
            .trim()
            .to_string(),
    };
    // `--api host:port` means plain HTTP there.
    let api = if api.contains("://") {
        api
    } else {
        format!("http://{api}")
    };
    let c = ApiClient::new(api, token);
    // Which answers have a table.
    let view: Option<fn(&Value) -> String> = match &what {
        CtlCmd::Terminals => Some(crate::server::ctl_tables::terminals),
        CtlCmd::Terminal { .. } => Some(crate::server::ctl_tables::terminal),
        CtlCmd::Groups => Some(crate::server::ctl_tables::groups),
        CtlCmd::Images | CtlCmd::ImagesRescan => Some(crate::server::ctl_tables::images),
        _ => None,
    };
    let env = match what {
        CtlCmd::Terminals => c.get("/api/v1/terminals").await?,
        CtlCmd::Terminal { mac } => c.get(&format!("/api/v1/terminals/{mac}")).await?,
        CtlCmd::Forget { mac } => c.delete(&format!("/api/v1/terminals/{mac}")).await?,
        CtlCmd::Push {
            mac,
            command,
            params,
            timeout,
        } => {
            let params: Value =
                serde_json::from_str(&params).map_err(|e| anyhow::anyhow!("params: {e}"))?;
            let env = c.push(&mac, &command, params, timeout).await?;
            // The server's Success says the command went out; the
            // terminal's own answer says whether it was done.
            let reply = env.data.as_ref().and_then(|d| d.get("reply")).cloned();
            if let Some(code) = reply.as_ref().and_then(|r| r["code"].as_i64()) {
                if code != 0 {
                    crate::cli_support::print_line(&serde_json::to_string_pretty(&env)?);
                    anyhow::bail!(
                        "{mac} answered {code} {}",
                        reply.as_ref().and_then(|r| r["msg"].as_str()).unwrap_or("")
                    );
                }
            }
            env
        }
        CtlCmd::Groups => c.get("/api/v1/desktop_groups").await?,
        CtlCmd::GroupPut { file } => {
            let text = std::fs::read_to_string(&file)?;
            let v: Value = serde_json::from_str(&text)?;
            c.put("/api/v1/desktop_groups", &v).await?
        }
        CtlCmd::GroupDelete { uuid } => c.delete(&format!("/api/v1/desktop_groups/{uuid}")).await?,
        CtlCmd::Order => c.get("/api/v1/order").await?,
        CtlCmd::OrderStart { start_id, macs } => {
            c.post(
                "/api/v1/order",
                &serde_json::json!({ "start_id": start_id, "macs": macs }),
            )
            .await?
        }
        CtlCmd::OrderCancel => c.delete("/api/v1/order").await?,
        CtlCmd::Images => c.get("/api/v1/images").await?,
        CtlCmd::Delivery { mac, style } => {
            c.put(
                &format!("/api/v1/terminals/{mac}/delivery"),
                &serde_json::json!({ "delivery": style }),
            )
            .await?
        }
        CtlCmd::Accept { mac } => admission(&c, &mac, "accepted").await?,
        CtlCmd::Reject { mac } => admission(&c, &mac, "rejected").await?,
        CtlCmd::Pend { mac } => admission(&c, &mac, "pending").await?,
        CtlCmd::ImagesRescan => c.post("/api/v1/images", &serde_json::json!({})).await?,
        CtlCmd::DownloadDesktop {
            mac,
            group_uuid,
            timeout,
            wait,
            wait_secs,
        } => return download_desktop(&c, &mac, &group_uuid, timeout, wait, wait_secs).await,
        CtlCmd::Wake {
            macs,
            room,
            all,
            wait,
            timeout,
        } => {
            let macs: Vec<String> = macs
                .unwrap_or_default()
                .split(',')
                .filter(|m| !m.is_empty())
                .map(str::to_string)
                .collect();
            let mut body = serde_json::json!({ "macs": macs, "all": all });
            if let Some(r) = room {
                body["room"] = serde_json::json!(r);
            }
            if let Some(t) = timeout {
                body["timeout_secs"] = serde_json::json!(t);
            }
            return crate::server::wake::cli::wake(&c, body, wait).await;
        }
        CtlCmd::UpgradePublish {
            file,
            platform,
            version,
            raw,
        } => {
            return crate::server::upgrades::cli::publish(&c, &file, &platform, &version, raw).await
        }
        CtlCmd::Upgrades => c.get("/api/v1/upgrades").await?,
        CtlCmd::Audit { limit } => c.get(&format!("/api/v1/audit?limit={limit}")).await?,
        CtlCmd::Upgrade {
            args,
            all,
            batch,
            force,
            no_wait,
            wait_secs,
        } => {
            let (macs, version) = match (all, args.as_slice()) {
                (true, [v]) => (None, v.clone()),
                (false, [m, v]) => (Some(m.clone()), v.clone()),
                _ => anyhow::bail!("give MAC[,MAC…] VERSION, or --all VERSION"),
            };
            return crate::server::upgrades::cli::rollout(
                &c,
                crate::server::upgrades::cli::Rollout {
                    macs,
                    all,
                    version,
                    batch,
                    force,
                    no_wait,
                    wait_secs,
                },
            )
            .await;
        }
        CtlCmd::Room { macs, room } => {
            return crate::server::wake::cli::room(&c, &macs, &room).await
        }
        CtlCmd::MayUpload { mac, on_off } => {
            let may_upload = match on_off.as_str() {
                "on" => true,
                "off" => false,
                other => anyhow::bail!("{other:?}: give on or off"),
            };
            c.put(
                &format!("/api/v1/terminals/{mac}/may_upload"),
                &serde_json::json!({ "may_upload": may_upload }),
            )
            .await?
        }
        CtlCmd::UploadAccept { torrent_id } => {
            c.post(
                &format!("/api/v1/uploads/{torrent_id}/accept"),
                &serde_json::json!({}),
            )
            .await?
        }
        CtlCmd::UploadReject { torrent_id } => {
            c.post(
                &format!("/api/v1/uploads/{torrent_id}/reject"),
                &serde_json::json!({}),
            )
            .await?
        }
        CtlCmd::Schedule { what } => {
            return crate::server::wake::cli::schedule(
                &c,
                what.unwrap_or(crate::server::wake::cli::ScheduleCmd::Show),
            )
            .await
        }
    };
    match (view, &env.data) {
        (Some(view), Some(data)) if !json && env.is_ok() => {
            crate::cli_support::print_line(&view(data))
        }
        _ => crate::cli_support::print_line(&serde_json::to_string_pretty(&env)?),
    }
    if env.is_ok() {
        Ok(())
    } else {
        anyhow::bail!("server answered {} {}", env.code, env.msg)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
