//! 1015 send_torrent: the binary torrent struct (notes §5.2) plus the
//! .torrent. The struct is parsed strictly before anything is written; the
//! layer then downloads through `bt::transfers`. The reply's batch_no is
//! the task uuid, which the server matches replies by.

use serde_json::json;

use super::context::{Applied, CmdResult, CommandError, Ctx};
use crate::agent::transfers::tasks::{
    DownloadRequest, Kind, Report, Stage, TaskRecord, TransferError,
};
use crate::disk::name::LayerName;
use crate::disk::DiskError;
use crate::protocol::torrent_struct::SendTorrent as Struct;
use crate::protocol::{BatchNo, DataType, ErrorCode, Frame};

pub struct SendTorrent {
    body: Struct,
}

/// How a transfer refusal is answered.
pub fn transfer_error(e: TransferError) -> CommandError {
    match e {
        TransferError::Torrent(_) => CommandError::message(e.to_string()),
        TransferError::Unknown(_) => {
            CommandError::new(ErrorCode::TerminalBtTaskNotExist, e.to_string())
        }
        TransferError::Disk(DiskError::Name(_)) => CommandError::message(e.to_string()),
        _ => CommandError::new(ErrorCode::TerminalAddBtTaskError, e.to_string()),
    }
}

/// Whether a 1015 body is the binary struct. The vendor's server sends it
/// with `data_type = 1` (its socket wrapper drops the argument, notes §11),
/// so the header is not trusted: a body that is not JSON is the struct.
pub fn carries_struct(frame: &Frame) -> bool {
    frame.data_type == DataType::Binary as u8
        || serde_json::from_slice::<serde::de::IgnoredAny>(&frame.payload).is_err()
}

impl SendTorrent {
    pub fn parse(frame: &Frame) -> Result<Self, CommandError> {
        if !carries_struct(frame) {
            return Err(CommandError::message(
                "send_torrent carries the binary torrent struct, not JSON",
            ));
        }
        let body = Struct::parse(&frame.payload)
            .map_err(|e| CommandError::message(format!("send_torrent: {e}")))?;
        Ok(SendTorrent { body })
    }

    /// The reply's batch_no, for the dispatcher (the struct has no JSON).
    pub fn batch_no(frame: &Frame) -> Option<BatchNo> {
        Struct::parse(&frame.payload)
            .ok()
            .map(|b| BatchNo::Text(b.task_uuid))
    }

    pub async fn apply(self, ctx: &Ctx<'_>) -> CmdResult {
        let b = self.body;
        let agent = ctx.agent;
        // The struct has no prefix; the desktop list names it.
        let prefix = agent.state.read(|s| {
            s.desktop_groups
                .iter()
                .flat_map(|g| g.disks.iter())
                .find(|d| d.uuid == b.uuid)
                .map(|d| d.prefix.clone())
                .unwrap_or_else(|| "voi".into())
        });
        let layer = LayerName::new(&prefix, i64::from(b.dif_level), &b.uuid)
            .map_err(|e| CommandError::message(format!("send_torrent: {e}")))?;
        let mut applied = Applied::done();
        applied.batch_no = Some(BatchNo::Text(b.task_uuid.clone()));
        // A layer already here with the same operate_id (a share disk the
        // server sends again) needs nothing.
        let known = agent
            .desktops
            .catalog()
            .layers
            .get(&layer.to_string())
            .cloned();
        if agent.desktops.store.path(&layer).exists()
            && known.is_some_and(|m| m.operate_id == i64::from(b.operate_id))
        {
            log::info!("{layer} is already here with operate_id {}", b.operate_id);
            applied.extra.insert("already_present".into(), json!(true));
            // The vendor's server made a task row when it sent this: it
            // hears the same 9025 finished 100 and 9015 as for a download,
            // or the row stays at 0% for good.
            if let (Some(t), Ok(meta)) = (
                agent.transfers.get(),
                crate::bt::meta::TorrentMeta::parse(&b.torrent),
            ) {
                t.report(Report::Finished {
                    record: TaskRecord {
                        layer: layer.to_string(),
                        kind: Kind::Download,
                        stage: Stage::Seeding,
                        info_hash: meta.info_hash,
                        file_name: meta.name,
                        length: meta.length,
                        task_uuid: b.task_uuid.clone(),
                        group_uuid: b.group_uuid.clone(),
                        disk_type: i64::from(b.disk_type),
                        operate_id: i64::from(b.operate_id),
                        torrent_id: String::new(),
                        result_unreported: false,
                    },
                    ok: true,
                    why: String::new(),
                });
            }
            return Ok(applied);
        }
        let transfers = agent.transfers.get().ok_or_else(|| {
            CommandError::new(
                ErrorCode::TerminalAddBtTaskError,
                "the BitTorrent engine is not running",
            )
        })?;
        let rec = transfers
            .download(DownloadRequest {
                layer,
                torrent: b.torrent,
                task_uuid: b.task_uuid,
                group_uuid: b.group_uuid,
                disk_type: i64::from(b.disk_type),
                operate_id: i64::from(b.operate_id),
            })
            .await
            .map_err(transfer_error)?;
        applied
            .extra
            .insert("torrent_name".into(), json!(rec.torrent_name()));
        Ok(applied)
    }
}
