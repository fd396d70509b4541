//! 1009 cancel_download_desktop: every download still in progress stops and
//! its partial file goes. Finished layers stay and keep seeding.

use serde_json::json;

use super::context::{parse_json, Applied, CmdResult, CommandError, Ctx};
use crate::protocol::messages::CancelDownloadDesktopCmd;
use crate::protocol::Frame;

pub struct CancelDownloadDesktop;

impl CancelDownloadDesktop {
    pub fn parse(frame: &Frame) -> Result<Self, CommandError> {
        parse_json::<CancelDownloadDesktopCmd>(frame).map(|_| CancelDownloadDesktop)
    }

    pub async fn apply(self, ctx: &Ctx<'_>) -> CmdResult {
        cancel(ctx).await
    }
}

/// Shared with 1025 cancel_send_desktop.
pub async fn cancel(ctx: &Ctx<'_>) -> CmdResult {
    let cancelled = match ctx.agent.transfers.get() {
        Some(t) => t.cancel_downloads().await,
        None => Vec::new(),
    };
    ctx.agent.persist(|s| s.pending_downloads.clear());
    let mut applied = Applied::done();
    applied.extra.insert("cancelled".into(), json!(cancelled));
    Ok(applied)
}
