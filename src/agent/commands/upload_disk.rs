//! 1020 upload_disk and 1016 upload_desktop (the same body): the server
//! asks for local layers (the `desktop.disks` list). Each goes through 9018, a new torrent, 9014, and seeding until the
//! server's 1021. The names are checked before the reply; the exchange runs
//! after it, and a failure reaches the server as a failed 9015.

use serde_json::json;
use std::sync::Arc;

use super::context::{parse_json, Applied, CmdResult, CommandError, Ctx};
use crate::agent::transfers::tasks::{Kind, Report, TaskRecord};
use crate::disk::name::LayerName;
use crate::protocol::messages::UploadDesktopCmd;
use crate::protocol::Frame;

pub struct UploadDisk {
    group_uuid: String,
    layers: Vec<LayerName>,
}

impl UploadDisk {
    pub fn parse(frame: &Frame) -> Result<Self, CommandError> {
        let cmd: UploadDesktopCmd = parse_json(frame)?;
        let group_uuid = cmd.desktop.uuid.clone();
        crate::disk::name::parse_uuid(&group_uuid)
            .map_err(|e| CommandError::message(format!("desktop uuid {group_uuid:?}: {e}")))?;
        let mut layers = Vec::new();
        for d in &cmd.desktop.disks {
            let name = LayerName::new(&d.prefix, d.dif_level, &d.uuid)
                .map_err(|e| CommandError::message(format!("disk {:?}: {e}", d.uuid)))?;
            layers.push(name);
        }
        if layers.is_empty() {
            return Err(CommandError::message("upload_disk names no disk"));
        }
        Ok(UploadDisk { group_uuid, layers })
    }

    pub async fn apply(self, ctx: &Ctx<'_>) -> CmdResult {
        for l in &self.layers {
            if !ctx.agent.desktops.store.path(l).exists() {
                return Err(CommandError::message(format!(
                    "{l} is not on this terminal"
                )));
            }
        }
        let agent = ctx.agent.clone();
        let link = ctx.link.clone();
        let names: Vec<String> = self.layers.iter().map(|l| l.to_string()).collect();
        tokio::spawn(upload_all(agent, link, self.group_uuid, self.layers));
        let mut applied = Applied::done();
        applied.extra.insert("layers".into(), json!(names));
        Ok(applied)
    }
}

async fn upload_all(
    agent: Arc<crate::agent::terminal::Agent>,
    link: crate::agent::session::connection::Link,
    group_uuid: String,
    layers: Vec<LayerName>,
) {
    for layer in layers {
        match crate::agent::transfers::server_link::upload_layer(&agent, &link, &layer, &group_uuid)
            .await
        {
            Ok(id) => log::info!("{layer}: upload offered (torrent {id})"),
            Err(e) => {
                log::error!("{layer}: upload failed: {e}");
                if let Some(t) = agent.transfers.get() {
                    t.report(Report::Finished {
                        record: TaskRecord::unstarted(
                            &layer.to_string(),
                            Kind::Upload,
                            &group_uuid,
                        ),
                        ok: false,
                        why: e.to_string(),
                    });
                }
            }
        }
    }
}
