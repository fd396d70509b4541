//! Starting the server: the store, the listeners (terminal port, operator
//! API, tracker), the image library, and the loops that keep them going.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::config::ServerConfig;
use super::conn_shares::ConnShares;
use super::limits::{RefusedLog, Slot};
use super::registry::Registry;
use super::service::{announce_url, Server};
use super::store::Store;
use super::{api, conn, images, tracker};
use crate::protocol::ServiceCode;

pub struct ServerHandle {
    pub server: Arc<Server>,
    pub addr: SocketAddr,
    pub api_addr: SocketAddr,
    tasks: Vec<JoinHandle<()>>,
    /// This server's hold on its data dir, given up by `stop`.
    _dir_lock: crate::fsutil::DirLock,
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
        Self::start_with_clock(cfg, Arc::new(super::wake::clock::SystemClock)).await
    }

    /// As `start`, with the wall clock the class schedule reads.
    pub async fn start_with_clock(
        cfg: ServerConfig,
        clock: Arc<dyn super::wake::clock::Clock>,
    ) -> anyhow::Result<ServerHandle> {
        std::fs::create_dir_all(&cfg.data_dir)
            .map_err(|e| anyhow::anyhow!("data dir {}: {e}", cfg.data_dir.display()))?;
        let dir_lock =
            crate::fsutil::lock_dir(&cfg.data_dir, "voi-server").map_err(anyhow::Error::msg)?;
        let store = Store::open(&cfg.data_dir.join("voi-server.redb"))?;
        let api_token = match &cfg.api_token {
            Some(t) => t.clone(),
            None => load_or_create_token(&cfg.data_dir.join("api-token"))?,
        };
        let admin_password_md5 = super::admin_password::load_or_create(
            cfg.admin_password_md5.as_deref(),
            &cfg.data_dir,
        )?;
        let listener = bind_terminal_port(&cfg.listen)
            .await
            .map_err(|e| anyhow::anyhow!("listen {}: {e}", cfg.listen))?;
        // Each terminal holds a socket.
        crate::cli_support::raise_open_file_limit();
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
        let manifest_key = load_or_create_signing_key(&cfg)?;
        let offline_admin = crate::offline_admin::OfflineAdmin::make(
            &cfg.admin_user,
            &admin_password_md5,
            &manifest_key,
        );
        let release_key = match &cfg.release_signing_key {
            Some(path) => read_signing_key(path)?,
            None => manifest_key.clone(),
        };
        let upgrades = Arc::new(super::upgrades::Upgrades::new(&cfg.data_dir, release_key));
        upgrades.number_old_releases();
        let images = images::Images::open(
            &cfg.data_dir,
            crate::bt::engine::EngineConfig {
                state_dir: cfg.data_dir.join("bt"),
                listen_port: cfg.bt_listen_port,
                upload_limit: (cfg.bt_upload_limit > 0).then_some(cfg.bt_upload_limit),
                download_limit: None,
                piece_sha256: false,
                // A seeder writes nothing.
                write_buffer_mib: 0,
            },
            announce,
            manifest_key,
            Duration::from_millis(cfg.library_settle_ms),
        )
        .await
        .map_err(|e| anyhow::anyhow!("image library: {e:#}"))?;
        log::info!(
            "layer manifests are signed; agents verify with [bt] manifest_key = \"{}\"",
            images.manifest_public_key()
        );
        let tls = match (&cfg.tls_cert, &cfg.tls_key) {
            (Some(cert), Some(key)) => {
                let (acceptor, fp) = crate::tls::acceptor(cert, key, cfg.tls_client_ca.as_deref())?;
                log::info!("terminal port speaks TLS; certificate sha256 (pin_sha256) {fp}");
                if let Some(ca) = &cfg.tls_client_ca {
                    log::info!(
                        "terminals must present a certificate from {} naming their MAC",
                        ca.display()
                    );
                }
                Some(acceptor)
            }
            (None, None) if cfg.tls_client_ca.is_some() => {
                anyhow::bail!("tls_client_ca needs tls_cert and tls_key")
            }
            (None, None) => None,
            _ => anyhow::bail!("tls_cert and tls_key go together"),
        };
        let cfg_limits = cfg.limits.clone();
        let tokens =
            super::tokens::Tokens::new(&api_token, &cfg.api_tokens).map_err(anyhow::Error::msg)?;
        let server = Arc::new(Server {
            cfg,
            tls,
            store,
            registry: Registry::default(),
            tokens,
            api_token,
            tracker: Arc::new(tracker::Tracker::new(
                Duration::from_secs(30),
                cfg_limits.clone(),
            )),
            tracker_addr,
            images,
            shutdown: CancellationToken::new(),
            seq: AtomicU32::new(0),
            conn_ids: AtomicU64::new(0),
            counters: Default::default(),
            log_uploads: Default::default(),
            upgrades,
            admin_password_md5,
            admin_guesses: Default::default(),
            offline_admin,
            metrics: Default::default(),
            wakes: Default::default(),
            clock,
            schedule_runs: Default::default(),
        });
        log::info!("terminal protocol on {addr}, operator API on http://{api_addr}, tracker on {tracker_addr}");
        // The library was scanned when it opened: its layer versions (and
        // the groups' numbers) are brought in line before any terminal asks.
        if let Err(e) = server.sync_layer_versions(None) {
            log::error!("layer versions: {e}");
        }

        let mut tasks = Vec::new();
        let s = server.clone();
        tasks.push(tokio::spawn(async move { s.accept_loop(listener).await }));
        let s = server.clone();
        tasks.push(tokio::spawn(
            async move { api::serve(s, api_listener).await },
        ));
        let weak = Arc::downgrade(&server);
        server.tracker.set_origin(
            Arc::new(move |hash, from| {
                weak.upgrade().is_some_and(|s| {
                    s.images.knows_info_hash(hash)
                        || s.registry.any_connected_from(
                            &s.images.upload_expected_from(),
                            std::net::IpAddr::V4(from),
                        )
                })
            }),
            server.images.listen_port(),
        );
        let (t, stop) = (server.tracker.clone(), server.shutdown.clone());
        let weak = Arc::downgrade(&server);
        let torrents = images::router(
            server.images.clone(),
            Arc::new(move |layer: &str| {
                weak.upgrade()
                    .map(|s| s.layer_operate_id(layer))
                    .unwrap_or(0)
            }),
        )
        .merge(super::upgrades::serve::router(server.upgrades.clone()));
        let limits = server.cfg.limits.clone();
        tasks.push(tokio::spawn(async move {
            tracker::serve(t, tracker_listener, stop, torrents, &limits).await
        }));
        let s = server.clone();
        tasks.push(tokio::spawn(async move { s.images_loop().await }));
        let s = server.clone();
        tasks.push(tokio::spawn(async move { s.pending_loop().await }));
        let s = server.clone();
        tasks.push(tokio::spawn(async move { s.schedule_loop().await }));
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
        // Reported facts are committed without fsync; one fsync a second
        // makes them durable (`Store::update_terminal_reported`).
        let s = server.clone();
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                let stopping = tokio::select! {
                    _ = tick.tick() => false,
                    _ = s.shutdown.cancelled() => true,
                };
                let store = s.clone();
                let flushed = tokio::task::spawn_blocking(move || store.store.flush()).await;
                if let Ok(Err(e)) = flushed {
                    log::error!("store flush: {e}");
                }
                if stopping {
                    break;
                }
            }
        }));
        Ok(ServerHandle {
            server,
            addr,
            api_addr,
            tasks,
            _dir_lock: dir_lock,
        })
    }

    async fn accept_loop(self: Arc<Self>, listener: TcpListener) {
        let mut refused = RefusedLog::default();
        let limits = &self.cfg.limits;
        let unauthenticated = ConnShares::new(
            "terminal port, before login ([limits] max_unauthenticated)",
            limits.max_unauthenticated,
            limits.max_unauthenticated_per_address,
        );
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = self.shutdown.cancelled() => break,
            };
            match accepted {
                Ok((stream, peer)) => {
                    let limits = &self.cfg.limits;
                    let Some(slot) = Slot::take(&self.counters.connections, limits.max_connections)
                    else {
                        refused.note(peer, "max_connections");
                        continue;
                    };
                    let share = unauthenticated.admit(peer.ip());
                    let id = self.conn_ids.fetch_add(1, Ordering::Relaxed);
                    let s = self.clone();
                    tokio::spawn(async move {
                        conn::accept(s, stream, peer, id, Some(share)).await;
                        drop(slot);
                    });
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    log::error!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    /// Counts pending records for `[limits] max_pending`, and forgets those
    /// not seen for `pending_expire_secs` (not while online).
    async fn pending_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(30));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.shutdown.cancelled() => break,
            }
            self.sweep_pending();
        }
    }

    pub fn sweep_pending(&self) {
        let Ok(all) = self.store.terminals() else {
            return;
        };
        let expire = chrono::Duration::seconds(
            i64::try_from(self.cfg.limits.pending_expire_secs).unwrap_or(i64::MAX / 2),
        );
        let online = self.registry.status(self.cfg.offline_after());
        let now = chrono::Local::now();
        let mut pending = 0;
        for r in all
            .iter()
            .filter(|r| r.admission == super::admission::Admission::Pending)
        {
            let seen = chrono::DateTime::parse_from_rfc3339(&r.last_login).ok();
            let stale = seen.is_none_or(|t| now.signed_duration_since(t) > expire);
            if stale && !online.contains_key(&r.config.mac) {
                match self.store.delete_terminal(&r.config.mac) {
                    Ok(_) => log::info!(
                        "forgot pending terminal {}: not seen for {} s",
                        r.config.mac,
                        self.cfg.limits.pending_expire_secs
                    ),
                    Err(e) => log::warn!("forgetting pending {}: {e}", r.config.mac),
                }
            } else {
                pending += 1;
            }
        }
        self.counters
            .pending
            .store(pending, std::sync::atomic::Ordering::Release);
        // Recount the reports' bytes (`max_report_bytes_total`): the count
        // kept as reports come drifts when records are forgotten.
        let bytes: usize = all
            .iter()
            .flat_map(|r| r.reports.iter())
            .map(|(k, v)| k.len() + serde_json::to_vec(v).map_or(0, |b| b.len()))
            .sum();
        self.counters
            .report_bytes
            .store(bytes as u64, std::sync::atomic::Ordering::Release);
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
            // A file still being copied in is looked at again soon, so it
            // is served a moment after the copy ends, not 30 s later.
            let due = if self.images.settling().is_empty() {
                images::RESCAN
            } else {
                Duration::from_millis(self.cfg.library_settle_ms)
            };
            if last_scan.elapsed() >= due {
                last_scan = std::time::Instant::now();
                if let Err(e) = self.scan_library().await {
                    log::error!("image scan: {e:#}");
                }
            }
        }
        self.images.stop().await;
    }
}

/// The manifest signing key: the configured file, else
/// `<data_dir>/manifest-signing.key`, made (0600) at first start.
/// Terminals queued for `accept` before the kernel drops SYNs (capped by
/// net.core.somaxconn). When a building's power returns every terminal
/// connects in the same second; with the default 1024 the rest wait for
/// SYN retransmits (1 s, 3 s, 7 s) and a room comes up in steps.
const TERMINAL_BACKLOG: u32 = 16384;

async fn bind_terminal_port(addr: &str) -> std::io::Result<TcpListener> {
    let mut last = None;
    for a in tokio::net::lookup_host(addr).await? {
        let socket = if a.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        match socket.bind(a) {
            Ok(()) => return socket.listen(TERMINAL_BACKLOG),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("the address resolves to nothing")))
}

fn signing_key_from(
    path: &std::path::Path,
    text: &str,
) -> anyhow::Result<ed25519_dalek::SigningKey> {
    let bytes: [u8; 32] = crate::bt::manifest::from_hex(text)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| {
            anyhow::anyhow!("{}: not 64 hex characters (an ed25519 key)", path.display())
        })?;
    Ok(ed25519_dalek::SigningKey::from_bytes(&bytes))
}

/// A configured key file; it must exist.
fn read_signing_key(path: &std::path::Path) -> anyhow::Result<ed25519_dalek::SigningKey> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("release signing key {}: {e}", path.display()))?;
    signing_key_from(path, &text)
}

fn load_or_create_signing_key(cfg: &ServerConfig) -> anyhow::Result<ed25519_dalek::SigningKey> {
    let path = cfg
        .manifest_signing_key
        .clone()
        .unwrap_or_else(|| cfg.data_dir.join("manifest-signing.key"));
    match std::fs::read_to_string(&path) {
        Ok(text) => signing_key_from(&path, &text),
        Err(e)
            if e.kind() == std::io::ErrorKind::NotFound && cfg.manifest_signing_key.is_none() =>
        {
            let bytes: [u8; 32] = new_secret_file(&path)?;
            Ok(ed25519_dalek::SigningKey::from_bytes(&bytes))
        }
        Err(e) => anyhow::bail!("manifest signing key {}: {e}", path.display()),
    }
}

fn load_or_create_token(path: &std::path::Path) -> anyhow::Result<String> {
    if let Ok(t) = std::fs::read_to_string(path) {
        let t = t.trim().to_string();
        if !t.is_empty() {
            return Ok(t);
        }
    }
    let bytes: [u8; 24] = new_secret_file(path)?;
    Ok(crate::bt::manifest::to_hex(&bytes))
}

/// N random bytes, written as hex to `path` (atomically, then 0600): the
/// API token and the manifest signing key.
fn new_secret_file<const N: usize>(path: &std::path::Path) -> anyhow::Result<[u8; N]> {
    let mut bytes = [0u8; N];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .map_err(|e| anyhow::anyhow!("cannot read /dev/urandom: {e}"))?;
    crate::fsutil::atomic_write(path, crate::bt::manifest::to_hex(&bytes).as_bytes())?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(bytes)
}
