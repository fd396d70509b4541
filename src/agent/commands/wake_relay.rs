//! 1900 voi_wake_relay (ours): broadcast magic packets on this terminal's
//! subnet for a server that has no interface there (routers drop directed
//! broadcasts). Every MAC is checked before anything is sent.

use serde_json::json;

use super::context::{parse_json, Applied, CmdResult, CommandError, Ctx};
use crate::agent::power::{self, RelayError};
use crate::protocol::messages::WakeRelayCmd;
use crate::protocol::Frame;

pub struct WakeRelay(WakeRelayCmd);

impl WakeRelay {
    pub fn parse(frame: &Frame) -> Result<Self, CommandError> {
        parse_json::<WakeRelayCmd>(frame).map(WakeRelay)
    }

    pub async fn apply(self, ctx: &Ctx<'_>) -> CmdResult {
        match power::relay(ctx.agent, &self.0.macs) {
            Ok((sent, broadcast)) => {
                let mut a = Applied::done();
                a.extra.insert("sent".into(), json!(sent));
                a.extra
                    .insert("broadcast".into(), json!(broadcast.to_string()));
                Ok(a)
            }
            Err(e @ RelayError::Send(..)) | Err(e @ RelayError::NoSubnet) => {
                Err(CommandError::system(e.to_string()))
            }
            Err(e) => Err(CommandError::message(e.to_string())),
        }
    }
}
