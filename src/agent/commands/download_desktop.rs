//! 1008 download_desktop: the server announces a desktop whose layers it is
//! about to send (one 1015 per layer). The disks are checked and remembered
//! as wanted, so `ctl status` shows what is coming.

use serde_json::json;

use super::context::{parse_json, After, Applied, CmdResult, CommandError, Ctx};
use crate::agent::update_plan::Download;
use crate::disk::name::LayerName;
use crate::protocol::messages::DownloadDesktopCmd;
use crate::protocol::Frame;

pub struct DownloadDesktop {
    wanted: Vec<Download>,
    group: crate::protocol::messages::DesktopGroup,
}

impl DownloadDesktop {
    pub fn parse(frame: &Frame) -> Result<Self, CommandError> {
        let cmd: DownloadDesktopCmd = parse_json(frame)?;
        crate::disk::name::parse_uuid(&cmd.desktop.uuid).map_err(|e| {
            CommandError::message(format!("desktop uuid {:?}: {e}", cmd.desktop.uuid))
        })?;
        let mut wanted = Vec::new();
        for d in &cmd.desktop.disks {
            if !(0..=2).contains(&d.disk_type) {
                return Err(CommandError::message(format!(
                    "disk {}: type {} is not 0, 1 or 2",
                    d.uuid, d.disk_type
                )));
            }
            // Every level up to the one named.
            for level in 0..=d.dif_level.clamp(0, 2) {
                let name = LayerName::new(&d.prefix, level, &d.uuid)
                    .map_err(|e| CommandError::message(format!("disk {:?}: {e}", d.uuid)))?;
                wanted.push(Download {
                    group_uuid: cmd.desktop.uuid.clone(),
                    disk_uuid: name.uuid_str(),
                    level: name.level,
                    disk_type: d.disk_type,
                    prefix: name.prefix.clone(),
                    operate_id: d.operate_id,
                });
            }
            if d.dif_level < 0 || d.dif_level > 2 {
                return Err(CommandError::message(format!(
                    "disk {}: dif_level {} is outside 0..=2",
                    d.uuid, d.dif_level
                )));
            }
        }
        let d = &cmd.desktop;
        let group = crate::protocol::messages::DesktopGroup {
            desktop_group_name: d.name.clone(),
            desktop_group_uuid: d.uuid.clone(),
            desktop_group_desc: d.desc.clone(),
            os_sys_type: d.sys_type,
            diff_mode: d.diff_mode,
            disks: d.disks.clone(),
            ..Default::default()
        };
        Ok(DownloadDesktop { wanted, group })
    }

    pub async fn apply(self, ctx: &Ctx<'_>) -> CmdResult {
        let mut wanted: Vec<Download> = Vec::new();
        for w in self.wanted {
            if !wanted.contains(&w) {
                wanted.push(w);
            }
        }
        let n = wanted.len();
        let group = self.group;
        ctx.agent.persist(|s| {
            s.keep_announced_group(group, "1008");
            for w in wanted {
                if !s.pending_downloads.contains(&w) {
                    s.pending_downloads.push(w);
                }
            }
        });
        log::info!("download_desktop: {n} layer(s) announced");
        // The server's list again, then 9011 for what is held: a layer
        // already here sends no completion that would report it.
        let mut applied = Applied::then(After::RefreshDesktops);
        applied.extra.insert("layers".into(), json!(n));
        Ok(applied)
    }
}
