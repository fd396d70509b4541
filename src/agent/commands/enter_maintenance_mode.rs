//! 1006 enter_maintenance_mode: next boot goes to the maintenance entry of
//! `boot/`; reply, then reboot.

use super::context::{parse_json, After, Applied, CmdResult, CommandError, Ctx};
use crate::agent::platform::BootTarget;
use crate::protocol::messages::BatchCmd;
use crate::protocol::Frame;

pub struct EnterMaintenanceMode;

impl EnterMaintenanceMode {
    pub fn parse(frame: &Frame) -> Result<Self, CommandError> {
        parse_json::<BatchCmd>(frame).map(|_| EnterMaintenanceMode)
    }

    pub async fn apply(self, ctx: &Ctx<'_>) -> CmdResult {
        next_boot_then_reboot(ctx, BootTarget::Maintenance)
    }
}

/// Selects the next boot now (so a failure is reported in the reply) and
/// reboots after the reply.
pub fn next_boot_then_reboot(ctx: &Ctx<'_>, target: BootTarget) -> CmdResult {
    ctx.agent
        .platform
        .set_next_boot(target)
        .map_err(|e| CommandError::system(format!("select next boot {target:?}: {e}")))?;
    Ok(Applied::then(After::Reboot))
}
