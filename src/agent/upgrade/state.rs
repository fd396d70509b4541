//! The upgrade's durable state (`<data_dir>/upgrade.json`), replaced
//! atomically at every step so a power cut at any point leaves one of
//! these and nothing in between (STATE.md).

use serde::{Deserialize, Serialize};
use std::path::Path;

use crate::upgrade_package::UpgradeManifest;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum UpgradeState {
    #[default]
    Idle,
    /// Fetching and checking the package; the running version is untouched.
    Fetching {
        from: String,
        manifest: UpgradeManifest,
        url: String,
    },
    /// `current` points (or is about to point) at `to`; `from` is the
    /// fallback until `to` logs in.
    Switched {
        from: String,
        to: String,
        starts: u32,
        /// The release being proven; recorded as the floor once committed.
        #[serde(default)]
        release: u64,
    },
    Committed {
        from: String,
        version: String,
    },
    RolledBack {
        from: String,
        to: String,
        reason: String,
    },
    /// Refused or failed before anything was switched.
    Failed {
        version: String,
        reason: String,
    },
}

pub fn path(cfg: &crate::agent::config::AgentConfig) -> std::path::PathBuf {
    cfg.data_dir.join("upgrade.json")
}

pub fn load(path: &Path) -> UpgradeState {
    std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

pub fn save(path: &Path, s: &UpgradeState) -> std::io::Result<()> {
    let bytes = serde_json::to_vec_pretty(s).map_err(std::io::Error::other)?;
    crate::fsutil::atomic_write(path, &bytes)
}

impl UpgradeState {
    /// What 9004 tells the server (`upgrade`), or nothing when idle.
    pub fn report(&self) -> Option<crate::protocol::messages::UpgradeReport> {
        use crate::protocol::messages::UpgradeReport as R;
        let r = |version: &str, state: &str, reason: &str| R {
            version: version.into(),
            state: state.into(),
            reason: reason.into(),
            running: crate::agent::version::running_version(),
        };
        match self {
            UpgradeState::Idle => None,
            UpgradeState::Fetching { manifest, .. } => Some(r(&manifest.version, "installing", "")),
            UpgradeState::Switched { to, .. } => Some(r(to, "trial", "")),
            UpgradeState::Committed { version, .. } => Some(r(version, "installed", "")),
            UpgradeState::RolledBack { to, reason, .. } => Some(r(to, "rolled_back", reason)),
            UpgradeState::Failed { version, reason } => Some(r(version, "failed", reason)),
        }
    }
}
