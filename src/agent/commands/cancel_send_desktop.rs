//! 1025 cancel_send_desktop: the server withdrew a desktop it was sending;
//! downloads in progress stop as for 1009. (The original stopped every
//! torrent, seeding ones too; finished layers keep serving the room here.)

use super::context::{parse_json, CmdResult, CommandError, Ctx};
use crate::protocol::messages::BatchCmd;
use crate::protocol::Frame;

pub struct CancelSendDesktop;

impl CancelSendDesktop {
    pub fn parse(frame: &Frame) -> Result<Self, CommandError> {
        parse_json::<BatchCmd>(frame).map(|_| CancelSendDesktop)
    }

    pub async fn apply(self, ctx: &Ctx<'_>) -> CmdResult {
        super::cancel_download_desktop::cancel(ctx).await
    }
}
