//! What the server told us about each layer (operate_id, type, group), and
//! the local data disks, in `<disk dir>/catalog.json`, written atomically.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::fsutil;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerMeta {
    pub operate_id: i64,
    /// 0 system, 1 data, 2 share.
    pub disk_type: i64,
    #[serde(default)]
    pub group_uuid: String,
    /// Created here by add_data_disk.
    #[serde(default)]
    pub local_only: bool,
    #[serde(default)]
    pub enabled: bool,
    #[serde(default)]
    pub restore: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Catalog {
    pub layers: BTreeMap<String, LayerMeta>,
}

impl Catalog {
    pub fn path(dir: &Path) -> PathBuf {
        dir.join("catalog.json")
    }

    pub fn load(dir: &Path) -> Catalog {
        std::fs::read(Self::path(dir))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    pub fn save(&self, dir: &Path) -> std::io::Result<()> {
        fsutil::write_json(&Self::path(dir), self)
    }

    /// Drops entries whose file is gone.
    pub fn prune(&mut self, dir: &Path) {
        self.layers.retain(|name, _| dir.join(name).exists());
    }
}
