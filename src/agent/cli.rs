//! `voi-agent`: run the agent, or talk to a running one.

use clap::{Parser, Subcommand};
use std::path::PathBuf;

use crate::agent::config::AgentConfig;
use crate::agent::control_socket::{self, ControlRequest};
use crate::agent::terminal::Agent;

#[derive(Parser)]
#[command(name = "voi-agent", version = crate::agent::version::version_text(), about = "VOI terminal agent")]
pub struct Cli {
    /// Agent configuration (TOML).
    #[arg(
        long,
        short,
        global = true,
        default_value = "/etc/voi-agent/agent.toml",
        env = "VOI_AGENT_CONFIG"
    )]
    config: PathBuf,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the agent (the default).
    Run,
    /// The chain to boot for a desktop group, as JSON (for the boot loader).
    BootPlan {
        desktop_group_uuid: String,
        /// Create the user layer first (reset it for restore groups).
        #[arg(long)]
        prepare: bool,
    },
    /// Offline disk maintenance on the data dir.
    Disk {
        #[command(subcommand)]
        what: DiskCmd,
    },
    /// The terminal's own full-screen menu: desktops, downloads, the
    /// server, and settings behind the administrator's password.
    Screen {
        /// Control socket; default: from the config.
        #[arg(long)]
        socket: Option<PathBuf>,
    },
    /// Query or drive a running agent over its control socket.
    Ctl {
        /// Control socket; default: from the config.
        #[arg(long)]
        socket: Option<PathBuf>,
        #[command(subcommand)]
        what: CtlCmd,
    },
}

#[derive(Subcommand)]
enum CtlCmd {
    /// Server, session, number, config version, watermark, last commands.
    Status,
    /// The terminal number the server proposed, or confirm one (9009).
    Order {
        #[command(subcommand)]
        what: Option<OrderCmd>,
    },
    /// Check an administrator's credentials with the server (9008).
    VerifyAdmin { user: String, password: String },
    /// The server's time (9003).
    Date,
    /// Disk chains, problems, and pending downloads.
    Disks,
    /// BitTorrent transfers: progress, rates, peers.
    Transfers {
        /// Follow them: a bar per transfer (plain lines without a
        /// terminal) until every one is in its chain or has failed.
        #[arg(long)]
        watch: bool,
    },
    /// Upload a local layer to the server; it is seeded until the server
    /// confirms (1021).
    Upload { layer: String, group_uuid: String },
    /// Boot a desktop group as a guest (the desktop runtime).
    Boot { group_uuid: String },
    /// Power the running desktop down (ACPI, hard after the timeout).
    Stop,
    /// The desktop runtime's state; `reset` or `powerdown` the running
    /// guest as its buttons would (nobody needs QMP).
    Desktop {
        #[command(subcommand)]
        what: Option<DesktopCmd>,
    },
    /// Save a PNG of the running desktop's screen (absolute path).
    Screendump { path: String },
    /// Power the terminal off as 1001 does: the desktop first, wake-on-LAN
    /// armed, then the machine.
    Poweroff,
}

#[derive(Subcommand)]
enum DesktopCmd {
    /// The runtime's state (the default).
    Show,
    /// Reset the running guest; it boots again (clean in a restore group).
    Reset,
    /// Press the running guest's power button (ACPI) and wait for it to
    /// go off; `ctl stop` also stops a guest that ignores it.
    Powerdown,
    /// Send Ctrl-Alt-Del to the running guest, as its keyboard would.
    CtrlAltDelete,
}

#[derive(Subcommand)]
enum DiskCmd {
    /// Chains, layers and problems.
    Ls,
    /// Merge a diff layer into its parent (journaled).
    Merge { layer: String },
    /// Finish an interrupted chain change.
    Recover,
}

#[derive(Subcommand)]
enum OrderCmd {
    Show,
    Confirm { terminal_id: i64 },
}

pub fn main() -> std::process::ExitCode {
    crate::cli_support::init_logging();
    let cli = Cli::parse();
    match cli.cmd.unwrap_or(Cmd::Run) {
        Cmd::Run => run(&cli.config),
        Cmd::Ctl { socket, what } => ctl(&cli.config, socket, what),
        Cmd::Screen { socket } => match socket
            .map(Ok)
            .unwrap_or_else(|| AgentConfig::load(&cli.config).map(|c| c.control_socket_path()))
        {
            Ok(path) => crate::agent::screen::run(path),
            Err(e) => {
                eprintln!("voi-agent screen: {e}");
                std::process::ExitCode::from(2)
            }
        },
        Cmd::BootPlan {
            desktop_group_uuid,
            prepare,
        } => offline(&cli.config, |d, state| {
            let plan = d.boot_plan(&state.desktop_groups, &desktop_group_uuid, prepare)?;
            Ok(serde_json::to_value(plan)?)
        }),
        Cmd::Disk { what } => offline(&cli.config, |d, _| match what {
            DiskCmd::Ls => {
                let inv = d.inventory()?;
                Ok(
                    serde_json::json!({ "chains": inv.chains, "problems": inv.problems, "layers": inv.layers }),
                )
            }
            DiskCmd::Merge { layer } => {
                let name = crate::disk::LayerName::parse(&layer)?;
                let into = d.merge(&name)?;
                Ok(serde_json::json!({ "merged": layer, "into": into.to_string() }))
            }
            DiskCmd::Recover => Ok(serde_json::json!({ "recovered": true })),
        }),
    }
}

/// Runs a disk operation without the agent: opening the store replays any
/// unfinished change first.
fn offline(
    config: &std::path::Path,
    f: impl FnOnce(
        &crate::agent::desktops::Desktops,
        &crate::agent::state::AgentState,
    ) -> anyhow::Result<serde_json::Value>,
) -> std::process::ExitCode {
    let run = || -> anyhow::Result<serde_json::Value> {
        let cfg = AgentConfig::load(config)?;
        let store = crate::disk::DiskStore::new(cfg.disk_dir(), cfg.disk_margin_mb << 20)?;
        let desktops = crate::agent::desktops::Desktops::open(store)?;
        let state = std::fs::read(cfg.state_path())
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        f(&desktops, &state)
    };
    match run() {
        Ok(v) => {
            crate::cli_support::print_line(&serde_json::to_string_pretty(&v).unwrap_or_default());
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("voi-agent: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(path: &std::path::Path) -> std::process::ExitCode {
    let cfg = match AgentConfig::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("voi-agent: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    crate::cli_support::set_log_format(cfg.log_format);
    // The version `current` names runs, unless it is this binary; a
    // version on trial has its starts counted here first.
    if let Err(e) = crate::agent::upgrade::launch(&cfg) {
        eprintln!("voi-agent: {e}");
        return std::process::ExitCode::FAILURE;
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cfg.worker_threads)
        // The BitTorrent engine reads and writes pieces on blocking
        // threads; a terminal needs few, and idle ones should go soon.
        .max_blocking_threads(16)
        .thread_keep_alive(std::time::Duration::from_secs(2))
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("voi-agent: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let agent = match Agent::new(cfg) {
            Ok(a) => a,
            Err(e) => {
                eprintln!("voi-agent: {e}");
                return std::process::ExitCode::from(2);
            }
        };
        crate::cli_support::set_agent_mac(&agent.mac);
        let stop = agent.shutdown.clone();
        tokio::spawn(async move {
            crate::cli_support::wait_for_signal().await;
            log::info!("stopping");
            stop.cancel();
        });
        agent.clone().run().await;
        if agent.restart_requested() {
            // The service manager starts the agent again (a new version, or
            // the previous one after a rollback).
            std::process::ExitCode::from(crate::agent::upgrade::RESTART_EXIT)
        } else {
            std::process::ExitCode::SUCCESS
        }
    })
}

/// `ctl transfers --watch`: asks the agent once a second (a local socket)
/// and draws each transfer until none is still downloading.
fn watch_transfers(socket: &std::path::Path) -> std::process::ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("voi-agent: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    rt.block_on(async {
        let mut board = crate::cli_support::ProgressBoard::new();
        let mut first = true;
        loop {
            let resp = match control_socket::call(socket, &ControlRequest::Transfers).await {
                Ok(r) if r.ok => r,
                Ok(r) => {
                    eprintln!("voi-agent ctl: {}", r.error.unwrap_or_default());
                    return std::process::ExitCode::FAILURE;
                }
                Err(e) => {
                    eprintln!("voi-agent ctl: {e}");
                    return std::process::ExitCode::FAILURE;
                }
            };
            let list = resp
                .data
                .as_ref()
                .and_then(|d| d["transfers"].as_array().cloned())
                .unwrap_or_default();
            if first && list.is_empty() {
                crate::cli_support::print_line("no transfers");
                return std::process::ExitCode::SUCCESS;
            }
            first = false;
            for t in &list {
                let layer = t["transfer"]["layer"].as_str().unwrap_or("?");
                let length = t["transfer"]["length"].as_u64().unwrap_or(0).max(1);
                let have = t["have_bytes"].as_u64().unwrap_or(0);
                let phase = t["phase"].as_str().unwrap_or("starting");
                if t["transfer"]["stage"] == "seeding" {
                    board.finish(layer, true, "in its chain, seeding");
                } else if phase == "error" {
                    board.finish(layer, false, t["error"].as_str().unwrap_or_default());
                } else {
                    let rate = t["down_bps"].as_u64().unwrap_or(0);
                    board.update(
                        layer,
                        have.saturating_mul(100) / length,
                        &format!("{phase} {:.1} MB/s", rate as f64 / 1e6),
                    );
                }
            }
            if board.all_done() {
                return if board.failed() == 0 {
                    std::process::ExitCode::SUCCESS
                } else {
                    std::process::ExitCode::FAILURE
                };
            }
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
    })
}

fn ctl(config: &std::path::Path, socket: Option<PathBuf>, what: CtlCmd) -> std::process::ExitCode {
    let socket = socket.unwrap_or_else(|| {
        AgentConfig::load(config)
            .map(|c| c.control_socket_path())
            .unwrap_or_else(|_| PathBuf::from("/var/lib/voi-agent/control.sock"))
    });
    let req = match what {
        CtlCmd::Status => ControlRequest::Status,
        CtlCmd::Order {
            what: None | Some(OrderCmd::Show),
        } => ControlRequest::OrderShow,
        CtlCmd::Order {
            what: Some(OrderCmd::Confirm { terminal_id }),
        } => ControlRequest::OrderConfirm { terminal_id },
        CtlCmd::VerifyAdmin { user, password } => ControlRequest::VerifyAdmin { user, password },
        CtlCmd::Date => ControlRequest::GetDateTime,
        CtlCmd::Disks => ControlRequest::Disks,
        CtlCmd::Transfers { watch: true } => return watch_transfers(&socket),
        CtlCmd::Transfers { watch: false } => ControlRequest::Transfers,
        CtlCmd::Upload { layer, group_uuid } => ControlRequest::Upload { layer, group_uuid },
        CtlCmd::Boot { group_uuid } => ControlRequest::DesktopBoot { group_uuid },
        CtlCmd::Stop => ControlRequest::DesktopStop,
        CtlCmd::Desktop {
            what: None | Some(DesktopCmd::Show),
        } => ControlRequest::DesktopStatus,
        CtlCmd::Desktop {
            what: Some(DesktopCmd::Reset),
        } => ControlRequest::DesktopReset,
        CtlCmd::Desktop {
            what: Some(DesktopCmd::Powerdown),
        } => ControlRequest::DesktopPowerdown,
        CtlCmd::Desktop {
            what: Some(DesktopCmd::CtrlAltDelete),
        } => ControlRequest::DesktopCtrlAltDelete,
        CtlCmd::Screendump { path } => ControlRequest::Screendump { path },
        CtlCmd::Poweroff => ControlRequest::PowerOff,
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("voi-agent: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(control_socket::call(&socket, &req)) {
        Ok(resp) => {
            crate::cli_support::print_line(
                &serde_json::to_string_pretty(&resp).unwrap_or_default(),
            );
            if resp.ok {
                std::process::ExitCode::SUCCESS
            } else {
                std::process::ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("voi-agent ctl: {e}");
            std::process::ExitCode::FAILURE
        }
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
