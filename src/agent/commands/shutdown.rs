//! 1001 shutdown: reply, then power off after `POWER_DELAY`.

use super::context::{parse_json, After, Applied, CmdResult, CommandError, Ctx};
use crate::protocol::messages::BatchCmd;
use crate::protocol::Frame;

pub struct Shutdown;

impl Shutdown {
    pub fn parse(frame: &Frame) -> Result<Self, CommandError> {
        parse_json::<BatchCmd>(frame).map(|_| Shutdown)
    }

    pub async fn apply(self, _ctx: &Ctx<'_>) -> CmdResult {
        log::info!("shutdown requested by the server");
        Ok(Applied::then(After::PowerOff))
    }
}
