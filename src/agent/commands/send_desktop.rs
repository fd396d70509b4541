//! 1017 send_desktop (R v2.28 style): each disk with a `download_url` names
//! its .torrent over HTTP. Names and URLs are checked before the reply; the
//! torrents are fetched after it, so a slow web server never holds up the
//! command queue, and a failure reaches the server as a failed 9015.

use serde_json::json;

use super::context::{parse_json, Applied, CmdResult, CommandError, Ctx};
use crate::agent::transfers::server_link::UrlDownload;
use crate::agent::transfers::tasks::{Kind, Report, TaskRecord};
use crate::disk::name::LayerName;
use crate::protocol::messages::SendDesktopCmd;
use crate::protocol::Frame;

pub struct SendDesktop {
    downloads: Vec<UrlDownload>,
    group: crate::protocol::messages::DesktopGroup,
}

impl SendDesktop {
    pub fn parse(frame: &Frame) -> Result<Self, CommandError> {
        let cmd: SendDesktopCmd = parse_json(frame)?;
        let group = cmd.desktop.desktop_group_uuid.clone();
        crate::disk::name::parse_uuid(&group)
            .map_err(|e| CommandError::message(format!("desktop_group_uuid {group:?}: {e}")))?;
        let mut downloads = Vec::new();
        for d in &cmd.desktop.disks {
            let layer = LayerName::new(&d.prefix, d.dif_level, &d.uuid)
                .map_err(|e| CommandError::message(format!("disk {:?}: {e}", d.uuid)))?;
            let Some(url) = d.download_url.clone().filter(|u| !u.is_empty()) else {
                continue;
            };
            super::context::check_download_url(&url)
                .map_err(|e| CommandError::message(format!("{layer}: {}", e.msg)))?;
            downloads.push(UrlDownload {
                layer,
                url,
                group_uuid: group.clone(),
                disk_type: d.disk_type,
                operate_id: d.operate_id,
            });
        }
        Ok(SendDesktop {
            downloads,
            group: cmd.desktop.to_group(),
        })
    }

    pub async fn apply(self, ctx: &Ctx<'_>) -> CmdResult {
        let names: Vec<String> = self.downloads.iter().map(|d| d.layer.to_string()).collect();
        let agent = ctx.agent.clone();
        let group = self.group;
        agent.persist(|s| s.keep_announced_group(group, "1017"));
        tokio::spawn(async move {
            for d in self.downloads {
                let layer = d.layer.to_string();
                if let Err(why) =
                    crate::agent::transfers::server_link::download_from_url(&agent, d.clone()).await
                {
                    log::error!("{layer}: {why}");
                    if let Some(t) = agent.transfers.get() {
                        t.report(Report::Finished {
                            record: TaskRecord::unstarted(&layer, Kind::Download, &d.group_uuid),
                            ok: false,
                            why,
                        });
                    }
                }
            }
        });
        let mut applied = Applied::done();
        applied.extra.insert("layers".into(), json!(names));
        Ok(applied)
    }
}
