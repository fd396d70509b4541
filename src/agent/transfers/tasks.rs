//! The agent's BitTorrent transfers: layer downloads that join their chain
//! once verified and then seed, and uploads of local layers to the server.
//! See `STATE.md` beside this file.
//!
//! On disk, each transfer is a directory `<disk dir>/.bt/<layer>/` holding
//! `task.json`, `meta.torrent` and, for downloads, `data/<torrent name>`.
//! The directory appears by rename, so a transfer either exists whole or
//! not at all; everything else about it is re-derived at start.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

use crate::agent::desktops::{Adopted, Desktops};
use crate::bt::engine::{Engine, Phase, TaskStats};
use crate::bt::manifest::{self, Fetched, LayerManifest, ManifestPolicy};
use crate::bt::meta::{PieceVerifier, TorrentMeta};
use crate::disk::name::LayerName;
use crate::disk::{DiskError, LayerMeta};
use crate::fsutil;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Download,
    Upload,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Fetching pieces (or checking what a restart left on disk).
    Downloading,
    /// In its chain (downloads) or offered to the server (uploads).
    Seeding,
}

/// What a transfer is, as persisted in `task.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRecord {
    pub layer: String,
    pub kind: Kind,
    pub stage: Stage,
    pub info_hash: String,
    /// The torrent's single file name.
    pub file_name: String,
    pub length: u64,
    #[serde(default)]
    pub task_uuid: String,
    #[serde(default)]
    pub group_uuid: String,
    #[serde(default)]
    pub disk_type: i64,
    #[serde(default)]
    pub operate_id: i64,
    /// Upload: the server's torrent_id, once 9014 was answered.
    #[serde(default)]
    pub torrent_id: String,
    /// The final 9025/9015 has not reached the server yet.
    #[serde(default)]
    pub result_unreported: bool,
}

impl TaskRecord {
    /// A transfer that failed before it existed (its torrent could not be
    /// fetched, the server refused the upload), for the failure report.
    pub fn unstarted(layer: &str, kind: Kind, group_uuid: &str) -> TaskRecord {
        TaskRecord {
            layer: layer.to_string(),
            kind,
            stage: Stage::Downloading,
            info_hash: String::new(),
            file_name: layer.to_string(),
            length: 0,
            task_uuid: String::new(),
            group_uuid: group_uuid.to_string(),
            disk_type: 0,
            operate_id: 0,
            torrent_id: String::new(),
            result_unreported: false,
        }
    }

    /// The torrent_name of 9025, as the original terminal names it.
    pub fn torrent_name(&self) -> String {
        format!("{}.torrent", self.layer)
    }
}

/// A download the server asked for.
#[derive(Debug, Clone)]
pub struct DownloadRequest {
    pub layer: LayerName,
    pub torrent: Bytes,
    pub task_uuid: String,
    pub group_uuid: String,
    pub disk_type: i64,
    pub operate_id: i64,
}

/// What the session should tell the server.
#[derive(Debug, Clone, PartialEq)]
pub enum Report {
    /// 9025 bt_task_state.
    Progress {
        record: TaskRecord,
        stats: TaskStats,
        progress: i64,
        state: &'static str,
    },
    /// 9015 task_result, plus the final 9025: `ok` or failed.
    Finished {
        record: TaskRecord,
        ok: bool,
        why: String,
    },
    /// A layer joined its chain: re-report the desktops.
    LayerReady(String),
}

#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("bad torrent: {0}")]
    Torrent(#[from] crate::bt::meta::MetaError),
    #[error(transparent)]
    Disk(#[from] DiskError),
    #[error("BitTorrent engine: {0}")]
    Engine(String),
    #[error("{0}")]
    Conflict(String),
    #[error("no transfer {0}")]
    Unknown(String),
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    /// Refused for good before; see [`Refusal`].
    #[error("{0}")]
    Refused(String),
}

fn io(what: &Path) -> impl FnOnce(std::io::Error) -> TransferError {
    let w = what.display().to_string();
    move |e| TransferError::Io(w, e)
}

/// How long a finished download waits before asking for its manifest again.
const MANIFEST_RETRY: Duration = Duration::from_secs(10);

struct Live {
    record: TaskRecord,
    torrent: Bytes,
    last_report: Option<Instant>,
    /// Finishing runs off the async threads; at most once at a time.
    finishing: bool,
    failures: u32,
    retry_at: Option<Instant>,
    /// The last download rate measured (bytes/s), for the final 9025: the
    /// vendor's server keeps the last rate it hears.
    rate: u64,
    /// When this process took the transfer on, for a rate over the whole
    /// transfer when none was measured (a layer done between two reports).
    started: Instant,
    /// "Every piece is here" was logged for it.
    said_complete: bool,
}

pub struct Transfers {
    engine: Engine,
    /// "The server publishes no manifests" was logged.
    said_no_manifest: std::sync::atomic::AtomicBool,
    desktops: Arc<Desktops>,
    root: PathBuf,
    tasks: Mutex<BTreeMap<String, Live>>,
    trackers: Mutex<Vec<String>>,
    /// The management server's address: its tracker port is one more place
    /// a manifest may be published when 9019 named no tracker.
    server_host: Mutex<Option<String>>,
    reports: mpsc::UnboundedSender<Report>,
    progress_every: Duration,
    manifests: ManifestPolicy,
    /// With a key, only a manifest it signed makes a layer bootable.
    manifest_key: Option<ed25519_dalek::VerifyingKey>,
    /// One `download` at a time: a layer announced twice at once (by 9023
    /// and a 1015 push) must become one transfer, not a clash on its dir.
    starting: tokio::sync::Mutex<()>,
    /// Each download's check so far (pieces read back and hashed while it
    /// arrives); `None` inside while `finish` has taken it.
    verifiers: Mutex<BTreeMap<String, Verifier>>,
    /// Runs a supervisor pass now: a download the engine just completed is
    /// finished at once instead of at the next quarter-second tick.
    wake: Arc<tokio::sync::Notify>,
    /// Layers whose content was found wrong for good, by layer name: not
    /// fetched again until the server offers another copy.
    refused: Mutex<BTreeMap<String, Refusal>>,
}

/// A layer refused for its content (wrong backing, bad manifest, refused
/// signature, not qcow2): a copy with the same info hash, or announced at
/// the same operate_id, would be refused again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    pub info_hash: String,
    pub operate_id: i64,
    pub reason: String,
}

/// `<disk dir>/.bt/refused.json`.
const REFUSED_FILE: &str = "refused.json";
/// Most refusals remembered; the oldest is forgotten first.
const MAX_REFUSED: usize = 64;

type Verifier = Arc<Mutex<Option<PieceVerifier>>>;

/// Most a verifier reads in one step: a step holds its layer's verifier.
const VERIFY_STEP: u64 = 256 << 20;

impl Transfers {
    /// Starts the engine's view of every transfer found on disk: downloads
    /// resume, finished layers seed again, leftovers are removed.
    pub async fn open(
        engine: Engine,
        desktops: Arc<Desktops>,
        progress_every: Duration,
        manifests: ManifestPolicy,
        manifest_key: Option<ed25519_dalek::VerifyingKey>,
    ) -> Result<(Arc<Transfers>, mpsc::UnboundedReceiver<Report>), TransferError> {
        let root = desktops.store.dir().join(".bt");
        std::fs::create_dir_all(&root).map_err(io(&root))?;
        let (tx, rx) = mpsc::unbounded_channel();
        let t = Arc::new(Transfers {
            said_no_manifest: Default::default(),
            engine,
            desktops,
            root,
            tasks: Mutex::new(BTreeMap::new()),
            trackers: Mutex::new(Vec::new()),
            server_host: Mutex::new(None),
            reports: tx,
            progress_every,
            manifests,
            manifest_key,
            starting: tokio::sync::Mutex::new(()),
            verifiers: Mutex::new(BTreeMap::new()),
            wake: Arc::new(tokio::sync::Notify::new()),
            refused: Mutex::new(BTreeMap::new()),
        });
        t.load_refused();
        t.restore().await?;
        Ok((t, rx))
    }

    fn tasks(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Live>> {
        self.tasks.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn verifiers(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Verifier>> {
        self.verifiers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads back and hashes the pieces the engine has while the layer
    /// downloads, so its check is mostly done when the last piece lands.
    /// One step per layer at a time, off the async threads.
    fn verify_ahead(self: &Arc<Self>, rec: &TaskRecord, torrent: &Bytes) {
        let verifier = {
            let mut all = self.verifiers();
            if let Some(v) = all.get(&rec.layer) {
                v.clone()
            } else {
                let Ok(meta) = TorrentMeta::parse(torrent) else {
                    return;
                };
                let v = Arc::new(Mutex::new(Some(PieceVerifier::new(meta))));
                all.insert(rec.layer.clone(), v.clone());
                v
            }
        };
        let (me, path, hash) = (self.clone(), self.data_file(rec), rec.info_hash.clone());
        tokio::task::spawn_blocking(move || {
            // A step already running holds the lock: skip this tick.
            let Ok(mut guard) = verifier.try_lock() else {
                return;
            };
            let Some(v) = guard.as_mut() else { return };
            let Some(view) = me.engine_view(&hash) else {
                return;
            };
            match v.advance(&path, &view, false, VERIFY_STEP) {
                // What was checked goes to the disk now, so the fsync before
                // the layer joins its chain has only the last pieces left.
                Ok(done) if done.pieces > 0 => {
                    if let Err(e) = std::fs::File::open(&path).and_then(|f| f.sync_data()) {
                        log::debug!("{}: {e}", path.display());
                    }
                }
                Ok(_) => {}
                Err(e) => log::debug!("{}: checking ahead: {e}", path.display()),
            }
        });
    }

    /// What the engine says of a layer's pieces now. The write counts are
    /// taken first, so a write that lands while the pieces are read shows
    /// as a changed count at the next look.
    fn engine_view(&self, info_hash: &str) -> Option<crate::bt::meta::EngineView> {
        let writes = self.engine.piece_writes(info_hash).unwrap_or_default();
        let have = self.engine.have_pieces(info_hash)?;
        let digests = self.engine.piece_sha256(info_hash).unwrap_or_default();
        Some(crate::bt::meta::EngineView {
            have,
            digests,
            writes,
        })
    }

    /// The last download rate measured for a layer (bytes/s), 0 if none.
    pub fn last_rate(&self, layer: &str) -> u64 {
        self.tasks().get(layer).map_or(0, |l| {
            if l.rate > 0 {
                l.rate
            } else {
                let secs = l.started.elapsed().as_secs_f64().max(0.001);
                (l.record.length as f64 / secs) as u64
            }
        })
    }

    /// Queues a report for the server.
    pub fn report(&self, r: Report) {
        let _ = self.reports.send(r);
    }

    pub fn set_trackers(&self, trackers: Vec<String>) {
        *self.trackers.lock().unwrap_or_else(|p| p.into_inner()) = trackers;
    }

    pub fn set_server_host(&self, host: &str) {
        *self.server_host.lock().unwrap_or_else(|p| p.into_inner()) = Some(host.to_string());
    }

    /// Where a layer's manifest may be published: the trackers from 9019,
    /// the torrent's own announce URLs (a vendor server may not answer
    /// 9019), and the server's tracker port.
    fn manifest_sources(&self, torrent: &[u8]) -> Vec<String> {
        let mut all = self.trackers();
        if let Ok(meta) = TorrentMeta::parse(torrent) {
            all.extend(meta.announce);
        }
        let host = self
            .server_host
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(h) = host {
            let h = if h.contains(':') { format!("[{h}]") } else { h };
            all.push(format!(
                "http://{h}:{}/announce",
                crate::protocol::DEFAULT_TRACKER_PORT
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        all.retain(|u| seen.insert(u.clone()));
        all
    }

    fn trackers(&self) -> Vec<String> {
        self.trackers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn listen_port(&self) -> Option<u16> {
        self.engine.listen_port()
    }

    fn dir(&self, layer: &str) -> PathBuf {
        self.root.join(layer)
    }

    fn data_dir(&self, rec: &TaskRecord) -> PathBuf {
        match rec.kind {
            Kind::Download => self.dir(&rec.layer).join("data"),
            Kind::Upload => self.desktops.store.dir().to_path_buf(),
        }
    }

    fn data_file(&self, rec: &TaskRecord) -> PathBuf {
        self.data_dir(rec).join(&rec.file_name)
    }

    /// Every transfer, for status and tests.
    pub fn list(&self) -> Vec<(TaskRecord, Option<TaskStats>)> {
        self.tasks()
            .values()
            .map(|l| (l.record.clone(), self.engine.stats(&l.record.info_hash)))
            .collect()
    }

    pub fn peers_json(&self, layer: &str) -> serde_json::Value {
        let hash = self.tasks().get(layer).map(|l| l.record.info_hash.clone());
        hash.map(|h| self.engine.peers_json(&h))
            .unwrap_or(serde_json::Value::Null)
    }

    pub fn get(&self, layer: &str) -> Option<(TaskRecord, Option<TaskStats>)> {
        self.tasks()
            .get(layer)
            .map(|l| (l.record.clone(), self.engine.stats(&l.record.info_hash)))
    }

    fn load_refused(&self) {
        let path = self.root.join(REFUSED_FILE);
        let loaded: Option<Vec<(String, Refusal)>> = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        if let Some(list) = loaded {
            let mut r = self.refused_map();
            for (layer, refusal) in list.into_iter().take(MAX_REFUSED) {
                r.insert(layer, refusal);
            }
        }
    }

    fn refused_map(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Refusal>> {
        self.refused.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Remembers a permanent refusal, durably (a restart must not fetch
    /// the same wrong layer again).
    fn remember_refusal(&self, layer: &str, refusal: Refusal) {
        let list: Vec<(String, Refusal)> = {
            let mut r = self.refused_map();
            r.insert(layer.to_string(), refusal);
            while r.len() > MAX_REFUSED {
                let Some(first) = r.keys().next().cloned() else {
                    break;
                };
                r.remove(&first);
            }
            r.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
        };
        let path = self.root.join(REFUSED_FILE);
        if let Err(e) = crate::fsutil::write_json(&path, &list) {
            log::error!("{}: {e}", path.display());
        }
    }

    fn forget_refusal(&self, layer: &str) {
        if self.refused_map().remove(layer).is_some() {
            let list = self.refusals();
            let path = self.root.join(REFUSED_FILE);
            if let Err(e) = crate::fsutil::write_json(&path, &list) {
                log::error!("{}: {e}", path.display());
            }
        }
    }

    /// Why a layer will not be fetched: it was refused for good, and the
    /// server offers the same copy (the same info hash, or with none known
    /// yet, the same operate_id).
    pub fn refusal(&self, layer: &str, info_hash: Option<&str>, operate_id: i64) -> Option<String> {
        let r = self.refused_map();
        let refusal = r.get(layer)?;
        let same = match info_hash {
            Some(h) => h == refusal.info_hash,
            None => operate_id == refusal.operate_id,
        };
        same.then(|| refusal.reason.clone())
    }

    /// Every remembered refusal, for `ctl status`.
    pub fn refusals(&self) -> Vec<(String, Refusal)> {
        self.refused_map()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    async fn restore(&self) -> Result<(), TransferError> {
        let mut found = Vec::new();
        for entry in std::fs::read_dir(&self.root).map_err(io(&self.root))? {
            let Ok(entry) = entry else { continue };
            let name = entry.file_name().to_string_lossy().into_owned();
            if name == REFUSED_FILE || name.starts_with(&format!("{REFUSED_FILE}.")) {
                continue;
            }
            let path = entry.path();
            let loaded = (|| {
                LayerName::parse(&name).ok()?;
                let rec: TaskRecord =
                    serde_json::from_slice(&std::fs::read(path.join("task.json")).ok()?).ok()?;
                let torrent = std::fs::read(path.join("meta.torrent")).ok()?;
                (rec.layer == name).then_some((rec, Bytes::from(torrent)))
            })();
            match loaded {
                Some(x) => found.push(x),
                None => {
                    // Half-made (crash before the rename) or foreign.
                    log::info!("removing leftover transfer directory {}", path.display());
                    let _ = std::fs::remove_dir_all(&path);
                }
            }
        }
        let mut keep = Vec::new();
        for (rec, torrent) in found {
            // A seeding layer whose chain file went away or is not the
            // file it adopted (deleted while the agent was down) has
            // nothing left to offer, and must not stand in for the layer.
            if let Err(why) = self.seeding_intact(&rec) {
                log::info!("{}: {why}; the transfer is dropped", rec.layer);
                let _ = std::fs::remove_dir_all(self.dir(&rec.layer));
                continue;
            }
            match self
                .engine
                .add(torrent.clone(), &self.data_dir(&rec), &self.trackers())
                .await
            {
                Ok(_) => {
                    if rec.stage == Stage::Downloading {
                        self.wake_when_complete(&rec.info_hash);
                    }
                    log::info!("{} {:?} resumed ({:?})", rec.layer, rec.kind, rec.stage);
                }
                Err(e) => log::warn!("{}: engine refused it at start: {e:#}", rec.layer),
            }
            if rec.result_unreported {
                let _ = self.reports.send(Report::Finished {
                    record: rec.clone(),
                    ok: true,
                    why: String::new(),
                });
            }
            keep.push(rec.info_hash.clone());
            self.tasks().insert(
                rec.layer.clone(),
                Live {
                    record: rec,
                    torrent,
                    last_report: None,
                    finishing: false,
                    failures: 0,
                    retry_at: None,
                    rate: 0,
                    started: Instant::now(),
                    said_complete: false,
                },
            );
        }
        // The engine remembers torrents across restarts on its own; any it
        // holds that no transfer owns (removed while it was saving) goes.
        for h in self.engine.info_hashes() {
            if !keep.contains(&h) {
                log::info!("dropping engine torrent {h} that no transfer owns");
                let _ = self.engine.remove(&h).await;
            }
        }
        Ok(())
    }

    fn write_record(&self, dir: &Path, rec: &TaskRecord) -> Result<(), TransferError> {
        let p = dir.join("task.json");
        fsutil::write_json(&p, rec).map_err(io(&p))
    }

    /// Creates the transfer's directory whole: built under a temporary
    /// name, synced, then renamed into place.
    fn create_dir(&self, rec: &TaskRecord, torrent: &[u8]) -> Result<(), TransferError> {
        let tmp = self.root.join(format!(".tmp-{}", rec.layer));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
        let tp = tmp.join("meta.torrent");
        fsutil::atomic_write(&tp, torrent).map_err(io(&tp))?;
        self.write_record(&tmp, rec)?;
        let dest = self.dir(&rec.layer);
        std::fs::rename(&tmp, &dest).map_err(io(&dest))?;
        fsutil::sync_dir(&self.root).map_err(io(&self.root))
    }

    /// 1015 / download_url: starts (or confirms) the download of one layer.
    pub async fn download(&self, req: DownloadRequest) -> Result<TaskRecord, TransferError> {
        let meta = TorrentMeta::parse(&req.torrent)?;
        let _one_at_a_time = self.starting.lock().await;
        let layer = req.layer.to_string();
        if let Some(why) = self.refusal(&layer, Some(&meta.info_hash), req.operate_id) {
            return Err(TransferError::Refused(format!(
                "{layer} (info hash {}) was refused before and is not fetched again until the server offers another copy: {why}",
                meta.info_hash
            )));
        }
        let existing = self.tasks().get(&layer).map(|l| l.record.clone());
        if let Some(old) = existing.clone() {
            if let Err(why) = self.seeding_intact(&old) {
                // Never "already seeding" a layer the chain does not hold:
                // drop the task and fetch it again below.
                log::info!("{layer}: {why}; dropping the transfer and fetching it again");
                self.remove(&layer).await?;
            }
        }
        let existing = existing.filter(|_| self.tasks().contains_key(&layer));
        if let Some(old) = existing {
            if old.info_hash == meta.info_hash {
                log::info!("{layer}: already {:?}; nothing to do", old.stage);
                return Ok(old);
            }
            if old.kind == Kind::Upload {
                return Err(TransferError::Conflict(format!(
                    "{layer} is being uploaded; it cannot be replaced now"
                )));
            }
            log::info!("{layer}: a different torrent replaces the running transfer");
            self.remove(&layer).await?;
        }
        if self.desktops.store.path(&req.layer).exists() {
            // A newer version of a layer the chain still holds (the running
            // desktop has it open, so the decision could not delete it yet)
            // is fetched now and goes in once the old copy is gone.
            let held = self
                .desktops
                .catalog()
                .layers
                .get(&layer)
                .map(|m| m.operate_id);
            if held.is_some_and(|op| op >= req.operate_id) {
                return Err(TransferError::Conflict(format!(
                    "{layer} already exists locally; the desktop list must drop it before a new copy is fetched"
                )));
            }
            log::info!(
                "{layer}: operate_id {} is fetched now, beside the copy the chain still holds (operate_id {}); it goes in when that one is gone",
                req.operate_id,
                held.map_or("unknown".to_string(), |o| o.to_string())
            );
        }
        if meta.length == 0 {
            return Err(TransferError::Conflict(format!(
                "{layer}: the torrent is empty"
            )));
        }
        // Space for the whole layer, up front: a download that fills the
        // disk halfway helps nobody.
        self.desktops.store.ensure_space(meta.length)?;
        let rec = TaskRecord {
            layer: layer.clone(),
            kind: Kind::Download,
            stage: Stage::Downloading,
            info_hash: meta.info_hash.clone(),
            file_name: meta.name.clone(),
            length: meta.length,
            task_uuid: req.task_uuid,
            group_uuid: req.group_uuid,
            disk_type: req.disk_type,
            operate_id: req.operate_id,
            torrent_id: String::new(),
            result_unreported: false,
        };
        self.create_dir(&rec, &req.torrent)?;
        if let Err(e) = self
            .engine
            .add(req.torrent.clone(), &self.data_dir(&rec), &self.trackers())
            .await
        {
            let _ = std::fs::remove_dir_all(self.dir(&layer));
            return Err(TransferError::Engine(format!("{e:#}")));
        }
        self.wake_when_complete(&meta.info_hash);
        log::info!(
            "{layer}: downloading {} bytes (info hash {})",
            meta.length,
            meta.info_hash
        );
        self.tasks().insert(
            layer,
            Live {
                record: rec.clone(),
                torrent: req.torrent,
                last_report: None,
                finishing: false,
                failures: 0,
                retry_at: None,
                rate: 0,
                started: Instant::now(),
                said_complete: false,
            },
        );
        Ok(rec)
    }

    /// Whether a transfer of `layer` at version `operate_id` or newer is
    /// under way or done (an older one, seeding the copy a running desktop
    /// still has open, does not count: the new version is fetched).
    pub fn has_version(&self, layer: &str, operate_id: i64) -> bool {
        self.tasks()
            .get(layer)
            .is_some_and(|l| l.record.operate_id >= operate_id)
    }

    /// Whether a finished transfer still stands for its layer: the chain's
    /// file is there, has the torrent's length, and (for a download) is
    /// the very file the transfer adopted (same inode as its data file).
    /// A transfer still downloading is always intact here.
    pub fn seeding_intact(&self, rec: &TaskRecord) -> Result<(), String> {
        use std::os::unix::fs::MetadataExt;
        if rec.stage != Stage::Seeding {
            return Ok(());
        }
        let chain = self.desktops.store.dir().join(&rec.layer);
        let c = std::fs::metadata(&chain)
            .map_err(|_| "the chain no longer holds the layer it seeds".to_string())?;
        if c.len() != rec.length {
            return Err(format!(
                "the chain's file is {} bytes, not the {} the torrent names",
                c.len(),
                rec.length
            ));
        }
        if rec.kind == Kind::Download {
            let d = std::fs::metadata(self.data_file(rec))
                .map_err(|_| "its downloaded file is gone".to_string())?;
            if (d.ino(), d.dev()) != (c.ino(), c.dev()) {
                return Err("the chain's file is not the one this transfer downloaded".to_string());
            }
        }
        Ok(())
    }

    /// Drops every finished transfer whose layer the chain no longer
    /// holds as it was adopted (run at each desktop decision), so a fetch
    /// of that layer starts afresh. Returns the layers dropped.
    pub async fn drop_broken(&self) -> Vec<String> {
        let broken: Vec<(String, String)> = self
            .tasks()
            .values()
            .filter_map(|l| {
                self.seeding_intact(&l.record)
                    .err()
                    .map(|why| (l.record.layer.clone(), why))
            })
            .collect();
        for (layer, why) in &broken {
            log::info!("{layer}: {why}; the transfer is dropped");
            if let Err(e) = self.remove(layer).await {
                log::warn!("{layer}: {e}");
            }
        }
        broken.into_iter().map(|(l, _)| l).collect()
    }

    /// Stops a transfer and removes its directory (a download's partial
    /// file with it). A finished download's layer stays in its chain.
    pub async fn remove(&self, layer: &str) -> Result<TaskRecord, TransferError> {
        let rec = self
            .tasks()
            .remove(layer)
            .map(|l| l.record)
            .ok_or_else(|| TransferError::Unknown(layer.to_string()))?;
        self.verifiers().remove(layer);
        if let Err(e) = self.engine.remove(&rec.info_hash).await {
            log::warn!("{layer}: engine remove: {e:#}");
        }
        let dir = self.dir(layer);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(io(&dir))?;
        }
        Ok(rec)
    }

    /// 1009: stops every download still in progress; returns their layers.
    pub async fn cancel_downloads(&self) -> Vec<String> {
        let running: Vec<String> = self
            .tasks()
            .values()
            .filter(|l| l.record.kind == Kind::Download && l.record.stage == Stage::Downloading)
            .map(|l| l.record.layer.clone())
            .collect();
        for l in &running {
            match self.remove(l).await {
                Ok(_) => log::info!("{l}: download cancelled, partial data removed"),
                Err(e) => log::warn!("{l}: cancel: {e}"),
            }
        }
        running
    }

    /// Stops serving the named layers before the chain changes them.
    pub async fn release(&self, layers: &[String]) {
        for l in layers {
            if self.tasks().contains_key(l) {
                match self.remove(l).await {
                    Ok(_) => log::info!("{l}: no longer seeded (the chain is changing it)"),
                    Err(e) => log::warn!("{l}: release: {e}"),
                }
            }
        }
    }

    /// Stops everything (clear_all_desktop, cancel_send_desktop).
    pub async fn remove_all(&self) -> Vec<String> {
        let all: Vec<String> = self.tasks().keys().cloned().collect();
        for l in &all {
            if let Err(e) = self.remove(l).await {
                log::warn!("{l}: {e}");
            }
        }
        all
    }

    /// Starts offering a local layer for upload; returns its record and
    /// torrent. Seeding lasts until `upload_done`.
    pub async fn start_upload(
        &self,
        layer: &LayerName,
        group_uuid: &str,
        announce: &str,
    ) -> Result<(TaskRecord, Bytes), TransferError> {
        let name = layer.to_string();
        if let Some(l) = self.tasks().get(&name) {
            if l.record.kind == Kind::Upload {
                return Ok((l.record.clone(), l.torrent.clone()));
            }
            return Err(TransferError::Conflict(format!(
                "{name} is being downloaded; it cannot be uploaded now"
            )));
        }
        let path = self.desktops.store.path(layer);
        if !path.exists() {
            return Err(TransferError::Disk(DiskError::Missing(name)));
        }
        let announce = announce.to_string();
        let created = tokio::task::spawn_blocking(move || {
            let len = std::fs::metadata(&path)?.len();
            crate::bt::torrent::create(&path, &announce, crate::bt::torrent::piece_length_for(len))
        })
        .await
        .map_err(|e| TransferError::Engine(e.to_string()))?
        .map_err(io(&self.desktops.store.path(layer)))?;
        let info_hash = created.info_hash_hex();
        let torrent = Bytes::from(created.bytes);
        // An upload serves the chain file itself, under the layer's name.
        let rec = TaskRecord {
            stage: Stage::Seeding,
            info_hash,
            length: created.length,
            ..TaskRecord::unstarted(&name, Kind::Upload, group_uuid)
        };
        self.create_dir(&rec, &torrent)?;
        if let Err(e) = self
            .engine
            .add(torrent.clone(), &self.data_dir(&rec), &self.trackers())
            .await
        {
            let _ = std::fs::remove_dir_all(self.dir(&name));
            return Err(TransferError::Engine(format!("{e:#}")));
        }
        self.tasks().insert(
            name,
            Live {
                record: rec.clone(),
                torrent: torrent.clone(),
                last_report: None,
                finishing: false,
                failures: 0,
                retry_at: None,
                rate: 0,
                started: Instant::now(),
                said_complete: false,
            },
        );
        Ok((rec, torrent))
    }

    /// Records the server's torrent_id for an upload (from the 9014 answer).
    pub fn set_torrent_id(&self, layer: &str, torrent_id: &str) -> Result<(), TransferError> {
        let rec = {
            let mut tasks = self.tasks();
            let l = tasks
                .get_mut(layer)
                .ok_or_else(|| TransferError::Unknown(layer.to_string()))?;
            l.record.torrent_id = torrent_id.to_string();
            l.record.clone()
        };
        self.write_record(&self.dir(layer), &rec)
    }

    /// 1021: the server holds the upload; stop seeding it.
    pub async fn upload_done(&self, torrent_id: &str) -> Result<TaskRecord, TransferError> {
        let layer = self
            .tasks()
            .values()
            .find(|l| {
                l.record.kind == Kind::Upload
                    && (l.record.torrent_id == torrent_id || l.record.info_hash == torrent_id)
            })
            .map(|l| l.record.layer.clone())
            .ok_or_else(|| TransferError::Unknown(torrent_id.to_string()))?;
        self.remove(&layer).await
    }

    /// Marks a transfer's final result as delivered.
    pub fn result_reported(&self, layer: &str) {
        let rec = {
            let mut tasks = self.tasks();
            let Some(l) = tasks.get_mut(layer) else {
                return;
            };
            if !l.record.result_unreported {
                return;
            }
            l.record.result_unreported = false;
            l.record.clone()
        };
        if let Err(e) = self.write_record(&self.dir(layer), &rec) {
            log::warn!("{layer}: {e}");
        }
    }

    /// One pass of the supervisor: progress reports, completions, retries.
    pub async fn tick(self: &Arc<Self>) {
        let now = Instant::now();
        let mut to_finish = Vec::new();
        let mut to_retry = Vec::new();
        let mut to_verify = Vec::new();
        {
            let mut tasks = self.tasks();
            for l in tasks.values_mut() {
                if l.record.kind != Kind::Download || l.record.stage != Stage::Downloading {
                    continue;
                }
                let Some(stats) = self.engine.stats(&l.record.info_hash) else {
                    to_retry.push(l.record.layer.clone());
                    continue;
                };
                if stats.phase == Phase::Failed {
                    if l.retry_at.is_none_or(|t| now >= t) {
                        l.failures += 1;
                        // Errors are retried, slower each time (a vanished
                        // server comes back; a full disk may be cleaned).
                        let wait = Duration::from_secs(2u64.pow(l.failures.min(5)));
                        l.retry_at = Some(now + wait);
                        log::warn!(
                            "{}: {} (retry {} in {wait:?})",
                            l.record.layer,
                            stats.error.clone().unwrap_or_default(),
                            l.failures
                        );
                        to_retry.push(l.record.layer.clone());
                    }
                    continue;
                }
                if stats.phase == Phase::Seeding && !l.finishing {
                    l.finishing = true;
                    to_finish.push(l.record.clone());
                    continue;
                }
                if stats.phase == Phase::Downloading {
                    to_verify.push((l.record.clone(), l.torrent.clone()));
                }
                if l.last_report
                    .is_none_or(|t| now.duration_since(t) >= self.progress_every)
                {
                    l.last_report = Some(now);
                    if stats.down_bps > 0 {
                        l.rate = stats.down_bps;
                    }
                    let progress = percent(stats.have_bytes, stats.total_bytes).min(99);
                    let _ = self.reports.send(Report::Progress {
                        record: l.record.clone(),
                        state: stats.phase.wire(),
                        progress,
                        stats,
                    });
                }
            }
        }
        for layer in to_retry {
            let found = self
                .tasks()
                .get(&layer)
                .map(|l| (l.record.clone(), l.torrent.clone()));
            if let Some((rec, torrent)) = found {
                if let Err(e) = self
                    .engine
                    .restart(
                        &rec.info_hash,
                        torrent,
                        &self.data_dir(&rec),
                        &self.trackers(),
                    )
                    .await
                {
                    log::warn!("{layer}: restart: {e:#}");
                }
            }
        }
        for (rec, torrent) in to_verify {
            self.verify_ahead(&rec, &torrent);
        }
        for rec in to_finish {
            let me = self.clone();
            tokio::spawn(async move { me.finish(rec).await });
        }
    }

    /// A download the engine calls complete: verify every piece and the
    /// qcow2 image, then put it into its chain and keep seeding it.
    async fn finish(self: Arc<Self>, rec: TaskRecord) {
        let layer = rec.layer.clone();
        // A diff waiting for its parent is finished again on every tick
        // until the parent is here: say "every piece is here" once.
        let first = self
            .tasks()
            .get_mut(&layer)
            .is_some_and(|l| !std::mem::replace(&mut l.said_complete, true));
        match self.engine.stats(&rec.info_hash) {
            _ if !first => log::debug!("{layer}: every piece is here; checking again"),
            // What the swarm cost this terminal: bytes received over bytes
            // needed shows pieces fetched twice (steals, end game).
            Some(s) if s.total_bytes > 0 => {
                let (wasted, banned) = (s.wasted_bytes, s.banned_peers);
                log::info!(
                    "{layer}: every piece is here (received {} bytes for {}: {:.3} copies, {} steals; {wasted} bytes in pieces that failed their check, {banned} peers banned for them); checking what is left and linking",
                    s.fetched_bytes,
                    s.total_bytes,
                    s.fetched_bytes as f64 / s.total_bytes as f64,
                    s.steals
                )
            }
            _ => log::info!("{layer}: every piece is here; checking what is left and linking"),
        }
        let found = self
            .tasks()
            .get(&layer)
            .map(|l| (l.torrent.clone(), l.started));
        let Some((torrent, generation)) = found else {
            return;
        };
        let outcome = match self.manifest_for(&rec, &torrent).await {
            Err(finish) => Err(finish),
            Ok(manifest) => {
                let me = self.clone();
                let rec2 = rec.clone();
                tokio::task::spawn_blocking(move || {
                    me.verify_and_adopt(&rec2, &torrent, manifest.as_ref())
                })
                .await
                .unwrap_or_else(|e| Err(Finish::Failed(e.to_string())))
            }
        };
        // Released (a desktop decision deleting the layer) or replaced by a
        // new transfer while it was being checked: what was read may be the
        // new transfer's file, so the verdict is not this transfer's to
        // give. Never a refusal recorded against a copy nobody checked.
        let current = self
            .tasks()
            .get(&layer)
            .is_some_and(|l| l.started == generation && l.record.info_hash == rec.info_hash);
        if !current {
            log::info!(
                "{layer}: the transfer was released while it was being checked; its verdict is dropped"
            );
            return;
        }
        match outcome {
            Ok(adopted) => {
                let mut rec = rec;
                rec.stage = Stage::Seeding;
                rec.result_unreported = true;
                if let Err(e) = self.write_record(&self.dir(&layer), &rec) {
                    log::error!("{layer}: {e}");
                }
                if let Some(l) = self.tasks().get_mut(&layer) {
                    l.record = rec.clone();
                    l.finishing = false;
                }
                log::info!("{layer}: verified and in its chain");
                self.forget_refusal(&layer);
                let _ = self.reports.send(Report::Finished {
                    record: rec,
                    ok: true,
                    why: String::new(),
                });
                let _ = self.reports.send(Report::LayerReady(layer.clone()));
                if adopted == Adopted::Rewritten {
                    log::info!("{layer}: its header was rewritten, so it is not seeded");
                    let _ = self.remove(&layer).await;
                }
            }
            Err(Finish::Wait(why)) => {
                // Said once; it may wait for hours (a lesson).
                if first {
                    log::info!("{layer}: complete, waiting: {why}");
                } else {
                    log::debug!("{layer}: complete, waiting: {why}");
                }
                if let Some(l) = self.tasks().get_mut(&layer) {
                    l.finishing = false;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(Finish::WaitManifest(why)) => {
                log::info!("{layer}: complete, asking again in {MANIFEST_RETRY:?}: {why}");
                // Still "finishing" while it waits, so the supervisor does
                // not start another attempt at every tick.
                tokio::time::sleep(MANIFEST_RETRY).await;
                if let Some(l) = self.tasks().get_mut(&layer) {
                    l.finishing = false;
                }
            }
            Err(Finish::BadData(why)) => {
                // Pieces the engine believed it had are wrong (a stale
                // bitfield after a power cut): start that layer over.
                log::error!("{layer}: {why}; fetching it again");
                let data = self.data_file(&rec);
                let _ = self.engine.remove(&rec.info_hash).await;
                let _ = std::fs::remove_file(&data);
                let torrent = self.tasks().get(&layer).map(|l| l.torrent.clone());
                if let Some(t) = torrent {
                    if let Err(e) = self
                        .engine
                        .add(t, &self.data_dir(&rec), &self.trackers())
                        .await
                    {
                        log::error!("{layer}: {e:#}");
                    }
                }
                if let Some(l) = self.tasks().get_mut(&layer) {
                    l.finishing = false;
                }
            }
            Err(Finish::Refused(why)) => {
                log::error!(
                    "{layer}: refused for good: {why}; not fetched again until the server offers another copy"
                );
                self.remember_refusal(
                    &layer,
                    Refusal {
                        info_hash: rec.info_hash.clone(),
                        operate_id: rec.operate_id,
                        reason: why.clone(),
                    },
                );
                let _ = self.remove(&layer).await;
                let _ = self.reports.send(Report::Finished {
                    record: rec,
                    ok: false,
                    why: format!("refused (permanent, not retried for this copy): {why}"),
                });
            }
            Err(Finish::Failed(why)) => {
                log::error!("{layer}: download unusable: {why}");
                let _ = self.remove(&layer).await;
                let _ = self.reports.send(Report::Finished {
                    record: rec,
                    ok: false,
                    why,
                });
            }
        }
    }

    /// The server's manifest of a layer, as the policy wants it: `None`
    /// when there is nothing to check against.
    async fn manifest_for(
        &self,
        rec: &TaskRecord,
        torrent: &[u8],
    ) -> Result<Option<LayerManifest>, Finish> {
        let layer = rec.layer.as_str();
        if let Some(key) = &self.manifest_key {
            return match manifest::fetch(&self.manifest_sources(torrent), layer).await {
                Fetched::Found(m) => {
                    match m.verify(key).and_then(|()| m.current_for(rec.operate_id)) {
                        Ok(()) => Ok(Some(m)),
                        Err(e) => Err(Finish::Refused(e)),
                    }
                }
                Fetched::NotPublished => Err(Finish::Failed(
                    "a manifest key is configured and the server publishes no manifest for it"
                        .into(),
                )),
                Fetched::NoPublisher(why) | Fetched::Unavailable(why) => Err(Finish::WaitManifest(
                    format!("a signed manifest is required and none could be had: {why}"),
                )),
            };
        }
        if self.manifests == ManifestPolicy::Off {
            return Ok(None);
        }
        match manifest::fetch(&self.manifest_sources(torrent), layer).await {
            Fetched::Found(m) => Ok(Some(m)),
            Fetched::NotPublished if self.manifests == ManifestPolicy::IfPublished => {
                // The vendor's server never publishes one: said once, at
                // INFO (with a key configured this is refused above).
                if !self
                    .said_no_manifest
                    .swap(true, std::sync::atomic::Ordering::Relaxed)
                {
                    log::info!("{layer}: the server publishes no manifests; layers are checked against their torrents (said once)");
                } else {
                    log::debug!("{layer}: no manifest; trusting the torrent");
                }
                Ok(None)
            }
            Fetched::NoPublisher(why) if self.manifests == ManifestPolicy::IfPublished => {
                log::warn!("{layer}: no manifest publisher ({why}); trusting the torrent");
                Ok(None)
            }
            Fetched::NotPublished => Err(Finish::Failed(
                "the server publishes no manifest for it and manifests are required".into(),
            )),
            Fetched::NoPublisher(why) => Err(Finish::WaitManifest(format!(
                "manifests are required and none can be asked for: {why}"
            ))),
            // Never adopt unchecked because the server is briefly away.
            Fetched::Unavailable(why) => {
                Err(Finish::WaitManifest(format!("manifest unavailable: {why}")))
            }
        }
    }

    fn verify_and_adopt(
        &self,
        rec: &TaskRecord,
        torrent: &[u8],
        manifest: Option<&LayerManifest>,
    ) -> Result<Adopted, Finish> {
        let meta = TorrentMeta::parse(torrent).map_err(|e| Finish::Failed(e.to_string()))?;
        let data = self.data_file(rec);
        let name = LayerName::parse(&rec.layer).map_err(|e| Finish::Failed(e.to_string()))?;
        // A crash after the layer went in but before task.json said so.
        let already = {
            use std::os::unix::fs::MetadataExt;
            let a = std::fs::metadata(&data).ok();
            let b = std::fs::metadata(self.desktops.store.path(&name)).ok();
            matches!((a, b), (Some(a), Some(b)) if a.ino() == b.ino() && a.dev() == b.dev())
        };
        // The chain still holds the previous copy (open by the running
        // desktop): this one waits, whole and checked by the engine, and
        // goes in when the decision run after the desktop is off drops it.
        if !already && self.desktops.store.path(&name).exists() {
            return Err(Finish::Wait(
                "the chain still holds the previous copy (the running desktop has it open); this one goes in when the desktop is off".into(),
            ));
        }
        if name.level > 0 {
            let parent = LayerName::new(&name.prefix, i64::from(name.level) - 1, &name.uuid_str())
                .map_err(|e| Finish::Failed(e.to_string()))?
                .to_string();
            // Its parent still to come, or fetched and waiting to replace
            // the copy the chain holds: a diff goes in over the parent it
            // was made on, never over the previous one.
            let parent_pending = self.tasks().get(&parent).is_some_and(|l| {
                l.record.kind == Kind::Download && l.record.stage == Stage::Downloading
            });
            if parent_pending
                || (!self.desktops.store.dir().join(&parent).exists()
                    && self.tasks().contains_key(&parent))
            {
                return Err(Finish::Wait(format!(
                    "its parent {parent} is still downloading"
                )));
            }
        }
        // (piece list hash, whole-file sha256) for the manifest check.
        let (pieces, sha256) = if already {
            (None, None)
        } else {
            // What was checked while the layer arrived counts; only the
            // rest is read now.
            let ahead = self
                .verifiers()
                .remove(&rec.layer)
                .and_then(|v| v.lock().unwrap_or_else(|p| p.into_inner()).take());
            let (checked, from_engine, pieces) = ahead
                .as_ref()
                .map(|v| (v.checked(), v.from_engine(), v.pieces()))
                .unwrap_or((0, 0, meta.piece_count()));
            let started = Instant::now();
            let view = self.engine_view(&rec.info_hash).unwrap_or_default();
            let verdict = match ahead {
                Some(v) => v.finish(&data, &view).map(|p| (Some(p), None)),
                None => meta
                    .verify_file(&data, manifest.is_some())
                    .map(|h| (h.as_ref().map(|h| h.pieces.clone()), h.map(|h| h.whole))),
            };
            log::info!(
                "{}: {checked} of {pieces} pieces were checked while downloading ({from_engine} hashed by the engine as it checked them); the other {} took {:?}",
                rec.layer,
                pieces - checked,
                started.elapsed()
            );
            verdict.map_err(|e| Finish::BadData(e.to_string()))?
        };
        if let Some(m) = manifest {
            let header = crate::disk::qcow2::read_header(&data)
                .map_err(|e| Finish::Refused(format!("not a qcow2 layer: {e}")))?;
            let parent = header.backing_name();
            m.check(
                &rec.layer,
                &rec.info_hash,
                parent.as_deref(),
                &data,
                pieces.as_deref(),
                sha256.as_deref(),
            )
            .map_err(Finish::Refused)?;
            log::info!("{}: matches the server's manifest", rec.layer);
        }
        let layer_meta = LayerMeta {
            operate_id: rec.operate_id,
            disk_type: rec.disk_type,
            group_uuid: rec.group_uuid.clone(),
            local_only: false,
            enabled: true,
            restore: false,
        };
        match self.desktops.adopt_download(&data, &name, layer_meta) {
            Ok(a) => Ok(a),
            Err(DiskError::Missing(parent)) if self.tasks().contains_key(&parent) => Err(
                Finish::Wait(format!("its parent {parent} is still downloading")),
            ),
            // Space and I/O may pass; a layer that is not what its name
            // says will not.
            Err(e @ (DiskError::Io(..) | DiskError::NoSpace { .. } | DiskError::Missing(_))) => {
                Err(Finish::Failed(e.to_string()))
            }
            Err(e) => Err(Finish::Refused(e.to_string())),
        }
    }

    fn wake_when_complete(&self, info_hash: &str) {
        let done = self.engine.completion(info_hash);
        let wake = self.wake.clone();
        tokio::spawn(async move {
            done.await;
            wake.notify_one();
        });
    }

    /// Runs the supervisor until `stop` fires.
    pub async fn run(self: Arc<Self>, stop: tokio_util::sync::CancellationToken) {
        // A quarter second: a finished download is noticed soon (a small
        // layer is otherwise dominated by the wait), and a pass is cheap.
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.tick().await,
                _ = self.wake.notified() => self.tick().await,
                _ = stop.cancelled() => break,
            }
        }
        self.engine.stop().await;
    }
}

enum Finish {
    /// Try again on a later tick (its parent is still arriving, say).
    Wait(String),
    /// The server's manifest could not be had: ask again in a while, not
    /// at every tick.
    WaitManifest(String),
    /// The data does not match the torrent.
    BadData(String),
    /// The layer cannot be used this time (disk full, I/O): a later offer
    /// of the same copy is tried again.
    Failed(String),
    /// The layer's content is wrong (backing, manifest, signature, not
    /// qcow2): the same copy is never fetched again.
    Refused(String),
}

pub use crate::bt::engine::percent;
