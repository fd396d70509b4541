//! 1003 delete: the server has already dropped this terminal's record. We
//! forget what the server assigned (number, name, config version) so the
//! next login registers afresh, and reconnect as the original terminal did.

use super::context::{parse_json, After, Applied, CmdResult, CommandError, Ctx};
use crate::protocol::messages::BatchCmd;
use crate::protocol::Frame;

pub struct Delete;

impl Delete {
    pub fn parse(frame: &Frame) -> Result<Self, CommandError> {
        parse_json::<BatchCmd>(frame).map(|_| Delete)
    }

    pub async fn apply(self, ctx: &Ctx<'_>) -> CmdResult {
        ctx.agent
            .state
            .update(|s| {
                s.terminal.terminal_id = -1;
                s.terminal.conf_version = -1;
                s.pending_order = None;
                s.notice("deleted by the server; registering again");
            })
            .map_err(|e| CommandError::system(e.to_string()))?;
        Ok(Applied::then(After::Reconnect(
            "deleted by the server".into(),
        )))
    }
}
