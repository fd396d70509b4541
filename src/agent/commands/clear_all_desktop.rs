//! 1007 clear_all_desktop: every desktop layer is removed (through the disk
//! journal, so a crash half-way finishes the job at the next start).

use serde_json::json;

use super::context::{parse_json, Applied, CmdResult, CommandError, Ctx};
use crate::protocol::messages::BatchCmd;
use crate::protocol::Frame;

pub struct ClearAllDesktop;

impl ClearAllDesktop {
    pub fn parse(frame: &Frame) -> Result<Self, CommandError> {
        parse_json::<BatchCmd>(frame).map(|_| ClearAllDesktop)
    }

    pub async fn apply(self, ctx: &Ctx<'_>) -> CmdResult {
        // Nothing may keep serving (or writing) a layer about to go.
        if let Some(t) = ctx.agent.transfers.get() {
            t.remove_all().await;
        }
        let agent = ctx.agent.clone();
        let removed = tokio::task::spawn_blocking(move || agent.desktops.clear_all())
            .await
            .map_err(|e| CommandError::system(e.to_string()))?
            .map_err(|e| CommandError::system(format!("clearing desktops: {e}")))?;
        ctx.agent.persist(|s| s.pending_downloads.clear());
        log::info!("cleared {} desktop layer(s)", removed.len());
        let mut applied = Applied::done();
        applied.extra.insert("removed".into(), json!(removed.len()));
        Ok(applied)
    }
}
