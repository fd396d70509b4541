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

/// A task id (uuid) as a report key: nothing that could grow a record
/// without bound or name a path.
fn uuid_like(id: &str) -> Result<(), Answer> {
    if (1..=64).contains(&id.len())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        Ok(())
    } else {
        Err(err(ErrorCode::MessageError, format!("torrent_id {id:?}")))
    }
}

/// Stores the latest report of one kind on the terminal's record, and tells
/// whoever watches (the console's live view).
fn keep_report(server: &Server, mac: &str, kind: String, value: Value) -> Answer {
    let limits = &server.cfg.limits;
    let size = serde_json::to_vec(&value).map_or(0, |v| v.len());
    let max_size = limits.max_string_bytes.saturating_mul(4);
    if size > max_size {
        return err(
            ErrorCode::MessageError,
            format!("this report is {size} bytes; the most this server keeps is {max_size} (4 x [limits] max_string_bytes)"),
        );
    }
    let event = super::registry::ServerEvent::Report {
        mac: mac.to_string(),
        key: kind.clone(),
        value: value.clone(),
        at_ms: super::registry::now_ms(),
    };
    let max_keys = limits.max_report_keys;
    let mut full = false;
    let mut over_total = false;
    let mut added: i64 = 0;
    let total_cap = limits.max_report_bytes_total;
    let counted = &server.counters.report_bytes;
    match server.store.update_terminal(mac, |r| {
        let old = r.reports.get(&kind).map_or(0, |v| {
            serde_json::to_vec(v).map_or(0, |b| b.len() + kind.len())
        });
        let delta = (size + kind.len()) as i64 - old as i64;
        if !r.reports.contains_key(&kind) && r.reports.len() >= max_keys {
            full = true;
        } else if delta > 0
            && counted.load(std::sync::atomic::Ordering::Relaxed) + delta as u64 > total_cap
        {
            // Global: made-up terminals cannot grow the store past it, and
            // what is kept already stays (issue 38.7).
            over_total = true;
        } else {
            r.reports.insert(kind, value);
            added = delta;
        }
    }) {
        Ok(_) if full => err(
            ErrorCode::MessageError,
            format!("this terminal has {max_keys} reports kept already ([limits] max_report_keys)"),
        ),
        Ok(_) if over_total => {
            global_bound_reached(server, "max_report_bytes_total", mac);
            err(
                ErrorCode::MessageError,
                format!("the server keeps {total_cap} bytes of reports from all terminals and has no room for more ([limits] max_report_bytes_total)"),
            )
        }
        Ok(_) => {
            if added >= 0 {
                counted.fetch_add(added as u64, std::sync::atomic::Ordering::Relaxed);
            } else {
                let less = added.unsigned_abs();
                let _ = counted.fetch_update(
                    std::sync::atomic::Ordering::Relaxed,
                    std::sync::atomic::Ordering::Relaxed,
                    |n| Some(n.saturating_sub(less)),
                );
            }
            server.registry.emit(event);
            success()
        }
        Err(e) => err(ErrorCode::SystemError, e.to_string()),
    }
}

/// A global bound refused something from `mac`: one WARN a minute.
pub fn global_bound_reached(server: &Server, bound: &str, mac: &str) {
    let due = server
        .counters
        .global_bound_log
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .due();
    if let Some(n) = due {
        log::warn!(
            "[limits] {bound} is reached: {n} refusal(s) since the last report (latest for {mac}); what is kept already stays. Raise it if this is a real room."
        );
    }
}

/// 9008 and 9016: the server compares md5 of the password the terminal
/// sends in plain text (notes §6.1), throttled per MAC and per address
/// (`admin_password::GuessThrottle`).
fn check_credentials(
    server: &Server,
    st: &ConnState,
    mac: &str,
    user: &str,
    password: &str,
) -> Answer {
    let ip = st.peer.ip();
    if let Some(wait) = server.admin_guesses.wait(mac, ip) {
        return err(
            ErrorCode::UserOrPasswordError,
            format!(
                "too many wrong passwords; the next try is checked in {} s",
                wait.as_secs() + 1
            ),
        );
    }
    if user == server.cfg.admin_user && md5_hex(password.as_bytes()) == server.admin_password_md5 {
        server.admin_guesses.succeeded(mac);
        success()
    } else {
        server.admin_guesses.failed(mac, ip);
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
    if let Err(a) = strings_within(frame, server.cfg.limits.max_string_bytes) {
        return a;
    }
    match answer(server, st, mac, code, frame).await {
        Ok(a) | Err(a) => a,
    }
}

/// Refuses a JSON body holding a string longer than `max` bytes (anything
/// the server might store: a platform, a name, a report field), naming it.
/// A body no longer than `max` cannot hold one, so small frames (every
/// heartbeat) are not parsed twice.
fn strings_within(frame: &Frame, max: usize) -> Result<(), Answer> {
    if frame.data_type != DataType::Json as u8 || frame.payload.len() <= max {
        return Ok(());
    }
    let Ok(v) = frame.json::<Value>() else {
        return Ok(()); // the handler says what is wrong with it
    };
    fn walk(v: &Value, path: &mut String, max: usize) -> Result<(), String> {
        match v {
            Value::String(s) if s.len() > max => Err(format!(
                "{} is {} bytes; the most this server stores is {max} ([limits] max_string_bytes)",
                if path.is_empty() { "the body" } else { path },
                s.len()
            )),
            Value::Array(a) => a.iter().try_for_each(|x| walk(x, path, max)),
            Value::Object(o) => o.iter().try_for_each(|(k, x)| {
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(k.get(..64).unwrap_or(k));
                let r = walk(x, path, max);
                path.truncate(len);
                r
            }),
            _ => Ok(()),
        }
    }
    walk(&v, &mut String::new(), max).map_err(|e| err(ErrorCode::MessageError, e))
}

/// A desktop group's uuid as the vendor writes them (8-4-4-4-12 hex).
fn strict_uuid(what: &str, id: &str) -> Result<(), Answer> {
    let groups: Vec<&str> = id.split('-').collect();
    let lens = [8, 4, 4, 4, 12];
    let ok = groups.len() == 5
        && groups
            .iter()
            .zip(lens)
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()));
    if ok {
        Ok(())
    } else {
        Err(err(
            ErrorCode::MessageError,
            format!("{what} {:?} is not a uuid", id.get(..64).unwrap_or(id)),
        ))
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
        S::Heartbeat => {
            let hb: HeartbeatReq = body(frame, mac)?;
            if let Some(d) = hb.desktop {
                d.check().map_err(|e| err(ErrorCode::MessageError, e))?;
                super::desktop_state::record(server, mac, d).map_err(store_err)?;
            }
            ok(DateTimeResp {
                datetime: now_text(),
            })
        }
        S::GetDateTime => {
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
                .update_terminal_reported(mac, |r| {
                    if let Some(p) = req.platform {
                        r.config.platform = p;
                    }
                    if let Some(v) = req.soft_version {
                        r.config.soft_version = v;
                    }
                    if let Some(d) = req.disk_residue {
                        // Kept in GB whatever unit its generation sends.
                        r.config.disk_residue =
                            super::generation::Generation::new(&r.config.soft_version, r.delivery)
                                .disk_residue_gb(d);
                    }
                    if req.wake.is_some() {
                        r.wake = req.wake;
                    }
                    if req.upgrade.is_some() {
                        r.upgrade = req.upgrade;
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
            let cfg = rec.config;
            // A terminal's own 9006 carries the address it reached us at;
            // a loopback one (a terminal behind NAT, or a seed on this
            // host) would strand a terminal elsewhere, as an empty one does.
            let stored = cfg.setup_info.program.server_ip.clone();
            let stranding = stored
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
                && is_elsewhere(st, &cfg.ip);
            let server_ip = if stored.is_empty() || stranding {
                our_address(server, st, &cfg.ip)
            } else {
                Some(stored)
            };
            let mut v = serde_json::to_value(&cfg).unwrap_or(Value::Null);
            // The v2.28 terminal copies `program.server_ip` into its config
            // whenever the key is there and reconnects to it: an empty one
            // strands it for good. No address worth giving: no key, but the
            // `program` object stays (without it the terminal sees an error).
            if let Some(program) = v
                .get_mut("setup_info")
                .and_then(|s| s.get_mut("program"))
                .and_then(|p| p.as_object_mut())
            {
                match server_ip {
                    Some(ip) => program.insert("server_ip".into(), Value::from(ip)),
                    None => program.remove("server_ip"),
                };
            }
            Envelope::ok(v)
        }
        S::UpdateConfigInfo => {
            let c: TerminalConfig = body(frame, mac)?;
            check_config(&c)?;
            server
                .store
                .update_terminal(mac, |r| {
                    if c.conf_version < r.config.conf_version {
                        // The operator changed it since the terminal last
                        // looked: keep the server's settings, take only what
                        // the terminal knows better.
                        r.config.ip = c.ip;
                        r.config.platform = c.platform;
                        r.config.disk_residue =
                            super::generation::Generation::new(&c.soft_version, r.delivery)
                                .disk_residue_gb(c.disk_residue);
                        r.config.soft_version = c.soft_version;
                        return;
                    }
                    // The session's MAC, and never a version going
                    // backwards; from here on the terminal is configured.
                    let conf_version = r.config.conf_version.max(c.conf_version).max(0);
                    let disk_residue =
                        super::generation::Generation::new(&c.soft_version, r.delivery)
                            .disk_residue_gb(c.disk_residue);
                    r.config = TerminalConfig {
                        mac: r.config.mac.clone(),
                        conf_version,
                        disk_residue,
                        ..c
                    };
                })
                .map_err(store_err)?;
            success()
        }
        S::GetDesktopGroupList => {
            let _: DesktopGroupListReq = body(frame, mac)?;
            let mut groups = server.store.groups().map_err(store_err)?;
            // A desktop that takes the terminal's own address gets it in
            // the desktop_* fields, as the vendor server fills them.
            if groups.iter().any(|g| g.desktop_enable_bottom_ip == 1) {
                if let Some(t) = server.store.terminal(mac).map_err(store_err)? {
                    for g in groups
                        .iter_mut()
                        .filter(|g| g.desktop_enable_bottom_ip == 1)
                    {
                        g.desktop_is_dhcp = t.config.is_dhcp;
                        g.desktop_ip = t.config.ip.clone();
                        g.desktop_mask = t.config.mask.clone();
                        g.desktop_gateway = t.config.gateway.clone();
                        g.desktop_dns1 = t.config.dns1.clone();
                        g.desktop_dns2 = t.config.dns2.clone();
                    }
                }
            }
            ok(DesktopGroupListResp {
                desktop_group_list: groups,
            })
        }
        S::VerifyAdminUser => {
            let r: VerifyAdminUserReq = body(frame, mac)?;
            let a = check_credentials(server, st, mac, &r.user_name, &r.password);
            // With a yes, the signed offline password (issue 38.13): our
            // agents keep it only when the signature verifies; the
            // vendor's terminals ignore the field.
            match &server.offline_admin {
                Some(o) if a.is_ok() => ok(json!({ "offline_admin": o })),
                _ => a,
            }
        }
        S::OperateAuth => {
            let r: OperateAuthReq = body(frame, mac)?;
            check_credentials(server, st, mac, &r.account, &r.password)
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
            // Kept per group as well: `ctl download-desktop --wait` asks
            // whether this terminal holds a group with its chain complete.
            if strict_uuid("uuid", &d.uuid).is_ok() {
                let kept = keep_report(server, mac, format!("desktop_info:{}", d.uuid), json!(d));
                if kept.code != 0 {
                    return Ok(kept);
                }
            }
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
            if !(0..=2).contains(&r.result) {
                return Err(err(
                    ErrorCode::MessageError,
                    format!("result {} is not 0, 1 or 2", r.result),
                ));
            }
            // `{disk}` from terminals, `{torrent_id, msg, result}` from the
            // upper client (an upload's task); each kept under its own key.
            let key = match (&r.disk[..], &r.torrent_id) {
                ("", Some(id)) => {
                    uuid_like(id)?;
                    format!("task_result:{id}")
                }
                (disk, _) => {
                    let layer = disk.strip_suffix(".torrent").unwrap_or(disk);
                    layer_named(layer)?;
                    format!("task_result:{layer}")
                }
            };
            keep_report(server, mac, key, json!(r))
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
            // Yes only when an operator asked this terminal for an upload
            // of one of the group's disks (1016/1020), or marked it as one
            // that may upload on its own (issue 38.2: any MAC used to grant
            // itself an upload this way).
            let disks: Vec<String> = g.disks.iter().map(|d| d.uuid.clone()).collect();
            let asked = disks.iter().any(|d| server.images.upload_granted(mac, d));
            let trusted = server
                .store
                .terminal(mac)
                .map_err(store_err)?
                .is_some_and(|r| r.may_upload);
            let can_update = g.desktop_group_status == 0 && (asked || trusted);
            if can_update && !asked {
                server.images.grant_upload(mac, disks);
            }
            if !can_update {
                log::info!(
                    "{mac} asked to upload group {} (9018): no, {}",
                    g.desktop_group_uuid,
                    if g.desktop_group_status != 0 {
                        "the group is not enabled"
                    } else {
                        "no operator asked it (1016/1020) and it is not marked may_upload"
                    }
                );
            }
            ok(CheckUploadStateResp {
                can_update: i64::from(can_update),
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
            let (answer, wanted) = diff_disk_download(server, &r, st.local)?;
            push_torrent_after_answer(server, mac, wanted);
            answer
        }
        S::DesktopLogin => {
            let r: DesktopLoginReq = body(frame, mac)?;
            strict_uuid("desktop_group_uuid", &r.desktop_group_uuid)?;
            keep_report(
                server,
                mac,
                format!("desktop_login:{}", r.desktop_group_uuid),
                json!(r),
            )
        }
        S::BtTaskState => {
            let r: BtTaskStateReq = body(frame, mac)?;
            if !(0..=100).contains(&r.progress) {
                return Err(err(
                    ErrorCode::MessageError,
                    format!("progress {} is not a percentage", r.progress),
                ));
            }
            // The v2.28 terminal sends an empty torrent_name on its HTTP
            // download path: one report of its own, not a layer's.
            let key = if r.torrent_name.is_empty() {
                "http_download".to_string()
            } else {
                let layer = r
                    .torrent_name
                    .strip_suffix(".torrent")
                    .unwrap_or(&r.torrent_name);
                layer_named(layer)?;
                format!("bt_task:{layer}")
            };
            // R >= 2.25 sends no 9015: its last 9025, "finished" at 100 or
            // at 0, is the result. Filed as one, so the API and --wait see it.
            let generation = server
                .store
                .terminal(mac)
                .ok()
                .flatten()
                .map(|t| t.generation());
            let url_generation = generation.is_some_and(|g| g.url_generation);
            if r.state == "finished"
                && r.torrent_name.is_empty()
                && url_generation
                && r.progress == 0
            {
                // v2.28's torrent fetch failed: no layer named, so the
                // layers last sent to it by 1017 that have no success yet
                // are the ones that failed.
                let rec = server.store.terminal(mac).ok().flatten();
                let sent: Vec<String> = rec
                    .as_ref()
                    .and_then(|t| t.reports.get("sent_desktop"))
                    .and_then(|v| v["layers"].as_array().cloned())
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|l| l.as_str().map(str::to_string))
                    .filter(|l| {
                        !rec.as_ref().is_some_and(|t| {
                            t.reports
                                .get(&format!("task_result:{l}"))
                                .is_some_and(|x| x["result"] == 1)
                        })
                    })
                    .collect();
                let kept = keep_report(server, mac, key, json!(r));
                for layer in sent {
                    keep_report(
                        server,
                        mac,
                        format!("task_result:{layer}"),
                        json!({"mac": mac, "disk": layer, "result": 2,
                               "msg": "failed: the terminal's download reported finished at 0% without a torrent name (its torrent fetch failed)"}),
                    );
                }
                return Ok(kept);
            }
            if r.state == "finished" && !r.torrent_name.is_empty() && url_generation {
                let layer = key.trim_start_matches("bt_task:").to_string();
                let ok = r.progress == 100;
                let result = json!({
                    "mac": mac,
                    "disk": layer,
                    "result": if ok { 1 } else { 2 },
                    "msg": if ok {
                        "finished (the terminal's last 9025; its software sends no 9015)"
                    } else {
                        "failed (the terminal's last 9025 said finished at 0%; its software sends no 9015)"
                    },
                });
                let kept = keep_report(server, mac, key, json!(r));
                if kept.code != 0 {
                    return Ok(kept);
                }
                keep_report(server, mac, format!("task_result:{layer}"), result)
            } else {
                keep_report(server, mac, key, json!(r))
            }
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

/// The address a terminal should keep for this server: the configured
/// `advertise_ip`, else the address it reached us at, unless that is a
/// loopback one while the terminal is elsewhere (NAT, QEMU user networking:
/// the peer, or the address the terminal reported at login, is not a
/// loopback), which would point the terminal at itself.
/// Whether the terminal is on another host than this server: its socket
/// is not loopback, or it reports an address that is not (NAT).
fn is_elsewhere(st: &ConnState, reported_ip: &str) -> bool {
    !st.peer.ip().is_loopback()
        || reported_ip
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| !ip.is_loopback())
}

fn our_address(server: &Server, st: &ConnState, reported_ip: &str) -> Option<String> {
    if let Some(ip) = server.cfg.advertise_ip.clone().filter(|s| !s.is_empty()) {
        return Some(ip);
    }
    let local = st.local?.ip();
    let elsewhere = is_elsewhere(st, reported_ip);
    if local.is_unspecified() || (local.is_loopback() && elsewhere) {
        return None;
    }
    Some(local.to_string())
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
        // The vendor server answers the template's uuid here.
        uuid: if g.template_uuid.is_empty() {
            g.desktop_group_uuid.clone()
        } else {
            g.template_uuid.clone()
        },
        desktop_group_name: g.desktop_group_name.clone(),
        last_update_time: g.template_updated_time.clone(),
    }))
}

/// The library layer a 9023 asks for: its group, its disk entry, and the
/// image when the library holds it.
struct WantedLayer {
    group: DesktopGroup,
    disk: DiskInfo,
    image: Option<super::images::Image>,
}

fn diff_disk_download(
    server: &Server,
    r: &DiffDiskReq,
    local: Option<std::net::SocketAddr>,
) -> Result<(Answer, WantedLayer), Answer> {
    let groups = server
        .store
        .groups()
        .map_err(|e| err(ErrorCode::SystemError, e.to_string()))?;
    let g = groups
        .into_iter()
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
        .cloned()
        .ok_or_else(|| {
            err(
                ErrorCode::TerminalDesktopNotExist,
                format!("{} level {level}", r.diff_disk_uuid),
            )
        })?;
    let name = d.layer_name();
    let image = server.images.get(&name);
    let answer = ok(DiffDiskDownloadResp {
        desktop_group_uuid: g.desktop_group_uuid.clone(),
        diff_disk_uuid: d.uuid.clone(),
        diff_level: r.diff_level,
        diff_disk_type: d.disk_type,
        // The library's torrent and length when it holds the layer, else
        // whatever the operator configured.
        download_url: match &image {
            Some(_) => server.torrent_url(&name, local),
            None => d.download_url.clone().unwrap_or_default(),
        },
        real_size: d.real_size,
        reserve_size: d.reserve_size,
        file_size: match &image {
            Some(img) => crate::protocol::Sectors::of_length(img.length),
            None => d.file_size.unwrap_or_default(),
        },
        operate_id: d.operate_id,
    });
    Ok((
        answer,
        WantedLayer {
            group: g,
            disk: d,
            image,
        },
    ))
}

/// After its bare answer to 9023 the vendor server pushes the layer as a
/// 1015 (`terminal_ctl.py`); terminals of that generation wait for it.
/// Terminals that read `download_url` (R >= 2.25) get nothing more. Our own
/// agent takes either and fetches the layer once.
fn push_torrent_after_answer(server: &Arc<Server>, mac: &str, wanted: WantedLayer) {
    use super::generation::Delivery;
    let Some(img) = wanted.image else {
        return;
    };
    let Ok(Some(rec)) = server.store.terminal(mac) else {
        return;
    };
    if rec.generation().delivery != Delivery::TorrentPush {
        return;
    }
    let (server, mac) = (server.clone(), mac.to_string());
    tokio::spawn(async move {
        // The answer goes first, as from the vendor server.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let name = img.layer.to_string();
        let sent = server
            .send_torrent(
                &mac,
                &wanted.group,
                &wanted.disk,
                &img,
                std::time::Duration::from_secs(30),
            )
            .await;
        match sent {
            Ok((_, env)) => log::info!("send_torrent {name} to {mac}: {} {}", env.code, env.msg),
            Err(e) => log::info!("send_torrent {name} to {mac}: {e}"),
        }
    });
}

/// 9999: raw log bytes, kept as `<data_dir>/logs/<mac>_<ip>_<ts>.log`.
/// Each terminal may send one every `log_min_interval_secs`, of at most
/// `max_log_bytes`; its `max_logs_per_terminal` newest are kept.
fn upload_log(server: &Server, mac: &str, frame: &Frame) -> Result<Answer, Answer> {
    let limits = &server.cfg.limits;
    if frame.payload.len() > limits.max_log_bytes {
        return Err(err(
            ErrorCode::MessageError,
            format!(
                "this log is {} bytes; the most this server takes is {} ([limits] max_log_bytes)",
                frame.payload.len(),
                limits.max_log_bytes
            ),
        ));
    }
    {
        let every = std::time::Duration::from_secs(limits.log_min_interval_secs);
        let mut last = server.log_uploads.lock().unwrap_or_else(|p| p.into_inner());
        let now = std::time::Instant::now();
        if let Some(t) = last.get(mac).filter(|t| now.duration_since(**t) < every) {
            let wait = every.saturating_sub(now.duration_since(*t));
            return Err(err(
                ErrorCode::MessageError,
                format!(
                    "a log from this terminal came {:?} ago; send the next in {} s ([limits] log_min_interval_secs)",
                    now.duration_since(*t),
                    wait.as_secs().max(1)
                ),
            ));
        }
        if last.len() > 65536 {
            last.retain(|_, t| now.duration_since(*t) < every);
        }
        last.insert(mac.to_string(), now);
    }
    let dir = server.cfg.data_dir.join("logs");
    // Global: all terminals' logs together (issue 38.7). A terminal that
    // has logs kept gives up its own oldest for a new one; one with none
    // is refused, so what was accepted first stays.
    let mac_prefix = format!("{}_", mac.replace(':', ""));
    let logs_of = |dir: &std::path::Path| -> (u64, Vec<(String, std::path::PathBuf)>) {
        let mut total = 0;
        let mut mine = Vec::new();
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            total += e.metadata().map_or(0, |m| m.len());
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(&mac_prefix) && name.ends_with(".log") {
                let ts = name.rsplit('_').next().unwrap_or_default().to_string();
                mine.push((ts, e.path()));
            }
        }
        mine.sort();
        (total, mine)
    };
    let cap = limits.max_log_bytes_total;
    let incoming = frame.payload.len() as u64;
    let (mut total, mine) = logs_of(&dir);
    for (_, oldest) in &mine {
        if total + incoming <= cap {
            break;
        }
        let len = std::fs::metadata(oldest).map_or(0, |m| m.len());
        if std::fs::remove_file(oldest).is_ok() {
            total = total.saturating_sub(len);
        }
    }
    if total + incoming > cap {
        global_bound_reached(server, "max_log_bytes_total", mac);
        return Err(err(
            ErrorCode::MessageError,
            format!("the server keeps {cap} bytes of terminal logs and has no room for this one ([limits] max_log_bytes_total)"),
        ));
    }
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
    rotate_logs(&dir, &mac.replace(':', ""), limits.max_logs_per_terminal);
    Ok(success())
}

/// Keeps the `keep` newest logs of one terminal (names sort by time).
fn rotate_logs(dir: &std::path::Path, mac_prefix: &str, keep: usize) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let prefix = format!("{mac_prefix}_");
    let mut mine: Vec<(String, std::path::PathBuf)> = rd
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            (name.starts_with(&prefix) && name.ends_with(".log")).then(|| {
                // <mac>_<ip>_<timestamp>.log: sort by the timestamp.
                let ts = name.rsplit('_').next().unwrap_or_default().to_string();
                (ts, e.path())
            })
        })
        .collect();
    if mine.len() <= keep {
        return;
    }
    mine.sort();
    for (_, path) in &mine[..mine.len() - keep] {
        if let Err(e) = std::fs::remove_file(path) {
            log::warn!("rotating {}: {e}", path.display());
        }
    }
}
