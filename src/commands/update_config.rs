//! Placeholder until implemented: answered as not supported.

use super::{CmdResult, CommandError, Ctx};
use crate::protocol::{ErrorCode, Frame};

pub struct UpdateConfig;

impl UpdateConfig {
    pub fn parse(_frame: &Frame) -> Result<Self, CommandError> {
        Err(CommandError::new(
            ErrorCode::OtherError,
            "NotImplemented: update_config is not supported by this agent version",
        ))
    }

    pub async fn apply(self, _ctx: &Ctx<'_>) -> CmdResult {
        Err(CommandError::new(
            ErrorCode::OtherError,
            "NotImplemented: update_config",
        ))
    }
}
