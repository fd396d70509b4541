//! The bodies of the operator API that have no type of their own elsewhere:
//! the `data` of each answer. The handlers in `api.rs` build these shapes;
//! `tests/openapi.rs` validates their real answers against the schemas
//! generated from here, so a handler that drifts from its description fails.

use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use super::admission::Admission;
use super::generation::Delivery;
use super::images::{ImageStatus, RefusedImage, Upload};
use super::registry::RecentCommand;
use super::store::{AuditEntry, OrderSession};
use super::wake::book::WakeResult;
use super::wake::schedule::{ScheduleEntry, ScheduleRun};
use crate::protocol::messages::{DesktopGroup, TerminalConfig, UpgradeReport, WakeInfo};
use crate::protocol::BatchNo;
use crate::upgrade_package::UpgradeManifest;

/// An error answer: `code` is not 0, `msg` is the error key and the reason.
#[derive(Serialize, ToSchema)]
pub struct Failure {
    pub code: i64,
    pub msg: String,
}

/// One layer a terminal is transferring, for the room's progress bars.
#[derive(Serialize, ToSchema)]
pub struct TransferView {
    pub layer: String,
    /// The terminal's last 9025 progress, as it sent it.
    pub progress: Value,
    pub state: Value,
    /// The 9015 result when the transfer ended (0 is success).
    pub result: Option<Value>,
    pub msg: Option<Value>,
}

/// The desktop the terminal said it runs (9024).
#[derive(Serialize, ToSchema)]
pub struct RunningDesktop {
    pub desktop_group_uuid: String,
    pub desktop_group_name: String,
    pub accelerator: Value,
    pub since_ms: Value,
    pub ip: Value,
    pub is_dhcp: Value,
}

/// Two terminals logged in with one MAC.
#[derive(Serialize, ToSchema)]
pub struct MacConflict {
    pub ip: String,
    pub other_ip: String,
    pub at_ms: u64,
}

/// A terminal as the operator sees it: its configuration (9005's body)
/// and what the server knows of it now.
#[derive(Serialize, ToSchema)]
pub struct TerminalView {
    #[serde(flatten)]
    pub config: TerminalConfig,
    pub client_type: u8,
    /// It has a session now.
    pub connected: bool,
    /// Connected and heard from within `offline_after`.
    pub online: bool,
    pub last_login: String,
    pub delivery: Delivery,
    pub admission: Admission,
    pub room: String,
    pub wake: Option<WakeInfo>,
    pub last_wake: Option<WakeResult>,
    pub last_heartbeat_secs: Option<u64>,
    pub transfers: Vec<TransferView>,
    /// The system disk uuids it holds (9011), comma-separated.
    pub desktops: Option<Value>,
    pub desktop_group_names: Vec<String>,
    /// What the desktop does: `state` off, preparing, starting, running,
    /// stopping, failed, or unknown while the terminal is offline (then
    /// `last_state` and `last_seen_ms`); `since_ms`, `accelerator`,
    /// `reason`, the group.
    pub desktop: Value,
    /// The desktop that runs now: only while the terminal is online and
    /// its last word says it runs.
    pub running_desktop: Option<RunningDesktop>,
    pub conflict: Option<MacConflict>,
}

/// One terminal with everything it reported.
#[derive(Serialize, ToSchema)]
pub struct TerminalDetail {
    #[serde(flatten)]
    pub view: TerminalView,
    /// The latest report of each kind, by kind.
    pub reports: std::collections::BTreeMap<String, Value>,
    pub recent_commands: Vec<RecentCommand>,
}

#[derive(Serialize, ToSchema)]
pub struct TerminalList {
    pub terminals: Vec<TerminalView>,
}

#[derive(Serialize, ToSchema)]
pub struct Forgotten {
    pub forgotten: String,
}

/// A command pushed to a terminal and its reply.
#[derive(Serialize, ToSchema)]
pub struct Pushed {
    pub command: String,
    pub batch_no: BatchNo,
    /// The terminal's reply envelope; null when its software never answers
    /// this command (then `no_reply` says so).
    pub reply: Option<Value>,
    pub no_reply: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct AdmissionSet {
    pub mac: String,
    pub admission: Admission,
}

#[derive(Serialize, ToSchema)]
pub struct DeliverySet {
    pub mac: String,
    pub delivery: Delivery,
    /// Set by an operator rather than following the software version.
    pub pinned: bool,
}

#[derive(Serialize, ToSchema)]
pub struct DownloadSent {
    /// One entry per command sent (1008, then each layer's 1015 or 1017).
    pub sent: Vec<Value>,
}

/// The image library.
#[derive(Serialize, ToSchema)]
pub struct Library {
    pub images: Vec<ImageStatus>,
    pub refused: Vec<RefusedImage>,
    /// Files still being written: taken once they hold still.
    pub settling: Vec<String>,
    pub uploads: Vec<Upload>,
    /// MAC -> layer -> the terminal's last 9025.
    pub progress: std::collections::BTreeMap<String, Value>,
    pub bt_port: Option<u16>,
}

#[derive(Serialize, ToSchema)]
pub struct Rescanned {
    pub images: Vec<ImageStatus>,
    pub refused: Vec<RefusedImage>,
    /// Files still being written (size or mtime moving): taken once they
    /// hold still.
    pub settling: Vec<String>,
}

#[derive(Serialize, ToSchema)]
pub struct GroupList {
    pub desktop_group_list: Vec<DesktopGroup>,
    /// Group uuid -> why each of its layers cannot be served.
    pub undeliverable: std::collections::BTreeMap<String, Vec<String>>,
}

#[derive(Serialize, ToSchema)]
pub struct GroupStored {
    pub desktop_group_uuid: String,
    /// Terminals told of the change (1024).
    pub told_terminals: usize,
    /// Disk entries whose `operate_id` the server set to the layer's
    /// version in the library instead of the number sent.
    pub operate_id_ignored: Vec<OperateIdIgnored>,
}

#[derive(Serialize, ToSchema)]
pub struct OperateIdIgnored {
    pub layer: String,
    pub sent: i64,
    pub library: i64,
    pub why: String,
}

#[derive(Serialize, ToSchema)]
pub struct GroupDeleted {
    pub deleted: String,
    pub told_terminals: usize,
}

#[derive(Serialize, ToSchema)]
pub struct OrderState {
    pub order: Option<OrderSession>,
}

#[derive(Serialize, ToSchema)]
pub struct OrderCancelled {
    pub cancelled: Option<OrderSession>,
}

#[derive(Serialize, ToSchema)]
pub struct WakeResults {
    pub results: Vec<WakeResult>,
}

#[derive(Serialize, ToSchema)]
pub struct RoomSet {
    pub mac: String,
    pub room: String,
}

#[derive(Serialize, ToSchema)]
pub struct Schedule {
    pub entries: Vec<ScheduleEntry>,
    /// What the entries did when they fell due, newest last.
    pub runs: Vec<ScheduleRun>,
    /// The schedule's clock.
    pub now: String,
}

#[derive(Serialize, ToSchema)]
pub struct ScheduleStored {
    pub entries: Vec<ScheduleEntry>,
}

#[derive(Serialize, ToSchema)]
pub struct AuditTrail {
    /// Newest first.
    pub entries: Vec<AuditEntry>,
}

#[derive(Serialize, ToSchema)]
pub struct Version {
    pub name: String,
    pub version: String,
    pub commit: String,
}

/// `/healthz` and `/readyz` answer without the envelope, as probes expect.
#[derive(Serialize, ToSchema)]
pub struct Health {
    /// "ok", "ready" or "not ready".
    pub status: String,
    pub problems: Option<Vec<String>>,
}

/// Which version a terminal runs, and its last upgrade.
#[derive(Serialize, ToSchema)]
pub struct TerminalVersion {
    pub mac: String,
    pub name: String,
    pub platform: String,
    pub version: String,
    pub online: bool,
    pub upgrade: Option<UpgradeReport>,
}

#[derive(Serialize, ToSchema)]
pub struct UpgradeLibrary {
    pub packages: Vec<UpgradeManifest>,
    /// The ed25519 key packages are signed with, hex.
    pub release_key: String,
    pub terminals: Vec<TerminalVersion>,
}

#[derive(Serialize, ToSchema)]
pub struct Published {
    pub manifest: UpgradeManifest,
}

#[derive(Serialize, ToSchema)]
pub struct UpgradeResult {
    pub mac: String,
    pub ok: bool,
    pub text: String,
}

#[derive(Serialize, ToSchema)]
pub struct UpgradeResults {
    pub results: Vec<UpgradeResult>,
}
