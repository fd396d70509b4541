//! Typed bodies of every JSON message in the API document and the notes.
//!
//! Naming: `*Req` is a terminal→server request body (9xxx), `*Resp` the
//! `data` of its answer; `*Cmd` is a server→terminal command body (1xxx).
//! Numeric fields go through `flex` so numbers and numeric strings both work.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use super::flex::{self, BatchNo, Sectors};

// ---------------------------------------------------------------- 9xxx

/// 9000 heartbeat, 9003 get_date_time, 9005 get_config_info, 9010 order_query,
/// 9017 init_desktop, 9019 bt_tracker: the body is only the MAC.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MacReq {
    pub mac: String,
}

/// 9000 heartbeat as our agent sends it: the MAC, and (ours, optional) the
/// desktop's state. The agent sends one at once whenever that state
/// changes, so the server knows within a round trip; the vendor's server
/// reads the MAC and ignores the rest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeartbeatReq {
    pub mac: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desktop: Option<DesktopState>,
}

/// The desktop runtime's state as our agent reports it (9000 `desktop`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DesktopState {
    /// off, preparing, starting, running, stopping or failed.
    pub state: String,
    /// The group it concerns; empty when none has run since the agent
    /// started.
    #[serde(default)]
    pub desktop_group_uuid: String,
    /// When it entered this state, ms since the epoch.
    #[serde(default)]
    pub changed_ms: u64,
    /// "kvm" or "tcg" once a start has chosen one.
    #[serde(default)]
    pub accelerator: String,
    /// Why it failed, or why it runs on TCG though KVM was asked for.
    #[serde(default)]
    pub reason: String,
    /// The layer that failed to boot, when the previous level runs instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolled_back_from: Option<String>,
}

/// The states `DesktopState::state` may take.
pub const DESKTOP_STATES: [&str; 6] = [
    "off",
    "preparing",
    "starting",
    "running",
    "stopping",
    "failed",
];

impl DesktopState {
    /// Whether every field is of the form and size a server keeps.
    pub fn check(&self) -> Result<(), String> {
        if !DESKTOP_STATES.contains(&self.state.as_str()) {
            return Err(format!(
                "desktop.state {:?} is not one of {DESKTOP_STATES:?}",
                self.state.get(..32).unwrap_or(&self.state)
            ));
        }
        if !self.desktop_group_uuid.is_empty()
            && uuid::Uuid::parse_str(&self.desktop_group_uuid).is_err()
        {
            return Err("desktop.desktop_group_uuid is not a uuid".into());
        }
        if !["", "kvm", "tcg"].contains(&self.accelerator.as_str()) {
            return Err("desktop.accelerator is not kvm or tcg".into());
        }
        if self.reason.len() > 1024 {
            return Err(format!(
                "desktop.reason is {} bytes; at most 1024",
                self.reason.len()
            ));
        }
        if let Some(l) = &self.rolled_back_from {
            crate::disk::name::LayerName::parse(l)
                .map_err(|e| format!("desktop.rolled_back_from: {e}"))?;
        }
        Ok(())
    }
}

/// 9000 and 9003 answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DateTimeResp {
    pub datetime: String,
}

/// 9001 terminal_login and 9002 terminal_logout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoginReq {
    pub mac: String,
    #[serde(default)]
    pub ip: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoginResp {
    pub token: String,
    /// The vendor server answers its time beside the token (notes §11).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub datetime: String,
}

/// 9004 get_config_version_id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigVersionReq {
    pub mac: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub soft_version: Option<String>,
    /// GB free, per the document (the original terminal sent sectors).
    #[serde(
        default,
        deserialize_with = "flex::opt_float",
        skip_serializing_if = "Option::is_none"
    )]
    pub disk_residue: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolutions: Option<String>,
    /// Ours: the NIC's wake-on-LAN and the subnet it is on. Its presence
    /// also says the terminal carries out 1900 and 1901.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wake: Option<WakeInfo>,
    /// Ours: the last agent upgrade's outcome.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgrade: Option<UpgradeReport>,
}

/// What a terminal of ours reports about waking it (in 9004).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WakeInfo {
    pub interface: String,
    /// The NIC can wake on a magic packet.
    pub supported: bool,
    /// Why not, or how it was checked ("ethtool: Operation not supported").
    #[serde(default)]
    pub detail: String,
    /// Its address and prefix, for the subnet a relay must be on.
    #[serde(default)]
    pub ip: String,
    #[serde(default)]
    pub prefix: u8,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigVersionResp {
    #[serde(deserialize_with = "flex::int")]
    pub conf_version: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ModeSetup {
    #[serde(default, deserialize_with = "flex::int")]
    pub show_desktop_type: i64,
    #[serde(default, deserialize_with = "flex::int")]
    pub auto_desktop: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ProgramSetup {
    #[serde(default)]
    pub server_ip: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub screen_resolution: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolutions: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SetupInfo {
    #[serde(default)]
    pub mode: ModeSetup,
    #[serde(default)]
    pub program: ProgramSetup,
}

/// The terminal's configuration: 9005 answer and 9006 update_config_info body.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TerminalConfig {
    #[serde(default = "minus_one", deserialize_with = "flex::int")]
    pub terminal_id: i64,
    #[serde(default)]
    pub mac: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub ip: String,
    #[serde(default, deserialize_with = "flex::int")]
    pub is_dhcp: i64,
    #[serde(default)]
    pub mask: String,
    #[serde(default)]
    pub gateway: String,
    #[serde(default)]
    pub dns1: String,
    #[serde(default)]
    pub dns2: String,
    #[serde(default)]
    pub platform: String,
    #[serde(default)]
    pub soft_version: String,
    #[serde(default = "minus_one", deserialize_with = "flex::int")]
    pub conf_version: i64,
    #[serde(default, deserialize_with = "flex::float")]
    pub disk_residue: f64,
    #[serde(default)]
    pub setup_info: SetupInfo,
}

fn minus_one() -> i64 {
    -1
}

/// 9007 get_desktop_group_list request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DesktopGroupListReq {
    pub mac: String,
    #[serde(default)]
    pub ip: String,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct DesktopGroupListResp {
    #[serde(default)]
    pub desktop_group_list: Vec<DesktopGroup>,
}

/// One disk layer as the server describes it (9007, 1017, 1008).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DiskInfo {
    pub uuid: String,
    /// 0 system, 1 data, 2 share.
    #[serde(rename = "type", deserialize_with = "flex::int")]
    pub disk_type: i64,
    #[serde(deserialize_with = "flex::int")]
    pub dif_level: i64,
    #[serde(default = "voi_prefix")]
    pub prefix: String,
    #[serde(
        default,
        deserialize_with = "flex::opt_int",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_dif: Option<i64>,
    #[serde(default, deserialize_with = "flex::int")]
    pub operate_id: i64,
    #[serde(default)]
    #[schema(value_type = String, example = "83886080")]
    pub real_size: Sectors,
    #[serde(default, alias = "reserve_space")]
    #[schema(value_type = String)]
    pub reserve_size: Sectors,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub file_size: Option<Sectors>,
    #[serde(
        default,
        deserialize_with = "flex::opt_int",
        skip_serializing_if = "Option::is_none"
    )]
    pub restore_flag: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub download_url: Option<String>,
}

impl DiskInfo {
    /// The layer file this disk entry names: `prefix_level_uuid`.
    pub fn layer_name(&self) -> String {
        format!("{}_{}_{}", self.prefix, self.dif_level, self.uuid)
    }
}

fn voi_prefix() -> String {
    "voi".into()
}

/// One desktop group of the 9007 answer.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(example = json!({
    "desktop_group_name": "Room 101 Windows 10",
    "desktop_group_uuid": "3f1c2b9e-5a8d-4e7f-9b6a-1c2d3e4f5a6b",
    "default_desktop_group": true,
    "os_sys_type": 1,
    "desktop_group_restore": 1,
    "desktop_is_dhcp": 1,
    "diff_mode": 0,
    "disks": [
        {"uuid": "7d9e0f1a-2b3c-4d5e-8f6a-7b8c9d0e1f2a", "type": 0, "dif_level": 0, "prefix": "voi", "operate_id": 0, "real_size": "83886080", "reserve_size": "0"},
        {"uuid": "7d9e0f1a-2b3c-4d5e-8f6a-7b8c9d0e1f2a", "type": 0, "dif_level": 1, "prefix": "voi", "operate_id": 3, "real_size": "83886080", "reserve_size": "0"}
    ]
}))]
pub struct DesktopGroup {
    #[serde(default)]
    pub desktop_group_name: String,
    pub desktop_group_uuid: String,
    #[serde(default, alias = "default_group")]
    pub default_desktop_group: bool,
    #[serde(default, deserialize_with = "flex::int")]
    pub os_sys_type: i64,
    #[serde(default)]
    pub desktop_group_desc: String,
    #[serde(default, deserialize_with = "flex::int")]
    pub desktop_group_status: i64,
    #[serde(default, deserialize_with = "flex::int")]
    pub desktop_group_restore: i64,
    #[serde(default, deserialize_with = "flex::int")]
    pub show_desktop_info: i64,
    #[serde(default, deserialize_with = "flex::int")]
    pub auto_update_desktop: i64,
    #[serde(default)]
    pub desktop_name: String,
    #[serde(default)]
    pub template_name: String,
    #[serde(default)]
    pub template_updated_time: String,
    #[serde(default, deserialize_with = "flex::int")]
    pub desktop_is_dhcp: i64,
    #[serde(default)]
    pub desktop_ip: String,
    #[serde(default)]
    pub desktop_mask: String,
    #[serde(default)]
    pub desktop_gateway: String,
    #[serde(default)]
    pub desktop_dns1: String,
    #[serde(default)]
    pub desktop_dns2: String,
    /// 0 no merge, 1 merge.
    #[serde(default, deserialize_with = "flex::int")]
    pub diff_mode: i64,
    #[serde(default)]
    pub disks: Vec<DiskInfo>,
    /// The template the group's disks come from; 9012 answers it as `uuid`.
    #[serde(default)]
    pub template_uuid: String,
    /// 1: the desktop takes the terminal's own address (the vendor server
    /// then fills the desktop_* address fields from the terminal's record).
    #[serde(default, deserialize_with = "flex::int")]
    pub desktop_enable_bottom_ip: i64,
}

/// 9008 verify_admin_user. The document says `user_name`; the vendor's
/// server reads `username` (notes §11, 9008), so that is what we send. Both
/// are read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VerifyAdminUserReq {
    pub mac: String,
    #[serde(rename = "username", alias = "user_name")]
    pub user_name: String,
    pub password: String,
}

/// 9009 order_confirm.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderConfirmReq {
    pub mac: String,
    pub batch_no: BatchNo,
    #[serde(deserialize_with = "flex::int")]
    pub terminal_id: i64,
}

/// 9010 order_query answer: `terminal_id == -1` means no numbering is running.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderQueryResp {
    pub batch_no: BatchNo,
    #[serde(deserialize_with = "flex::int")]
    pub terminal_id: i64,
}

/// A local layer as the terminal reports it (9011, 1016, 1020).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct LocalDisk {
    pub uuid: String,
    #[serde(rename = "type", deserialize_with = "flex::int")]
    pub disk_type: i64,
    #[serde(alias = "diff_level", deserialize_with = "flex::int")]
    pub dif_level: i64,
    #[serde(default = "voi_prefix")]
    pub prefix: String,
    #[serde(default)]
    pub real_size: Sectors,
    #[serde(
        default,
        alias = "resrver_size",
        skip_serializing_if = "Option::is_none"
    )]
    pub reserve_size: Option<Sectors>,
}

/// 9011 sync_desktop_info; also the `desktop` of 1016/1020.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct DesktopInfo {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    pub uuid: String,
    #[serde(default, deserialize_with = "flex::int")]
    pub sys_type: i64,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub desc: String,
    #[serde(default)]
    pub disks: Vec<LocalDisk>,
}

/// 9012 get_desktop_info.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GetDesktopInfoReq {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    pub boot_disk: String,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct GetDesktopInfoResp {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub uuid: String,
    #[serde(default)]
    pub desktop_group_name: String,
    #[serde(default)]
    pub last_update_time: String,
}

/// 9014 torrent_upload, JSON variant of the original server (notes §5.4).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TorrentUploadJson {
    pub mac: String,
    pub desktop_uuid: String,
    pub uuid: String,
    #[serde(rename = "type", deserialize_with = "flex::int")]
    pub disk_type: i64,
    #[serde(default, deserialize_with = "flex::int")]
    pub sys_type: i64,
    #[serde(deserialize_with = "flex::int")]
    pub dif_level: i64,
    #[serde(default)]
    pub real_size: Sectors,
    #[serde(default, deserialize_with = "flex::int")]
    pub file_size: i64,
    pub torrent_file: String,
    #[serde(deserialize_with = "flex::int")]
    pub data_len: i64,
    /// base64 of the .torrent
    pub data: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TorrentUploadResp {
    pub torrent_id: String,
}

/// 9015 task_result. The upper-client document sends `name` instead of
/// `disk`, or `{torrent_id, msg, result}` for an upload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskResultReq {
    #[serde(default)]
    pub mac: String,
    #[serde(default)]
    pub ip: String,
    #[serde(default, alias = "name")]
    pub disk: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub torrent_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub msg: Option<String>,
    /// 0 not started, 1 ok, 2 failed.
    #[serde(default, deserialize_with = "flex::int")]
    pub result: i64,
}

/// 9016 operate_auth.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OperateAuthReq {
    pub account: String,
    pub password: String,
}

/// 9018 check_upload_state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckUploadStateReq {
    pub mac: String,
    pub desktop_group_uuid: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckUploadStateResp {
    #[serde(deserialize_with = "flex::int")]
    pub can_update: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_no: Option<BatchNo>,
}

/// 9019 bt_tracker answer.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct BtTrackerResp {
    #[serde(default)]
    pub tracker: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct P2vDisk {
    #[serde(default, deserialize_with = "flex::float")]
    pub size: f64,
    #[serde(default, alias = "read_size", deserialize_with = "flex::float")]
    pub real_size: f64,
}

/// 9020 p_to_v_start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PToVStartReq {
    pub mac: String,
    #[serde(alias = "template_name")]
    pub name: String,
    #[serde(default, alias = "template_desc")]
    pub desc: String,
    #[serde(default, deserialize_with = "flex::int")]
    pub classify: i64,
    pub system_disk: P2vDisk,
    #[serde(default)]
    pub data_disks: Vec<P2vDisk>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PToVStartResp {
    pub user: String,
    pub password: String,
    pub storage: String,
    pub image_names: serde_json::Value,
}

/// 9021 p_to_v_state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PToVStateReq {
    pub mac: String,
    #[serde(default)]
    pub os_type: String,
    pub image_name: String,
    #[serde(deserialize_with = "flex::int")]
    pub progress: i64,
    #[serde(deserialize_with = "flex::int")]
    pub status: i64,
    #[serde(default)]
    pub storage: String,
}

/// 9022 diff_disk_upload and 9023 diff_disk_download.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiffDiskReq {
    pub mac: String,
    pub desktop_group_uuid: String,
    pub diff_disk_uuid: String,
    #[serde(deserialize_with = "flex::int")]
    pub diff_level: i64,
    #[serde(
        default,
        deserialize_with = "flex::opt_int",
        skip_serializing_if = "Option::is_none"
    )]
    pub diff_disk_type: Option<i64>,
}

/// 9023 answer in the new (download_url) style.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiffDiskDownloadResp {
    pub desktop_group_uuid: String,
    pub diff_disk_uuid: String,
    #[serde(deserialize_with = "flex::int")]
    pub diff_level: i64,
    #[serde(default, deserialize_with = "flex::int")]
    pub diff_disk_type: i64,
    pub download_url: String,
    #[serde(default)]
    pub real_size: Sectors,
    #[serde(default)]
    pub reserve_size: Sectors,
    #[serde(default)]
    pub file_size: Sectors,
    #[serde(default, deserialize_with = "flex::int")]
    pub operate_id: i64,
}

/// 9024 desktop_login.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DesktopLoginReq {
    pub mac: String,
    pub desktop_group_uuid: String,
    #[serde(default, deserialize_with = "flex::int")]
    pub is_dhcp: i64,
    #[serde(default)]
    pub ip: String,
    #[serde(default)]
    pub netmask: String,
    #[serde(default)]
    pub gateway: String,
    #[serde(default)]
    pub dns1: String,
    #[serde(default)]
    pub dns2: String,
    /// Ours: "kvm" or "tcg" (the vendor's terminals send none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accelerator: Option<String>,
    /// Ours: when the desktop started, ms since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since_ms: Option<u64>,
}

/// 9025 bt_task_state. Rates and sizes are strings on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BtTaskStateReq {
    /// `voi_<level>_<uuid>.torrent`; empty on the vendor terminal's HTTP
    /// download path.
    #[serde(default)]
    pub torrent_name: String,
    pub mac: String,
    #[serde(deserialize_with = "flex::int")]
    pub progress: i64,
    /// The vendor server reads it with a default.
    #[serde(default)]
    pub state: String,
    #[serde(default, with = "string_u64")]
    pub download_rate: u64,
    #[serde(default, with = "string_u64")]
    pub upload_rate: u64,
    #[serde(default, with = "string_u64")]
    pub total_size: u64,
    #[serde(default, with = "string_u64")]
    pub file_size: u64,
}

/// 9026 put_desktop_group_list: comma-separated system disk uuids.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PutDesktopGroupListReq {
    pub sys_disk_uuids: String,
    pub mac: String,
}

/// 9027 bt_upload_state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BtUploadStateReq {
    pub torrent_name: String,
    pub mac: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BtUploadStateResp {
    /// The original server spells it "process".
    #[serde(alias = "progress", deserialize_with = "flex::int")]
    pub process: i64,
    #[serde(default, deserialize_with = "flex::int")]
    pub rate: i64,
    pub state: String,
}

/// 9028 query_teach_pc.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueryTeachPcReq {
    #[serde(deserialize_with = "flex::int")]
    pub room_num: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueryTeachPcResp {
    #[serde(deserialize_with = "flex::int")]
    pub is_exist: i64,
}

/// One reading of the 9029 sensor tree. Capitalised keys as in the document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SensorReading {
    #[serde(rename = "Name")]
    pub name: String,
    #[serde(rename = "Value")]
    pub value: String,
    #[serde(rename = "Min")]
    pub min: String,
    #[serde(rename = "Max")]
    pub max: String,
    #[serde(rename = "Path")]
    pub path: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SensorGroup {
    pub name: String,
    /// A string on the wire.
    pub count: String,
    pub desc: Vec<SensorReading>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SensorTree {
    pub name: String,
    pub count: String,
    pub desc: Vec<SensorGroup>,
}

/// 9029 update_performance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpdatePerformanceReq {
    pub mac: String,
    pub data: SensorTree,
}

// ---------------------------------------------------------------- 1xxx

/// Commands whose body is only the batch number: shutdown, restart, delete,
/// enter_maintenance_mode, clear_all_desktop, pxe_start, enter_maintain,
/// update_desktop_group_info, cancel_send_desktop, cancel_p_to_v.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchCmd {
    pub batch_no: BatchNo,
}

/// 1900 voi_wake_relay (ours): send the magic packet for each MAC on the
/// terminal's own subnet, where a router would drop the server's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WakeRelayCmd {
    pub batch_no: BatchNo,
    pub macs: Vec<String>,
}

/// The answer's `data` for 1900.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct WakeRelayResp {
    /// MACs whose packets left, and the broadcast they went to.
    pub sent: Vec<String>,
    pub broadcast: String,
}

/// 1901 voi_power_notice (ours): the terminal will be told to `action` in
/// `in_secs`, for `reason`; it tells whoever sits at it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PowerNoticeCmd {
    pub batch_no: BatchNo,
    pub action: String,
    #[serde(deserialize_with = "flex::int")]
    pub in_secs: i64,
    #[serde(default)]
    pub reason: String,
}

/// 1004 update_name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpdateNameCmd {
    pub batch_no: BatchNo,
    pub name: String,
    #[serde(deserialize_with = "flex::int")]
    pub conf_version: i64,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct TeachConfig {
    #[serde(
        default,
        deserialize_with = "flex::opt_int",
        skip_serializing_if = "Option::is_none"
    )]
    pub room_num: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teach_pc_ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_server_ip: Option<String>,
    #[serde(
        default,
        deserialize_with = "flex::opt_int",
        skip_serializing_if = "Option::is_none"
    )]
    pub channel_num: Option<i64>,
}

/// 1005 update_config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpdateConfigCmd {
    pub batch_no: BatchNo,
    #[serde(
        default,
        deserialize_with = "flex::opt_int",
        skip_serializing_if = "Option::is_none"
    )]
    pub conf_version: Option<i64>,
    pub mode: ModeSetup,
    pub program: ProgramSetup,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teach_config: Option<TeachConfig>,
}

/// `desktop` of 1008 download_desktop.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct DownloadDesktop {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub desc: String,
    #[serde(default, deserialize_with = "flex::int")]
    pub diff_mode: i64,
    pub uuid: String,
    #[serde(default, deserialize_with = "flex::int")]
    pub sys_type: i64,
    #[serde(default)]
    pub disks: Vec<DiskInfo>,
}

/// 1008 download_desktop.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DownloadDesktopCmd {
    pub batch_no: BatchNo,
    pub desktop: DownloadDesktop,
}

/// 1009 cancel_download_desktop: the other keys name the downloads to stop.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CancelDownloadDesktopCmd {
    pub batch_no: BatchNo,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    #[serde(flatten)]
    pub desktops: BTreeMap<String, serde_json::Value>,
}

/// 1010 add_data_disk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AddDataDiskCmd {
    pub batch_no: BatchNo,
    #[serde(deserialize_with = "flex::int")]
    pub enable: i64,
    #[serde(deserialize_with = "flex::int")]
    pub restore: i64,
    /// GB
    #[serde(deserialize_with = "flex::int")]
    pub size: i64,
}

/// 1011 order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderCmd {
    pub batch_no: BatchNo,
    #[serde(deserialize_with = "flex::int")]
    pub terminal_id: i64,
}

/// 1012 update_ip.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpdateIpCmd {
    pub batch_no: BatchNo,
    pub ip: String,
    pub mask: String,
    pub gateway: String,
    #[serde(default)]
    pub dns1: String,
    #[serde(default)]
    pub dns2: String,
    #[serde(deserialize_with = "flex::int")]
    pub conf_version: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DifferenceDisk {
    pub name: String,
    pub uuid: String,
    #[serde(deserialize_with = "flex::int")]
    pub version: i64,
    #[serde(default)]
    pub download_url: String,
}

/// 1013 update_difference_disk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpdateDifferenceDiskCmd {
    pub batch_no: BatchNo,
    #[serde(default)]
    pub disk_info_list: Vec<DifferenceDisk>,
}

/// `desktop` of 1017 send_desktop and 1032 send_desktop_tcp.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct SendDesktop {
    #[serde(default)]
    pub desktop_group_name: String,
    pub desktop_group_uuid: String,
    #[serde(default, deserialize_with = "flex::int")]
    pub diff_mode: i64,
    /// The restore flag as 9007 spells it; it wins when present.
    #[serde(
        default,
        deserialize_with = "flex::opt_int",
        skip_serializing_if = "Option::is_none"
    )]
    pub desktop_group_restore: Option<i64>,
    /// The restore flag as D's web side spells it in a 1017
    /// (`send_desktop_terminal`): the system disk's, and the data disk's.
    #[serde(
        default,
        deserialize_with = "flex::opt_int",
        skip_serializing_if = "Option::is_none"
    )]
    pub sys_restore: Option<i64>,
    #[serde(
        default,
        deserialize_with = "flex::opt_int",
        skip_serializing_if = "Option::is_none"
    )]
    pub data_restore: Option<i64>,
    #[serde(default, deserialize_with = "flex::int")]
    pub desktop_is_dhcp: i64,
    #[serde(default)]
    pub desktop_ip: String,
    #[serde(default)]
    pub desktop_mask: String,
    #[serde(default)]
    pub desktop_gateway: String,
    #[serde(default)]
    pub desktop_dns1: String,
    #[serde(default)]
    pub desktop_dns2: String,
    #[serde(default)]
    pub default_desktop_group: bool,
    #[serde(default, deserialize_with = "flex::int")]
    pub os_sys_type: i64,
    #[serde(default)]
    pub desktop_name: String,
    #[serde(default)]
    pub desktop_group_desc: String,
    #[serde(default)]
    pub disks: Vec<DiskInfo>,
}

impl SendDesktop {
    /// The desktop group this 1017 describes, as a 9007 would list it.
    pub fn to_group(&self) -> DesktopGroup {
        DesktopGroup {
            desktop_group_name: self.desktop_group_name.clone(),
            desktop_group_uuid: self.desktop_group_uuid.clone(),
            default_desktop_group: self.default_desktop_group,
            os_sys_type: self.os_sys_type,
            desktop_group_desc: self.desktop_group_desc.clone(),
            desktop_group_restore: self.desktop_group_restore.or(self.sys_restore).unwrap_or(0),
            desktop_name: self.desktop_name.clone(),
            desktop_is_dhcp: self.desktop_is_dhcp,
            desktop_ip: self.desktop_ip.clone(),
            desktop_mask: self.desktop_mask.clone(),
            desktop_gateway: self.desktop_gateway.clone(),
            desktop_dns1: self.desktop_dns1.clone(),
            desktop_dns2: self.desktop_dns2.clone(),
            diff_mode: self.diff_mode,
            disks: self.disks.clone(),
            ..Default::default()
        }
    }
}

/// 1017 send_desktop and 1032 send_desktop_tcp.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SendDesktopCmd {
    pub batch_no: BatchNo,
    pub desktop: SendDesktop,
}

/// 1016 upload_desktop and 1020 upload_disk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UploadDesktopCmd {
    pub batch_no: BatchNo,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    pub desktop: DesktopInfo,
}

/// 1018 push_task_result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PushTaskResultCmd {
    #[serde(default)]
    pub batch_no: Option<BatchNo>,
    /// D passes the caller's id through, and its own BT ids are numbers.
    #[serde(deserialize_with = "flex::text")]
    pub torrent_id: String,
    #[serde(default)]
    pub msg: String,
    #[serde(deserialize_with = "flex::int")]
    pub result: i64,
}

/// 1021 bt_task_complete.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BtTaskCompleteCmd {
    #[serde(default)]
    pub batch_no: Option<BatchNo>,
    #[serde(deserialize_with = "flex::text")]
    pub torrent_id: String,
}

/// 1022 watermark_switch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WatermarkSwitchCmd {
    pub batch_no: BatchNo,
    #[serde(deserialize_with = "flex::int")]
    pub switch: i64,
}

/// 1030 terminal_upgrade.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TerminalUpgradeCmd {
    pub batch_no: BatchNo,
    pub upgrade_package: String,
    pub version: String,
    pub os_name: String,
    #[serde(default)]
    pub platform: String,
    /// Ours: the signed package's manifest URL (the vendor's terminal
    /// fetches `upgrade_package` by TFTP instead).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest_url: Option<String>,
    /// Ours: install even when `version` is older than the running one.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub force: bool,
}

/// Ours (9004 `upgrade`): how the last agent upgrade went.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UpgradeReport {
    /// The version the upgrade was to.
    pub version: String,
    /// installing, trial, installed, rolled_back or failed.
    pub state: String,
    #[serde(default)]
    pub reason: String,
    /// The full version this agent runs now.
    #[serde(default)]
    pub running: String,
}

/// 1031 clear_target_desktop.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClearTargetDesktopCmd {
    pub batch_no: BatchNo,
    pub desktop_uuid: String,
}

/// `data` of every command reply: `{mac, batch_no}` plus command extras.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandReplyData {
    pub mac: String,
    pub batch_no: BatchNo,
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// Sizes and rates that travel as decimal strings.
mod string_u64 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&v.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let v = super::flex::FlexInt::deserialize(d)?.0;
        u64::try_from(v).map_err(|_| serde::de::Error::custom(format!("negative value {v}")))
    }
}

#[cfg(test)]
mod tests {
    /// The vendor's server reads `username` (KeyError on `user_name`,
    /// notes §11): we send that, and read either.
    #[test]
    fn verify_admin_user_sends_username_and_reads_both() {
        let req = super::VerifyAdminUserReq {
            mac: "AA:00:00:00:00:01".into(),
            user_name: "admin".into(),
            password: "x".into(),
        };
        let v = serde_json::to_value(&req).expect("json");
        assert_eq!(v["username"], "admin");
        assert!(v.get("user_name").is_none());
        for key in ["username", "user_name"] {
            let back: super::VerifyAdminUserReq = serde_json::from_value(
                serde_json::json!({"mac": "m", key: "admin", "password": "x"}),
            )
            .expect(key);
            assert_eq!(back.user_name, "admin");
        }
    }

    use super::*;

    #[test]
    fn desktop_group_list_from_document() {
        let body = r#"{"desktop_group_list":[{"desktop_group_name":"g","desktop_group_uuid":"f15a1759-789e-4e17-a3e1-e723121e9314",
            "default_desktop_group":true,"os_sys_type":1,"desktop_group_desc":"d","desktop_group_status":0,
            "desktop_group_restore":0,"show_desktop_info":1,"auto_update_desktop":0,"desktop_name":"n",
            "template_name":"t","template_updated_time":"2020-07-27 17:36:35","desktop_is_dhcp":1,
            "desktop_ip":"192.168.1.33","desktop_mask":"255.255.255.0","desktop_gateway":"192.168.1.254",
            "desktop_dns1":"8.8.8.8","desktop_dns2":"114.114.114.114","diff_mode":0,
            "disks":[{"uuid":"91f9d1ba-cb4a-41ba-971a-618f9e306571","type":1,"dif_level":1,"prefix":"voi",
            "operate_id":0,"real_size":"8888888888","reserve_size":"50"},
            {"uuid":"91f9d1ba-cb4a-41ba-971a-618f9e306571","type":2,"dif_level":"0","max_dif":1,"prefix":"voi",
            "real_size":8888888888,"reserve_size":"50","restore_flag":1}]}]}"#;
        let r: DesktopGroupListResp = serde_json::from_str(body).expect("parses");
        let g = &r.desktop_group_list[0];
        assert_eq!(g.disks[0].real_size, Sectors(8888888888));
        assert_eq!(g.disks[1].dif_level, 0);
        assert_eq!(g.disks[1].restore_flag, Some(1));
    }

    #[test]
    fn config_info_from_document() {
        let body = r#"{"terminal_id":1,"mac":"00:50:56:C0:00:08","name":"PC-1","ip":"172.16.1.25","is_dhcp":0,
            "mask":"255.255.255.0","gateway":"172.16.1.1","dns1":"8.8.8.8","dns2":"114.114.114.114",
            "platform":"x86","soft_version":"2.2.2","conf_version":12,"disk_residue":5.92,
            "setup_info":{"mode":{"show_desktop_type":0,"auto_desktop":0},
            "program":{"server_ip":"172.16.1.29","screen_resolution":"800*600","resolutions":"800*600;1920*1080"}}}"#;
        let c: TerminalConfig = serde_json::from_str(body).expect("parses");
        assert_eq!(c.conf_version, 12);
        assert_eq!(c.setup_info.program.server_ip, "172.16.1.29");
    }

    #[test]
    fn update_ip_requires_fields() {
        assert!(serde_json::from_str::<UpdateIpCmd>(r#"{"batch_no":1,"ip":"1.2.3.4"}"#).is_err());
        let c: UpdateIpCmd = serde_json::from_str(
            r#"{"batch_no":66,"ip":"172.16.1.20","mask":"255.255.255.0","gateway":"172.16.1.254",
            "dns1":"8.8.8.8","dns2":"114.114.114.114","conf_version":"16"}"#,
        )
        .expect("ok");
        assert_eq!(c.conf_version, 16);
    }

    #[test]
    fn bt_task_state_strings() {
        let r = BtTaskStateReq {
            torrent_name: "voi_0_x.torrent".into(),
            mac: "AA:BB:CC:DD:EE:FF".into(),
            progress: 50,
            state: "downloading".into(),
            download_rate: 10,
            upload_rate: 0,
            total_size: 5,
            file_size: 10,
        };
        let v = serde_json::to_value(&r).expect("ok");
        assert_eq!(v["download_rate"], "10");
        assert_eq!(v["progress"], 50);
    }

    #[test]
    fn reply_data_flattens_extras() {
        let mut extra = BTreeMap::new();
        extra.insert("desktop_uuid".to_string(), serde_json::json!("u"));
        let d = CommandReplyData {
            mac: "M".into(),
            batch_no: BatchNo::Int(3),
            extra,
        };
        assert_eq!(
            serde_json::to_string(&d).expect("ok"),
            r#"{"mac":"M","batch_no":3,"desktop_uuid":"u"}"#
        );
    }
    #[test]
    fn the_restore_flag_of_a_1017_in_either_spelling() {
        let d: SendDesktop = serde_json::from_str(
            r#"{"desktop_group_uuid": "g", "sys_restore": 1, "data_restore": 1, "disks": []}"#,
        )
        .expect("D's 1017");
        assert_eq!(d.to_group().desktop_group_restore, 1, "D's sys_restore");
        let d: SendDesktop = serde_json::from_str(
            r#"{"desktop_group_uuid": "g", "desktop_group_restore": 0, "sys_restore": 1, "disks": []}"#,
        )
        .expect("both");
        assert_eq!(
            d.to_group().desktop_group_restore,
            0,
            "desktop_group_restore wins"
        );
        let c: PushTaskResultCmd =
            serde_json::from_str(r#"{"torrent_id": 4711, "result": 1}"#).expect("a number");
        assert_eq!(c.torrent_id, "4711");
    }
}
