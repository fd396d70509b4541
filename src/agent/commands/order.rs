//! 1011 order: the server proposes a terminal number; the local screen shows
//! it and confirms with 9009 (`voi-agent ctl order confirm N`).
//! `terminal_id = -1` ends the numbering session.

use super::context::{parse_json, Applied, CmdResult, CommandError, Ctx};
use crate::agent::state::PendingOrder;
use crate::protocol::messages::OrderCmd;
use crate::protocol::{ErrorCode, Frame};

pub struct Order(OrderCmd);

impl Order {
    pub fn parse(frame: &Frame) -> Result<Self, CommandError> {
        let cmd: OrderCmd = parse_json(frame)?;
        if cmd.terminal_id < -1 {
            return Err(CommandError::new(
                ErrorCode::TerminalIdError,
                format!("terminal_id {} is below -1", cmd.terminal_id),
            ));
        }
        Ok(Order(cmd))
    }

    pub async fn apply(self, ctx: &Ctx<'_>) -> CmdResult {
        let OrderCmd {
            batch_no,
            terminal_id,
        } = self.0;
        ctx.agent
            .state
            .update(|s| {
                s.pending_order = (terminal_id >= 0).then_some(PendingOrder {
                    batch_no,
                    terminal_id,
                });
            })
            .map_err(|e| CommandError::system(e.to_string()))?;
        if terminal_id < 0 {
            log::info!("numbering ended by the server");
        } else {
            log::info!("numbering: this terminal is proposed number {terminal_id}");
        }
        Ok(Applied::done())
    }
}
