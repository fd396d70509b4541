//! The BitTorrent engine behind a small surface: add a torrent into a
//! directory, read its progress, remove it. librqbit does the work; agent
//! and server both use this wrapper, so swapping the engine touches one file.
//!
//! Closed-LAN defaults: no DHT, no UPnP, one fixed listen port. The
//! session's own persistence (torrent list plus a piece bitfield per
//! torrent) lives in `state_dir` so a restart resumes without re-hashing
//! whole layers.

use anyhow::Context;
use bytes::Bytes;
use librqbit::dht::Id20;
use librqbit::{
    AddTorrent, AddTorrentOptions, AddTorrentResponse, ManagedTorrent, Session, SessionOptions,
    SessionPersistenceConfig, TorrentStatsState,
};
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Where the session keeps its torrent list and bitfields.
    pub state_dir: PathBuf,
    /// Peer port; 0 picks a free one at start (tests, demos).
    pub listen_port: u16,
    /// Bytes per second; None is unlimited.
    pub upload_limit: Option<u32>,
    pub download_limit: Option<u32>,
    /// Take each downloaded piece's sha256 in the engine's own SHA-1 read
    /// (patch 12), for a downloader that checks a layer against its
    /// manifest's piece list; a seeder has no use for it.
    pub piece_sha256: bool,
    /// Received chunks wait in memory, up to this many MiB, for the disk
    /// writers that write and check them, so receiving goes on while a
    /// piece is hashed; 0 writes and checks in the receiving task.
    pub write_buffer_mib: usize,
}

/// One torrent's progress, engine-neutral.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskStats {
    pub phase: Phase,
    pub have_bytes: u64,
    pub total_bytes: u64,
    pub uploaded_bytes: u64,
    pub down_bps: u64,
    pub up_bps: u64,
    /// Every piece byte received, duplicates included: above `total_bytes`
    /// when a piece came twice (a steal, or the end game).
    pub fetched_bytes: u64,
    /// Pieces re-requested from another peer because the first was slow.
    pub steals: usize,
    /// Bytes of pieces that failed their check (lies, or a broken disk).
    pub wasted_bytes: u64,
    /// Peers banned from this torrent for sending such pieces.
    pub banned_peers: u32,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Hashing what is already on disk.
    Checking,
    Downloading,
    /// Complete and serving pieces.
    Seeding,
    Paused,
    Failed,
}

impl Phase {
    /// The state word of 9025 bt_task_state.
    pub fn wire(self) -> &'static str {
        match self {
            Phase::Checking => "checking",
            Phase::Downloading => "downloading",
            Phase::Seeding => "seeding",
            Phase::Paused => "paused",
            Phase::Failed => "error",
        }
    }
}

/// A piece's sha256 as the engine checked it, with the piece's write count
/// at that moment (see `Engine::piece_writes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PieceDigest {
    pub sha256: [u8; 32],
    pub writes: u32,
}

pub struct Engine {
    session: Arc<Session>,
    /// Bytes uploaded by torrents since removed (a layer replaced in the
    /// library), so `uploaded_total` never goes back.
    uploaded_by_removed: std::sync::atomic::AtomicU64,
}

/// The longest a re-add waits for a restored torrent's check to end (a
/// 30 GB layer at a slow disk's 100 MB/s takes 5 minutes).
const INITIAL_CHECK_WAIT: std::time::Duration = std::time::Duration::from_secs(600);

/// The BitTorrent port is held by another program (or another instance).
#[derive(Debug, thiserror::Error)]
#[error("BitTorrent port {port} is in use ({error}): another program holds it; retrying")]
pub struct PortBusy {
    pub port: u16,
    pub error: std::io::Error,
}

/// Whether an engine start failed only because its port is taken.
pub fn is_port_busy(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<PortBusy>().is_some()
            || c.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::AddrInUse)
    })
}

fn mib_to_bps(mbps: f64) -> u64 {
    (mbps * 1024.0 * 1024.0).max(0.0) as u64
}

impl Engine {
    pub async fn start(cfg: &EngineConfig) -> anyhow::Result<Engine> {
        std::fs::create_dir_all(&cfg.state_dir)
            .with_context(|| format!("creating {}", cfg.state_dir.display()))?;
        // librqbit announces the port it was given, so "any port" (0) is
        // resolved here to a concrete free one.
        let port = match cfg.listen_port {
            0 => std::net::TcpListener::bind(("0.0.0.0", 0))
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
                .context("finding a free port")?,
            p => {
                // A busy port is a busy port, not damaged session state.
                if let Err(e) = std::net::TcpListener::bind(("0.0.0.0", p)) {
                    anyhow::bail!(PortBusy { port: p, error: e });
                }
                p
            }
        };
        let options = |_: &EngineConfig| {
            let ports = port..port.saturating_add(1);
            SessionOptions {
                disable_dht: true,
                disable_dht_persistence: true,
                enable_upnp_port_forwarding: false,
                listen_port_range: Some(ports),
                fastresume: true,
                // librqbit drops a peer silent for its read timeout (10 s)
                // but sends keep-alives only every 120 s, so two terminals
                // with nothing to trade yet would cut each other off and
                // not meet again until the next announce. Keep-alives
                // well inside the timeout keep the room's mesh up.
                peer_opts: Some(librqbit::PeerConnectionOptions {
                    connect_timeout: Some(std::time::Duration::from_secs(5)),
                    read_write_timeout: Some(std::time::Duration::from_secs(30)),
                    keep_alive_interval: Some(std::time::Duration::from_secs(10)),
                }),
                persistence: Some(SessionPersistenceConfig::Json {
                    folder: Some(cfg.state_dir.join("session")),
                }),
                ratelimits: librqbit::limits::LimitsConfig {
                    upload_bps: cfg.upload_limit.and_then(NonZeroU32::new),
                    download_bps: cfg.download_limit.and_then(NonZeroU32::new),
                },
                piece_sha256: cfg.piece_sha256,
                defer_writes_up_to: (cfg.write_buffer_mib > 0).then_some(cfg.write_buffer_mib),
                // Two writers: on two cores, one piece is hashed while the
                // next is written (librqbit patch 13).
                disk_writers: 2,
                ..Default::default()
            }
        };
        let default_dir = cfg.state_dir.join("unsorted");
        let session = match Session::new_with_opts(default_dir.clone(), options(cfg)).await {
            Ok(s) => s,
            Err(e) if is_port_busy(&e) => return Err(e),
            Err(e) => {
                // A session database damaged by a power cut must not keep
                // the terminal from ever seeding again: set it aside and
                // start empty (the owner re-adds its torrents, which are
                // then fully re-checked).
                let bad = cfg.state_dir.join("session");
                let aside = cfg.state_dir.join(format!(
                    "session.broken-{}",
                    chrono::Local::now().timestamp()
                ));
                log::error!(
                    "BitTorrent session state unusable ({e:#}); moving it to {}",
                    aside.display()
                );
                std::fs::rename(&bad, &aside)
                    .with_context(|| format!("moving {} aside", bad.display()))?;
                Session::new_with_opts(default_dir, options(cfg)).await?
            }
        };
        Ok(Engine {
            session,
            uploaded_by_removed: Default::default(),
        })
    }

    pub fn listen_port(&self) -> Option<u16> {
        self.session.tcp_listen_port()
    }

    /// Adds a torrent whose data lives (or will live) in `dir`. Adding one
    /// the session already holds returns the same info hash. The engine
    /// picks pieces rarest-first with random ties (patch 7 in
    /// vendor/librqbit), so terminals that start together fetch different
    /// pieces from the server and trade them.
    pub async fn add(
        &self,
        torrent: Bytes,
        dir: &Path,
        trackers: &[String],
    ) -> anyhow::Result<String> {
        let opts = || AddTorrentOptions {
            output_folder: Some(dir.to_string_lossy().into_owned()),
            overwrite: true,
            trackers: if trackers.is_empty() {
                None
            } else {
                Some(trackers.to_vec())
            },
            ..Default::default()
        };
        let resp = self
            .session
            .add_torrent(AddTorrent::from_bytes(torrent.clone()), Some(opts()))
            .await?;
        let handle = match resp {
            AddTorrentResponse::Added(_, h) => h,
            AddTorrentResponse::AlreadyManaged(id, h) => {
                // Restored from the session's persistence with the trackers
                // of an earlier run; librqbit keeps those and ignores ours.
                // If the tracker moved (a new address or port), re-add it,
                // which costs one re-check of the data.
                let known = &h.shared().trackers;
                let moved = trackers
                    .iter()
                    .filter_map(|t| reqwest::Url::parse(t).ok())
                    .any(|t| !known.contains(&t));
                if moved {
                    log::info!(
                        "{}: its tracker moved; re-adding it",
                        h.info_hash().as_string()
                    );
                    // A torrent restored at start is still checking its
                    // data. Deleting it then leaves that check running, and
                    // when it ends it rewrites the piece bitfield file the
                    // re-added torrent already maps: a server found its own
                    // library layer empty and "downloaded" it forever. Let
                    // the check end first.
                    let started = std::time::Instant::now();
                    while matches!(h.stats().state, TorrentStatsState::Initializing)
                        && started.elapsed() < INITIAL_CHECK_WAIT
                    {
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                    self.session.delete(id.into(), false).await?;
                    match self
                        .session
                        .add_torrent(AddTorrent::from_bytes(torrent), Some(opts()))
                        .await?
                    {
                        AddTorrentResponse::Added(_, h)
                        | AddTorrentResponse::AlreadyManaged(_, h) => h,
                        AddTorrentResponse::ListOnly(_) => {
                            anyhow::bail!("engine answered list-only")
                        }
                    }
                } else {
                    h
                }
            }
            AddTorrentResponse::ListOnly(_) => anyhow::bail!("engine answered list-only"),
        };
        Ok(handle.info_hash().as_string())
    }

    fn handle(&self, info_hash: &str) -> Option<Arc<ManagedTorrent>> {
        let id: Id20 = info_hash.parse().ok()?;
        self.session.get(id.into())
    }

    pub fn contains(&self, info_hash: &str) -> bool {
        self.handle(info_hash).is_some()
    }

    /// Resolves when the engine holds every piece of the torrent, or at
    /// once when it does not know it.
    /// Also resolves within a second of the torrent leaving the session
    /// (a cancelled download), so the wait never holds on to it.
    pub fn completion(
        &self,
        info_hash: &str,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let handle = self.handle(info_hash);
        let session = Arc::downgrade(&self.session);
        async move {
            let Some(h) = handle else { return };
            let id = h.info_hash();
            loop {
                tokio::select! {
                    _ = h.wait_until_completed() => return,
                    _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {
                        let still_ours = session
                            .upgrade()
                            .and_then(|s| s.get(id.into()))
                            .is_some_and(|now| Arc::ptr_eq(&now, &h));
                        if !still_ours {
                            return;
                        }
                    }
                }
            }
        }
    }

    /// Which pieces the engine has written and checked (patch 6 in
    /// vendor/librqbit).
    pub fn have_pieces(&self, info_hash: &str) -> Option<Vec<bool>> {
        self.handle(info_hash)?.have_pieces()
    }

    /// The sha256 of each piece the engine downloaded and checked in this
    /// process (patch 12); `None` for pieces it did not.
    pub fn piece_sha256(&self, info_hash: &str) -> Option<Vec<Option<PieceDigest>>> {
        let d = self.handle(info_hash)?.piece_sha256()?;
        Some(
            d.into_iter()
                .map(|d| d.map(|(sha256, writes)| PieceDigest { sha256, writes }))
                .collect(),
        )
    }

    /// Each piece's write count now (patch 15): a digest taken at another
    /// count no longer describes the bytes on disk.
    pub fn piece_writes(&self, info_hash: &str) -> Option<Vec<u32>> {
        self.handle(info_hash)?.piece_writes()
    }

    pub fn stats(&self, info_hash: &str) -> Option<TaskStats> {
        let handle = self.handle(info_hash)?;
        let (wasted_bytes, banned_peers) = handle.wasted_and_banned().unwrap_or_default();
        let s = handle.stats();
        let phase = match s.state {
            TorrentStatsState::Initializing => Phase::Checking,
            TorrentStatsState::Paused => Phase::Paused,
            TorrentStatsState::Error => Phase::Failed,
            TorrentStatsState::Live if s.finished => Phase::Seeding,
            TorrentStatsState::Live => Phase::Downloading,
        };
        let (down_bps, up_bps) = s
            .live
            .as_ref()
            .map(|l| {
                (
                    mib_to_bps(l.download_speed.mbps),
                    mib_to_bps(l.upload_speed.mbps),
                )
            })
            .unwrap_or((0, 0));
        let (fetched_bytes, steals) = s
            .live
            .as_ref()
            .map(|l| (l.snapshot.fetched_bytes, l.snapshot.peer_stats.steals))
            .unwrap_or((0, 0));
        Some(TaskStats {
            phase,
            have_bytes: s.progress_bytes,
            total_bytes: s.total_bytes,
            uploaded_bytes: s.uploaded_bytes,
            down_bps,
            up_bps,
            fetched_bytes,
            steals,
            wasted_bytes,
            banned_peers,
            error: s.error,
        })
    }

    /// The connected peers of a torrent and what each sent us, for the
    /// operator's view and for diagnosing a swarm.
    pub fn peers_json(&self, info_hash: &str) -> serde_json::Value {
        self.handle(info_hash)
            .and_then(|h| h.live())
            .and_then(|l| {
                let all = serde_json::from_value(serde_json::json!({ "state": "All" })).ok()?;
                serde_json::to_value(l.per_peer_stats_snapshot(all)).ok()
            })
            .unwrap_or(serde_json::Value::Null)
    }

    /// Every torrent the session holds, as info hashes.
    pub fn info_hashes(&self) -> Vec<String> {
        self.session.with_torrents(|it| {
            it.map(|(_, h)| h.info_hash().as_string())
                .collect::<Vec<_>>()
        })
    }

    /// Stops a torrent and forgets it. Its files stay where they are.
    pub async fn remove(&self, info_hash: &str) -> anyhow::Result<()> {
        let Ok(id) = info_hash.parse::<Id20>() else {
            anyhow::bail!("{info_hash:?} is not an info hash");
        };
        let Some(handle) = self.session.get(id.into()) else {
            return Ok(());
        };
        self.uploaded_by_removed.fetch_add(
            handle.stats().uploaded_bytes,
            std::sync::atomic::Ordering::Relaxed,
        );
        self.session.delete(id.into(), false).await
    }

    /// Every byte this engine has uploaded since it started, over the
    /// torrents it holds and those it has removed.
    pub fn uploaded_total(&self) -> u64 {
        let live: u64 = self
            .session
            .with_torrents(|it| it.map(|(_, h)| h.stats().uploaded_bytes).sum::<u64>());
        live + self
            .uploaded_by_removed
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A failed torrent (an I/O error, a file removed under it) is restarted
    /// by removing and adding it again.
    pub async fn restart(
        &self,
        info_hash: &str,
        torrent: Bytes,
        dir: &Path,
        trackers: &[String],
    ) -> anyhow::Result<String> {
        self.remove(info_hash).await?;
        self.add(torrent, dir, trackers).await
    }

    pub async fn stop(&self) {
        self.session.stop().await;
    }
}

/// Whole percent of `total` that `have` is, rounded down (what 9025 reports).
pub fn percent(have: u64, total: u64) -> i64 {
    if total == 0 {
        return 0;
    }
    ((have as u128 * 100) / total as u128) as i64
}
