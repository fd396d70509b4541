//! Rollback after a failed boot. The chain's rule (each level backed by
//! the one below, kept until the server drops it) means the previous level
//! is still on disk under a new one: a failing top level is skipped by
//! booting a fresh overlay over the level below it, outside the chain, so
//! nothing of the chain changes. The choice is kept in `rollback.json`
//! (written atomically) until the server offers another top level.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

use crate::disk::name::LayerName;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolledBack {
    pub group_uuid: String,
    /// The level that failed to boot.
    pub broken: String,
    /// The level booted instead.
    pub booted: String,
    pub reason: String,
}

pub struct Rollback {
    dir: PathBuf,
}

impl Rollback {
    pub fn new(dir: &Path) -> Rollback {
        Rollback {
            dir: dir.to_path_buf(),
        }
    }

    fn file(&self) -> PathBuf {
        self.dir.join("rollback.json")
    }

    pub fn overlay(&self) -> PathBuf {
        self.dir.join("rollback-overlay.qcow2")
    }

    /// The rollback in force for this group and top level, if any.
    pub fn active(&self, group_uuid: &str, server_top: &str) -> Option<RolledBack> {
        let r: RolledBack = serde_json::from_slice(&std::fs::read(self.file()).ok()?).ok()?;
        (r.group_uuid == group_uuid && r.broken == server_top).then_some(r)
    }

    /// Boots the level below `broken` from now on; `None` when there is
    /// none (a base cannot be rolled back).
    pub fn engage(
        &self,
        disk_dir: &Path,
        group_uuid: &str,
        broken: &str,
        reason: &str,
    ) -> Option<RolledBack> {
        let name = LayerName::parse(broken).ok()?;
        if name.level == 0 {
            return None;
        }
        let below = name.with_level(name.level - 1);
        if !disk_dir.join(below.to_string()).exists() {
            return None;
        }
        let r = RolledBack {
            group_uuid: group_uuid.into(),
            broken: broken.into(),
            booted: below.to_string(),
            reason: reason.into(),
        };
        if let Err(e) = crate::fsutil::write_json(&self.file(), &r) {
            log::error!("{}: {e}", self.file().display());
            return None;
        }
        Some(r)
    }

    /// A fresh overlay over the level booted instead (restore semantics:
    /// a rolled-back desktop is a stopgap, not a place to keep work).
    pub fn fresh_overlay(&self, disk_dir: &Path, r: &RolledBack) -> Result<PathBuf, String> {
        let path = self.overlay();
        let tmp = self.dir.join(".tmp-rollback-overlay.qcow2");
        let _ = std::fs::remove_file(&tmp);
        let backing = disk_dir.join(&r.booted);
        crate::disk::qemu_img::create_overlay(&tmp, &backing.display().to_string())
            .map_err(|e| e.to_string())?;
        std::fs::rename(&tmp, &path).map_err(|e| e.to_string())?;
        Ok(path)
    }

    pub fn clear(&self) {
        let _ = std::fs::remove_file(self.file());
        let _ = std::fs::remove_file(self.overlay());
    }
}
