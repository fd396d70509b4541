//! 1010 add_data_disk: a local data disk of `size` GB with its enable and
//! restore flags. A second call updates the flags and may grow the disk.
//!
//! The disk is thin (qcow2 grows as it is written): the vendor's web UI
//! always asks for 100 GB, so only the store's margin must be free now. A
//! disk larger than the free space is an overcommit; it is reported in the
//! state notices and taken off the disk residue (9004).

use super::context::{parse_json, Applied, CmdResult, CommandError, Ctx};
use crate::disk::DiskError;
use crate::protocol::messages::AddDataDiskCmd;
use crate::protocol::Frame;

/// Beyond this a request is a typo, not a disk.
const MAX_GB: i64 = 16 * 1024;

pub struct AddDataDisk {
    size_gb: u64,
    enabled: bool,
    restore: bool,
}

fn flag(name: &str, v: i64) -> Result<bool, CommandError> {
    match v {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(CommandError::message(format!(
            "{name} must be 0 or 1, got {v}"
        ))),
    }
}

impl AddDataDisk {
    pub fn parse(frame: &Frame) -> Result<Self, CommandError> {
        let cmd: AddDataDiskCmd = parse_json(frame)?;
        if !(1..=MAX_GB).contains(&cmd.size) {
            return Err(CommandError::message(format!(
                "size must be 1..={MAX_GB} GB, got {}",
                cmd.size
            )));
        }
        Ok(AddDataDisk {
            size_gb: cmd.size as u64,
            enabled: flag("enable", cmd.enable)?,
            restore: flag("restore", cmd.restore)?,
        })
    }

    pub async fn apply(self, ctx: &Ctx<'_>) -> CmdResult {
        let agent = ctx.agent.clone();
        let r = tokio::task::spawn_blocking(move || {
            agent
                .desktops
                .add_data_disk(self.size_gb, self.enabled, self.restore)
        })
        .await
        .map_err(|e| CommandError::system(e.to_string()))?;
        match r {
            Ok(name) => {
                log::info!("data disk {name}: {} GB", self.size_gb);
                let agent = ctx.agent.clone();
                let (growth, free) = tokio::task::spawn_blocking(move || {
                    (
                        agent.desktops.data_disk_growth(),
                        agent.desktops.store.free_bytes(),
                    )
                })
                .await
                .unwrap_or((0, u64::MAX));
                if growth > free {
                    let text = format!(
                        "data disk {name} is overcommitted: it may grow by {:.2} GB, {:.2} GB are free (GB = 2^30 bytes, the protocol's unit)",
                        crate::agent::terminal::gb(growth),
                        crate::agent::terminal::gb(free)
                    );
                    log::warn!("{text}");
                    ctx.agent.persist(|s| s.notice(text));
                }
                let mut a = Applied::done();
                a.extra.insert("disk".into(), serde_json::json!(name));
                Ok(a)
            }
            Err(e @ DiskError::Invalid(_)) => Err(CommandError::message(e.to_string())),
            Err(e) => Err(CommandError::system(e.to_string())),
        }
    }
}
