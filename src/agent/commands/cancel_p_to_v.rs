//! 1026 cancel_p_to_v: the server cancels a P2V (a physical terminal's disk
//! turned into a desktop image). This agent runs none, so there is nothing
//! to cancel: answered Success with that said, not NotImplemented (the
//! vendor's server took -1 for a failure of the cancel).

use serde_json::json;

use super::context::{parse_json, Applied, CmdResult, CommandError, Ctx};
use crate::protocol::messages::BatchCmd;
use crate::protocol::Frame;

pub struct CancelPToV;

impl CancelPToV {
    pub fn parse(frame: &Frame) -> Result<Self, CommandError> {
        parse_json::<BatchCmd>(frame).map(|_| CancelPToV)
    }

    pub async fn apply(self, _ctx: &Ctx<'_>) -> CmdResult {
        log::info!("cancel_p_to_v: no P2V runs on this terminal; nothing to cancel");
        let mut applied = Applied::done();
        applied.extra.insert(
            "cancelled".into(),
            json!("nothing: no P2V runs on this terminal"),
        );
        Ok(applied)
    }
}
