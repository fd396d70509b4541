//! The server's image library: every layer file in `<data_dir>/images`
//! (named `prefix_level_uuid`) gets a torrent and is seeded; terminals
//! fetch the torrents from `/torrents/<layer>.torrent` on the tracker's
//! port; uploaded layers arrive through the same engine.
//!
//! Torrents are cached in `<data_dir>/torrents/` with a sidecar recording
//! the image's size and mtime, so a restart does not re-hash 30 GB images.

use anyhow::Context;
use axum::extract::{Path as UrlPath, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::library_check;
use crate::bt::engine::{Engine, EngineConfig, Phase, TaskStats};
use crate::bt::manifest::LayerManifest;
use crate::bt::meta::TorrentMeta;
use crate::disk::name::LayerName;
use crate::fsutil;
use crate::protocol::torrent_struct::UploadTorrent;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Sidecar {
    size: u64,
    mtime_ns: i128,
    info_hash: String,
    /// The manifest's whole-file hash; empty in sidecars older than it.
    #[serde(default)]
    sha256: String,
    /// The manifest's piece list hash; empty in sidecars older than it.
    #[serde(default)]
    piece_sha256: String,
    #[serde(default)]
    parent: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Image {
    pub layer: LayerName,
    pub info_hash: String,
    pub length: u64,
    pub torrent: Bytes,
    pub sha256: String,
    pub piece_sha256: String,
    pub parent: Option<String>,
    /// The disk size the guest sees (the qcow2 header's).
    pub virtual_size: u64,
    /// The file's modification time when it was hashed: a layer replaced
    /// in place with one of the same size is hashed again.
    mtime_ns: i128,
}

impl Image {
    pub fn manifest(&self) -> LayerManifest {
        LayerManifest {
            layer: self.layer.to_string(),
            size: self.length,
            sha256: self.sha256.clone(),
            parent: self.parent.clone(),
            info_hash: self.info_hash.clone(),
            operate_id: 0,
            piece_sha256: (!self.piece_sha256.is_empty()).then(|| self.piece_sha256.clone()),
            signature: None,
        }
    }
}

/// A name a copy in progress goes by: never taken into the library (the
/// README says to copy under such a name and rename when done).
pub fn is_temporary_name(file: &str) -> bool {
    file.starts_with('.') || file.ends_with(".part") || file.ends_with(".tmp")
}

/// An upload from a terminal, until the layer is in the library.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Upload {
    pub torrent_id: String,
    pub mac: String,
    pub layer: String,
    pub info_hash: String,
    pub length: u64,
    /// "downloading", "review" (all here, waiting for an operator to accept
    /// it), "finished" (accepted: in the library), "rejected", "failed: …".
    pub state: String,
    /// 1021 reached the terminal.
    #[serde(default)]
    pub notified: bool,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ImageStatus {
    pub layer: String,
    pub info_hash: String,
    pub length: u64,
    /// The disk size the guest sees (the qcow2 header's), in bytes.
    pub virtual_size: u64,
    pub uploaded_bytes: u64,
    pub state: String,
    pub parent: Option<String>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RefusedImage {
    pub file: String,
    pub reason: String,
}

/// Torrents sent with 1015 whose swarms the tracker keeps, at most.
const MAX_SENT_TORRENTS: usize = 1024;

pub struct Images {
    dir: PathBuf,
    torrents: PathBuf,
    uploads_dir: PathBuf,
    announce: String,
    engine: Engine,
    /// Signs every manifest served (`bt::manifest`).
    signer: ed25519_dalek::SigningKey,
    known: Mutex<BTreeMap<String, Image>>,
    /// Files of the image directory that are not served, with the reason.
    refused: Mutex<BTreeMap<String, String>>,
    uploads: Mutex<BTreeMap<String, Upload>>,
    /// Serialises scans (the periodic one and the API's).
    scan_lock: tokio::sync::Mutex<()>,
    /// Which terminal may upload which disk (by uuid), until when: granted
    /// by a 9018 the server said yes to, or an operator's upload command.
    upload_grants: Mutex<HashMap<String, Vec<(String, Instant)>>>,
    /// How long a new file must hold still before it is taken.
    settle: Duration,
    /// The last size and mtime seen of each file not yet taken, and when.
    sightings: Mutex<HashMap<String, (u64, i128, Instant)>>,
    /// Files seen still changing at the last scan (not taken yet).
    settling: Mutex<Vec<String>>,
    /// Info hashes (hex) of torrents operators sent with 1015, newest last.
    sent_torrents: Mutex<std::collections::VecDeque<String>>,
}

/// How long an upload grant (9018, 1016/1022) stays good.
pub const UPLOAD_GRANT: Duration = Duration::from_secs(15 * 60);

fn mtime_ns(m: &std::fs::Metadata) -> i128 {
    use std::os::unix::fs::MetadataExt;
    i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec())
}

impl Images {
    pub async fn open(
        data_dir: &Path,
        engine_cfg: EngineConfig,
        announce: String,
        signer: ed25519_dalek::SigningKey,
        settle: Duration,
    ) -> anyhow::Result<Arc<Images>> {
        let dir = data_dir.join("images");
        let torrents = data_dir.join("torrents");
        let uploads_dir = data_dir.join("uploads");
        for d in [&dir, &torrents, &uploads_dir] {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        // A busy seeder port is waited for a while (a previous instance
        // still closing), then reported as what it is.
        let mut tries = 0;
        let engine = loop {
            match Engine::start(&engine_cfg).await {
                Ok(e) => break e,
                Err(e) if crate::bt::engine::is_port_busy(&e) && tries < 15 => {
                    tries += 1;
                    log::warn!("{e:#}");
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
                Err(e) => return Err(e),
            }
        };
        let images = Arc::new(Images {
            dir,
            torrents,
            uploads_dir,
            announce,
            engine,
            signer,
            known: Mutex::new(BTreeMap::new()),
            refused: Mutex::new(BTreeMap::new()),
            uploads: Mutex::new(BTreeMap::new()),
            scan_lock: tokio::sync::Mutex::new(()),
            upload_grants: Mutex::new(HashMap::new()),
            settle,
            sightings: Mutex::new(HashMap::new()),
            settling: Mutex::new(Vec::new()),
            sent_torrents: Default::default(),
        });
        images.restore_uploads().await;
        images.scan().await?;
        Ok(images)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The key agents verify manifests with (`[bt] manifest_key`), as hex.
    pub fn manifest_public_key(&self) -> String {
        crate::bt::manifest::to_hex(self.signer.verifying_key().as_bytes())
    }

    /// A layer's manifest at its current version, signed.
    pub fn signed_manifest(&self, layer: &str, operate_id: u32) -> Option<LayerManifest> {
        let mut m = self.get(layer)?.manifest();
        m.operate_id = operate_id;
        m.sign(&self.signer);
        Some(m)
    }

    fn known(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Image>> {
        self.known.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn refused(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, String>> {
        self.refused.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Files of the library that are not served, and why, by file name.
    pub fn refused_list(&self) -> Vec<RefusedImage> {
        self.refused()
            .iter()
            .map(|(file, reason)| RefusedImage {
                file: file.clone(),
                reason: reason.clone(),
            })
            .collect()
    }

    /// Why a layer cannot be served: refused with a reason, or absent.
    pub fn unservable(&self, layer: &str) -> Option<String> {
        if self.known().contains_key(layer) {
            return None;
        }
        Some(match self.refused().get(layer) {
            Some(reason) => format!("{layer} is refused by the image library: {reason}"),
            None => format!("{layer} is not in the image library"),
        })
    }

    fn uploads(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Upload>> {
        self.uploads.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn listen_port(&self) -> Option<u16> {
        self.engine.listen_port()
    }

    pub fn get(&self, layer: &str) -> Option<Image> {
        self.known().get(layer).cloned()
    }

    /// Files of the library seen still changing at the last scan: not
    /// taken until they hold still.
    pub fn settling(&self) -> Vec<String> {
        self.settling
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// One look at the library: the files not yet settled (new or changed
    /// since they were last taken, and not seen with this size and mtime
    /// at least `settle` ago). Temporary names are never looked at.
    fn unsettled(&self) -> Vec<String> {
        let now = Instant::now();
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut sightings = self.sightings.lock().unwrap_or_else(|p| p.into_inner());
        for entry in rd.flatten() {
            let file = entry.file_name().to_string_lossy().into_owned();
            if is_temporary_name(&file) {
                continue;
            }
            let Ok(meta) = entry.metadata() else { continue };
            if !meta.is_file() {
                continue;
            }
            seen.insert(file.clone());
            let (size, mtime) = (meta.len(), mtime_ns(&meta));
            let taken = self
                .known()
                .get(&file)
                .is_some_and(|i| i.length == size && i.mtime_ns == mtime);
            // Hashed in an earlier run at this very size and mtime.
            let cached = || {
                std::fs::read(self.torrents.join(format!("{file}.json")))
                    .ok()
                    .and_then(|b| serde_json::from_slice::<Sidecar>(&b).ok())
                    .is_some_and(|s| s.size == size && s.mtime_ns == mtime)
            };
            if taken || cached() {
                sightings.remove(&file);
                continue;
            }
            match sightings.get(&file) {
                Some(&(s, m, at)) if s == size && m == mtime => {
                    if now.duration_since(at) < self.settle {
                        out.push(file);
                    }
                }
                _ => {
                    sightings.insert(file.clone(), (size, mtime, now));
                    out.push(file);
                }
            }
        }
        sightings.retain(|f, _| seen.contains(f));
        // Bounded by the directory; a directory of millions of files is
        // the operator's, but the table never outgrows what is there.
        out
    }

    /// Torrents for new or changed images, seeding for all; images that
    /// disappeared stop being seeded. A file still being copied in (its
    /// size or mtime moved within `settle`) is left for a later scan, and
    /// names ending `.part` or `.tmp` (or starting with a dot) never count.
    pub async fn scan(&self) -> anyhow::Result<()> {
        let _g = self.scan_lock.lock().await;
        let mut unsettled = self.unsettled();
        if !unsettled.is_empty() {
            // A second look: a finished copy is taken in this scan.
            tokio::time::sleep(self.settle).await;
            unsettled = self.unsettled();
        }
        for f in &unsettled {
            log::info!(
                "image library: {f} is still being written; it is taken once it holds still"
            );
        }
        *self.settling.lock().unwrap_or_else(|p| p.into_inner()) = unsettled.clone();
        // Headers first (cheap), then the library's rules over all of
        // them; only what passes is hashed and seeded.
        let mut dir_entries = Vec::new();
        let mut checked = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let Ok(entry) = entry else { continue };
            let file = entry.file_name().to_string_lossy().into_owned();
            if is_temporary_name(&file) || unsettled.contains(&file) {
                continue;
            }
            let header = match entry.metadata() {
                Ok(m) if m.is_file() => {
                    Some(crate::disk::qcow2::read_header(&entry.path()).map_err(|e| e.to_string()))
                }
                _ => None,
            };
            dir_entries.push(entry);
            checked.push(library_check::Entry { file, header });
        }
        let verdicts = library_check::check(&checked);
        let mut refused = BTreeMap::new();
        for (file, verdict) in &verdicts {
            if let Err(reason) = verdict {
                refused.insert(file.clone(), reason.clone());
            }
        }
        {
            let mut known_refused = self.refused();
            for (file, reason) in &refused {
                if known_refused.get(file) != Some(reason) {
                    log::warn!("image library: {file} is refused: {reason}");
                }
            }
            *known_refused = refused;
        }
        let mut present = Vec::new();
        for (entry, checked) in dir_entries.into_iter().zip(checked) {
            if !matches!(verdicts.get(&checked.file), Some(Ok(()))) {
                continue;
            }
            let Some(Ok(header)) = checked.header else {
                continue;
            };
            let name = checked.file;
            let Ok(layer) = LayerName::parse(&name) else {
                continue;
            };
            let Ok(meta) = entry.metadata() else { continue };
            present.push(name.clone());
            let sidecar_path = self.torrents.join(format!("{name}.json"));
            let torrent_path = self.torrents.join(format!("{name}.torrent"));
            let current = Sidecar {
                size: meta.len(),
                mtime_ns: mtime_ns(&meta),
                info_hash: String::new(),
                sha256: String::new(),
                piece_sha256: String::new(),
                parent: None,
            };
            let seeded = self.known().get(&name).is_some_and(|img| {
                img.length == meta.len()
                    && img.mtime_ns == current.mtime_ns
                    && self.engine.contains(&img.info_hash)
            });
            if seeded {
                continue;
            }
            let cached = std::fs::read(&sidecar_path)
                .ok()
                .and_then(|b| serde_json::from_slice::<Sidecar>(&b).ok())
                .filter(|s| s.size == current.size && s.mtime_ns == current.mtime_ns)
                .and_then(|s| std::fs::read(&torrent_path).ok().map(|t| (s, t)))
                .and_then(|(s, t)| TorrentMeta::parse(&t).ok().map(|m| (s, t, m)));
            let (sidecar, torrent, meta_t) = match cached {
                Some((s, t, m)) if !s.sha256.is_empty() && !s.piece_sha256.is_empty() => (s, t, m),
                _ => {
                    log::info!(
                        "hashing {name} ({} bytes) for its torrent and manifest",
                        meta.len()
                    );
                    let path = entry.path();
                    let announce = self.announce.clone();
                    let (created, hashes) = tokio::task::spawn_blocking(move || {
                        let len = std::fs::metadata(&path)?.len();
                        crate::bt::torrent::create_with_sha256(
                            &path,
                            &announce,
                            crate::bt::torrent::piece_length_for(len),
                        )
                    })
                    .await??;
                    let parent = header.backing_name();
                    let sidecar = Sidecar {
                        info_hash: created.info_hash_hex(),
                        sha256: hashes.whole,
                        piece_sha256: hashes.pieces,
                        parent,
                        ..current
                    };
                    fsutil::atomic_write(&torrent_path, &created.bytes)?;
                    fsutil::write_json(&sidecar_path, &sidecar)?;
                    let m = TorrentMeta::parse(&created.bytes)?;
                    (sidecar, created.bytes, m)
                }
            };
            // A torrent cached by an earlier run names the tracker as it was
            // then (another address, advertise_ip or port). Terminals that
            // use only the torrent's announce (v2.28, aria2c) would find no
            // tracker and stall in silence: it always announces today's.
            let (torrent, meta_t) = if meta_t.announce != [self.announce.clone()] {
                match crate::bt::torrent::with_announce(&torrent, &self.announce)
                    .and_then(|t| TorrentMeta::parse(&t).ok().map(|m| (t, m)))
                    .filter(|(_, m)| m.info_hash == meta_t.info_hash)
                {
                    Some((t, m)) => {
                        log::info!(
                            "{name}: its cached torrent announced {:?}; it now announces {}",
                            meta_t.announce,
                            self.announce
                        );
                        fsutil::atomic_write(&torrent_path, &t)?;
                        (t, m)
                    }
                    None => (torrent, meta_t),
                }
            } else {
                (torrent, meta_t)
            };
            let torrent = Bytes::from(torrent);
            let old = self.known().get(&name).cloned();
            if let Some(old) = old {
                if old.info_hash != meta_t.info_hash {
                    let _ = self.engine.remove(&old.info_hash).await;
                }
            }
            // The cached torrent may name a tracker from an earlier run (a
            // new address or port); the seeder announces to today's.
            self.engine
                .add(
                    torrent.clone(),
                    &self.dir,
                    std::slice::from_ref(&self.announce),
                )
                .await
                .with_context(|| format!("seeding {name}"))?;
            self.known().insert(
                name,
                Image {
                    layer,
                    info_hash: meta_t.info_hash,
                    length: meta_t.length,
                    torrent,
                    sha256: sidecar.sha256,
                    piece_sha256: sidecar.piece_sha256,
                    parent: sidecar.parent,
                    virtual_size: header.virtual_size,
                    mtime_ns: sidecar.mtime_ns,
                },
            );
        }
        let gone: Vec<Image> = self
            .known()
            .values()
            .filter(|i| !present.contains(&i.layer.to_string()))
            .cloned()
            .collect();
        for img in gone {
            log::info!("image {} is gone; no longer seeded", img.layer);
            let _ = self.engine.remove(&img.info_hash).await;
            self.known().remove(&img.layer.to_string());
        }
        Ok(())
    }

    /// Every byte the library's seeder has sent since the server started,
    /// layers since replaced or removed included.
    /// Whether `info_hash` is one of the library's layers, an upload the
    /// server took or a torrent an operator sent (1015): the only swarms
    /// its tracker keeps (issue 38.4).
    pub fn knows_info_hash(&self, info_hash: &[u8; 20]) -> bool {
        let hex = crate::bt::manifest::to_hex(info_hash);
        self.known().values().any(|i| i.info_hash == hex)
            || self
                .sent_torrents
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(&hex)
            || self
                .uploads
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .values()
                .any(|u| u.info_hash == hex)
    }

    /// An operator sent this torrent (hex info hash) to a terminal: its
    /// swarm is kept. The newest `MAX_SENT_TORRENTS` are remembered.
    pub fn expect_info_hash(&self, info_hash_hex: &str) {
        let mut sent = self.sent_torrents.lock().unwrap_or_else(|p| p.into_inner());
        if !sent.iter().any(|h| h == info_hash_hex) {
            if sent.len() >= MAX_SENT_TORRENTS {
                sent.pop_front();
            }
            sent.push_back(info_hash_hex.to_string());
        }
    }

    pub fn uploaded_total(&self) -> u64 {
        self.engine.uploaded_total()
    }

    pub fn status(&self) -> Vec<ImageStatus> {
        self.known()
            .values()
            .map(|i| {
                let s = self.engine.stats(&i.info_hash);
                ImageStatus {
                    layer: i.layer.to_string(),
                    info_hash: i.info_hash.clone(),
                    length: i.length,
                    virtual_size: i.virtual_size,
                    uploaded_bytes: s.as_ref().map(|s| s.uploaded_bytes).unwrap_or(0),
                    state: s.map(|s| s.phase.wire().to_string()).unwrap_or_default(),
                    parent: i.parent.clone(),
                }
            })
            .collect()
    }

    fn upload_dir(&self, layer: &str) -> PathBuf {
        self.uploads_dir.join(layer)
    }

    async fn restore_uploads(&self) {
        let Ok(rd) = std::fs::read_dir(&self.uploads_dir) else {
            return;
        };
        for entry in rd.flatten() {
            let path = entry.path();
            let loaded = std::fs::read(path.join("upload.json"))
                .ok()
                .and_then(|b| serde_json::from_slice::<Upload>(&b).ok())
                .zip(std::fs::read(path.join("meta.torrent")).ok());
            let Some((up, torrent)) = loaded else {
                let _ = std::fs::remove_dir_all(&path);
                continue;
            };
            if up.state == "downloading" {
                if let Err(e) = self
                    .engine
                    .add(Bytes::from(torrent), &path.join("data"), &[])
                    .await
                {
                    log::warn!("upload {}: {e:#}", up.layer);
                }
            }
            self.uploads().insert(up.torrent_id.clone(), up);
        }
    }

    fn save_upload(&self, up: &Upload) {
        let p = self.upload_dir(&up.layer).join("upload.json");
        if let Err(e) = fsutil::write_json(&p, up) {
            log::error!("{}: {e}", p.display());
        }
    }

    /// 9014: starts pulling a terminal's layer. Returns the torrent_id.
    /// Lets `mac` upload layers of these disks for `UPLOAD_GRANT`.
    pub fn grant_upload(&self, mac: &str, disk_uuids: impl IntoIterator<Item = String>) {
        let until = Instant::now() + UPLOAD_GRANT;
        let mut grants = self.upload_grants.lock().unwrap_or_else(|p| p.into_inner());
        if grants.len() > 65536 {
            let now = Instant::now();
            grants.retain(|_, g| g.iter().any(|(_, t)| *t > now));
        }
        let mine = grants.entry(mac.to_string()).or_default();
        mine.retain(|(_, t)| *t > Instant::now());
        for uuid in disk_uuids.into_iter().take(64) {
            mine.retain(|(u, _)| *u != uuid);
            mine.push((uuid, until));
        }
        mine.truncate(64);
    }

    /// The terminals the server has asked for an upload that may still
    /// come: their announces of a torrent it does not know yet are taken.
    pub fn upload_expected_from(&self) -> Vec<String> {
        let now = Instant::now();
        self.upload_grants
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(_, g)| g.iter().any(|(_, t)| *t > now))
            .map(|(m, _)| m.clone())
            .collect()
    }

    pub fn upload_granted(&self, mac: &str, disk_uuid: &str) -> bool {
        let now = Instant::now();
        self.upload_grants
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(mac)
            .is_some_and(|g| g.iter().any(|(u, t)| u == disk_uuid && *t > now))
    }

    /// A terminal's 9014: taken only when the server asked that terminal
    /// for that disk, and fetched through our own tracker alone (the
    /// torrent's announce URLs are dropped: a terminal must not make the
    /// server connect anywhere).
    pub async fn receive(&self, mac: &str, body: &UploadTorrent) -> Result<String, String> {
        let meta = TorrentMeta::parse(&body.torrent).map_err(|e| e.to_string())?;
        let layer = LayerName::parse(&meta.name)
            .map_err(|e| format!("torrent names {:?}: {e}", meta.name))?;
        if !self.upload_granted(mac, &layer.uuid_str()) {
            return Err(format!(
                "the server did not ask {mac} to upload disk {}: a terminal uploads after a 9018 the server said yes to, or an operator's upload command",
                layer.uuid_str()
            ));
        }
        let torrent: bytes::Bytes =
            crate::bt::bencode::with_only_tracker(&body.torrent, &self.announce)
                .ok_or("the torrent has no info dictionary")?
                .into();
        if layer.uuid_str() != body.uuid || i32::from(layer.level) != body.dif_level {
            return Err(format!(
                "the torrent holds {layer}, the struct says uuid {} level {}",
                body.uuid, body.dif_level
            ));
        }
        let name = layer.to_string();
        if self.dir.join(&name).exists() {
            return Err(format!("{name} is already in the image library"));
        }
        if let Some(up) = self.uploads().values().find(|u| u.layer == name) {
            if up.info_hash == meta.info_hash && up.state == "downloading" {
                return Ok(up.torrent_id.clone());
            }
        }
        let dir = self.upload_dir(&name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("data")).map_err(|e| e.to_string())?;
        fsutil::atomic_write(&dir.join("meta.torrent"), &torrent).map_err(|e| e.to_string())?;
        let up = Upload {
            torrent_id: uuid::Uuid::new_v4().hyphenated().to_string(),
            mac: mac.to_string(),
            layer: name.clone(),
            info_hash: meta.info_hash.clone(),
            length: meta.length,
            state: "downloading".into(),
            notified: false,
        };
        self.save_upload(&up);
        self.engine
            .add(
                torrent,
                &dir.join("data"),
                std::slice::from_ref(&self.announce),
            )
            .await
            .map_err(|e| format!("{e:#}"))?;
        log::info!(
            "{mac} uploads {name} ({} bytes) as torrent {}",
            meta.length,
            up.torrent_id
        );
        let id = up.torrent_id.clone();
        self.uploads().insert(id.clone(), up);
        Ok(id)
    }

    pub fn upload_by_name(
        &self,
        mac: &str,
        torrent_name: &str,
    ) -> Option<(Upload, Option<TaskStats>)> {
        let layer = torrent_name.trim_end_matches(".torrent");
        self.uploads()
            .values()
            .find(|u| u.mac == mac && u.layer == layer)
            .cloned()
            .map(|u| {
                let s = self.engine.stats(&u.info_hash);
                (u, s)
            })
    }

    pub fn uploads_list(&self) -> Vec<Upload> {
        self.uploads().values().cloned().collect()
    }

    /// Moves finished uploads into the library; returns those whose
    /// terminal should now hear 1021.
    pub async fn settle_uploads(&self) -> Vec<Upload> {
        let pending: Vec<Upload> = self
            .uploads()
            .values()
            .filter(|u| u.state == "downloading")
            .cloned()
            .collect();
        for mut up in pending {
            let Some(stats) = self.engine.stats(&up.info_hash) else {
                continue;
            };
            if stats.phase != Phase::Seeding {
                continue;
            }
            // All here: the server stops fetching, and the layer waits for
            // an operator. It is not signed, seeded or offered to any group
            // until accepted (issue 38.2).
            let _ = self.engine.remove(&up.info_hash).await;
            log::warn!(
                "{} from {} is uploaded and awaits review: accept it with `voi-server ctl upload-accept {}` (or the API, or the console) before any group can use it",
                up.layer,
                up.mac,
                up.torrent_id
            );
            up.state = "review".into();
            self.save_upload(&up);
            self.uploads().insert(up.torrent_id.clone(), up);
        }
        // The terminal's part is done once the bytes are here.
        self.uploads()
            .values()
            .filter(|u| (u.state == "review" || u.state == "finished") && !u.notified)
            .cloned()
            .collect()
    }

    /// An operator's verdict on an upload awaiting review: accepted, it
    /// is checked (pieces, qcow2, backing file) and moved into the library,
    /// which then signs and seeds it; rejected, its bytes are deleted.
    pub async fn review_upload(&self, torrent_id: &str, accept: bool) -> Result<Upload, String> {
        let Some(mut up) = self.uploads().get(torrent_id).cloned() else {
            return Err(format!("no upload {torrent_id}"));
        };
        if up.state != "review" {
            return Err(format!(
                "upload {torrent_id} ({}) is {}, not awaiting review",
                up.layer, up.state
            ));
        }
        let dir = self.upload_dir(&up.layer);
        if accept {
            let torrent = std::fs::read(dir.join("meta.torrent")).unwrap_or_default();
            let lib = self.dir.clone();
            let layer = up.layer.clone();
            let d = dir.clone();
            tokio::task::spawn_blocking(move || accept_upload(&d, &lib, &layer, &torrent))
                .await
                .unwrap_or_else(|e| Err(e.to_string()))?;
            log::info!(
                "{} from {} is accepted into the image library",
                up.layer,
                up.mac
            );
            up = self.set_upload_state(torrent_id, "finished").unwrap_or(up);
            if let Err(e) = self.scan().await {
                log::error!("image scan: {e:#}");
            }
        } else {
            let _ = std::fs::remove_dir_all(dir.join("data"));
            log::info!(
                "{} from {} is rejected; its bytes are deleted",
                up.layer,
                up.mac
            );
            up = self.set_upload_state(torrent_id, "rejected").unwrap_or(up);
        }
        Ok(up)
    }

    /// Sets one upload's state where it is kept (not on a copy: the 1021
    /// loop may have marked it notified meanwhile), and saves it.
    fn set_upload_state(&self, torrent_id: &str, state: &str) -> Option<Upload> {
        let up = {
            let mut all = self.uploads();
            let up = all.get_mut(torrent_id)?;
            up.state = state.into();
            up.clone()
        };
        self.save_upload(&up);
        Some(up)
    }

    pub fn mark_notified(&self, torrent_id: &str) {
        let up = {
            let mut ups = self.uploads();
            let Some(u) = ups.get_mut(torrent_id) else {
                return;
            };
            u.notified = true;
            u.clone()
        };
        self.save_upload(&up);
    }

    pub async fn stop(&self) {
        self.engine.stop().await;
    }
}

/// Checks a finished upload and moves it into the library. The torrent
/// (same bytes) is kept as the library's, so nothing is hashed twice.
fn accept_upload(dir: &Path, lib: &Path, layer: &str, torrent: &[u8]) -> Result<(), String> {
    let meta = TorrentMeta::parse(torrent).map_err(|e| e.to_string())?;
    let data = dir.join("data").join(&meta.name);
    // Empty only if hashing were skipped; a scan then hashes it again.
    let hashes = meta
        .verify_file(&data, true)
        .map_err(|e| e.to_string())?
        .unwrap_or_default();
    let header = crate::disk::qcow2::read_header(&data).map_err(|e| e.to_string())?;
    let name = LayerName::parse(layer).map_err(|e| e.to_string())?;
    if name.level > 0 {
        let parent = LayerName::new(&name.prefix, i64::from(name.level) - 1, &name.uuid_str())
            .map_err(|e| e.to_string())?
            .to_string();
        if header.backing_file.as_deref() != Some(parent.as_str()) {
            return Err(format!(
                "its backing file is {:?}, not {parent}",
                header.backing_file
            ));
        }
        if !lib.join(&parent).exists() {
            return Err(format!("its parent {parent} is not in the library"));
        }
    }
    let dest = lib.join(layer);
    if dest.exists() {
        return Err(format!("{layer} is already in the library"));
    }
    let torrents = lib.parent().map(|p| p.join("torrents")).unwrap_or_default();
    let md = std::fs::metadata(&data).map_err(|e| e.to_string())?;
    // Checked beside its parent (a relative backing name resolves there)
    // under a name the library scan skips, then renamed in.
    let tmp = lib.join(format!(".tmp-{layer}"));
    std::fs::rename(&data, &tmp).map_err(|e| e.to_string())?;
    if let Err(e) = crate::disk::qemu_img::check(&tmp) {
        let _ = std::fs::rename(&tmp, &data);
        return Err(e.to_string());
    }
    std::fs::rename(&tmp, &dest).map_err(|e| e.to_string())?;
    fsutil::sync_dir(lib).map_err(|e| e.to_string())?;
    let md_after = std::fs::metadata(&dest).map_err(|e| e.to_string())?;
    fsutil::atomic_write(&torrents.join(format!("{layer}.torrent")), torrent)
        .map_err(|e| e.to_string())?;
    fsutil::write_json(
        &torrents.join(format!("{layer}.json")),
        &Sidecar {
            size: md.len(),
            mtime_ns: mtime_ns(&md_after),
            info_hash: meta.info_hash,
            sha256: hashes.whole,
            piece_sha256: hashes.pieces,
            parent: header.backing_name(),
        },
    )
    .map_err(|e| e.to_string())?;
    Ok(())
}

/// A layer's current version (`operate_id`), as the desktop groups say.
pub type OperateIds = Arc<dyn Fn(&str) -> u32 + Send + Sync>;

#[derive(Clone)]
struct Published {
    images: Arc<Images>,
    operate_id: OperateIds,
}

/// `/torrents/<layer>.torrent`, served beside the tracker (which, unlike
/// the operator API, listens on the terminals' network).
pub fn router(images: Arc<Images>, operate_id: OperateIds) -> Router {
    Router::new()
        .route("/torrents/:file", get(torrent_file))
        .route("/manifest/:file", get(manifest_file))
        .with_state(Published { images, operate_id })
}

async fn torrent_file(
    State(Published { images, .. }): State<Published>,
    UrlPath(file): UrlPath<String>,
) -> Response {
    let Some(layer) = file.strip_suffix(".torrent") else {
        return (StatusCode::NOT_FOUND, "not a torrent").into_response();
    };
    match images.get(layer) {
        Some(img) => (
            [(header::CONTENT_TYPE, "application/x-bittorrent")],
            img.torrent,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "no such layer").into_response(),
    }
}

/// `/manifest/<layer>.json`: what an agent checks a finished layer against.
async fn manifest_file(
    State(Published { images, operate_id }): State<Published>,
    UrlPath(file): UrlPath<String>,
) -> Response {
    let Some(layer) = file.strip_suffix(".json") else {
        return (StatusCode::NOT_FOUND, "not a manifest").into_response();
    };
    match images.signed_manifest(layer, operate_id(layer)) {
        Some(m) => axum::Json(m).into_response(),
        None => (StatusCode::NOT_FOUND, "no such layer").into_response(),
    }
}

/// How often the library is rescanned for new image files.
pub const RESCAN: Duration = Duration::from_secs(30);
