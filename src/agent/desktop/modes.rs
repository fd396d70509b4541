//! Restore and persistent, as the group says: the disks one boot gets.
//!
//! Restore (`desktop_group_restore = 1`): a new, empty user layer over the
//! server's top level at every boot (`Desktops::boot_plan` with `prepare`
//! makes it with `qemu-img create`: no data is copied, so the reset takes
//! the same time whatever the layer's size). Persistent: the user layer is
//! kept, and started again only when a new server level arrived under it.
//! The share disk follows its own `restore_flag` the same way.

use std::path::{Path, PathBuf};

use super::cmdline::GuestDisk;
use crate::agent::desktops::{BootPlan, Desktops};
use crate::disk::DiskError;
use crate::protocol::messages::DesktopGroup;

/// The disks of one boot, and the layers they keep open.
pub struct Prepared {
    pub plan: BootPlan,
    pub disks: Vec<GuestDisk>,
    pub in_use: Vec<String>,
    /// The system disk's highest server level (what an update changes).
    pub server_top: String,
}

pub fn prepare(
    desktops: &Desktops,
    groups: &[DesktopGroup],
    group_uuid: &str,
    rollback_overlay: Option<&Path>,
) -> Result<Prepared, DiskError> {
    let plan = desktops.boot_plan(groups, group_uuid, true)?;
    let system = plan
        .system
        .clone()
        .ok_or_else(|| DiskError::Missing(format!("a system disk for group {group_uuid}")))?;
    let name = |p: &PathBuf| {
        p.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let server_top = system
        .chain
        .iter()
        .map(name)
        .rfind(|n| {
            crate::disk::name::LayerName::parse(n)
                .is_ok_and(|l| crate::disk::name::SERVER_LEVELS.contains(&l.level))
        })
        .unwrap_or_default();
    let mut disks = vec![GuestDisk {
        path: rollback_overlay.map_or(system.top.clone(), Path::to_path_buf),
        read_only: false,
    }];
    let mut in_use: Vec<String> = system.chain.iter().map(name).collect();
    for d in [&plan.data, &plan.share].into_iter().flatten() {
        disks.push(GuestDisk {
            path: d.top.clone(),
            // A share disk without its own user layer is the server's
            // level itself: the guest must not write it.
            read_only: crate::disk::name::LayerName::parse(&name(&d.top))
                .is_ok_and(|l| crate::disk::name::SERVER_LEVELS.contains(&l.level)),
        });
        in_use.extend(d.chain.iter().map(name));
    }
    if let Some(path) = plan
        .local_data
        .as_ref()
        .and_then(|v| v["path"].as_str())
        .map(PathBuf::from)
    {
        in_use.push(name(&path));
        disks.push(GuestDisk {
            path,
            read_only: false,
        });
    }
    Ok(Prepared {
        plan,
        disks,
        in_use,
        server_top,
    })
}
