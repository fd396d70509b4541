//! The local control interface: a Unix socket in the data dir speaking one
//! JSON object per line. The terminal's screen and `voi-agent ctl` use it.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::path::Path;
use std::sync::Arc;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinHandle;

use crate::agent::terminal::Agent;
use crate::protocol::messages::{DateTimeResp, MacReq, OrderConfirmReq};
use crate::protocol::ServiceCode;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum ControlRequest {
    Status,
    OrderShow,
    OrderConfirm {
        terminal_id: i64,
    },
    VerifyAdmin {
        user: String,
        password: String,
    },
    GetDateTime,
    Disks,
    /// BitTorrent transfers with their progress and peers.
    Transfers,
    /// Upload a local layer to the server (9018, 9014, seed until 1021).
    Upload {
        layer: String,
        group_uuid: String,
    },
    /// Boot a desktop group as a guest (the desktop runtime).
    DesktopBoot {
        group_uuid: String,
    },
    /// ACPI powerdown of the running desktop, hard after the timeout.
    DesktopStop,
    DesktopStatus,
    /// Reset the running guest (its reset button); it boots again.
    DesktopReset,
    /// Press the running guest's power button (ACPI) and wait for it.
    DesktopPowerdown,
    /// Ctrl-Alt-Del to the running guest, as its keyboard would.
    DesktopCtrlAltDelete,
    /// A PNG of the guest's screen, written by QEMU to `path`.
    Screendump {
        path: String,
    },
    /// Power off as 1001 does (desktop, wake-on-LAN armed, machine).
    PowerOff,
    /// Everything the terminal's screen shows, in one answer.
    Screen,
    /// Stop the auto-boot countdown (a key pressed at the terminal).
    CancelAutoBoot,
    /// The last lines the agent logged (at most 200).
    Logs {
        lines: usize,
    },
    /// Move to another server (rolled back if no login succeeds there).
    SetServer {
        ip: String,
        port: u16,
    },
    /// Try a server's port from the terminal.
    TestServer {
        ip: String,
        port: u16,
    },
    /// A static address (validated and rolled back as 1012) or DHCP.
    SetNetwork(crate::agent::local_admin::NetworkRequest),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ControlResponse {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl ControlResponse {
    fn ok(data: Value) -> Self {
        ControlResponse {
            ok: true,
            data: Some(data),
            error: None,
        }
    }
    fn err(e: impl Into<String>) -> Self {
        ControlResponse {
            ok: false,
            data: None,
            error: Some(e.into()),
        }
    }
}

/// Longest request line accepted; anything longer is refused.
const MAX_LINE: usize = 64 * 1024;

pub fn serve(agent: Arc<Agent>) -> std::io::Result<JoinHandle<()>> {
    let path = agent.cfg.control_socket_path();
    if path.exists() {
        std::fs::remove_file(&path)?;
    }
    let listener = UnixListener::bind(&path)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok(tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let agent = agent.clone();
            tokio::spawn(async move {
                if let Err(e) = client(agent, stream).await {
                    log::debug!("control client: {e}");
                }
            });
        }
    }))
}

async fn client(agent: Arc<Agent>, stream: UnixStream) -> std::io::Result<()> {
    let (rd, mut wr) = stream.into_split();
    let mut lines = BufReader::new(rd.take(MAX_LINE as u64 * 16)).lines();
    while let Some(line) = lines.next_line().await? {
        let resp = if line.len() > MAX_LINE {
            ControlResponse::err("request too long")
        } else {
            match serde_json::from_str::<ControlRequest>(&line) {
                Ok(req) => handle(&agent, req).await,
                Err(e) => ControlResponse::err(format!("bad request: {e}")),
            }
        };
        let mut out = serde_json::to_vec(&resp).unwrap_or_else(|_| b"{\"ok\":false}".to_vec());
        out.push(b'\n');
        wr.write_all(&out).await?;
    }
    Ok(())
}

use tokio::io::AsyncReadExt;

async fn handle(agent: &Arc<Agent>, req: ControlRequest) -> ControlResponse {
    match req {
        ControlRequest::Status => {
            let s = agent.state.snapshot();
            ControlResponse::ok(json!({
                "mac": agent.mac,
                "server": agent.server_addr(),
                "live": agent.live(),
                "terminal_id": s.terminal.terminal_id,
                "name": s.terminal.name,
                "conf_version": s.terminal.conf_version,
                "watermark": s.watermark,
                "pending_order": s.pending_order,
                "desktop_groups": s.desktop_groups.iter().map(|g| &g.desktop_group_uuid).collect::<Vec<_>>(),
                "trackers": s.trackers,
                "last_commands": s.commands,
                "notices": s.notices,
                "desktop": agent.desktop.status(),
                "refused_layers": agent
                    .transfers
                    .get()
                    .map(|t| t.refusals())
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(layer, r)| json!({"layer": layer, "info_hash": r.info_hash, "operate_id": r.operate_id, "reason": r.reason}))
                    .collect::<Vec<_>>(),
            }))
        }
        ControlRequest::DesktopBoot { group_uuid } => {
            let groups = agent.state.read(|s| s.desktop_groups.clone());
            match agent.desktop.boot(groups, &group_uuid) {
                Ok(()) => ControlResponse::ok(json!(agent.desktop.status())),
                Err(e) => ControlResponse::err(e.to_string()),
            }
        }
        ControlRequest::DesktopStop => {
            agent.desktop.stop().await;
            ControlResponse::ok(json!(agent.desktop.status()))
        }
        ControlRequest::DesktopStatus => ControlResponse::ok(json!(agent.desktop.status())),
        ControlRequest::DesktopReset => match agent.desktop.reset().await {
            Ok(()) => ControlResponse::ok(json!(agent.desktop.status())),
            Err(e) => ControlResponse::err(e.to_string()),
        },
        ControlRequest::DesktopCtrlAltDelete => match agent.desktop.ctrl_alt_delete().await {
            Ok(()) => ControlResponse::ok(json!(agent.desktop.status())),
            Err(e) => ControlResponse::err(e.to_string()),
        },
        ControlRequest::DesktopPowerdown => match agent.desktop.powerdown().await {
            Ok(()) => ControlResponse::ok(json!(agent.desktop.status())),
            Err(e) => ControlResponse::err(e.to_string()),
        },
        ControlRequest::PowerOff => {
            log::info!("power-off asked on the control socket");
            match crate::agent::power::power_down(agent, true).await {
                Ok(()) => ControlResponse::ok(json!({ "powering_off": true })),
                Err(e) => ControlResponse::err(format!("power-off: {e}")),
            }
        }
        ControlRequest::Screendump { path } => {
            // Only a plain absolute .png path: QEMU writes it as the agent.
            let p = std::path::Path::new(&path);
            if !p.is_absolute()
                || p.extension().and_then(|e| e.to_str()) != Some("png")
                || p.components()
                    .any(|c| matches!(c, std::path::Component::ParentDir))
            {
                return ControlResponse::err("screendump: give an absolute path ending in .png");
            }
            match agent.desktop.screendump(p).await {
                Ok(()) => ControlResponse::ok(json!({ "path": path })),
                Err(e) => ControlResponse::err(e.to_string()),
            }
        }
        ControlRequest::OrderShow => ControlResponse::ok(
            json!({ "pending_order": agent.state.read(|s| s.pending_order.clone()) }),
        ),
        ControlRequest::OrderConfirm { terminal_id } => order_confirm(agent, terminal_id).await,
        ControlRequest::VerifyAdmin { user, password } => {
            answer(crate::agent::local_admin::verify_admin(agent, user, password).await)
        }
        ControlRequest::Screen => {
            ControlResponse::ok(crate::agent::local_admin::screen_status(agent))
        }
        ControlRequest::CancelAutoBoot => {
            agent.auto_boot_cancel.cancel();
            ControlResponse::ok(json!({ "auto_boot": "stopped" }))
        }
        ControlRequest::Logs { lines } => ControlResponse::ok(json!({
            "lines": crate::cli_support::recent_log_lines(lines.min(200)),
        })),
        ControlRequest::SetServer { ip, port } => {
            answer(crate::agent::local_admin::set_server(agent, &ip, port))
        }
        ControlRequest::TestServer { ip, port } => {
            answer(crate::agent::local_admin::test_server(&ip, port).await)
        }
        ControlRequest::SetNetwork(req) => {
            answer(crate::agent::local_admin::set_network(agent, req).await)
        }
        ControlRequest::Disks => {
            let a = agent.clone();
            match tokio::task::spawn_blocking(move || {
                a.desktops.inventory().map(|i| (i, a.desktops.catalog()))
            })
            .await
            {
                Ok(Ok((inv, cat))) => ControlResponse::ok(json!({
                    "dir": agent.cfg.disk_dir(),
                    "chains": inv.chains,
                    "problems": inv.problems,
                    "layers": inv.layers,
                    "catalog": cat.layers,
                    "pending_downloads": agent.state.read(|s| s.pending_downloads.clone()),
                    "free_bytes": agent.desktops.store.free_bytes(),
                })),
                Ok(Err(e)) => ControlResponse::err(e.to_string()),
                Err(e) => ControlResponse::err(e.to_string()),
            }
        }
        ControlRequest::Transfers => match agent.transfers.get() {
            Some(t) => {
                let list: Vec<Value> = t
                    .list()
                    .into_iter()
                    .map(|(rec, stats)| {
                        json!({
                            "transfer": rec,
                            "phase": stats.as_ref().map(|s| s.phase.wire()),
                            "have_bytes": stats.as_ref().map(|s| s.have_bytes),
                            "uploaded_bytes": stats.as_ref().map(|s| s.uploaded_bytes),
                            "down_bps": stats.as_ref().map(|s| s.down_bps),
                            "up_bps": stats.as_ref().map(|s| s.up_bps),
                            "error": stats.and_then(|s| s.error),
                            "peers": t.peers_json(&rec.layer),
                        })
                    })
                    .collect();
                ControlResponse::ok(json!({ "listen_port": t.listen_port(), "transfers": list }))
            }
            None => ControlResponse::err("the BitTorrent engine is not running"),
        },
        ControlRequest::Upload { layer, group_uuid } => {
            let name = match crate::disk::name::LayerName::parse(&layer) {
                Ok(n) => n,
                Err(e) => return ControlResponse::err(format!("{layer:?}: {e}")),
            };
            let Some(link) = agent.link() else {
                return ControlResponse::err("not connected to the server");
            };
            match crate::agent::transfers::server_link::upload_layer(
                agent,
                &link,
                &name,
                &group_uuid,
            )
            .await
            {
                Ok(id) => ControlResponse::ok(json!({ "torrent_id": id })),
                Err(e) => ControlResponse::err(e.to_string()),
            }
        }
        ControlRequest::GetDateTime => {
            forward(
                agent,
                ServiceCode::GetDateTime,
                &MacReq {
                    mac: agent.mac.clone(),
                },
                |d| {
                    let dt = d.and_then(|v| serde_json::from_value::<DateTimeResp>(v).ok());
                    json!({ "datetime": dt.map(|d| d.datetime) })
                },
            )
            .await
        }
    }
}

/// Sends a request on the live session; a non-zero code is an error.
fn answer(r: Result<Value, String>) -> ControlResponse {
    match r {
        Ok(v) => ControlResponse::ok(v),
        Err(e) => ControlResponse::err(e),
    }
}

async fn forward<T: Serialize>(
    agent: &Arc<Agent>,
    code: ServiceCode,
    body: &T,
    ok: impl FnOnce(Option<Value>) -> Value,
) -> ControlResponse {
    let Some(link) = agent.link() else {
        return ControlResponse::err("not connected to the server");
    };
    match link.request(code, body).await {
        Ok((_, env)) if env.is_ok() => ControlResponse::ok(ok(env.data)),
        Ok((_, env)) => ControlResponse::err(format!("server answered {} {}", env.code, env.msg)),
        Err(e) => ControlResponse::err(e.to_string()),
    }
}

async fn order_confirm(agent: &Arc<Agent>, terminal_id: i64) -> ControlResponse {
    let Some(pending) = agent.state.read(|s| s.pending_order.clone()) else {
        return ControlResponse::err("no numbering session is running");
    };
    let body = OrderConfirmReq {
        mac: agent.mac.clone(),
        batch_no: pending.batch_no.clone(),
        terminal_id,
    };
    let resp = forward(
        agent,
        ServiceCode::OrderConfirm,
        &body,
        |_| json!({ "terminal_id": terminal_id }),
    )
    .await;
    if resp.ok {
        agent.persist(|s| {
            s.terminal.terminal_id = terminal_id;
            s.pending_order = None;
        });
    }
    resp
}

/// Client side, for `voi-agent ctl`.
pub async fn call(path: &Path, req: &ControlRequest) -> anyhow::Result<ControlResponse> {
    let stream = UnixStream::connect(path)
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach the agent at {}: {e}", path.display()))?;
    let (rd, mut wr) = stream.into_split();
    let mut line = serde_json::to_vec(req)?;
    line.push(b'\n');
    wr.write_all(&line).await?;
    let mut lines = BufReader::new(rd).lines();
    let answer = lines
        .next_line()
        .await?
        .ok_or_else(|| anyhow::anyhow!("agent closed the control connection"))?;
    Ok(serde_json::from_str(&answer)?)
}
