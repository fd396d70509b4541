//! 1004 update_name: the terminal's name (at most 13 bytes, per the API
//! document) and the configuration version that goes with it.

use super::context::{parse_json, Applied, CmdResult, CommandError, Ctx};
use crate::protocol::messages::UpdateNameCmd;
use crate::protocol::{ErrorCode, Frame};

pub const MAX_NAME_BYTES: usize = 13;

pub struct UpdateName(UpdateNameCmd);

use crate::agent::terminal::is_hostname;

pub fn validate_name(name: &str) -> Result<(), CommandError> {
    if name.trim().is_empty() {
        return Err(CommandError::new(
            ErrorCode::TerminalNameError,
            "name is empty",
        ));
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(CommandError::new(
            ErrorCode::TerminalNameError,
            format!("name is {} bytes; at most {MAX_NAME_BYTES}", name.len()),
        ));
    }
    // Names end up in file names of other tools (logs, screenshots), and
    // no classroom names a terminal with a path.
    if name.contains(['/', '\\']) || name.starts_with('.') {
        return Err(CommandError::new(
            ErrorCode::TerminalNameError,
            "name contains a path separator or starts with a dot",
        ));
    }
    if name.chars().any(|c| c.is_control()) {
        return Err(CommandError::new(
            ErrorCode::TerminalNameError,
            "name contains control characters",
        ));
    }
    Ok(())
}

impl UpdateName {
    pub fn parse(frame: &Frame) -> Result<Self, CommandError> {
        let cmd: UpdateNameCmd = parse_json(frame)?;
        validate_name(&cmd.name)?;
        if cmd.conf_version < -1 {
            return Err(CommandError::new(
                ErrorCode::TerminalConfVersionError,
                "conf_version below -1",
            ));
        }
        Ok(UpdateName(cmd))
    }

    pub async fn apply(self, ctx: &Ctx<'_>) -> CmdResult {
        let UpdateNameCmd {
            name, conf_version, ..
        } = self.0;
        if is_hostname(&name) {
            if let Err(e) = ctx.agent.platform.set_hostname(&name) {
                return Err(CommandError::system(format!("set hostname: {e}")));
            }
        } else {
            log::info!("name {name:?} is not a host name; kept as the terminal name only");
        }
        ctx.agent
            .state
            .update(|s| {
                s.terminal.name = name;
                s.terminal.conf_version = conf_version;
            })
            .map_err(|e| CommandError::system(e.to_string()))?;
        Ok(Applied::done())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(validate_name("PC-1").is_ok());
        assert!(validate_name("1234567890123").is_ok());
        assert!(validate_name("12345678901234").is_err());
        assert!(validate_name("教室一号机").is_err()); // 15 bytes
        assert!(validate_name("教室一号").is_ok()); // 12 bytes
        assert!(validate_name("").is_err());
        assert!(validate_name("a\nb").is_err());
        assert!(is_hostname("PC-1"));
        assert!(!is_hostname("教室"));
    }
}
