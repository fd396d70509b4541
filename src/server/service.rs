//! The running server's shared state, and what the connections and the
//! operator API ask of it: push a command and wait for its reply, send a
//! desktop, name a torrent's URL.

use serde_json::Value;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

use super::config::ServerConfig;
use super::generation::Delivery;
use super::images::Image;
use super::registry::{Registry, ServerEvent};
use super::store::{self, Store};
use super::{images, tracker};
use crate::protocol::messages::{DesktopGroup, DiskInfo};
use crate::protocol::{
    BatchNo, ClientType, DataType, Direction, Envelope, ErrorCode, Frame, Sectors, ServiceCode,
};

#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("terminal {0} is not connected")]
    NotConnected(String),
    #[error("no reply from {0} within {1:?}")]
    Timeout(String, Duration),
    #[error("{0}")]
    Bad(String),
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// Sent, but this terminal's generation never answers it.
    #[error("{1}")]
    NoReply(BatchNo, String),
    #[error("terminal {0} is {1}: an operator has not accepted it")]
    NotAdmitted(String, &'static str),
    /// Parameters the terminal would refuse, with the code it would use.
    #[error("{1}")]
    Invalid(ErrorCode, String),
}

impl PushError {
    pub fn code(&self) -> ErrorCode {
        match self {
            PushError::NotConnected(_) => ErrorCode::TerminalNotConnectError,
            PushError::Timeout(..) => ErrorCode::OtherError,
            PushError::Bad(_) => ErrorCode::MessageError,
            PushError::Store(_) => ErrorCode::SystemError,
            PushError::NoReply(..) => ErrorCode::Success,
            PushError::NotAdmitted(..) => ErrorCode::TerminalLoginFail,
            PushError::Invalid(code, _) => *code,
        }
    }
}

/// Shared server state.
pub struct Server {
    pub cfg: ServerConfig,
    pub store: Store,
    pub registry: Registry,
    pub api_token: String,
    /// Every token the operator API takes, by holder.
    pub tokens: super::tokens::Tokens,
    pub tracker: Arc<tracker::Tracker>,
    /// Where the tracker listens (its port goes into 9019 answers).
    pub tracker_addr: SocketAddr,
    /// Layer images: seeded, served as torrents, received from uploads.
    pub images: Arc<images::Images>,
    pub shutdown: CancellationToken,
    /// Set when the terminal port speaks TLS.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    pub(crate) seq: AtomicU32,
    pub(crate) conn_ids: AtomicU64,
    /// What is in use of each bounded resource (`limits.rs`).
    pub counters: super::limits::Counters,
    /// When each terminal last uploaded a log (9999), for its quota.
    pub(crate) log_uploads: std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>,
    /// Prometheus counters (`metrics.rs`).
    pub metrics: super::metrics::ServerMetrics,
    /// Agent packages (`upgrades/`).
    pub upgrades: Arc<super::upgrades::Upgrades>,
    /// md5 of the terminals' settings password (`admin_password`).
    pub admin_password_md5: String,
    pub admin_guesses: super::admin_password::GuessThrottle,
    /// The settings password as our agents keep it for offline use: a
    /// salted scrypt hash signed with the manifest key.
    pub offline_admin: Option<crate::offline_admin::OfflineAdmin>,
    /// What became of each wake-on-LAN (`wake/`).
    pub wakes: super::wake::book::WakeBook,
    /// The wall clock the class schedule reads.
    pub clock: Arc<dyn super::wake::clock::Clock>,
    /// What the class schedule did lately.
    pub schedule_runs: super::wake::schedule::ScheduleLog,
}

impl Server {
    /// The URL a terminal fetches a layer's torrent from (tracker port).
    /// With `tracker_url` configured, torrents are fetched where the
    /// tracker is reached (a proxy or another address in front of it).
    pub fn torrent_url(&self, layer: &str, local: Option<SocketAddr>) -> String {
        if let Some(mut url) = self
            .cfg
            .tracker_url
            .as_deref()
            .and_then(|t| reqwest::Url::parse(t).ok())
            .filter(|u| matches!(u.scheme(), "http" | "https"))
        {
            url.set_query(None);
            url.set_path(&format!("/torrents/{layer}.torrent"));
            return url.to_string();
        }
        let host = self
            .cfg
            .advertise_ip
            .clone()
            .or_else(|| local.map(|a| a.ip().to_string()))
            .unwrap_or_else(|| "127.0.0.1".into());
        format!(
            "http://{host}:{}/torrents/{layer}.torrent",
            self.tracker_addr.port()
        )
    }

    /// Where a terminal fetches an agent package's manifest (tracker port).
    pub fn upgrade_url(&self, platform: &str, version: &str, local: Option<SocketAddr>) -> String {
        let torrent = self.torrent_url("x", local);
        match torrent.find("/torrents/") {
            Some(i) => format!(
                "{}/upgrades/{platform}/{version}/manifest.json",
                &torrent[..i]
            ),
            None => torrent,
        }
    }

    /// Sends 1030 for a published package: refused here when there is no
    /// package for the terminal's platform, or it is older than what the
    /// terminal runs and `force` is not given.
    pub async fn upgrade_terminal(
        &self,
        mac: &str,
        version: &str,
        force: bool,
    ) -> Result<(BatchNo, Envelope<Value>), PushError> {
        let rec = self
            .store
            .terminal(mac)?
            .ok_or_else(|| PushError::Bad(format!("{mac} is not a known terminal")))?;
        let platform = if rec.config.platform.is_empty() {
            "x86".to_string()
        } else {
            rec.config.platform.clone()
        };
        if self.upgrades.manifest(&platform, version).is_none() {
            return Err(PushError::Bad(format!(
                "no package {version} for {platform}: publish it first (ctl upgrade-publish)"
            )));
        }
        let running = rec
            .upgrade
            .as_ref()
            .map(|u| u.running.clone())
            .filter(|r| !r.is_empty())
            .unwrap_or_else(|| rec.config.soft_version.clone());
        if crate::upgrade_package::is_downgrade(&running, version) {
            if !force {
                return Err(PushError::Bad(format!(
                    "{mac} runs {running}; {version} is older: a downgrade needs --force"
                )));
            }
            // The older build goes out as a new release: agents never take
            // a release below the one they committed (issue 38.8).
            self.upgrades
                .republish(&platform, version)
                .map_err(PushError::Bad)?;
        }
        let url = self.upgrade_url(&platform, version, self.local_addr_for(mac));
        let params = serde_json::json!({
            "upgrade_package": "voi-agent",
            "version": version,
            "os_name": "linux",
            "platform": platform,
            "manifest_url": url,
            "force": force,
        });
        let sent = self
            .push(
                mac,
                ServiceCode::TerminalUpgrade,
                params,
                Duration::from_secs(15),
            )
            .await;
        // A new attempt: an earlier outcome for the same version (a replay
        // the agent refused, a rollback) is not this one's.
        if let Ok((_, env)) = &sent {
            if env.is_ok() {
                let _ = self.store.update_terminal(mac, |r| {
                    r.upgrade = Some(crate::protocol::messages::UpgradeReport {
                        version: version.to_string(),
                        state: "installing".into(),
                        reason: String::new(),
                        running: running.clone(),
                    });
                });
            }
        }
        sent
    }

    /// A layer's current version: the library's (`layer_versions.rs`),
    /// else the highest `operate_id` any desktop group gives it (0 when
    /// none names it).
    pub fn layer_operate_id(&self, layer: &str) -> u32 {
        if let Ok(Some(v)) = self.store.layer_version(layer) {
            return u32::try_from(v).unwrap_or(0);
        }
        self.store
            .groups()
            .unwrap_or_default()
            .iter()
            .flat_map(|g| g.disks.iter())
            .filter(|d| d.layer_name() == layer)
            .filter_map(|d| u32::try_from(d.operate_id).ok())
            .max()
            .unwrap_or(0)
    }

    /// Our address on a terminal's connection, when it is online.
    pub fn local_addr_for(&self, mac: &str) -> Option<SocketAddr> {
        self.registry.with(mac, |o| o.local).flatten()
    }

    /// The desktop group's layers from the library, or which are missing.
    fn group_layers(
        &self,
        group_uuid: &str,
    ) -> Result<(DesktopGroup, Vec<(DiskInfo, Image)>), PushError> {
        let groups = self.store.groups()?;
        let g = groups
            .into_iter()
            .find(|g| g.desktop_group_uuid == group_uuid)
            .ok_or_else(|| PushError::Bad(format!("no desktop group {group_uuid}")))?;
        let mut layers = Vec::new();
        let mut missing = Vec::new();
        for d in &g.disks {
            let name = d.layer_name();
            match self.images.get(&name) {
                Some(img) => layers.push((d.clone(), img)),
                None => missing.push(name),
            }
        }
        if !missing.is_empty() {
            return Err(PushError::Bad(format!(
                "the image library lacks {}",
                missing.join(", ")
            )));
        }
        Ok((g, layers))
    }

    /// The 1015 struct for one library layer.
    pub fn send_torrent_body(
        g: &DesktopGroup,
        d: &DiskInfo,
        img: &Image,
        task_uuid: &str,
    ) -> crate::protocol::torrent_struct::SendTorrent {
        crate::protocol::torrent_struct::SendTorrent {
            uuid: d.uuid.clone(),
            disk_type: d.disk_type.clamp(0, 2) as i8,
            sys_type: g.os_sys_type.clamp(0, i64::from(i8::MAX)) as i8,
            dif_level: d.dif_level.clamp(0, 5) as i32,
            real_size: d.real_size.0,
            space_size: d.reserve_size.0,
            file_size: Sectors::of_length(img.length).0,
            task_uuid: task_uuid.to_string(),
            group_uuid: g.desktop_group_uuid.clone(),
            operate_id: u32::try_from(d.operate_id).unwrap_or(0),
            torrent: img.torrent.clone(),
        }
    }

    /// Pushes one library layer as a binary 1015 under a fresh task uuid
    /// (its batch) and waits for the reply.
    pub async fn send_torrent(
        &self,
        mac: &str,
        g: &DesktopGroup,
        d: &DiskInfo,
        img: &Image,
        timeout: Duration,
    ) -> Result<(String, Envelope<Value>), PushError> {
        let task_uuid = uuid::Uuid::new_v4().hyphenated().to_string();
        let body = Self::send_torrent_body(g, d, img, &task_uuid);
        let env = self
            .push_binary(
                mac,
                ServiceCode::SendTorrent,
                body.encode(),
                BatchNo::Text(task_uuid.clone()),
                timeout,
            )
            .await?;
        Ok((task_uuid, env))
    }

    /// Sends a desktop group the library holds, in the style the
    /// terminal's generation understands (`generation.rs`): 1017 with a
    /// download URL per disk, or 1008 and one 1015 per layer. Never waits
    /// for a reply that generation does not send. Returns one entry per
    /// layer with the reply it got.
    pub async fn download_desktop(
        &self,
        mac: &str,
        group_uuid: &str,
        timeout: Duration,
    ) -> Result<Vec<Value>, PushError> {
        let mac = crate::protocol::normalize_mac(mac)
            .ok_or_else(|| PushError::Bad(format!("{mac:?} is not a MAC")))?;
        let (g, layers) = self.group_layers(group_uuid)?;
        let generation = self
            .store
            .terminal(&mac)?
            .map(|r| r.generation())
            .ok_or_else(|| PushError::NotConnected(mac.clone()))?;
        // A result belongs to one delivery: this push starts a new one, so
        // the last delivery's progress and result of these layers go (an
        // old "finished" must not mask a failure of this one).
        let names: Vec<String> = layers.iter().map(|(_, i)| i.layer.to_string()).collect();
        self.store.update_terminal(&mac, |r| {
            r.reports.retain(|k, _| {
                let of_these = k
                    .strip_prefix("task_result:")
                    .or_else(|| k.strip_prefix("bt_task:"))
                    .is_some_and(|l| names.iter().any(|n| n == l));
                !of_these && k != "http_download"
            })
        })?;
        match generation.delivery {
            Delivery::SendDesktop => self.send_desktop(&mac, &g, &layers, timeout).await,
            Delivery::TorrentPush => self.push_torrents(&mac, &g, &layers, timeout).await,
        }
    }

    /// 1017 send_desktop, as R >= 2.25 reads it: sizes as strings, a
    /// download_url per disk.
    async fn send_desktop(
        &self,
        mac: &str,
        g: &DesktopGroup,
        layers: &[(DiskInfo, Image)],
        timeout: Duration,
    ) -> Result<Vec<Value>, PushError> {
        let local = self.local_addr_for(mac);
        let disks: Vec<Value> = layers
            .iter()
            .map(|(d, img)| {
                let name = img.layer.to_string();
                serde_json::json!({
                    "uuid": d.uuid, "type": d.disk_type, "dif_level": d.dif_level,
                    "prefix": d.prefix, "operate_id": d.operate_id, "max_dif": d.max_dif,
                    "real_size": d.real_size, "reserve_size": d.reserve_size,
                    "file_size": Sectors::of_length(img.length),
                    "download_url": self.torrent_url(&name, local),
                })
            })
            .collect();
        // The restore flag in both spellings (9007's, and D's 1017's).
        let desktop = serde_json::json!({
            "desktop_group_name": g.desktop_group_name,
            "desktop_group_uuid": g.desktop_group_uuid,
            "diff_mode": g.diff_mode,
            "desktop_group_restore": g.desktop_group_restore,
            "sys_restore": g.desktop_group_restore,
            "os_sys_type": g.os_sys_type,
            "disks": disks,
        });
        let (batch, env) = self
            .push(
                mac,
                ServiceCode::SendDesktop,
                serde_json::json!({ "desktop": desktop }),
                timeout,
            )
            .await?;
        if env.is_ok() {
            // What went out, so a failure the terminal reports without a
            // layer name (v2.28's HTTP path) is filed against these.
            let names: Vec<String> = layers.iter().map(|(_, i)| i.layer.to_string()).collect();
            if let Err(e) = self.store.update_terminal(mac, |r| {
                r.reports.insert(
                    "sent_desktop".into(),
                    serde_json::json!({"layers": names, "batch_no": batch}),
                );
            }) {
                log::warn!("{mac}: recording the 1017: {e}");
            }
        }
        Ok(layers
            .iter()
            .map(|(_, img)| {
                serde_json::json!({
                    "layer": img.layer.to_string(), "command": "send_desktop",
                    "batch_no": batch, "code": env.code, "msg": env.msg,
                })
            })
            .collect())
    }

    /// 1008 download_desktop, then one binary 1015 per layer, each reply
    /// waited for. The 1008 reply is not waited for before the 1015s: a
    /// terminal that does not answer it must still get its layers.
    async fn push_torrents(
        &self,
        mac: &str,
        g: &DesktopGroup,
        layers: &[(DiskInfo, Image)],
        timeout: Duration,
    ) -> Result<Vec<Value>, PushError> {
        let desktop = serde_json::json!({
            "name": g.desktop_group_name,
            "desc": g.desktop_group_desc,
            "diff_mode": g.diff_mode,
            "uuid": g.desktop_group_uuid,
            "sys_type": g.os_sys_type,
            "disks": g.disks.iter().map(|d| serde_json::json!({
                "uuid": d.uuid, "type": d.disk_type, "dif_level": d.dif_level,
                "prefix": d.prefix, "operate_id": d.operate_id,
                "real_size": d.real_size, "reserve_space": d.reserve_size,
            })).collect::<Vec<_>>(),
        });
        let batch = BatchNo::Int(self.store.next_batch_no()?);
        let announced =
            self.registry
                .expect_reply(ServiceCode::DownloadDesktop as u32, mac, &batch);
        self.send_command(
            mac,
            ServiceCode::DownloadDesktop,
            serde_json::json!({ "batch_no": batch, "desktop": desktop }),
        )
        .await?;
        let mut sent = Vec::new();
        for (d, img) in layers {
            let (task_uuid, env) = self.send_torrent(mac, g, d, img, timeout).await?;
            let already = env
                .data
                .as_ref()
                .and_then(|d| d.get("already_present"))
                .and_then(Value::as_bool)
                .unwrap_or(false);
            sent.push(serde_json::json!({
                "layer": img.layer.to_string(), "task_uuid": task_uuid,
                "command": "send_torrent", "code": env.code, "msg": env.msg,
                "already_present": already,
            }));
        }
        // Whatever 1008 got by now (our agent answers it at once).
        match tokio::time::timeout(Duration::from_secs(2), announced).await {
            Ok(Ok(env)) if !env.is_ok() => {
                log::warn!("download_desktop to {mac}: {} {}", env.code, env.msg)
            }
            Ok(Ok(_)) => {}
            _ => {
                self.registry
                    .forget_reply(ServiceCode::DownloadDesktop as u32, mac, &batch);
                log::info!("download_desktop to {mac}: no reply (the 1015s went anyway)");
            }
        }
        Ok(sent)
    }

    /// Pushes a binary command (1015) and waits for the reply carrying
    /// `batch`.
    pub async fn push_binary(
        &self,
        mac: &str,
        code: ServiceCode,
        payload: bytes::Bytes,
        batch: BatchNo,
        timeout: Duration,
    ) -> Result<Envelope<Value>, PushError> {
        let mac = crate::protocol::normalize_mac(mac)
            .ok_or_else(|| PushError::Bad(format!("{mac:?} is not a MAC")))?;
        // A torrent an operator sends (1015) is one the tracker keeps a
        // swarm for, whoever seeds it.
        if code == ServiceCode::SendTorrent {
            if let Ok(t) = crate::protocol::torrent_struct::SendTorrent::parse(&payload) {
                if let Ok(meta) = crate::bt::meta::TorrentMeta::parse(&t.torrent) {
                    self.images.expect_info_hash(&meta.info_hash);
                }
            }
        }
        let rx = self.registry.expect_reply(code as u32, &mac, &batch);
        if let Err(e) = self
            .send_frame(&mac, code, DataType::Binary, payload, &batch)
            .await
        {
            self.registry.forget_reply(code as u32, &mac, &batch);
            return Err(e);
        }
        self.await_reply(rx, code, mac, &batch, timeout).await
    }

    pub fn next_seq(&self) -> u32 {
        self.seq.fetch_add(1, Ordering::Relaxed).wrapping_add(1)
    }

    /// Sends a command to one terminal without waiting for its reply.
    /// `params` must be a JSON object; `batch_no` is added if absent.
    pub async fn send_command(
        &self,
        mac: &str,
        code: ServiceCode,
        mut params: Value,
    ) -> Result<BatchNo, PushError> {
        if !code.is_command() {
            return Err(PushError::Bad(format!(
                "{} is not a server command",
                code.name()
            )));
        }
        let Value::Object(map) = &mut params else {
            return Err(PushError::Bad("params must be a JSON object".into()));
        };
        let batch = match map.get("batch_no").cloned() {
            Some(v) => serde_json::from_value::<BatchNo>(v)
                .map_err(|e| PushError::Bad(format!("batch_no: {e}")))?,
            None => {
                let b = BatchNo::Int(self.store.next_batch_no()?);
                map.insert(
                    "batch_no".into(),
                    serde_json::to_value(&b).unwrap_or(Value::Null),
                );
                b
            }
        };
        let payload = serde_json::to_vec(&params).map_err(|e| PushError::Bad(e.to_string()))?;
        self.send_frame(mac, code, DataType::Json, payload.into(), &batch)
            .await?;
        Ok(batch)
    }

    /// Pushes a command and waits for the terminal's reply.
    pub async fn push(
        &self,
        mac: &str,
        code: ServiceCode,
        params: Value,
        timeout: Duration,
    ) -> Result<(BatchNo, Envelope<Value>), PushError> {
        let mac = crate::protocol::normalize_mac(mac)
            .ok_or_else(|| PushError::Bad(format!("{mac:?} is not a MAC")))?;
        let mut params = params;
        let change = self.before_push(&mac, code, &mut params)?;
        // Register before sending so a fast reply is not missed; batch_no is
        // allocated here for that reason.
        let batch = match params.get("batch_no") {
            Some(v) => serde_json::from_value::<BatchNo>(v.clone())
                .map_err(|e| PushError::Bad(format!("batch_no: {e}")))?,
            None => BatchNo::Int(self.store.next_batch_no()?),
        };
        if let Value::Object(m) = &mut params {
            m.insert(
                "batch_no".into(),
                serde_json::to_value(&batch).unwrap_or(Value::Null),
            );
        }
        let record = self.store.terminal(&mac)?;
        if code.is_ours() && record.as_ref().is_none_or(|r| r.wake.is_none()) {
            return Err(PushError::Bad(format!(
                "{} is a command of voi-agent; {mac} has not announced it (the vendor's terminals do not know it)",
                code.name()
            )));
        }
        let generation = record.map(|r| r.generation());
        if let Some(g) = generation.filter(|g| !g.answers(code)) {
            // Sent all the same (v2.28 carries out 1030 without a word),
            // but nobody waits 30 s for a reply that never comes.
            self.send_command(&mac, code, params.clone()).await?;
            if change.is_some() {
                // Never confirmed: kept apart, shown, not handed out.
                self.keep_unconfirmed(&mac, code, &batch, &params);
            }
            return Err(PushError::NoReply(batch, g.no_reply(code)));
        }
        let rx = self.registry.expect_reply(code as u32, &mac, &batch);
        let sent_at = std::time::Instant::now();
        if let Err(e) = self.send_command(&mac, code, params).await {
            self.registry.forget_reply(code as u32, &mac, &batch);
            self.metrics
                .command(code.name(), "not_sent", sent_at.elapsed());
            return Err(e);
        }
        let answered = self
            .await_reply(rx, code, mac.clone(), &batch, timeout)
            .await;
        let result = match &answered {
            Ok(env) if env.is_ok() => "ok",
            Ok(_) => "refused",
            Err(PushError::Timeout(..)) => "timeout",
            Err(_) => "error",
        };
        self.metrics.command(code.name(), result, sent_at.elapsed());
        let env = answered?;
        // What the record says changes only when the terminal did it.
        if env.is_ok() {
            if let Some(change) = change {
                self.apply_confirmed(&mac, change)?;
            }
        }
        Ok((batch, env))
    }

    /// The desktop groups changed: every online terminal hears 1024
    /// update_desktop_group_info now (ours then asks 9007 again, and drops
    /// a deleted group and its layers), instead of at its next login.
    /// Returns how many were told; their answers are logged.
    /// The library's layer versions brought in line with its content, and
    /// every stored group (and `put`, stored with them) given those
    /// versions, in one store transaction. Terminals are told when a
    /// stored group changed; storing `put` is the caller's to announce.
    pub fn sync_layer_versions(
        self: &Arc<Self>,
        put: Option<&mut DesktopGroup>,
    ) -> Result<crate::server::store::LayerSync, crate::server::store::StoreError> {
        let library: std::collections::BTreeMap<String, String> = self
            .images
            .status()
            .into_iter()
            .map(|i| (i.layer, i.info_hash))
            .collect();
        let putting = put.is_some();
        let sync = self.store.sync_layer_versions(&library, put)?;
        for b in &sync.bumped {
            log::info!(
                "image library: {} has new content: operate_id {} -> {}",
                b.layer,
                b.from,
                b.to
            );
        }
        if !putting && !sync.groups_changed.is_empty() {
            log::info!(
                "desktop group(s) {} now carry the library's layer versions; telling terminals",
                sync.groups_changed.join(", ")
            );
            self.tell_groups_changed();
        }
        Ok(sync)
    }

    /// A library scan, then the layer versions brought in line with it.
    pub async fn scan_library(self: &Arc<Self>) -> anyhow::Result<()> {
        self.images.scan().await?;
        self.sync_layer_versions(None)?;
        Ok(())
    }

    pub fn tell_groups_changed(self: &Arc<Self>) -> usize {
        let macs = self.registry.macs();
        for mac in &macs {
            let (me, mac) = (self.clone(), mac.clone());
            tokio::spawn(async move {
                match me
                    .push(
                        &mac,
                        ServiceCode::UpdateDesktopGroupInfo,
                        serde_json::json!({}),
                        Duration::from_secs(10),
                    )
                    .await
                {
                    Ok(_) => {}
                    Err(PushError::NoReply(..)) => {}
                    Err(e) => log::info!("{mac}: update_desktop_group_info not delivered: {e}"),
                }
            });
        }
        macs.len()
    }

    /// A record change the terminal confirmed.
    fn apply_confirmed(&self, mac: &str, change: RecordChange) -> Result<(), PushError> {
        match change {
            RecordChange::Delete => {
                self.store.delete_terminal(mac)?;
                // The session goes with the record: nothing half-forgotten.
                self.registry.with(mac, |o| o.close.cancel());
                log::info!("{mac}: deleted by the operator (the terminal confirmed)");
            }
            RecordChange::Config(f) => {
                self.store.update_terminal(mac, |r| {
                    f(r);
                    r.reports.retain(|k, _| !k.starts_with("unconfirmed:"));
                })?;
            }
        }
        Ok(())
    }

    fn keep_unconfirmed(&self, mac: &str, code: ServiceCode, batch: &BatchNo, params: &Value) {
        let value = serde_json::json!({
            "command": code.name(),
            "batch_no": batch,
            "params": params,
            "at": chrono::Local::now().to_rfc3339(),
            "why": "sent; this terminal's software does not confirm it, so the record keeps its old values",
        });
        if let Err(e) = self.store.update_terminal(mac, |r| {
            r.reports
                .insert(format!("unconfirmed:{}", code.name()), value);
        }) {
            log::warn!("{mac}: keeping an unconfirmed {}: {e}", code.name());
        }
    }

    /// Sets a terminal's admission (creating its record, which is how a
    /// MAC goes on the allow-list before it ever connects). A terminal
    /// online under its old standing is disconnected: it logs in again at
    /// once and runs its start-up requests with the new one.
    pub fn set_admission(
        &self,
        mac: &str,
        admission: crate::server::admission::Admission,
    ) -> Result<store::TerminalRecord, PushError> {
        let mac = crate::protocol::normalize_mac(mac)
            .ok_or_else(|| PushError::Bad(format!("{mac:?} is not a MAC")))?;
        let rec = self
            .store
            .update_terminal(&mac, |r| r.admission = admission)?;
        log::info!("{mac} is now {}", admission.name());
        self.registry.with(&mac, |o| o.close.cancel());
        self.registry.emit(ServerEvent::Admission {
            mac: mac.clone(),
            admission,
        });
        Ok(rec)
    }

    /// Writes one command frame to a connected terminal.
    async fn send_frame(
        &self,
        mac: &str,
        code: ServiceCode,
        data_type: DataType,
        payload: bytes::Bytes,
        batch: &BatchNo,
    ) -> Result<(), PushError> {
        // Nothing goes to a terminal the operator has not let in, whatever
        // asked for it (an API call, a room-wide action, a 9023).
        if let Some(standing) = self
            .store
            .terminal(mac)?
            .map(|r| r.admission)
            .filter(|a| *a != crate::server::admission::Admission::Accepted)
        {
            return Err(PushError::NotAdmitted(mac.to_string(), standing.name()));
        }
        let (tx, token) = self
            .registry
            .sender(mac)
            .ok_or_else(|| PushError::NotConnected(mac.to_string()))?;
        let frame = Frame {
            service_code: code as u32,
            sequence_code: self.next_seq(),
            data_type: data_type as u8,
            client_type: ClientType::Server as u8,
            req_or_res: Direction::Request as u8,
            token: token.into_bytes().into(),
            payload,
        };
        tx.send(frame)
            .await
            .map_err(|_| PushError::NotConnected(mac.to_string()))?;
        self.registry.emit(ServerEvent::CommandSent {
            mac: mac.to_string(),
            command: code.name().into(),
            batch_no: batch.clone(),
        });
        Ok(())
    }

    /// The reply registered with `expect_reply`, or a timeout (which
    /// forgets the registration).
    async fn await_reply(
        &self,
        rx: tokio::sync::oneshot::Receiver<Envelope<Value>>,
        code: ServiceCode,
        mac: String,
        batch: &BatchNo,
        timeout: Duration,
    ) -> Result<Envelope<Value>, PushError> {
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(env)) => Ok(env),
            _ => {
                self.registry.forget_reply(code as u32, &mac, batch);
                Err(PushError::Timeout(mac, timeout))
            }
        }
    }

    /// Server-side bookkeeping for commands that change what the terminal
    /// should pull with 9005: bump conf_version and record the new values.
    fn before_push(
        &self,
        mac: &str,
        code: ServiceCode,
        params: &mut Value,
    ) -> Result<Option<RecordChange>, PushError> {
        let Value::Object(map) = params else {
            return Err(PushError::Bad("params must be a JSON object".into()));
        };
        let str_of = |k: &str| map.get(k).and_then(|v| v.as_str()).map(str::to_string);
        if matches!(
            code,
            ServiceCode::UploadDisk | ServiceCode::UploadDesktop | ServiceCode::SshUploadDesktop
        ) {
            // The operator asks for an upload: the terminal's 9014 for these
            // disks will be taken.
            let disks = map
                .get("desktop")
                .and_then(|d| d.get("disks"))
                .or_else(|| map.get("disks"))
                .and_then(|d| d.as_array())
                .map(|a| {
                    a.iter()
                        .filter_map(|d| d.get("uuid").and_then(|u| u.as_str()))
                        .map(str::to_string)
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default();
            self.images.grant_upload(mac, disks);
        }
        if code == ServiceCode::UpdateIp {
            // The agent's own checks, before anything is recorded or sent.
            let field = |k: &str| str_of(k).unwrap_or_default();
            crate::ipv4::validate_static(
                &field("ip"),
                &field("mask"),
                &field("gateway"),
                &field("dns1"),
                &field("dns2"),
            )
            .map_err(|(code, msg)| PushError::Invalid(code, msg))?;
        }
        match code {
            ServiceCode::UpdateName | ServiceCode::UpdateIp | ServiceCode::UpdateConfig => {
                let name = str_of("name");
                let net = (
                    str_of("ip"),
                    str_of("mask"),
                    str_of("gateway"),
                    str_of("dns1"),
                    str_of("dns2"),
                );
                let mode = map.get("mode").cloned();
                let program = map.get("program").cloned();
                let next_version = self
                    .store
                    .terminal(mac)?
                    .map_or(1, |r| r.config.conf_version + 1);
                map.entry("conf_version")
                    .or_insert(Value::from(next_version));
                return Ok(Some(RecordChange::Config(Box::new(move |r| {
                    r.config.conf_version = r.config.conf_version.max(next_version);
                    if code == ServiceCode::UpdateName {
                        if let Some(n) = name {
                            r.config.name = n;
                        }
                    }
                    if code == ServiceCode::UpdateIp {
                        if let Some(ip) = net.0 {
                            r.config.ip = ip;
                            r.config.is_dhcp = 0;
                        }
                        r.config.mask = net.1.unwrap_or_default();
                        r.config.gateway = net.2.unwrap_or_default();
                        r.config.dns1 = net.3.unwrap_or_default();
                        r.config.dns2 = net.4.unwrap_or_default();
                    }
                    if code == ServiceCode::UpdateConfig {
                        if let Some(m) = mode.and_then(|m| serde_json::from_value(m).ok()) {
                            r.config.setup_info.mode = m;
                        }
                        if let Some(p) = program.and_then(|p| serde_json::from_value(p).ok()) {
                            r.config.setup_info.program = p;
                        }
                    }
                }))));
            }
            ServiceCode::Delete => return Ok(Some(RecordChange::Delete)),
            _ => {}
        }
        Ok(None)
    }
}

/// What a command changes in the terminal's record once it confirms.
pub(crate) enum RecordChange {
    Config(Box<dyn FnOnce(&mut store::TerminalRecord) + Send>),
    Delete,
}

/// The announce URL for torrents and 9019: configured, else this server's
/// address (advertised, or as the terminal reached it) with the tracker
/// port.
pub fn announce_url(cfg: &ServerConfig, tracker: SocketAddr, local: Option<SocketAddr>) -> String {
    cfg.tracker_url.clone().unwrap_or_else(|| {
        let ip = cfg
            .advertise_ip
            .clone()
            .or_else(|| local.map(|a| a.ip().to_string()))
            .unwrap_or_else(|| "127.0.0.1".into());
        format!("http://{ip}:{}/announce", tracker.port())
    })
}

/// Fills a response envelope's msg from its code.
pub fn env_error(code: ErrorCode, detail: impl Into<String>) -> Envelope<Value> {
    Envelope::error(code, detail)
}
