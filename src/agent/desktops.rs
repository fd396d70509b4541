//! The agent's desktops: the bridge between the protocol (9007 groups,
//! commands, reports) and the disk chains in `disk/`.

use serde::Serialize;
use serde_json::{json, Value};
use std::path::Path;
use std::sync::Mutex;

use crate::agent::update_plan::{self, LocalLayer, Plan};
use crate::disk::name::{LayerName, USER_LEVEL};
use crate::disk::{Catalog, DiskError, DiskStore, Inventory, LayerMeta};
use crate::protocol::messages::{DesktopGroup, DesktopInfo, LocalDisk};
use crate::protocol::Sectors;

pub struct Desktops {
    pub store: DiskStore,
    /// Chain changes happen one at a time: the mutex within this process,
    /// an flock on `<disk dir>/.lock` across processes (the boot launcher's
    /// `boot-plan --prepare` may run beside the agent).
    lock: Mutex<()>,
    /// Layers the running desktop has open: never deleted, merged or
    /// cleared under it.
    in_use: Mutex<std::collections::BTreeSet<String>>,
}

pub struct Guard<'a> {
    _inner: std::sync::MutexGuard<'a, ()>,
    _file: nix::fcntl::Flock<std::fs::File>,
}

impl Desktops {
    pub fn open(store: DiskStore) -> Result<Desktops, DiskError> {
        let d = Desktops {
            store,
            lock: Mutex::new(()),
            in_use: Mutex::new(Default::default()),
        };
        {
            let _g = d.guard()?;
            for line in d.store.recover()? {
                log::warn!("disk recovery: {line}");
            }
        }
        Ok(d)
    }

    /// What the desktop runtime has open now (file names in the disk dir).
    pub fn set_in_use(&self, layers: impl IntoIterator<Item = String>) {
        *self.in_use.lock().unwrap_or_else(|p| p.into_inner()) = layers.into_iter().collect();
    }

    pub fn in_use(&self) -> Vec<String> {
        self.in_use
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    /// Refuses a change to a layer the running desktop has open.
    fn refuse_in_use<'a>(
        &self,
        names: impl IntoIterator<Item = &'a String>,
    ) -> Result<(), DiskError> {
        let used = self.in_use.lock().unwrap_or_else(|p| p.into_inner());
        let busy: Vec<&String> = names.into_iter().filter(|n| used.contains(*n)).collect();
        if busy.is_empty() {
            Ok(())
        } else {
            Err(DiskError::Invalid(format!(
                "{} is open by the running desktop; the change waits until the desktop is off",
                busy.iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )))
        }
    }

    fn guard(&self) -> Result<Guard<'_>, DiskError> {
        let inner = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let path = self.store.dir().join(".lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| DiskError::Io(path.display().to_string(), e))?;
        let file = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| DiskError::Io(path.display().to_string(), e.into()))?;
        Ok(Guard {
            _inner: inner,
            _file: file,
        })
    }

    /// Whether the chain holds `layer` at version `operate_id` or newer:
    /// nothing to fetch for it.
    pub fn holds_version(&self, layer: &LayerName, operate_id: i64) -> bool {
        self.store.path(layer).exists()
            && self
                .catalog()
                .layers
                .get(&layer.to_string())
                .is_some_and(|m| m.operate_id >= operate_id)
    }

    pub fn catalog(&self) -> Catalog {
        Catalog::load(self.store.dir())
    }

    fn save_catalog(&self, c: &Catalog) -> Result<(), DiskError> {
        c.save(self.store.dir())
            .map_err(|e| DiskError::Io("catalog".into(), e))
    }

    pub fn local_layers(&self, inv: &Inventory) -> Vec<LocalLayer> {
        let cat = self.catalog();
        inv.layers
            .values()
            .map(|l| {
                let meta = cat.layers.get(&l.name);
                LocalLayer {
                    name: l.parsed.clone(),
                    operate_id: meta.map(|m| m.operate_id),
                    local_only: meta.is_some_and(|m| m.local_only),
                }
            })
            .collect()
    }

    /// Runs the update decision on a fresh desktop list and carries out the
    /// local part of it (merges, deletions). Downloads are returned.
    ///
    /// `release` runs, under the chain lock, before any change, with the
    /// names of the layers about to be deleted or rewritten: whatever still
    /// serves them (the BitTorrent seeder) must let go first.
    pub fn apply_groups(
        &self,
        groups: &[DesktopGroup],
        release: impl FnOnce(&[String]),
    ) -> Result<Plan, DiskError> {
        let _g = self.guard()?;
        let inv = self.store.inventory()?;
        let mut plan = update_plan::decide(&self.local_layers(&inv), groups);
        // What the running desktop has open is not deleted or merged under
        // it: deferred to the next decision after the desktop is off (the
        // next boot starts its user layer over the new level anyway).
        // Downloads go on: a new level is fetched and seeded now.
        let used: std::collections::BTreeSet<String> = self.in_use().into_iter().collect();
        if !used.is_empty() {
            let before = (plan.delete.len(), plan.merge.len());
            plan.delete.retain(|n| !used.contains(n));
            plan.merge
                .retain(|m| !used.contains(&m.child) && !used.contains(&m.into));
            if before != (plan.delete.len(), plan.merge.len()) {
                log::info!(
                    "the running desktop has layers open: {} deletion(s) and {} merge(s) wait until it is off",
                    before.0 - plan.delete.len(),
                    before.1 - plan.merge.len()
                );
            }
        }
        let touched: Vec<String> = plan
            .delete
            .iter()
            .cloned()
            .chain(
                plan.merge
                    .iter()
                    .flat_map(|m| [m.child.clone(), m.into.clone()]),
            )
            .collect();
        if !touched.is_empty() {
            release(&touched);
        }
        let mut cat = self.catalog();
        // Deletions first: they free the space a merge may need.
        let doomed: Vec<LayerName> = plan
            .delete
            .iter()
            .filter_map(|n| LayerName::parse(n).ok())
            .collect();
        if !doomed.is_empty() {
            self.store.delete_layers(&doomed)?;
            log::info!(
                "deleted {} layer(s) the server no longer lists",
                doomed.len()
            );
        }
        for m in &plan.merge {
            let child = LayerName::parse(&m.child)?;
            let into = self.store.merge(&child)?;
            if let Some(meta) = cat.layers.get_mut(&into.to_string()) {
                meta.operate_id = m.operate_id;
            }
            log::info!("merged {} into {}", m.child, m.into);
        }
        cat.prune(self.store.dir());
        self.save_catalog(&cat)?;
        Ok(plan)
    }

    /// Records what the server says about a layer that now exists locally.
    pub fn remember(&self, name: &LayerName, meta: LayerMeta) -> Result<(), DiskError> {
        let _g = self.guard()?;
        let mut cat = self.catalog();
        cat.layers.insert(name.to_string(), meta);
        self.save_catalog(&cat)
    }

    /// Puts a downloaded layer into its chain. The qcow2 header must be
    /// sound and, above the base, name the layer below it, which must be
    /// here. The file is hard-linked in, so the download's copy keeps
    /// seeding the same bytes; a foreign backing path (an absolute path on
    /// the server) is rewritten instead, which changes the file, so it is
    /// moved rather than linked and `Adopted::Rewritten` says it can no
    /// longer seed. Repeating an adoption that already happened is a no-op.
    pub fn adopt_download(
        &self,
        src: &Path,
        name: &LayerName,
        meta: LayerMeta,
    ) -> Result<Adopted, DiskError> {
        use std::os::unix::fs::MetadataExt;
        let _g = self.guard()?;
        let dest = self.store.path(name);
        let src_meta =
            std::fs::metadata(src).map_err(|e| DiskError::Io(src.display().to_string(), e))?;
        if let Ok(d) = std::fs::metadata(&dest) {
            if d.ino() == src_meta.ino() && d.dev() == src_meta.dev() {
                self.remember_locked(name, meta)?;
                return Ok(Adopted::Linked);
            }
            return Err(DiskError::Exists(name.to_string()));
        }
        let header = crate::disk::qcow2::read_header(src)
            .map_err(|e| DiskError::Invalid(format!("{name}: not a usable qcow2 image: {e}")))?;
        let rewrite = if name.level == 0 {
            if let Some(b) = &header.backing_file {
                return Err(DiskError::Invalid(format!(
                    "{name}: a base layer must not have a backing file (it names {b:?})"
                )));
            }
            false
        } else {
            let parent = LayerName::new(&name.prefix, i64::from(name.level) - 1, &name.uuid_str())?;
            let Some(backing) = &header.backing_file else {
                return Err(DiskError::Invalid(format!(
                    "{name}: a level-{} layer needs a backing file",
                    name.level
                )));
            };
            let base_name = backing.rsplit('/').next().unwrap_or(backing);
            if base_name != parent.to_string() {
                return Err(DiskError::Invalid(format!(
                    "{name}: its backing file {backing:?} is not {parent}"
                )));
            }
            if !self.store.path(&parent).exists() {
                return Err(DiskError::Missing(parent.to_string()));
            }
            backing != &parent.to_string()
                || header
                    .backing_format
                    .as_deref()
                    .is_some_and(|f| f != "qcow2")
        };
        // Checked under a temporary name beside the chain, where a relative
        // backing name resolves; renamed in only when sound.
        let tmp = self.store.dir().join(format!(".tmp-{name}"));
        let _ = std::fs::remove_file(&tmp);
        let io = |what: &Path| {
            let w = what.display().to_string();
            move |e| DiskError::Io(w, e)
        };
        let staged = (|| {
            if rewrite {
                std::fs::rename(src, &tmp).map_err(io(&tmp))?;
                let parent =
                    LayerName::new(&name.prefix, i64::from(name.level) - 1, &name.uuid_str())?;
                crate::disk::qemu_img::rebase_unsafe(&tmp, &parent.to_string())?;
            } else {
                std::fs::hard_link(src, &tmp).map_err(io(&tmp))?;
            }
            crate::disk::qemu_img::check(&tmp)?;
            std::fs::File::open(&tmp)
                .and_then(|f| f.sync_all())
                .map_err(io(&tmp))
        })();
        if let Err(e) = staged {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        // The catalog first: a layer is never in the chain without its
        // version (a decision would take it for an unknown copy and delete
        // it). A crash between the two leaves an entry with no file, which
        // nothing reads and the next adoption overwrites.
        self.remember_locked(name, meta)?;
        std::fs::rename(&tmp, &dest).map_err(io(&dest))?;
        crate::fsutil::sync_dir(self.store.dir()).map_err(io(self.store.dir()))?;
        Ok(if rewrite {
            Adopted::Rewritten
        } else {
            Adopted::Linked
        })
    }

    fn remember_locked(&self, name: &LayerName, meta: LayerMeta) -> Result<(), DiskError> {
        let mut cat = self.catalog();
        cat.layers.insert(name.to_string(), meta);
        self.save_catalog(&cat)
    }

    /// 1007: every layer and the catalog go.
    pub fn clear_all(&self) -> Result<Vec<String>, DiskError> {
        let _g = self.guard()?;
        self.refuse_in_use(&self.in_use())?;
        let removed = self.store.clear_all()?;
        self.save_catalog(&Catalog::default())?;
        Ok(removed)
    }

    /// 1010: one local data disk; a second call updates its flags and can
    /// grow it, never shrink it.
    pub fn add_data_disk(
        &self,
        size_gb: u64,
        enabled: bool,
        restore: bool,
    ) -> Result<String, DiskError> {
        let _g = self.guard()?;
        let mut cat = self.catalog();
        let size = size_gb
            .checked_mul(1 << 30)
            .ok_or_else(|| DiskError::Invalid("size overflows".into()))?;
        let existing = cat
            .layers
            .iter()
            .find(|(_, m)| m.local_only && m.disk_type == 1)
            .map(|(n, _)| n.clone());
        let name = match existing {
            Some(n) => {
                let layer = LayerName::parse(&n)?;
                let header = crate::disk::qcow2::read_header(&self.store.path(&layer))
                    .map_err(|e| DiskError::Invalid(e.to_string()))?;
                if size < header.virtual_size {
                    return Err(DiskError::Invalid(format!(
                        "the data disk is {} GB; shrinking it would lose data",
                        header.virtual_size >> 30
                    )));
                }
                if size > header.virtual_size {
                    // Thin: growing the virtual size takes no space now.
                    self.store.ensure_space(0)?;
                    crate::disk::qemu_img::resize(&self.store.path(&layer), size)?;
                }
                n
            }
            None => {
                let layer =
                    LayerName::new("voi", 0, &uuid::Uuid::new_v4().hyphenated().to_string())?;
                self.store.create_thin_image(&layer, size)?;
                layer.to_string()
            }
        };
        cat.layers.insert(
            name.clone(),
            LayerMeta {
                operate_id: 0,
                disk_type: 1,
                group_uuid: String::new(),
                local_only: true,
                enabled,
                restore,
            },
        );
        self.save_catalog(&cat)?;
        Ok(name)
    }

    /// Bytes the local data disks may still grow by: their virtual size
    /// less what their files hold now. Space promised but not taken.
    pub fn data_disk_growth(&self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        self.catalog()
            .layers
            .iter()
            .filter(|(_, m)| m.local_only && m.disk_type == 1)
            .filter_map(|(n, _)| LayerName::parse(n).ok())
            .map(|l| self.store.path(&l))
            .filter_map(|p| {
                let virtual_size = crate::disk::qcow2::read_header(&p).ok()?.virtual_size;
                let held = std::fs::metadata(&p).ok()?.blocks() * 512;
                Some(virtual_size.saturating_sub(held))
            })
            .sum()
    }

    pub fn inventory(&self) -> Result<Inventory, DiskError> {
        self.store.inventory()
    }

    /// 9026 body: local system disks with a complete chain.
    pub fn system_disk_uuids(&self, groups: &[DesktopGroup]) -> Result<Vec<String>, DiskError> {
        let inv = self.store.inventory()?;
        Ok(groups
            .iter()
            .flat_map(|g| g.disks.iter().filter(|d| d.disk_type == 0))
            .filter(|d| inv.chain(&d.uuid).is_some_and(|c| c.complete))
            .map(|d| d.uuid.clone())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect())
    }

    /// 9011 bodies: each group that has local layers, with its disks.
    pub fn desktop_infos(
        &self,
        mac: &str,
        groups: &[DesktopGroup],
    ) -> Result<Vec<DesktopInfo>, DiskError> {
        let inv = self.store.inventory()?;
        let mut out = Vec::new();
        for g in groups {
            let mut disks = Vec::new();
            let uuids: std::collections::BTreeSet<_> = g
                .disks
                .iter()
                .map(|d| (d.uuid.clone(), d.disk_type))
                .collect();
            for (uuid, ty) in uuids {
                // Only what would boot: a chain with a gap is not reported.
                let Some(chain) = inv.chain(&uuid).filter(|c| c.complete) else {
                    continue;
                };
                let Some(top) = chain.layers.last().and_then(|n| inv.layers.get(n)) else {
                    continue;
                };
                disks.push(LocalDisk {
                    uuid,
                    disk_type: ty,
                    dif_level: i64::from(top.parsed.level),
                    prefix: chain.prefix.clone(),
                    real_size: Sectors::from_bytes_floor(chain.virtual_size),
                    reserve_size: None,
                });
            }
            if !disks.is_empty() {
                out.push(DesktopInfo {
                    mac: Some(mac.to_string()),
                    uuid: g.desktop_group_uuid.clone(),
                    sys_type: g.os_sys_type,
                    name: g.desktop_group_name.clone(),
                    desc: g.desktop_group_desc.clone(),
                    disks,
                });
            }
        }
        Ok(out)
    }

    /// What the boot loader needs for one group; with `prepare`, the user
    /// layer is created (or reset, for restore groups) first.
    pub fn boot_plan(
        &self,
        groups: &[DesktopGroup],
        group_uuid: &str,
        prepare: bool,
    ) -> Result<BootPlan, DiskError> {
        let _g = self.guard()?;
        let group = groups
            .iter()
            .find(|g| g.desktop_group_uuid == group_uuid)
            .ok_or_else(|| DiskError::Missing(format!("desktop group {group_uuid}")))?;
        let restore_group = group.desktop_group_restore == 1;
        let mut plan = BootPlan {
            desktop_group_uuid: group_uuid.to_string(),
            restore: restore_group,
            system: None,
            data: None,
            share: None,
            local_data: None,
        };
        let cat = self.catalog();
        let disks: std::collections::BTreeMap<String, (i64, bool)> = group
            .disks
            .iter()
            .map(|d| {
                let restore = if d.disk_type == 2 {
                    d.restore_flag == Some(1)
                } else {
                    restore_group
                };
                (d.uuid.clone(), (d.disk_type, restore))
            })
            .collect();
        for (uuid, (ty, restore)) in disks {
            let inv = self.store.inventory()?;
            let Some(chain) = inv.chain(&uuid).filter(|c| c.complete).cloned() else {
                continue;
            };
            // The top server layer: the highest level ≤ 2 of this disk. A
            // level that arrived while a user layer sat on the one below is
            // not on the chain yet (the chain is read from its top down);
            // the user layer then starts again over it.
            let server_top = inv
                .layers
                .values()
                .map(|l| l.parsed.clone())
                .filter(|n| n.uuid_str() == uuid && n.prefix == chain.prefix && n.level <= 2)
                .max_by_key(|n| n.level);
            let Some(server_top) = server_top else {
                continue;
            };
            let user = server_top.with_level(USER_LEVEL);
            // A user layer over an older server level (a new level came
            // since) is started again over the new one.
            let stale_user = inv.has(&user)
                && crate::disk::qcow2::read_header(&self.store.path(&user))
                    .ok()
                    .and_then(|h| h.backing_name())
                    .is_some_and(|b| b != server_top.to_string());
            if prepare && (restore || !inv.has(&user) || stale_user) {
                self.store.reset_user_layer(&server_top)?;
            }
            let inv = self.store.inventory()?;
            let chain = inv.chain(&uuid).cloned().unwrap_or(chain);
            let entry = BootDisk {
                uuid: uuid.clone(),
                top: self
                    .store
                    .dir()
                    .join(chain.layers.last().cloned().unwrap_or_default()),
                base: self
                    .store
                    .dir()
                    .join(chain.layers.first().cloned().unwrap_or_default()),
                chain: chain
                    .layers
                    .iter()
                    .map(|l| self.store.dir().join(l))
                    .collect(),
                virtual_size: chain.virtual_size,
                restore,
            };
            match ty {
                0 => plan.system = Some(entry),
                1 => plan.data = Some(entry),
                _ => plan.share = Some(entry),
            }
        }
        if let Some((name, meta)) = cat.layers.iter().find(|(_, m)| m.local_only && m.enabled) {
            let path = self.store.dir().join(name);
            plan.local_data = Some(json!({ "path": path, "restore": meta.restore }));
        }
        if plan.system.is_none() {
            return Err(DiskError::Missing(format!(
                "a complete system disk for group {group_uuid}"
            )));
        }
        Ok(plan)
    }

    /// Merges one diff into its parent (offline maintenance).
    pub fn merge(&self, child: &LayerName) -> Result<LayerName, DiskError> {
        let _g = self.guard()?;
        self.refuse_in_use(&[
            child.to_string(),
            child.with_level(child.level.saturating_sub(1)).to_string(),
        ])?;
        let into = self.store.merge(child)?;
        let mut cat = self.catalog();
        cat.prune(self.store.dir());
        self.save_catalog(&cat)?;
        Ok(into)
    }
}

/// How a downloaded layer joined its chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Adopted {
    /// Same bytes as downloaded; the download's copy can keep seeding.
    Linked,
    /// The backing path was rewritten; the file no longer matches its torrent.
    Rewritten,
}

#[derive(Debug, Clone, Serialize)]
pub struct BootDisk {
    pub uuid: String,
    pub top: std::path::PathBuf,
    pub base: std::path::PathBuf,
    pub chain: Vec<std::path::PathBuf>,
    pub virtual_size: u64,
    pub restore: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct BootPlan {
    pub desktop_group_uuid: String,
    pub restore: bool,
    pub system: Option<BootDisk>,
    pub data: Option<BootDisk>,
    pub share: Option<BootDisk>,
    /// The local data disk from add_data_disk, when enabled.
    pub local_data: Option<Value>,
}
