//! 1014 pxe_start: one-shot network boot, then reboot.

use super::context::{parse_json, CmdResult, CommandError, Ctx};
use super::enter_maintenance_mode::next_boot_then_reboot;
use crate::agent::platform::BootTarget;
use crate::protocol::messages::BatchCmd;
use crate::protocol::Frame;

pub struct PxeStart;

impl PxeStart {
    pub fn parse(frame: &Frame) -> Result<Self, CommandError> {
        parse_json::<BatchCmd>(frame).map(|_| PxeStart)
    }

    pub async fn apply(self, ctx: &Ctx<'_>) -> CmdResult {
        next_boot_then_reboot(ctx, BootTarget::Pxe)
    }
}
