//! What 9004 reports: who we are, and (ours) wake-on-LAN and the last
//! upgrade's outcome. Sent at login, and again when an upgrade is done.

use crate::agent::terminal::Agent;
use crate::protocol::messages::ConfigVersionReq;

pub fn config_version_req(agent: &Agent) -> ConfigVersionReq {
    ConfigVersionReq {
        mac: agent.mac.clone(),
        platform: Some(crate::agent::terminal::platform_name().into()),
        soft_version: Some(agent.cfg.soft_version.clone()),
        disk_residue: Some(agent.disk_residue_gb()),
        resolutions: None,
        wake: crate::agent::power::wake_info(agent),
        upgrade: crate::agent::upgrade::state::load(&crate::agent::upgrade::state::path(
            &agent.cfg,
        ))
        .report(),
    }
}
