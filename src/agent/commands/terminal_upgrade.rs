//! 1030 terminal_upgrade: checked now (the reply says whether it will be
//! installed), installed in the background (`agent/upgrade/`). The vendor's
//! terminal answers nothing and fetches `upgrade_package` by TFTP; ours
//! answers, and installs only a signed package from `manifest_url`.

use serde_json::json;

use super::context::{parse_json, Applied, CmdResult, CommandError, Ctx};
use crate::protocol::messages::TerminalUpgradeCmd;
use crate::protocol::Frame;

pub struct TerminalUpgrade(TerminalUpgradeCmd);

impl TerminalUpgrade {
    pub fn parse(frame: &Frame) -> Result<Self, CommandError> {
        parse_json::<TerminalUpgradeCmd>(frame).map(TerminalUpgrade)
    }

    pub async fn apply(self, ctx: &Ctx<'_>) -> CmdResult {
        crate::agent::upgrade::check(ctx.agent, &self.0).map_err(CommandError::message)?;
        let version = self.0.version.clone();
        log::info!("upgrade to {version} accepted; fetching the package");
        crate::agent::upgrade::begin(ctx.agent.clone(), self.0);
        let mut a = Applied::done();
        a.extra.insert("installing".into(), json!(version));
        Ok(a)
    }
}
