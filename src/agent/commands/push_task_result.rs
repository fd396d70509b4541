//! 1018 push_task_result `{batch_no?, torrent_id, result, msg}`: the
//! vendor's web side (as `push_bt_result`) tells the terminal how a task
//! ended on its side. Recorded in the terminal's notices and answered with
//! the batch_no it carries; nothing else changes.

use super::context::{parse_json, Applied, CmdResult, CommandError, Ctx};
use crate::protocol::messages::PushTaskResultCmd;
use crate::protocol::Frame;

pub struct PushTaskResult {
    cmd: PushTaskResultCmd,
}

impl PushTaskResult {
    pub fn parse(frame: &Frame) -> Result<Self, CommandError> {
        let cmd: PushTaskResultCmd = parse_json(frame)?;
        if cmd.torrent_id.len() > 128 || cmd.msg.len() > 1024 {
            return Err(CommandError::message("torrent_id or msg is too long"));
        }
        Ok(PushTaskResult { cmd })
    }

    pub async fn apply(self, ctx: &Ctx<'_>) -> CmdResult {
        let c = self.cmd;
        let text = format!(
            "the server reports task {}: result {}{}",
            c.torrent_id,
            c.result,
            if c.msg.is_empty() {
                String::new()
            } else {
                format!(" ({})", c.msg)
            }
        );
        log::info!("{text}");
        ctx.agent.persist(|s| s.notice(text.clone()));
        let mut applied = Applied::done();
        applied.batch_no = c.batch_no;
        Ok(applied)
    }
}
