//! Changes to the disk chains. See `STATE.md` beside this file.
//!
//! Every operation that touches more than one file first writes an intent
//! to `.journal.json` (atomically); each step is idempotent, so replaying an
//! unfinished intent at start either completes it or, where nothing durable
//! happened yet, rolls it back. Single-file creations are built under a
//! dot-name and renamed into place.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

use super::inventory::Inventory;
use super::name::{LayerName, NameError, USER_LEVEL};
use super::qemu_img::{self, QemuImgError};
use crate::fsutil;

const JOURNAL: &str = ".journal.json";

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error(transparent)]
    Name(#[from] NameError),
    #[error(transparent)]
    QemuImg(#[from] QemuImgError),
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    #[error("{0} does not exist")]
    Missing(String),
    #[error("{0} already exists")]
    Exists(String),
    #[error("not enough space: {needed} bytes needed plus a {margin}-byte margin, {free} free")]
    NoSpace { needed: u64, margin: u64, free: u64 },
    #[error("{0}")]
    Invalid(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DiskError {
    let what = what.into();
    move |e| DiskError::Io(what, e)
}

/// An operation in progress, as recorded before its first change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Intent {
    /// Merge `child` into `parent`, repoint `above` at `parent`, drop `child`.
    Merge {
        child: String,
        parent: String,
        above: Vec<String>,
        step: MergeStep,
    },
    /// Remove these layers, top first.
    Delete { layers: Vec<String> },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MergeStep {
    Commit,
    Rebase,
    Drop,
}

#[derive(Debug, Clone)]
pub struct DiskStore {
    dir: PathBuf,
    /// Kept free beyond what an operation needs.
    pub margin: u64,
}

impl DiskStore {
    pub fn new(dir: impl Into<PathBuf>, margin: u64) -> Result<DiskStore, DiskError> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(io(dir.display().to_string()))?;
        Ok(DiskStore { dir, margin })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn path(&self, name: &LayerName) -> PathBuf {
        self.dir.join(name.to_string())
    }

    fn tmp_path(&self, name: &LayerName) -> PathBuf {
        self.dir.join(format!(".tmp-{name}"))
    }

    pub fn inventory(&self) -> Result<Inventory, DiskError> {
        Inventory::scan(&self.dir).map_err(io(self.dir.display().to_string()))
    }

    pub fn free_bytes(&self) -> u64 {
        nix::sys::statvfs::statvfs(&self.dir)
            .map(|s| s.blocks_available() * s.fragment_size())
            .unwrap_or(0)
    }

    /// Refuses when `needed` plus the margin does not fit.
    pub fn ensure_space(&self, needed: u64) -> Result<(), DiskError> {
        let free = self.free_bytes();
        if free < needed.saturating_add(self.margin) {
            return Err(DiskError::NoSpace {
                needed,
                margin: self.margin,
                free,
            });
        }
        Ok(())
    }

    /// Frees space by deleting `reclaimable` layers (top first) until
    /// `needed` fits; refuses if it still does not.
    pub fn make_room(
        &self,
        needed: u64,
        reclaimable: &[LayerName],
    ) -> Result<Vec<String>, DiskError> {
        let mut removed = Vec::new();
        let mut order = reclaimable.to_vec();
        order.sort_by_key(|l| std::cmp::Reverse(l.level));
        for l in order {
            if self.ensure_space(needed).is_ok() {
                break;
            }
            if self.path(&l).exists() {
                self.delete_layers(std::slice::from_ref(&l))?;
                removed.push(l.to_string());
            }
        }
        self.ensure_space(needed)?;
        Ok(removed)
    }

    fn journal(&self) -> PathBuf {
        self.dir.join(JOURNAL)
    }

    pub fn pending_intent(&self) -> Result<Option<Intent>, DiskError> {
        match std::fs::read(self.journal()) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| DiskError::Invalid(format!("unreadable journal: {e}"))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(DiskError::Io("journal".into(), e)),
        }
    }

    fn record(&self, intent: &Intent) -> Result<(), DiskError> {
        fsutil::write_json(&self.journal(), intent).map_err(io("journal"))
    }

    fn clear_journal(&self) -> Result<(), DiskError> {
        match std::fs::remove_file(self.journal()) {
            Ok(()) => fsutil::sync_dir(&self.dir).map_err(io("journal")),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(DiskError::Io("journal".into(), e)),
        }
    }

    /// Finishes whatever a crash interrupted and removes stray temporaries.
    /// Returns a description of what was done.
    pub fn recover(&self) -> Result<Vec<String>, DiskError> {
        let mut done = Vec::new();
        if let Some(intent) = self.pending_intent()? {
            done.push(format!("replaying {intent:?}"));
            self.run(intent)?;
        }
        for e in std::fs::read_dir(&self.dir)
            .map_err(io("disk dir"))?
            .flatten()
        {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with(".tmp-") {
                std::fs::remove_file(e.path()).map_err(io(n.clone()))?;
                done.push(format!("removed temporary {n}"));
            }
        }
        Ok(done)
    }

    fn run(&self, intent: Intent) -> Result<(), DiskError> {
        match intent {
            Intent::Merge {
                child,
                parent,
                above,
                mut step,
            } => {
                let c = self.dir.join(&child);
                let advance = |next: MergeStep| {
                    self.record(&Intent::Merge {
                        child: child.clone(),
                        parent: parent.clone(),
                        above: above.clone(),
                        step: next,
                    })
                };
                if step == MergeStep::Commit {
                    if !c.exists() {
                        // Nothing durable happened: the intent was recorded
                        // and the child is already gone, so nothing to do.
                        return self.clear_journal();
                    }
                    qemu_img::commit_keep(&c)?;
                    step = MergeStep::Rebase;
                    advance(step)?;
                }
                if step == MergeStep::Rebase {
                    for a in &above {
                        let p = self.dir.join(a);
                        if p.exists() {
                            qemu_img::rebase_unsafe(&p, &parent)?;
                        }
                    }
                    step = MergeStep::Drop;
                    advance(step)?;
                }
                if step == MergeStep::Drop {
                    remove_if_present(&c)?;
                    fsutil::sync_dir(&self.dir).map_err(io("disk dir"))?;
                }
                self.clear_journal()
            }
            Intent::Delete { layers } => {
                for l in &layers {
                    remove_if_present(&self.dir.join(l))?;
                }
                fsutil::sync_dir(&self.dir).map_err(io("disk dir"))?;
                self.clear_journal()
            }
        }
    }

    /// A new empty image (a base for a data disk). Built under a temporary
    /// name and renamed into place.
    pub fn create_image(&self, name: &LayerName, size: u64) -> Result<(), DiskError> {
        self.ensure_space(size)?;
        self.create_thin_image(name, size)
    }

    /// A qcow2 image of virtual size `size` that grows as it is written (a
    /// data disk): only the margin must be free now.
    pub fn create_thin_image(&self, name: &LayerName, size: u64) -> Result<(), DiskError> {
        let fin = self.path(name);
        if fin.exists() {
            return Err(DiskError::Exists(name.to_string()));
        }
        self.ensure_space(0)?;
        let tmp = self.tmp_path(name);
        remove_if_present(&tmp)?;
        qemu_img::create(&tmp, size)?;
        qemu_img::check(&tmp)?;
        self.publish(&tmp, &fin)
    }

    /// An overlay `child` on `parent`, with a relative backing name and an
    /// explicit backing format. Replaces an existing `child` atomically.
    pub fn create_overlay(&self, child: &LayerName, parent: &LayerName) -> Result<(), DiskError> {
        if child.uuid != parent.uuid || child.level <= parent.level {
            return Err(DiskError::Invalid(format!(
                "{child} cannot sit on {parent}"
            )));
        }
        if !self.path(parent).exists() {
            return Err(DiskError::Missing(parent.to_string()));
        }
        self.ensure_space(1 << 20)?;
        let tmp = self.tmp_path(child);
        remove_if_present(&tmp)?;
        qemu_img::create_overlay(&tmp, &parent.to_string())?;
        qemu_img::check(&tmp)?;
        self.publish(&tmp, &self.path(child))
    }

    fn publish(&self, tmp: &Path, fin: &Path) -> Result<(), DiskError> {
        std::fs::File::open(tmp)
            .and_then(|f| f.sync_all())
            .map_err(io(tmp.display().to_string()))?;
        std::fs::rename(tmp, fin).map_err(io(fin.display().to_string()))?;
        fsutil::sync_dir(&self.dir).map_err(io("disk dir"))
    }

    /// Merges `child` (level n) into the layer it sits on, repoints every
    /// layer above it, and removes it.
    pub fn merge(&self, child: &LayerName) -> Result<LayerName, DiskError> {
        let inv = self.inventory()?;
        let c = inv
            .layers
            .get(&child.to_string())
            .ok_or_else(|| DiskError::Missing(child.to_string()))?;
        let parent_name = c
            .header
            .backing_file
            .clone()
            .ok_or_else(|| DiskError::Invalid(format!("{child} has no parent")))?;
        let parent = LayerName::parse(&parent_name)?;
        let chain = inv
            .chain(&child.uuid_str())
            .filter(|ch| ch.complete)
            .ok_or_else(|| DiskError::Invalid(format!("chain of {child} is not complete")))?;
        let pos = chain
            .layers
            .iter()
            .position(|l| *l == child.to_string())
            .ok_or_else(|| DiskError::Invalid(format!("{child} is not on its chain")))?;
        // Only the layer directly above the child needs a new backing name;
        // the rest still point at layers that stay.
        let above: Vec<String> = chain.layers.get(pos + 1).cloned().into_iter().collect();
        self.ensure_space(c.header.allocated)?;
        let intent = Intent::Merge {
            child: child.to_string(),
            parent: parent.to_string(),
            above,
            step: MergeStep::Commit,
        };
        self.record(&intent)?;
        self.run(intent)?;
        Ok(parent)
    }

    /// Removes layers, highest level first, through the journal.
    pub fn delete_layers(&self, layers: &[LayerName]) -> Result<(), DiskError> {
        let mut sorted = layers.to_vec();
        sorted.sort_by_key(|l| std::cmp::Reverse(l.level));
        let intent = Intent::Delete {
            layers: sorted.iter().map(|l| l.to_string()).collect(),
        };
        self.record(&intent)?;
        self.run(intent)
    }

    /// Removes every layer of `uuid` above `level`.
    pub fn delete_above(&self, uuid: &str, level: u8) -> Result<Vec<String>, DiskError> {
        let inv = self.inventory()?;
        let doomed: Vec<LayerName> = inv
            .layers
            .values()
            .filter(|l| l.parsed.uuid_str() == uuid && l.parsed.level > level)
            .map(|l| l.parsed.clone())
            .collect();
        self.delete_layers(&doomed)?;
        Ok(doomed.iter().map(|l| l.to_string()).collect())
    }

    /// Restore mode: the user layer goes back to empty on its parent. The
    /// fresh overlay replaces the old one in a single rename.
    pub fn reset_user_layer(&self, top_server_layer: &LayerName) -> Result<LayerName, DiskError> {
        let user = top_server_layer.with_level(USER_LEVEL);
        let inv = self.inventory()?;
        // Local layers between the server top and the user layer go too.
        let stale: Vec<LayerName> = inv
            .layers
            .values()
            .filter(|l| {
                l.parsed.uuid == user.uuid
                    && l.parsed.level > top_server_layer.level
                    && l.parsed.level != USER_LEVEL
            })
            .map(|l| l.parsed.clone())
            .collect();
        self.create_overlay(&user, top_server_layer)?;
        if !stale.is_empty() {
            self.delete_layers(&stale)?;
        }
        Ok(user)
    }

    /// Removes every layer (clear_all_desktop).
    pub fn clear_all(&self) -> Result<Vec<String>, DiskError> {
        let inv = self.inventory()?;
        let all: Vec<LayerName> = inv.layers.values().map(|l| l.parsed.clone()).collect();
        self.delete_layers(&all)?;
        Ok(all.iter().map(|l| l.to_string()).collect())
    }
}

fn remove_if_present(p: &Path) -> Result<(), DiskError> {
    match std::fs::remove_file(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(DiskError::Io(p.display().to_string(), e)),
    }
}
