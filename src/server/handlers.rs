//! Answers to every terminal→server request (9xxx), from the store.

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};
use std::sync::Arc;

use super::conn_state::ConnState;
use super::order;
use super::service::Server;
use crate::protocol::md5_hex;
use crate::protocol::messages::*;
use crate::protocol::{normalize_mac, DataType, Envelope, ErrorCode, Frame, ServiceCode};

type Answer = Envelope<Value>;

fn ok<T: Serialize>(data: T) -> Answer {
    Envelope::ok(serde_json::to_value(data).unwrap_or(Value::Null))
}

fn success() -> Answer {
    Envelope::success()
}

fn err(code: ErrorCode, detail: impl Into<String>) -> Answer {
    Envelope::error(code, detail)
}

fn now_text() -> String {
    chrono::Local::now().format("%Y-%m-%d %H:%M:%S").to_string()
}

/// Parses a request body; refuses a `mac` that is not this session's.
fn body<T: DeserializeOwned>(frame: &Frame, session_mac: &str) -> Result<T, Answer> {
    if frame.data_type != DataType::Json as u8 {
        return Err(err(ErrorCode::MessageError, "expected a JSON body"));
    }
    let v: Value = frame
        .json()
        .map_err(|e| err(ErrorCode::MessageError, format!("bad JSON: {e}")))?;
    if let Some(m) = v.get("mac").and_then(|m| m.as_str()) {
        if normalize_mac(m).as_deref() != Some(session_mac) {
            return Err(err(
                ErrorCode::TerminalMacError,
                format!("mac {m:?} is not this session's"),
            ));
        }
    }
    T::deserialize(&v).map_err(|e| err(ErrorCode::MessageError, e.to_string()))
}

/// Reports are kept per layer, so a name that is not one would let a
/// terminal grow its record without bound.
fn layer_named(name: &str) -> Result<(), Answer> {
    crate::disk::name::LayerName::parse(name)
        .map(|_| ())
        .map_err(|e| err(ErrorCode::MessageError, format!("{name:?}: {e}")))
}

/// Stores the latest report of one kind on the terminal's record.
fn keep_report(server: &Server, mac: &str, kind: String, value: Value) -> Answer {
    match server.store.update_terminal(mac, |r| {
        r.reports.insert(kind, value);
    }) {
        Ok(_) => success(),
        Err(e) => err(ErrorCode::SystemError, e.to_string()),
    }
}

/// 9008 and 9016: the server compares md5 of the password the terminal
/// sends in plain text (notes §6.1).
fn check_credentials(server: &Server, user: &str, password: &str) -> Answer {
    if user == server.cfg.admin_user
        && md5_hex(password.as_bytes()) == server.cfg.admin_password_md5
    {
        success()
    } else {
        err(ErrorCode::UserOrPasswordError, "")
    }
}

pub async fn handle(
    server: &Arc<Server>,
    st: &ConnState,
    mac: &str,
    code: ServiceCode,
    frame: &Frame,
) -> Answer {
    match answer(server, st, mac, code, frame).await {
        Ok(a) | Err(a) => a,
    }
}

async fn answer(
    server: &Arc<Server>,
    st: &ConnState,
    mac: &str,
    code: ServiceCode,
    frame: &Frame,
) -> Result<Answer, Answer> {
    use ServiceCode as S;
    let store_err = |e: super::store::StoreError| err(ErrorCode::SystemError, e.to_string());
    Ok(match code {
        S::Heartbeat | S::GetDateTime => {
            let _: MacReq = body(frame, mac)?;
            ok(DateTimeResp {
                datetime: now_text(),
            })
        }
        S::TerminalLogout => {
            let _: LoginReq = body(frame, mac)?;
            success()
        }
        S::GetConfigVersionId => {
            let req: ConfigVersionReq = body(frame, mac)?;
            if req
                .disk_residue
                .is_some_and(|d| !(d.is_finite() && d >= 0.0))
            {
                return Err(err(
                    ErrorCode::MessageError,
                    format!("disk_residue {:?} is not a free size", req.disk_residue),
                ));
            }
            let rec = server
                .store
                .update_terminal(mac, |r| {
                    if let Some(p) = req.platform {
                        r.config.platform = p;
                    }
                    if let Some(v) = req.soft_version {
                        r.config.soft_version = v;
                    }
                    if let Some(d) = req.disk_residue {
                        r.config.disk_residue = d;
                    }
                })
                .map_err(store_err)?;
            ok(ConfigVersionResp {
                conf_version: rec.config.conf_version,
            })
        }
        S::GetConfigInfo => {
            let _: MacReq = body(frame, mac)?;
            let rec = server.store.terminal(mac).map_err(store_err)?;
            let Some(rec) = rec else {
                return Err(err(ErrorCode::TerminalRecordNotExist, ""));
            };
            let mut cfg = rec.config;
            // Only an address the operator configured: the one this socket
            // shows may be a NAT's or a loopback (a terminal behind QEMU's
            // user network reaches us as 127.0.0.1), and a terminal told to
            // move there would cut itself off.
            if cfg.setup_info.program.server_ip.is_empty() {
                cfg.setup_info.program.server_ip =
                    server.cfg.advertise_ip.clone().unwrap_or_default();
            }
            ok(cfg)
        }
        S::UpdateConfigInfo => {
            let c: TerminalConfig = body(frame, mac)?;
            check_config(&c)?;
            server
                .store
                .update_terminal(mac, |r| {
                    // The session's MAC, and never a version going backwards.
                    let conf_version = r.config.conf_version.max(c.conf_version);
                    r.config = TerminalConfig {
                        mac: r.config.mac.clone(),
                        conf_version,
                        ..c
                    };
                })
                .map_err(store_err)?;
            success()
        }
        S::GetDesktopGroupList => {
            let _: DesktopGroupListReq = body(frame, mac)?;
            let groups = server.store.groups().map_err(store_err)?;
            ok(DesktopGroupListResp {
                desktop_group_list: groups,
            })
        }
        S::VerifyAdminUser => {
            let r: VerifyAdminUserReq = body(frame, mac)?;
            check_credentials(server, &r.user_name, &r.password)
        }
        S::OperateAuth => {
            let r: OperateAuthReq = body(frame, mac)?;
            check_credentials(server, &r.account, &r.password)
        }
        S::OrderConfirm => {
            let r: OrderConfirmReq = body(frame, mac)?;
            order::confirm(server, mac, &r).await
        }
        S::OrderQuery => {
            let _: MacReq = body(frame, mac)?;
            let o = server.store.order().map_err(store_err)?;
            match o {
                Some(o) if o.macs.iter().any(|m| m == mac) => ok(OrderQueryResp {
                    batch_no: o.batch_no,
                    terminal_id: o.current_id,
                }),
                _ => ok(OrderQueryResp {
                    batch_no: crate::protocol::BatchNo::Int(0),
                    terminal_id: -1,
                }),
            }
        }
        S::SyncDesktopInfo => {
            let d: DesktopInfo = body(frame, mac)?;
            keep_report(server, mac, "desktop_info".into(), json!(d))
        }
        S::GetDesktopInfo => {
            let r: GetDesktopInfoReq = body(frame, mac)?;
            desktop_of_disk(server, &r.boot_disk)?
        }
        S::DesktopUpload => {
            let v: Value = body(frame, mac)?;
            keep_report(server, mac, "desktop_upload".into(), v)
        }
        S::TorrentUpload => {
            if frame.data_type != DataType::Binary as u8 {
                return Err(err(
                    ErrorCode::MessageError,
                    "torrent_upload: send the binary struct (data_type 0)",
                ));
            }
            let up = crate::protocol::torrent_struct::UploadTorrent::parse(&frame.payload)
                .map_err(|e| err(ErrorCode::MessageError, format!("torrent_upload: {e}")))?;
            match server.images.receive(mac, &up).await {
                Ok(torrent_id) => ok(TorrentUploadResp { torrent_id }),
                Err(e) => return Err(err(ErrorCode::TerminalTorrentUploadFail, e)),
            }
        }
        S::TaskResult => {
            let r: TaskResultReq = body(frame, mac)?;
            layer_named(r.disk.strip_suffix(".torrent").unwrap_or(&r.disk))?;
            if !(0..=2).contains(&r.result) {
                return Err(err(
                    ErrorCode::MessageError,
                    format!("result {} is not 0, 1 or 2", r.result),
                ));
            }
            keep_report(server, mac, format!("task_result:{}", r.disk), json!(r))
        }
        S::InitDesktop => {
            let _: MacReq = body(frame, mac)?;
            server
                .store
                .update_terminal(mac, |r| {
                    r.reports
                        .retain(|k, _| !k.starts_with("desktop") && !k.starts_with("bt_task:"));
                })
                .map_err(store_err)?;
            success()
        }
        S::CheckUploadState => {
            let r: CheckUploadStateReq = body(frame, mac)?;
            let groups = server.store.groups().map_err(store_err)?;
            let Some(g) = groups
                .iter()
                .find(|g| g.desktop_group_uuid == r.desktop_group_uuid)
            else {
                return Err(err(
                    ErrorCode::TerminalDesktopNotExist,
                    r.desktop_group_uuid,
                ));
            };
            let batch = server.store.next_batch_no().map_err(store_err)?;
            ok(CheckUploadStateResp {
                can_update: i64::from(g.desktop_group_status == 0),
                batch_no: Some(crate::protocol::BatchNo::Int(batch)),
            })
        }
        S::BtTracker => {
            let _: MacReq = body(frame, mac)?;
            let url = super::service::announce_url(&server.cfg, server.tracker_addr, st.local);
            ok(BtTrackerResp { tracker: vec![url] })
        }
        S::PToVStart => {
            let _: PToVStartReq = body(frame, mac)?;
            err(
                ErrorCode::OtherError,
                "physical-to-virtual conversion is not offered by this server",
            )
        }
        S::PToVState => {
            let r: PToVStateReq = body(frame, mac)?;
            keep_report(server, mac, "p_to_v_state".into(), json!(r))
        }
        S::DiffDiskUpload => {
            let r: DiffDiskReq = body(frame, mac)?;
            keep_report(server, mac, "diff_disk_upload".into(), json!(r))
        }
        S::DiffDiskDownload => {
            let r: DiffDiskReq = body(frame, mac)?;
            diff_disk_download(server, &r, st.local)?
        }
        S::DesktopLogin => {
            let r: DesktopLoginReq = body(frame, mac)?;
            keep_report(
                server,
                mac,
                format!("desktop_login:{}", r.desktop_group_uuid),
                json!(r),
            )
        }
        S::BtTaskState => {
            let r: BtTaskStateReq = body(frame, mac)?;
            layer_named(r.torrent_name.strip_suffix(".torrent").unwrap_or(""))?;
            if !(0..=100).contains(&r.progress) {
                return Err(err(
                    ErrorCode::MessageError,
                    format!("progress {} is not a percentage", r.progress),
                ));
            }
            keep_report(server, mac, format!("bt_task:{}", r.torrent_name), json!(r))
        }
        S::PutDesktopGroupList => {
            let r: PutDesktopGroupListReq = body(frame, mac)?;
            keep_report(
                server,
                mac,
                "desktop_groups".into(),
                json!(r.sys_disk_uuids),
            )
        }
        S::BtUploadState => {
            let r: BtUploadStateReq = body(frame, mac)?;
            match server.images.upload_by_name(mac, &r.torrent_name) {
                Some((up, stats)) => {
                    let (process, rate) = match (&up.state[..], stats) {
                        ("finished", _) => (100, 0),
                        (_, Some(s)) => (
                            crate::bt::engine::percent(s.have_bytes, s.total_bytes),
                            i64::try_from(s.down_bps).unwrap_or(i64::MAX),
                        ),
                        _ => (0, 0),
                    };
                    ok(BtUploadStateResp {
                        process,
                        rate,
                        state: up.state,
                    })
                }
                None => err(ErrorCode::TerminalBtUploadTaskNotExist, r.torrent_name),
            }
        }
        S::QueryTeachPc => {
            let _: QueryTeachPcReq = body(frame, mac)?;
            ok(QueryTeachPcResp { is_exist: 0 })
        }
        S::UpdatePerformance => {
            let r: UpdatePerformanceReq = body(frame, mac)?;
            keep_report(server, mac, "performance".into(), json!(r.data))
        }
        S::UploadLog => upload_log(server, mac, frame)?,
        S::TerminalLogin => unreachable_login(),
        other => err(
            ErrorCode::MessageError,
            format!("{} is not a terminal request", other.name()),
        ),
    })
}

fn unreachable_login() -> Answer {
    // Login is handled by the connection before dispatch.
    err(ErrorCode::TerminalRepeatLogin, "")
}

/// The original server's `check_config`.
fn check_config(c: &TerminalConfig) -> Result<(), Answer> {
    use std::net::Ipv4Addr;
    if c.terminal_id < -1 {
        return Err(err(ErrorCode::TerminalIdError, ""));
    }
    if c.is_dhcp == 0 {
        if c.ip.parse::<Ipv4Addr>().is_err() {
            return Err(err(ErrorCode::MessageError, format!("ip {:?}", c.ip)));
        }
        if crate::ipv4::prefix_len(&c.mask).is_none() {
            return Err(err(ErrorCode::TerminalMaskError, c.mask.clone()));
        }
    }
    if c.name.is_empty() {
        return Err(err(ErrorCode::TerminalNameError, ""));
    }
    if c.platform.is_empty() {
        return Err(err(ErrorCode::TerminalPlatformError, ""));
    }
    if c.soft_version.is_empty() {
        return Err(err(ErrorCode::TerminalSoftVersionError, ""));
    }
    if !(0..=2).contains(&c.setup_info.mode.show_desktop_type) {
        return Err(err(ErrorCode::TerminalModeTypeError, ""));
    }
    if c.conf_version < -2 {
        return Err(err(ErrorCode::TerminalConfVersionError, ""));
    }
    Ok(())
}

fn desktop_of_disk(server: &Server, boot_disk: &str) -> Result<Answer, Answer> {
    // boot_disk is "prefix_level_uuid"; the uuid is everything after the
    // second underscore.
    let uuid = boot_disk.splitn(3, '_').nth(2).unwrap_or(boot_disk);
    let groups = server
        .store
        .groups()
        .map_err(|e| err(ErrorCode::SystemError, e.to_string()))?;
    let g = groups
        .iter()
        .find(|g| g.disks.iter().any(|d| d.uuid == uuid))
        .ok_or_else(|| err(ErrorCode::TerminalDesktopNotExist, boot_disk.to_string()))?;
    Ok(ok(GetDesktopInfoResp {
        name: g.template_name.clone(),
        uuid: g.desktop_group_uuid.clone(),
        desktop_group_name: g.desktop_group_name.clone(),
        last_update_time: g.template_updated_time.clone(),
    }))
}

fn diff_disk_download(
    server: &Server,
    r: &DiffDiskReq,
    local: Option<std::net::SocketAddr>,
) -> Result<Answer, Answer> {
    let groups = server
        .store
        .groups()
        .map_err(|e| err(ErrorCode::SystemError, e.to_string()))?;
    let g = groups
        .iter()
        .find(|g| g.desktop_group_uuid == r.desktop_group_uuid)
        .ok_or_else(|| {
            err(
                ErrorCode::TerminalDesktopNotExist,
                r.desktop_group_uuid.clone(),
            )
        })?;
    // The server keeps levels 0..=2; a request for local level 3 is served
    // with its newest level 2 (notes §4.5).
    let level = r.diff_level.min(2);
    let d = g
        .disks
        .iter()
        .find(|d| d.uuid == r.diff_disk_uuid && d.dif_level == level)
        .ok_or_else(|| {
            err(
                ErrorCode::TerminalDesktopNotExist,
                format!("{} level {level}", r.diff_disk_uuid),
            )
        })?;
    Ok(ok(DiffDiskDownloadResp {
        desktop_group_uuid: g.desktop_group_uuid.clone(),
        diff_disk_uuid: d.uuid.clone(),
        diff_level: r.diff_level,
        diff_disk_type: d.disk_type,
        // The library's torrent when it holds the layer, else whatever URL
        // the operator configured.
        download_url: {
            let name = format!("{}_{}_{}", d.prefix, d.dif_level, d.uuid);
            match server.images.get(&name) {
                Some(_) => server.torrent_url(&name, local),
                None => d.download_url.clone().unwrap_or_default(),
            }
        },
        real_size: d.real_size,
        reserve_size: d.reserve_size,
        file_size: d.file_size.unwrap_or_default(),
        operate_id: d.operate_id,
    }))
}

/// 9999: raw log bytes, kept as `<data_dir>/logs/<mac>_<ip>_<ts>.log`.
fn upload_log(server: &Server, mac: &str, frame: &Frame) -> Result<Answer, Answer> {
    let dir = server.cfg.data_dir.join("logs");
    let ip = server
        .store
        .terminal(mac)
        .ok()
        .flatten()
        .map(|r| r.config.ip)
        .unwrap_or_default();
    // mac is normalised (hex and colons) and ip comes from our own record,
    // so the name cannot leave the directory.
    let safe_ip: String = ip
        .chars()
        .filter(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    let name = format!(
        "{}_{}_{}.log",
        mac.replace(':', ""),
        safe_ip,
        chrono::Local::now().format("%Y%m%d%H%M%S%3f")
    );
    std::fs::create_dir_all(&dir)
        .and_then(|_| crate::fsutil::atomic_write(&dir.join(name), &frame.payload))
        .map_err(|e| err(ErrorCode::SystemError, e.to_string()))?;
    Ok(success())
}
