//! 1021 bt_task_complete `{torrent_id}`: the server holds an uploaded layer,
//! so the terminal stops seeding it and reports 9015 task_result.

use super::context::{parse_json, Applied, CmdResult, CommandError, Ctx};
use crate::agent::transfers::tasks::Report;
use crate::protocol::messages::BtTaskCompleteCmd;
use crate::protocol::{ErrorCode, Frame};

pub struct BtTaskComplete {
    torrent_id: String,
}

impl BtTaskComplete {
    pub fn parse(frame: &Frame) -> Result<Self, CommandError> {
        let cmd: BtTaskCompleteCmd = parse_json(frame)?;
        if cmd.torrent_id.is_empty() || cmd.torrent_id.len() > 128 {
            return Err(CommandError::message("torrent_id is empty or too long"));
        }
        Ok(BtTaskComplete {
            torrent_id: cmd.torrent_id,
        })
    }

    pub async fn apply(self, ctx: &Ctx<'_>) -> CmdResult {
        let transfers = ctx.agent.transfers.get().ok_or_else(|| {
            CommandError::new(
                ErrorCode::TerminalBtUploadTaskNotExist,
                "the BitTorrent engine is not running",
            )
        })?;
        let rec = transfers.upload_done(&self.torrent_id).await.map_err(|e| {
            CommandError::new(ErrorCode::TerminalBtUploadTaskNotExist, e.to_string())
        })?;
        log::info!("{}: the server has it; upload finished", rec.layer);
        transfers.report(Report::Finished {
            record: rec,
            ok: true,
            why: String::new(),
        });
        Ok(Applied::done())
    }
}
