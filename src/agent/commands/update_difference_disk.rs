//! 1013 update_difference_disk ("merge diff disks, delete extra diffs"):
//! the list names the disks concerned; every uuid is checked first, then the
//! desktop list is fetched again and the update decision merges and deletes
//! whatever no longer matches the server. (The original terminal parsed the
//! list and did nothing.)

use super::context::{parse_json, After, Applied, CmdResult, CommandError, Ctx};
use crate::disk::name::parse_uuid;
use crate::protocol::messages::UpdateDifferenceDiskCmd;
use crate::protocol::Frame;

pub struct UpdateDifferenceDisk;

impl UpdateDifferenceDisk {
    pub fn parse(frame: &Frame) -> Result<Self, CommandError> {
        let cmd: UpdateDifferenceDiskCmd = parse_json(frame)?;
        for d in &cmd.disk_info_list {
            parse_uuid(&d.uuid).map_err(|e| CommandError::message(e.to_string()))?;
            if !d.download_url.is_empty() {
                super::context::check_download_url(&d.download_url)?;
            }
            if d.version < 0 {
                return Err(CommandError::message(format!(
                    "version {} is negative",
                    d.version
                )));
            }
        }
        Ok(UpdateDifferenceDisk)
    }

    pub async fn apply(self, _ctx: &Ctx<'_>) -> CmdResult {
        Ok(Applied::then(After::RefreshDesktops))
    }
}
