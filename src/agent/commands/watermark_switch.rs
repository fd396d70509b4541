//! 1022 watermark_switch: whether the desktop shows the terminal-info
//! watermark. Persisted; the desktop side reads it through `ctl status`.

use super::context::{parse_json, Applied, CmdResult, CommandError, Ctx};
use crate::protocol::messages::WatermarkSwitchCmd;
use crate::protocol::Frame;

pub struct WatermarkSwitch(bool);

impl WatermarkSwitch {
    pub fn parse(frame: &Frame) -> Result<Self, CommandError> {
        let cmd: WatermarkSwitchCmd = parse_json(frame)?;
        match cmd.switch {
            0 => Ok(WatermarkSwitch(false)),
            1 => Ok(WatermarkSwitch(true)),
            v => Err(CommandError::message(format!(
                "switch must be 0 or 1, got {v}"
            ))),
        }
    }

    pub async fn apply(self, ctx: &Ctx<'_>) -> CmdResult {
        ctx.agent
            .state
            .update(|s| s.watermark = self.0)
            .map_err(|e| CommandError::system(e.to_string()))?;
        Ok(Applied::done())
    }
}
