//! The agent's side of layer distribution, between the session and
//! `bt::transfers`: starting the engine, carrying transfer reports to the
//! server (9025, 9015), fetching torrents named by URL (1017, 9023), and
//! the upload exchange (9018, 9014).

use bytes::Bytes;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

use crate::agent::session::connection::Link;
use crate::agent::terminal::Agent;
use crate::agent::transfers::tasks::{
    DownloadRequest, Report, TaskRecord, TransferError, Transfers,
};
use crate::bt::engine::{Engine, EngineConfig};
use crate::bt::meta::MAX_TORRENT_BYTES;
use crate::disk::name::LayerName;
use crate::protocol::messages::{
    BtTaskStateReq, CheckUploadStateReq, CheckUploadStateResp, DiffDiskDownloadResp, DiffDiskReq,
    TaskResultReq, TorrentUploadResp,
};
use crate::protocol::torrent_struct::UploadTorrent;
use crate::protocol::ServiceCode;

/// Starts the engine and the transfer supervisor. Retries while the engine
/// cannot start (its port taken by a previous instance still exiting).
pub async fn start(agent: Arc<Agent>) {
    let cfg = EngineConfig {
        state_dir: agent.cfg.bt_state_dir(),
        listen_port: agent.cfg.bt.listen_port,
        upload_limit: (agent.cfg.bt.upload_limit > 0).then_some(agent.cfg.bt.upload_limit),
        download_limit: (agent.cfg.bt.download_limit > 0).then_some(agent.cfg.bt.download_limit),
        // Only a layer checked against a manifest needs its pieces' sha256.
        piece_sha256: agent.cfg.manifest_key().is_some()
            || agent.cfg.bt.manifest != crate::bt::manifest::ManifestPolicy::Off,
        write_buffer_mib: agent.cfg.bt.write_buffer_mib,
    };
    let mut wait = Duration::from_secs(1);
    let (transfers, reports) = loop {
        let opened = match Engine::start(&cfg).await {
            Ok(engine) => Transfers::open(
                engine,
                agent.desktops.clone(),
                Duration::from_secs(agent.cfg.bt.progress_secs),
                agent.cfg.bt.manifest,
                agent.cfg.manifest_key(),
            )
            .await
            .map_err(|e| e.to_string()),
            Err(e) => Err(format!("{e:#}")),
        };
        match opened {
            Ok(x) => break x,
            Err(e) => {
                log::error!("BitTorrent engine did not start: {e}; retrying in {wait:?}");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = agent.shutdown.cancelled() => return,
                }
                wait = (wait * 2).min(Duration::from_secs(30));
            }
        }
    };
    transfers.set_trackers(agent.state.read(|s| s.trackers.clone()));
    transfers.set_server_host(&agent.server_ip());
    log::info!(
        "BitTorrent engine listening on port {:?}",
        transfers.listen_port()
    );
    if agent.transfers.set(transfers.clone()).is_err() {
        return;
    }
    tokio::spawn(pump_reports(agent.clone(), reports));
    tokio::spawn(keep_asking(agent.clone()));
    transfers.run(agent.shutdown.clone()).await;
}

/// How often wanted layers that have no transfer yet are asked for again.
const ASK_AGAIN: Duration = Duration::from_secs(10);

/// Layers the decision wants are asked for after every 9007; this asks
/// again for those that still have no transfer: the engine may have
/// started after that 9007, or the 9023 or the torrent fetch failed.
async fn keep_asking(agent: Arc<Agent>) {
    let mut tick = tokio::time::interval(ASK_AGAIN);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = agent.shutdown.cancelled() => return,
        }
        let Some(link) = agent.link() else { continue };
        let Some(transfers) = agent.transfers.get() else {
            continue;
        };
        // A transfer restored after the decision that deleted its layer
        // would stand for it forever ("already seeding"): dropped here.
        transfers.drop_broken().await;
        let missing = agent.state.read(|s| {
            s.pending_downloads.iter().any(|p| {
                LayerName::new(&p.prefix, i64::from(p.level), &p.disk_uuid).is_ok_and(|l| {
                    !transfers.has_version(&l.to_string(), p.operate_id)
                        && !agent.desktops.holds_version(&l, p.operate_id)
                })
            })
        });
        if missing {
            request_pending(&agent, &link).await;
        }
    }
}

/// Sends transfer reports on whichever session is up. Progress is dropped
/// while offline (the next one supersedes it); final results wait for the
/// next session.
async fn pump_reports(agent: Arc<Agent>, mut rx: mpsc::UnboundedReceiver<Report>) {
    let mut waiting: VecDeque<Report> = VecDeque::new();
    let mut retry = tokio::time::interval(Duration::from_secs(2));
    loop {
        tokio::select! {
            r = rx.recv() => match r {
                Some(r) => waiting.push_back(r),
                None => return,
            },
            _ = retry.tick() => {}
            _ = agent.shutdown.cancelled() => return,
        }
        while let Some(report) = waiting.pop_front() {
            let Some(link) = agent.link() else {
                if !matches!(report, Report::Progress { .. }) {
                    waiting.push_front(report);
                }
                break;
            };
            if !send_report(&agent, &link, &report).await
                && !matches!(report, Report::Progress { .. })
            {
                waiting.push_front(report);
                break;
            }
        }
    }
}

fn final_state(agent: &Agent, rec: &TaskRecord, ok: bool) -> BtTaskStateReq {
    BtTaskStateReq {
        torrent_name: rec.torrent_name(),
        mac: agent.mac.clone(),
        progress: if ok { 100 } else { 0 },
        state: "finished".into(),
        // The vendor's server keeps the last rate it hears: the last one
        // measured, not 0 (issue: every finished task showed rate 0).
        download_rate: agent.transfers.get().map_or(0, |t| t.last_rate(&rec.layer)),
        upload_rate: 0,
        total_size: if ok { rec.length } else { 0 },
        file_size: rec.length,
    }
}

/// Whether the report reached the server.
async fn send_report(agent: &Arc<Agent>, link: &Link, report: &Report) -> bool {
    match report {
        Report::Progress {
            record,
            stats,
            progress,
            state,
        } => {
            let body = BtTaskStateReq {
                torrent_name: record.torrent_name(),
                mac: agent.mac.clone(),
                progress: *progress,
                state: (*state).to_string(),
                download_rate: stats.down_bps,
                upload_rate: stats.up_bps,
                total_size: stats.have_bytes,
                file_size: stats.total_bytes,
            };
            match link.request(ServiceCode::BtTaskState, &body).await {
                Ok((_, env)) if !env.is_ok() => {
                    log::debug!("bt_task_state {}: {} {}", record.layer, env.code, env.msg)
                }
                Ok(_) => {}
                Err(e) => {
                    log::debug!("bt_task_state: {e}");
                    return false;
                }
            }
            true
        }
        Report::Finished { record, ok, why } => {
            if !ok {
                agent.persist(|s| s.notice(format!("{} failed: {why}", record.layer)));
            }
            let body = final_state(agent, record, *ok);
            if let Err(e) = link.request(ServiceCode::BtTaskState, &body).await {
                log::warn!("bt_task_state: {e}");
                return false;
            }
            let result = TaskResultReq {
                mac: agent.mac.clone(),
                ip: agent.report_ip(link.local_ip()),
                disk: record.layer.clone(),
                result: if *ok { 1 } else { 2 },
                torrent_id: None,
                // Why it failed, for the operator (API, console, --wait).
                msg: (!*ok && !why.is_empty()).then(|| why.clone()),
            };
            match link.request(ServiceCode::TaskResult, &result).await {
                Ok(_) => {
                    if let Some(t) = agent.transfers.get() {
                        t.result_reported(&record.layer);
                    }
                    true
                }
                Err(e) => {
                    log::warn!("task_result: {e}");
                    false
                }
            }
        }
        Report::LayerReady(layer) => {
            log::info!("{layer} is ready; reporting the desktops");
            agent.report_desktops(link).await;
            true
        }
    }
}

/// Fetches a .torrent over HTTP, refusing anything oversized.
pub async fn fetch_torrent(url: &str) -> Result<Bytes, String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("{url:?}: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!("{url:?}: only http and https URLs are fetched"));
    }
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| e.to_string())?;
    let mut resp = client
        .get(parsed)
        .send()
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    if !resp.status().is_success() {
        return Err(format!("GET {url}: HTTP {}", resp.status()));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| format!("GET {url}: {e}"))? {
        if body.len() + chunk.len() > MAX_TORRENT_BYTES {
            return Err(format!("GET {url}: larger than {MAX_TORRENT_BYTES} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(body))
}

/// A layer to fetch through a torrent URL (1017, 9023).
#[derive(Debug, Clone)]
pub struct UrlDownload {
    pub layer: LayerName,
    pub url: String,
    pub group_uuid: String,
    pub disk_type: i64,
    pub operate_id: i64,
}

/// Fetches the torrent and starts the download; a failure goes to the
/// server as a failed task result.
pub async fn download_from_url(agent: &Arc<Agent>, d: UrlDownload) -> Result<TaskRecord, String> {
    let transfers = agent
        .transfers
        .get()
        .ok_or("the BitTorrent engine is not running")?;
    let torrent = fetch_torrent(&d.url).await?;
    transfers
        .download(DownloadRequest {
            layer: d.layer.clone(),
            torrent,
            task_uuid: String::new(),
            group_uuid: d.group_uuid,
            disk_type: d.disk_type,
            operate_id: d.operate_id,
        })
        .await
        .map_err(|e| e.to_string())
}

/// After a desktop decision: asks 9023 for each layer still missing and
/// starts the downloads whose answer names a torrent URL. A server that
/// answers without one pushes 1015 instead.
pub async fn request_pending(agent: &Arc<Agent>, link: &Link) {
    let pending = agent.state.read(|s| s.pending_downloads.clone());
    let Some(transfers) = agent.transfers.get() else {
        if !pending.is_empty() {
            log::warn!(
                "{} layer(s) wanted but the BitTorrent engine is not running",
                pending.len()
            );
        }
        return;
    };
    for p in pending {
        let Ok(layer) = LayerName::new(&p.prefix, i64::from(p.level), &p.disk_uuid) else {
            continue;
        };
        if transfers.has_version(&layer.to_string(), p.operate_id)
            || agent.desktops.holds_version(&layer, p.operate_id)
        {
            continue;
        }
        if let Some(why) = transfers.refusal(&layer.to_string(), None, p.operate_id) {
            log::debug!(
                "{layer}: not asked for again at operate_id {}: {why}",
                p.operate_id
            );
            continue;
        }
        let req = DiffDiskReq {
            mac: agent.mac.clone(),
            desktop_group_uuid: p.group_uuid.clone(),
            diff_disk_uuid: p.disk_uuid.clone(),
            diff_level: i64::from(p.level),
            diff_disk_type: Some(p.disk_type),
        };
        let answer = match link.request(ServiceCode::DiffDiskDownload, &req).await {
            Ok((_, env)) if env.is_ok() => env.data_as::<DiffDiskDownloadResp>(),
            Ok((_, env)) => {
                log::warn!("diff_disk_download {layer}: {} {}", env.code, env.msg);
                continue;
            }
            Err(e) => {
                log::warn!("diff_disk_download {layer}: {e}");
                return;
            }
        };
        match answer {
            Ok(Some(a)) if !a.download_url.is_empty() => {
                let d = UrlDownload {
                    layer: layer.clone(),
                    url: a.download_url,
                    group_uuid: p.group_uuid.clone(),
                    disk_type: p.disk_type,
                    operate_id: a.operate_id,
                };
                if let Err(e) = download_from_url(agent, d).await {
                    log::warn!("{layer}: {e}");
                }
            }
            _ => log::info!("{layer}: the server will push its torrent (1015)"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Transfer(#[from] TransferError),
    #[error("{0}")]
    Request(String),
}

/// Uploads one local layer: 9018, a torrent, 9014, then seeding until the
/// server's 1021. Returns the server's torrent_id.
pub async fn upload_layer(
    agent: &Arc<Agent>,
    link: &Link,
    layer: &LayerName,
    group_uuid: &str,
) -> Result<String, UploadError> {
    let transfers = agent
        .transfers
        .get()
        .ok_or_else(|| UploadError::Refused("the BitTorrent engine is not running".into()))?;
    let check = CheckUploadStateReq {
        mac: agent.mac.clone(),
        desktop_group_uuid: group_uuid.to_string(),
    };
    let (_, env) = link
        .request(ServiceCode::CheckUploadState, &check)
        .await
        .map_err(|e| UploadError::Request(e.to_string()))?;
    let can = env
        .data_as::<CheckUploadStateResp>()
        .ok()
        .flatten()
        .map(|d| d.can_update)
        .unwrap_or(0);
    if !env.is_ok() || can != 1 {
        return Err(UploadError::Refused(format!(
            "the server does not take an upload for group {group_uuid} now ({} {}, can_update {can})",
            env.code, env.msg
        )));
    }
    let announce = agent
        .state
        .read(|s| s.trackers.first().cloned())
        .ok_or_else(|| UploadError::Refused("no tracker known (9019 gave none)".into()))?;
    let (rec, torrent) = transfers.start_upload(layer, group_uuid, &announce).await?;
    let meta = agent
        .desktops
        .catalog()
        .layers
        .get(&layer.to_string())
        .cloned();
    let header = crate::disk::qcow2::read_header(&agent.desktops.store.path(layer)).ok();
    let sys_type = agent.state.read(|s| {
        s.desktop_groups
            .iter()
            .find(|g| g.desktop_group_uuid == group_uuid)
            .map(|g| g.os_sys_type)
            .unwrap_or(0)
    });
    let body = UploadTorrent {
        uuid: layer.uuid_str(),
        disk_type: meta.as_ref().map(|m| m.disk_type).unwrap_or(0).clamp(0, 2) as i8,
        sys_type: sys_type.clamp(0, i64::from(i8::MAX)) as i8,
        dif_level: i32::from(layer.level),
        real_size: header.map(|h| h.virtual_size / 512).unwrap_or(0),
        reserve_size: 0,
        torrent,
    };
    let answer = link
        .request_binary(ServiceCode::TorrentUpload, body.encode())
        .await;
    let env = match answer {
        Ok((_, env)) => env,
        Err(e) => {
            let _ = transfers.remove(&rec.layer).await;
            return Err(UploadError::Request(e.to_string()));
        }
    };
    if !env.is_ok() {
        let _ = transfers.remove(&rec.layer).await;
        return Err(UploadError::Refused(format!(
            "torrent_upload: {} {}",
            env.code, env.msg
        )));
    }
    let torrent_id = env
        .data_as::<TorrentUploadResp>()
        .ok()
        .flatten()
        .map(|r| r.torrent_id)
        .unwrap_or_else(|| rec.info_hash.clone());
    transfers.set_torrent_id(&rec.layer, &torrent_id)?;
    log::info!("{layer}: offered to the server as torrent {torrent_id}");
    Ok(torrent_id)
}
