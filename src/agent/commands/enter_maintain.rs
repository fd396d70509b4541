//! 1019 enter_maintain: the newer name of enter_maintenance_mode.

use super::context::{parse_json, CmdResult, CommandError, Ctx};
use super::enter_maintenance_mode::next_boot_then_reboot;
use crate::agent::platform::BootTarget;
use crate::protocol::messages::BatchCmd;
use crate::protocol::Frame;

pub struct EnterMaintain;

impl EnterMaintain {
    pub fn parse(frame: &Frame) -> Result<Self, CommandError> {
        parse_json::<BatchCmd>(frame).map(|_| EnterMaintain)
    }

    pub async fn apply(self, ctx: &Ctx<'_>) -> CmdResult {
        next_boot_then_reboot(ctx, BootTarget::Maintenance)
    }
}
