//! `voi-server`: the reference management server. It speaks the terminal
//! protocol on TCP 50007, keeps state in an embedded store, and offers an
//! operator HTTP API on loopback.

pub mod api;
pub mod cli;
pub mod client;
mod conn;
mod handlers;
pub mod images;
pub mod order;
pub mod registry;
pub mod store;
pub mod tracker;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::protocol::{
    BatchNo, ClientType, DataType, Direction, Envelope, ErrorCode, Frame, ServiceCode,
};
use registry::{Registry, ServerEvent};
use store::Store;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Terminal protocol listener.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Operator API listener; keep it on loopback.
    #[serde(default = "default_api_listen")]
    pub api_listen: String,
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Bearer token of the operator API; default: generated once and kept in
    /// `<data_dir>/api-token`.
    #[serde(default)]
    pub api_token: Option<String>,
    /// The terminals' heartbeat interval; a terminal is offline after three
    /// intervals without one.
    #[serde(default = "default_hb")]
    pub heartbeat_secs: u64,
    /// A socket silent this long is closed.
    #[serde(default = "default_idle")]
    pub idle_close_secs: u64,
    /// The address terminals should use for this server (9005
    /// `setup_info.program.server_ip`); unset, none is advertised.
    #[serde(default)]
    pub advertise_ip: Option<String>,
    /// The BitTorrent tracker's listener (the original's port is 50021).
    #[serde(default = "default_tracker_listen")]
    pub tracker_listen: String,
    /// Tracker announce URL handed out by 9019; default: this server's
    /// address as the terminal sees it, with the tracker's port.
    #[serde(default)]
    pub tracker_url: Option<String>,
    #[serde(default = "default_admin_user")]
    pub admin_user: String,
    /// md5 hex of the admin password (9008 / 9016 compare md5 of what the
    /// terminal sends). Default: md5("admin").
    #[serde(default = "default_admin_md5")]
    pub admin_password_md5: String,
    /// Largest frame body accepted from a terminal.
    #[serde(default = "default_max_body")]
    pub max_body: usize,
    /// BitTorrent peer port of the seeder (terminals use 6881); 0 picks a
    /// free one.
    #[serde(default = "default_bt_port")]
    pub bt_listen_port: u16,
    /// Seeder upload cap in bytes per second; 0 is unlimited.
    #[serde(default)]
    pub bt_upload_limit: u32,
    /// TLS on the terminal port: certificate chain and key, PEM. Both or
    /// neither; off by default (the vendor's terminals speak plain TCP).
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
}

fn default_bt_port() -> u16 {
    6880
}

fn default_listen() -> String {
    format!("0.0.0.0:{}", crate::protocol::DEFAULT_PORT)
}
fn default_api_listen() -> String {
    "127.0.0.1:50080".into()
}
fn default_tracker_listen() -> String {
    "0.0.0.0:50021".into()
}
fn default_data_dir() -> PathBuf {
    PathBuf::from("/var/lib/voi-server")
}
fn default_hb() -> u64 {
    10
}
fn default_idle() -> u64 {
    120
}
fn default_admin_user() -> String {
    "admin".into()
}
fn default_admin_md5() -> String {
    md5_hex(b"admin")
}
fn default_max_body() -> usize {
    crate::protocol::codec::DEFAULT_MAX_BODY
}

pub use crate::protocol::md5_hex;

impl Default for ServerConfig {
    fn default() -> Self {
        toml::from_str("").unwrap_or_else(|_| unreachable!("all fields have defaults"))
    }
}

impl ServerConfig {
    pub fn load(path: &std::path::Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        let cfg: ServerConfig =
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        if cfg.heartbeat_secs == 0 || cfg.idle_close_secs == 0 {
            anyhow::bail!("heartbeat_secs and idle_close_secs must be at least 1");
        }
        Ok(cfg)
    }

    pub fn offline_after(&self) -> Duration {
        Duration::from_secs(self.heartbeat_secs * 3)
    }
}

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
}

impl PushError {
    pub fn code(&self) -> ErrorCode {
        match self {
            PushError::NotConnected(_) => ErrorCode::TerminalNotConnectError,
            PushError::Timeout(..) => ErrorCode::OtherError,
            PushError::Bad(_) => ErrorCode::MessageError,
            PushError::Store(_) => ErrorCode::SystemError,
        }
    }
}

/// Shared server state.
pub struct Server {
    pub cfg: ServerConfig,
    pub store: Store,
    pub registry: Registry,
    pub api_token: String,
    pub tracker: Arc<tracker::Tracker>,
    /// Where the tracker listens (its port goes into 9019 answers).
    pub tracker_addr: SocketAddr,
    /// Layer images: seeded, served as torrents, received from uploads.
    pub images: Arc<images::Images>,
    pub shutdown: CancellationToken,
    /// Set when the terminal port speaks TLS.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    seq: AtomicU32,
    conn_ids: AtomicU64,
}

pub struct ServerHandle {
    pub server: Arc<Server>,
    pub addr: SocketAddr,
    pub api_addr: SocketAddr,
    tasks: Vec<JoinHandle<()>>,
}

impl ServerHandle {
    /// Stops listening and closes every connection.
    pub async fn stop(self) {
        self.server.shutdown.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

impl Server {
    /// Binds both listeners and starts serving.
    pub async fn start(cfg: ServerConfig) -> anyhow::Result<ServerHandle> {
        std::fs::create_dir_all(&cfg.data_dir)
            .map_err(|e| anyhow::anyhow!("data dir {}: {e}", cfg.data_dir.display()))?;
        let store = Store::open(&cfg.data_dir.join("voi-server.redb"))?;
        let api_token = match &cfg.api_token {
            Some(t) => t.clone(),
            None => load_or_create_token(&cfg.data_dir.join("api-token"))?,
        };
        let listener = TcpListener::bind(&cfg.listen)
            .await
            .map_err(|e| anyhow::anyhow!("listen {}: {e}", cfg.listen))?;
        let api_listener = TcpListener::bind(&cfg.api_listen)
            .await
            .map_err(|e| anyhow::anyhow!("api listen {}: {e}", cfg.api_listen))?;
        let tracker_listener = TcpListener::bind(&cfg.tracker_listen)
            .await
            .map_err(|e| anyhow::anyhow!("tracker listen {}: {e}", cfg.tracker_listen))?;
        let addr = listener.local_addr()?;
        let api_addr = api_listener.local_addr()?;
        let tracker_addr = tracker_listener.local_addr()?;
        let announce = announce_url(&cfg, tracker_addr, None);
        let images = images::Images::open(
            &cfg.data_dir,
            crate::bt::engine::EngineConfig {
                state_dir: cfg.data_dir.join("bt"),
                listen_port: cfg.bt_listen_port,
                upload_limit: (cfg.bt_upload_limit > 0).then_some(cfg.bt_upload_limit),
                download_limit: None,
            },
            announce,
        )
        .await
        .map_err(|e| anyhow::anyhow!("image library: {e:#}"))?;
        let tls = match (&cfg.tls_cert, &cfg.tls_key) {
            (Some(cert), Some(key)) => {
                let (acceptor, fp) = crate::tls::acceptor(cert, key)?;
                log::info!("terminal port speaks TLS; certificate sha256 (pin_sha256) {fp}");
                Some(acceptor)
            }
            (None, None) => None,
            _ => anyhow::bail!("tls_cert and tls_key go together"),
        };
        let server = Arc::new(Server {
            cfg,
            tls,
            store,
            registry: Registry::default(),
            api_token,
            tracker: Arc::new(tracker::Tracker::new(Duration::from_secs(30))),
            tracker_addr,
            images,
            shutdown: CancellationToken::new(),
            seq: AtomicU32::new(0),
            conn_ids: AtomicU64::new(0),
        });
        log::info!("terminal protocol on {addr}, operator API on http://{api_addr}, tracker on {tracker_addr}");

        let mut tasks = Vec::new();
        let s = server.clone();
        tasks.push(tokio::spawn(async move { s.accept_loop(listener).await }));
        let s = server.clone();
        tasks.push(tokio::spawn(
            async move { api::serve(s, api_listener).await },
        ));
        let (t, stop) = (server.tracker.clone(), server.shutdown.clone());
        let torrents = images::router(server.images.clone());
        tasks.push(tokio::spawn(async move {
            tracker::serve(t, tracker_listener, stop, torrents).await
        }));
        let s = server.clone();
        tasks.push(tokio::spawn(async move { s.images_loop().await }));
        let s = server.clone();
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            let close_after = Duration::from_secs(s.cfg.idle_close_secs);
            loop {
                tokio::select! {
                    _ = tick.tick() => s.registry.sweep(s.cfg.offline_after(), close_after),
                    _ = s.shutdown.cancelled() => break,
                }
            }
        }));
        Ok(ServerHandle {
            server,
            addr,
            api_addr,
            tasks,
        })
    }

    async fn accept_loop(self: Arc<Self>, listener: TcpListener) {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = self.shutdown.cancelled() => break,
            };
            match accepted {
                Ok((stream, peer)) => {
                    let id = self.conn_ids.fetch_add(1, Ordering::Relaxed);
                    let s = self.clone();
                    tokio::spawn(async move { conn::accept(s, stream, peer, id).await });
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    log::error!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    /// Settles uploads (then tells their terminals with 1021) every second
    /// and rescans the image directory now and then.
    async fn images_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut last_scan = std::time::Instant::now();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.shutdown.cancelled() => break,
            }
            for up in self.images.settle_uploads().await {
                let params = serde_json::json!({ "torrent_id": up.torrent_id });
                match self
                    .push(
                        &up.mac,
                        ServiceCode::BtTaskComplete,
                        params,
                        Duration::from_secs(10),
                    )
                    .await
                {
                    Ok((_, env)) => {
                        log::info!("bt_task_complete to {}: {} {}", up.mac, env.code, env.msg);
                        self.images.mark_notified(&up.torrent_id);
                    }
                    Err(e) => log::debug!("bt_task_complete to {}: {e}", up.mac),
                }
            }
            if last_scan.elapsed() >= images::RESCAN {
                last_scan = std::time::Instant::now();
                if let Err(e) = self.images.scan().await {
                    log::error!("image scan: {e:#}");
                }
            }
        }
        self.images.stop().await;
    }

    /// The URL a terminal fetches a layer's torrent from (tracker port).
    pub fn torrent_url(&self, layer: &str, local: Option<SocketAddr>) -> String {
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

    /// Sends 1008 and then one 1015 per layer of the group the library
    /// holds, each waited for. Returns the layers sent.
    pub async fn download_desktop(
        &self,
        mac: &str,
        group_uuid: &str,
        timeout: Duration,
    ) -> Result<Vec<Value>, PushError> {
        use crate::protocol::torrent_struct::SendTorrent;
        let groups = self.store.groups()?;
        let g = groups
            .iter()
            .find(|g| g.desktop_group_uuid == group_uuid)
            .ok_or_else(|| PushError::Bad(format!("no desktop group {group_uuid}")))?;
        let mut layers = Vec::new();
        let mut missing = Vec::new();
        for d in &g.disks {
            let name = format!("{}_{}_{}", d.prefix, d.dif_level, d.uuid);
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
        let (_, env) = self
            .push(
                mac,
                ServiceCode::DownloadDesktop,
                serde_json::json!({ "desktop": desktop }),
                timeout,
            )
            .await?;
        if !env.is_ok() {
            return Err(PushError::Bad(format!(
                "download_desktop refused: {} {}",
                env.code, env.msg
            )));
        }
        let mut sent = Vec::new();
        for (d, img) in layers {
            let task_uuid = uuid::Uuid::new_v4().hyphenated().to_string();
            let body = SendTorrent {
                uuid: d.uuid.clone(),
                disk_type: d.disk_type.clamp(0, 2) as i8,
                sys_type: g.os_sys_type.clamp(0, i64::from(i8::MAX)) as i8,
                dif_level: d.dif_level.clamp(0, 5) as i32,
                real_size: d.real_size.0,
                space_size: d.reserve_size.0,
                file_size: img.length.div_ceil(512),
                task_uuid: task_uuid.clone(),
                group_uuid: g.desktop_group_uuid.clone(),
                operate_id: u32::try_from(d.operate_id).unwrap_or(0),
                torrent: img.torrent.clone(),
            };
            let env = self
                .push_binary(
                    mac,
                    ServiceCode::SendTorrent,
                    body.encode(),
                    BatchNo::Text(task_uuid.clone()),
                    timeout,
                )
                .await?;
            sent.push(serde_json::json!({
                "layer": img.layer.to_string(), "task_uuid": task_uuid,
                "code": env.code, "msg": env.msg,
            }));
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
        self.before_push(&mac, code, &mut params)?;
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
        let rx = self.registry.expect_reply(code as u32, &mac, &batch);
        if let Err(e) = self.send_command(&mac, code, params).await {
            self.registry.forget_reply(code as u32, &mac, &batch);
            return Err(e);
        }
        let env = self.await_reply(rx, code, mac, &batch, timeout).await?;
        Ok((batch, env))
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
    ) -> Result<(), PushError> {
        let Value::Object(map) = params else {
            return Err(PushError::Bad("params must be a JSON object".into()));
        };
        let str_of = |k: &str| map.get(k).and_then(|v| v.as_str()).map(str::to_string);
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
                let rec = self.store.update_terminal(mac, |r| {
                    r.config.conf_version += 1;
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
                })?;
                map.entry("conf_version")
                    .or_insert(Value::from(rec.config.conf_version));
            }
            ServiceCode::Delete => {
                self.store.delete_terminal(mac)?;
            }
            _ => {}
        }
        Ok(())
    }
}

fn load_or_create_token(path: &std::path::Path) -> anyhow::Result<String> {
    if let Ok(t) = std::fs::read_to_string(path) {
        let t = t.trim().to_string();
        if !t.is_empty() {
            return Ok(t);
        }
    }
    let mut bytes = [0u8; 24];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .map_err(|e| anyhow::anyhow!("cannot read /dev/urandom: {e}"))?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    crate::fsutil::atomic_write(path, token.as_bytes())?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(token)
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
