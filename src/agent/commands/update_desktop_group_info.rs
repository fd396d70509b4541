//! 1024 update_desktop_group_info: reply, then fetch 9007 again so the
//! desktop decision runs on fresh data.

use std::sync::Arc;

use super::context::{parse_json, After, Applied, CmdResult, CommandError, Ctx};
use crate::agent::session::connection::Link;
use crate::agent::terminal::Agent;
use crate::protocol::messages::{BatchCmd, DesktopGroupListReq, DesktopGroupListResp};
use crate::protocol::{Frame, ServiceCode};

pub struct UpdateDesktopGroupInfo;

impl UpdateDesktopGroupInfo {
    pub fn parse(frame: &Frame) -> Result<Self, CommandError> {
        parse_json::<BatchCmd>(frame).map(|_| UpdateDesktopGroupInfo)
    }

    pub async fn apply(self, _ctx: &Ctx<'_>) -> CmdResult {
        Ok(Applied::then(After::RefreshDesktops))
    }
}

pub async fn refresh(agent: &Arc<Agent>, link: &Link) {
    let req = DesktopGroupListReq {
        mac: agent.mac.clone(),
        ip: agent.report_ip(link.local_ip()),
    };
    match link.request(ServiceCode::GetDesktopGroupList, &req).await {
        Ok((_, env)) => match env.data_as::<DesktopGroupListResp>() {
            Ok(Some(list)) if env.is_ok() => {
                agent.desktop_groups_received(list.desktop_group_list).await;
                agent.report_desktops(link).await;
                crate::agent::transfers::server_link::request_pending(agent, link).await;
            }
            Ok(_) if !env.is_ok() => log::info!(
                "get_desktop_group_list: the server answered {} {}; keeping every desktop as it is",
                env.code,
                env.msg
            ),
            other => log::warn!(
                "get_desktop_group_list: code {} {} ({other:?})",
                env.code,
                env.msg
            ),
        },
        Err(e) => log::warn!("get_desktop_group_list: {e}"),
    }
}
