//! Login and the startup sequence: 9001 → 9004 → (9005) → 9007 → 9019.

use bytes::Bytes;
use std::sync::Arc;

use super::connection::{Link, RequestError};
use super::end::SessionEnd;
use crate::agent::state::PendingOrder;
use crate::agent::terminal::Agent;
use crate::protocol::messages::{
    BtTrackerResp, ConfigVersionResp, DesktopGroupListReq, DesktopGroupListResp, LoginReq,
    LoginResp, MacReq, OrderQueryResp, TerminalConfig,
};
use crate::protocol::ServiceCode;

fn transport(e: RequestError) -> SessionEnd {
    SessionEnd::Startup(e.to_string())
}

pub async fn login(agent: &Arc<Agent>, link: &Link) -> Result<(), SessionEnd> {
    let ip = agent.report_ip(link.local_ip());
    let (frame, env) = link
        .request(
            ServiceCode::TerminalLogin,
            &LoginReq {
                mac: agent.mac.clone(),
                ip,
            },
        )
        .await
        .map_err(transport)?;
    if !env.is_ok() {
        return Err(SessionEnd::LoginRejected {
            code: env.code,
            msg: env.msg,
        });
    }
    // The header carries the token; data.token is the fallback.
    let token = if !frame.token.is_empty() {
        frame.token.clone()
    } else {
        match env.data_as::<LoginResp>() {
            Ok(Some(r)) if !r.token.is_empty() => Bytes::from(r.token.into_bytes()),
            _ => return Err(SessionEnd::Startup("login answer carries no token".into())),
        }
    };
    link.set_token(token);
    agent.logged_in();
    log::info!("logged in to {} as {}", agent.server_addr(), agent.mac);
    crate::sdnotify::notify_logged(&format!("STATUS=logged in to {}", agent.server_addr()));
    Ok(())
}

pub async fn sequence(agent: &Arc<Agent>, link: &Link) -> Result<(), SessionEnd> {
    let mac = agent.mac.clone();

    // 9004: report what we are; learn the server's conf_version.
    let req = crate::agent::identity_report::config_version_req(agent);
    let (_, env) = link
        .request(ServiceCode::GetConfigVersionId, &req)
        .await
        .map_err(transport)?;
    let server_version = match env.data_as::<ConfigVersionResp>() {
        Ok(Some(v)) if env.is_ok() => v.conf_version,
        other => {
            log::warn!(
                "get_config_version_id: code {} {} ({other:?})",
                env.code,
                env.msg
            );
            -1
        }
    };
    let local_version = agent.state.read(|s| s.terminal.conf_version);

    // 9005 only when the server knows a newer configuration.
    if server_version > local_version {
        let (_, env) = link
            .request(ServiceCode::GetConfigInfo, &MacReq { mac: mac.clone() })
            .await
            .map_err(transport)?;
        match env.data_as::<TerminalConfig>() {
            Ok(Some(cfg)) if env.is_ok() => {
                if let Some(end) = agent.apply_server_config(cfg).await {
                    return Err(end);
                }
            }
            other => log::warn!("get_config_info: code {} {} ({other:?})", env.code, env.msg),
        }
    } else if server_version == -1 || local_version > server_version {
        // The server never configured us (-1, as the vendor server answers
        // for a new terminal), or we hold a newer configuration than it
        // (its store was reset): push ours with 9006.
        let mut mine = agent.state.read(|s| s.terminal.clone());
        if agent.state.read(|s| s.network.is_none()) && mine.mask.is_empty() {
            // No static address was ever set here: the interface is DHCP's.
            mine.is_dhcp = 1;
        }
        mine.mac = mac.clone();
        mine.platform = crate::agent::terminal::platform_name().into();
        mine.soft_version = agent.cfg.soft_version.clone();
        mine.disk_residue = agent.disk_residue_gb();
        if mine.name.is_empty() {
            mine.name = agent.default_name();
        }
        // The address, mask and gateway are the interface's, all three: a
        // terminal on DHCP reports what DHCP gave it, never a server's old
        // record of it (D keeps the session's source address, which may
        // be another interface's, or 127.0.0.1).
        let on_dhcp = agent.state.read(|s| s.network.is_none());
        if mine.ip.is_empty() || on_dhcp {
            let interface_ip = agent
                .cfg
                .interface
                .clone()
                .or_else(|| crate::agent::interfaces::detect(None).ok().map(|i| i.name))
                .and_then(|n| crate::agent::interfaces::detect(Some(&n)).ok())
                .and_then(|i| i.ipv4)
                .map(|ip| ip.to_string());
            mine.ip = interface_ip.unwrap_or_else(|| agent.report_ip(link.local_ip()));
        }
        // The vendor's server refuses a 9006 without a mask (60006) or a
        // server_ip (60014): fill them from the interface and the session.
        if mine.mask.is_empty() || mine.gateway.is_empty() {
            let name = agent
                .cfg
                .interface
                .clone()
                .or_else(|| crate::agent::interfaces::detect(None).ok().map(|i| i.name));
            let net = name.and_then(|n| {
                crate::agent::interfaces::current_network(&n, std::path::Path::new("/etc"))
            });
            if let Some(net) = net {
                if mine.mask.is_empty() {
                    mine.mask =
                        std::net::Ipv4Addr::from(crate::ipv4::mask_of(net.prefix_len)).to_string();
                }
                if mine.gateway.is_empty() {
                    if let Some(g) = net.gateway {
                        mine.gateway = g.to_string();
                    }
                }
            }
        }
        if mine.setup_info.program.server_ip.is_empty() {
            mine.setup_info.program.server_ip = agent.server_ip();
        }
        let (_, env) = link
            .request(ServiceCode::UpdateConfigInfo, &mine)
            .await
            .map_err(transport)?;
        if !env.is_ok() {
            // The vendor's server answers -1 at every login without its
            // yzy_server: its state, not ours.
            log::info!(
                "update_config_info: the server answered {} {}; it keeps its record",
                env.code,
                env.msg
            );
        }
    } else {
        log::debug!("config is current (local {local_version}, server {server_version})");
    }

    // 9007: the desktops this terminal should hold.
    let (_, env) = link
        .request(
            ServiceCode::GetDesktopGroupList,
            &DesktopGroupListReq {
                mac: mac.clone(),
                ip: agent.report_ip(link.local_ip()),
            },
        )
        .await
        .map_err(transport)?;
    let pending = !env.is_ok() && env.msg.starts_with("pending");
    agent.set_live(|l| l.pending_admission = pending);
    match env.data_as::<DesktopGroupListResp>() {
        Ok(Some(list)) if env.is_ok() => {
            agent.desktop_groups_received(list.desktop_group_list).await
        }
        Ok(None) if env.is_ok() => agent.desktop_groups_received(Vec::new()).await,
        Ok(_) if !env.is_ok() => log::info!(
            "get_desktop_group_list: the server answered {} {}; keeping every desktop as it is",
            env.code,
            env.msg
        ),
        other => log::warn!(
            "get_desktop_group_list: code {} {} ({other:?})",
            env.code,
            env.msg
        ),
    }

    agent.report_desktops(link).await;

    // 9019: BitTorrent trackers. A vendor server may fail it (no
    // controller image IP); torrents then name their own tracker, and the
    // server's address is one more place to ask for manifests.
    if let Some(transfers) = agent.transfers.get() {
        transfers.set_server_host(&agent.server_ip());
    }
    let (_, env) = link
        .request(ServiceCode::BtTracker, &MacReq { mac: mac.clone() })
        .await
        .map_err(transport)?;
    match env.data_as::<BtTrackerResp>() {
        Ok(Some(t)) if env.is_ok() => {
            if let Some(transfers) = agent.transfers.get() {
                transfers.set_trackers(t.tracker.clone());
            }
            agent.persist(|s| s.trackers = t.tracker)
        }
        other => log::warn!("bt_tracker: code {} {} ({other:?})", env.code, env.msg),
    }

    // Layers the desktop decision wants: 9023 for each.
    {
        let agent = agent.clone();
        let link = link.clone();
        tokio::spawn(async move {
            crate::agent::transfers::server_link::request_pending(&agent, &link).await
        });
    }

    // 9010: a numbering session may have started while we were away.
    let (_, env) = link
        .request(ServiceCode::OrderQuery, &MacReq { mac })
        .await
        .map_err(transport)?;
    match env.data_as::<OrderQueryResp>() {
        Ok(Some(q)) if env.is_ok() => agent.persist(|s| {
            s.pending_order = (q.terminal_id >= 0).then_some(PendingOrder {
                batch_no: q.batch_no,
                terminal_id: q.terminal_id,
            })
        }),
        other => log::warn!("order_query: code {} {} ({other:?})", env.code, env.msg),
    }
    Ok(())
}
