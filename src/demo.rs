//! `voi-server demo`: a server and an agent on loopback in a temporary
//! directory, with the recording platform, showing login, heartbeats and one
//! operator command round trip.

use serde_json::json;
use std::path::PathBuf;
use std::time::Duration;

use crate::agent::config::{AgentConfig, EffectMode, PlatformConfig};
use crate::agent::control_socket::{self, ControlRequest};
use crate::agent::terminal::Agent;
use crate::protocol::messages::{DesktopGroup, DiskInfo};
use crate::protocol::Sectors;
use crate::server::client::ApiClient;
use crate::server::registry::ServerEvent;
use crate::server::{Server, ServerConfig};

pub const DEMO_MAC: &str = "52:54:00:12:34:56";

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub async fn run(keep_running: bool) -> anyhow::Result<()> {
    let dir = TempDir(std::env::temp_dir().join(format!("voi-demo-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0)?;
    let server_cfg = ServerConfig {
        listen: "127.0.0.1:0".into(),
        api_listen: "127.0.0.1:0".into(),
        tracker_listen: "127.0.0.1:0".into(),
        data_dir: dir.0.join("server"),
        heartbeat_secs: 2,
        bt_listen_port: 0,
        ..ServerConfig::default()
    };
    let handle = Server::start(server_cfg).await?;
    println!(
        "[demo] voi-server on {} (operator API http://{})",
        handle.addr, handle.api_addr
    );
    let api = ApiClient::new(
        format!("http://{}", handle.api_addr),
        handle.server.api_token.clone(),
    );
    let group = DesktopGroup {
        desktop_group_name: "demo".into(),
        desktop_group_uuid: "f15a1759-789e-4e17-a3e1-e723121e9314".into(),
        default_desktop_group: true,
        os_sys_type: 3,
        diff_mode: 1,
        disks: vec![DiskInfo {
            uuid: "91f9d1ba-cb4a-41ba-971a-618f9e306571".into(),
            disk_type: 0,
            dif_level: 0,
            prefix: "voi".into(),
            max_dif: Some(0),
            operate_id: 0,
            real_size: Sectors(41943040),
            reserve_size: Sectors(0),
            ..Default::default()
        }],
        ..Default::default()
    };
    // The layer goes into the library first: the server refuses (422) a
    // group naming a layer it cannot serve, and a refusal ends the demo.
    let layer_ready = put_the_layer_in_the_library(&handle, &group).await?;
    if layer_ready {
        let stored = api.put("/api/v1/desktop_groups", &group).await?;
        if !stored.is_ok() {
            anyhow::bail!(
                "the server refused the demo's desktop group: {} {}",
                stored.code,
                stored.msg
            );
        }
    }

    let mut events = handle.server.registry.events.subscribe();
    let printer = tokio::spawn(async move {
        let mut heartbeats = 0u32;
        while let Ok(ev) = events.recv().await {
            match &ev {
                ServerEvent::Heartbeat { mac } => {
                    heartbeats += 1;
                    println!("[server] heartbeat #{heartbeats} from {mac}");
                }
                other => println!(
                    "[server] {}",
                    serde_json::to_string(other).unwrap_or_default()
                ),
            }
        }
    });

    let mut cfg = AgentConfig::new("127.0.0.1", dir.0.join("agent"));
    cfg.server_port = handle.addr.port();
    cfg.mac = Some(DEMO_MAC.into());
    cfg.heartbeat_secs = 2;
    cfg.performance_secs = 0;
    cfg.platform = PlatformConfig::all(EffectMode::Recording);
    cfg.bt.listen_port = 0;
    let agent = Agent::new(cfg)?;
    println!(
        "[demo] voi-agent {} connecting to 127.0.0.1:{}",
        agent.mac,
        handle.addr.port()
    );
    let agent_task = tokio::spawn(agent.clone().run());

    // Wait until the agent is logged in and has heartbeated twice.
    let mut ev = handle.server.registry.events.subscribe();
    let waited = tokio::time::timeout(Duration::from_secs(30), async {
        let mut beats = 0;
        while beats < 2 {
            if let Ok(ServerEvent::Heartbeat { .. }) = ev.recv().await {
                beats += 1;
            }
        }
    })
    .await;
    if waited.is_err() {
        anyhow::bail!("the agent did not log in and heartbeat within 30 s");
    }

    println!("[operator] push update_name {{\"name\":\"DEMO-PC\"}} to {DEMO_MAC}");
    let reply = api
        .push(DEMO_MAC, "update_name", json!({ "name": "DEMO-PC" }), 10)
        .await?;
    println!("[operator] reply: {}", serde_json::to_string(&reply)?);
    if !reply.is_ok() {
        anyhow::bail!("command failed: {} {}", reply.code, reply.msg);
    }
    let inner_code = reply
        .data
        .as_ref()
        .and_then(|d| d.pointer("/reply/code"))
        .and_then(|c| c.as_i64());
    if inner_code != Some(0) {
        anyhow::bail!("terminal answered {inner_code:?}");
    }

    let status =
        control_socket::call(&agent.cfg.control_socket_path(), &ControlRequest::Status).await?;
    if let Some(d) = status.data {
        println!(
            "[agent] ctl status: name={} conf_version={} session={} desktop_groups={}",
            d["name"], d["conf_version"], d["live"]["session"], d["desktop_groups"]
        );
    }
    let terminals = api.get("/api/v1/terminals").await?;
    if let Some(list) = terminals
        .data
        .as_ref()
        .and_then(|d| d["terminals"].as_array())
    {
        for t in list {
            println!(
                "[operator] terminal {} name={} online={} conf_version={}",
                t["mac"], t["name"], t["online"], t["conf_version"]
            );
        }
    }

    if layer_ready {
        distribute_a_layer(&handle, &agent, &group).await?;
    }

    if keep_running {
        println!("[demo] running; Ctrl-C to stop");
        crate::cli_support::wait_for_signal().await;
    }
    agent.shutdown.cancel();
    let _ = agent_task.await;
    handle.stop().await;
    printer.abort();
    println!("[demo] done");
    Ok(())
}

/// A 64 MiB qcow2 as the group's base layer, scanned into the library so
/// the server seeds it. Needs qemu-img; without it the BitTorrent step is
/// skipped with a note (`false`).
async fn put_the_layer_in_the_library(
    handle: &crate::server::ServerHandle,
    group: &DesktopGroup,
) -> anyhow::Result<bool> {
    let Some(disk) = group.disks.first() else {
        return Ok(false);
    };
    let layer = disk.layer_name();
    let image = handle.server.images.dir().join(&layer);
    if let Err(e) = crate::disk::qemu_img::create(&image, 64 << 20) {
        println!("[demo] skipping the BitTorrent step: {e} (install qemu-utils)");
        return Ok(false);
    }
    handle.server.images.scan().await?;
    if let Some(why) = handle.server.images.unservable(&layer) {
        anyhow::bail!("the library does not serve the demo's layer: {why}");
    }
    println!("[operator] image library now seeds {layer}");
    Ok(true)
}

/// The main job: the operator sends the desktop (1008 + 1015), the agent
/// downloads it over BitTorrent, verifies it and links it into its chain.
async fn distribute_a_layer(
    handle: &crate::server::ServerHandle,
    agent: &std::sync::Arc<Agent>,
    group: &DesktopGroup,
) -> anyhow::Result<()> {
    let Some(disk) = group.disks.first() else {
        return Ok(());
    };
    let layer = disk.layer_name();
    println!("[operator] sending the desktop to {DEMO_MAC}");
    let sent = handle
        .server
        .download_desktop(DEMO_MAC, &group.desktop_group_uuid, Duration::from_secs(10))
        .await?;
    println!("[operator] sent: {}", serde_json::to_string(&sent)?);
    let done = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let seeding = agent
                .transfers
                .get()
                .and_then(|t| t.get(&layer))
                .is_some_and(|(r, _)| r.stage == crate::agent::transfers::tasks::Stage::Seeding);
            if seeding {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    if done.is_err() {
        anyhow::bail!("{layer} did not arrive within 60 s");
    }
    println!(
        "[agent] {layer}: pieces and qcow2 image verified, linked into {}, now seeding",
        agent.cfg.disk_dir().display()
    );
    Ok(())
}
