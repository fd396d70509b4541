//! `[upgrade]` in agent.toml: where versions are installed and how long a
//! new one has to prove itself.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpgradeConfig {
    /// `versions/<v>/voi-agent` and the `current` symlink live here; the
    /// agent on the image (/usr/bin/voi-agent) starts `current` when it
    /// exists.
    #[serde(default = "default_root")]
    pub root: PathBuf,
    /// A new version must log in within this many seconds of its start,
    /// or the previous one comes back.
    #[serde(default = "default_confirm")]
    pub confirm_secs: u64,
    /// Starts of a new version that never logged in before it is given up.
    #[serde(default = "default_starts")]
    pub max_starts: u32,
    /// The largest package accepted.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
    /// The release key packages must be signed with (64 hex); default the
    /// `[bt] manifest_key` the server signs layers with.
    #[serde(default)]
    pub key: Option<String>,
}

fn default_root() -> PathBuf {
    PathBuf::from("/opt/voi-agent")
}
fn default_confirm() -> u64 {
    120
}
fn default_starts() -> u32 {
    3
}
fn default_max_bytes() -> u64 {
    256 << 20
}

impl Default for UpgradeConfig {
    fn default() -> Self {
        UpgradeConfig {
            root: default_root(),
            confirm_secs: default_confirm(),
            max_starts: default_starts(),
            max_bytes: default_max_bytes(),
            key: None,
        }
    }
}
