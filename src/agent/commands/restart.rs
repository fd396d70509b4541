//! 1002 restart: reply, then reboot after `POWER_DELAY`.

use super::context::{parse_json, After, Applied, CmdResult, CommandError, Ctx};
use crate::protocol::messages::BatchCmd;
use crate::protocol::Frame;

pub struct Restart;

impl Restart {
    pub fn parse(frame: &Frame) -> Result<Self, CommandError> {
        parse_json::<BatchCmd>(frame).map(|_| Restart)
    }

    pub async fn apply(self, _ctx: &Ctx<'_>) -> CmdResult {
        log::info!("restart requested by the server");
        Ok(Applied::then(After::Reboot))
    }
}
