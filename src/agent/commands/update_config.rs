//! 1005 update_config: desktop mode, auto-login, and the server address.
//! A new `server_ip` moves the session to that server; if it cannot be
//! reached within `change_confirm_secs`, the agent returns to the old one.

use std::net::IpAddr;

use super::context::{parse_json, After, Applied, CmdResult, CommandError, Ctx};
use crate::protocol::messages::UpdateConfigCmd;
use crate::protocol::{ErrorCode, Frame};

pub struct UpdateConfig(UpdateConfigCmd);

impl UpdateConfig {
    pub fn parse(frame: &Frame) -> Result<Self, CommandError> {
        let cmd: UpdateConfigCmd = parse_json(frame)?;
        if !(0..=2).contains(&cmd.mode.show_desktop_type) {
            return Err(CommandError::new(
                ErrorCode::TerminalModeTypeError,
                format!(
                    "show_desktop_type {} (0 teaching, 1 personal, 2 mixed)",
                    cmd.mode.show_desktop_type
                ),
            ));
        }
        if !(0..=1).contains(&cmd.mode.auto_desktop) {
            return Err(CommandError::new(
                ErrorCode::TerminalModeAutoDesktopError,
                format!("auto_desktop {}", cmd.mode.auto_desktop),
            ));
        }
        let ip = cmd.program.server_ip.trim();
        if !ip.is_empty() {
            match ip.parse::<IpAddr>() {
                Ok(a) if !a.is_unspecified() && !a.is_multicast() => {}
                _ => {
                    return Err(CommandError::new(
                        ErrorCode::TerminalServerIpError,
                        format!("server_ip {:?}", cmd.program.server_ip),
                    ))
                }
            }
        }
        if cmd.conf_version.is_some_and(|v| v < -1) {
            return Err(CommandError::new(
                ErrorCode::TerminalConfVersionError,
                "conf_version below -1",
            ));
        }
        Ok(UpdateConfig(cmd))
    }

    pub async fn apply(self, ctx: &Ctx<'_>) -> CmdResult {
        let cmd = self.0;
        let new_ip = cmd.program.server_ip.trim().to_string();
        let current = ctx.agent.server_ip();
        ctx.agent
            .state
            .update(|s| {
                s.terminal.setup_info.mode = cmd.mode.clone();
                let keep_ip = s.terminal.setup_info.program.server_ip.clone();
                s.terminal.setup_info.program = cmd.program.clone();
                if new_ip.is_empty() {
                    s.terminal.setup_info.program.server_ip = keep_ip;
                }
                if let Some(v) = cmd.conf_version {
                    s.terminal.conf_version = v;
                }
            })
            .map_err(|e| CommandError::system(e.to_string()))?;
        if !new_ip.is_empty() && new_ip != current {
            return Ok(Applied::then(After::MoveServer(new_ip)));
        }
        Ok(Applied::done())
    }
}
