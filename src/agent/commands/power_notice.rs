//! 1901 voi_power_notice (ours): the server will power this terminal off
//! (a class schedule); whoever sits at it is told how long they have.

use super::context::{parse_json, Applied, CmdResult, CommandError, Ctx};
use crate::protocol::messages::PowerNoticeCmd;
use crate::protocol::Frame;

pub struct PowerNotice(PowerNoticeCmd);

const MAX_REASON: usize = 200;

impl PowerNotice {
    pub fn parse(frame: &Frame) -> Result<Self, CommandError> {
        let c = parse_json::<PowerNoticeCmd>(frame)?;
        if !matches!(c.action.as_str(), "shutdown" | "restart") {
            return Err(CommandError::message(format!(
                "action {:?}: expected shutdown or restart",
                c.action
            )));
        }
        if !(0..=86_400).contains(&c.in_secs) {
            return Err(CommandError::message(format!(
                "in_secs {} is not within a day",
                c.in_secs
            )));
        }
        Ok(PowerNotice(c))
    }

    pub async fn apply(self, ctx: &Ctx<'_>) -> CmdResult {
        let c = self.0;
        let reason: String = c
            .reason
            .chars()
            .filter(|ch| !ch.is_control())
            .take(MAX_REASON)
            .collect();
        let text = format!(
            "this terminal will {} in {} min{}",
            if c.action == "shutdown" {
                "shut down"
            } else {
                "restart"
            },
            (c.in_secs + 59) / 60,
            if reason.is_empty() {
                String::new()
            } else {
                format!(": {reason}")
            }
        );
        log::warn!("{text}");
        let at_ms = crate::agent::desktop::now_ms()
            .saturating_add(u64::try_from(c.in_secs).unwrap_or(0).saturating_mul(1000));
        ctx.agent.set_live(|l| {
            l.power_notice = Some(crate::agent::terminal::PowerNoticeLive {
                action: c.action.clone(),
                reason: reason.clone(),
                at_ms,
            })
        });
        ctx.agent.persist(|s| s.notice(text.clone()));
        Ok(Applied::done())
    }
}
