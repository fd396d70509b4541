//! Commands this agent does not carry out (yet). They are answered with a
//! clear error so the server never believes they succeeded.

use super::context::{CmdResult, CommandError, Ctx};
use crate::protocol::{ErrorCode, Frame, ServiceCode};

pub struct Unsupported {
    code: ServiceCode,
}

impl Unsupported {
    pub fn parse(code: ServiceCode, _frame: &Frame) -> Self {
        Unsupported { code }
    }

    pub async fn apply(self, _ctx: &Ctx<'_>) -> CmdResult {
        Err(CommandError::new(
            ErrorCode::OtherError,
            format!(
                "NotImplemented: {} ({}) is not supported by this agent version",
                self.code.name(),
                self.code as u32
            ),
        ))
    }
}
