//! The operator HTTP API, on loopback, with a Bearer token. Every answer is
//! the `{code, msg, data}` envelope.
//!
//! | method | path | |
//! |---|---|---|
//! | GET | /api/v1/terminals | all known terminals with online state |
//! | GET | /api/v1/terminals/:mac | one terminal, with its reports |
//! | POST | /api/v1/terminals/:mac/commands | `{command, params, timeout_secs}`: push and wait for the reply (or say at once that this terminal's software never answers it) |
//! | PUT | /api/v1/terminals/:mac/delivery | `{delivery: "1015" \| "1017" \| "auto"}`: how desktops reach it |
//! | PUT | /api/v1/terminals/:mac/admission | `{admission: "accepted" \| "pending" \| "rejected"}`: whether it may join (`admission.rs`) |
//! | GET | /api/v1/desktop_groups | |
//! | PUT | /api/v1/desktop_groups | body: a desktop group as in 9007 |
//! | DELETE | /api/v1/desktop_groups/:uuid | |
//! | GET, POST, DELETE | /api/v1/order | show, start `{start_id, macs}`, cancel numbering |
//! | GET | /api/v1/events | the live event stream (Server-Sent Events, one JSON event each) |
//! | GET | / | the operator console (`console/`), embedded; it asks for the token |

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

use super::api_schema::*;
use super::order;
use super::service::{PushError, Server};
use super::wake::schedule::ScheduleEntry;
use crate::protocol::messages::DesktopGroup;
use crate::protocol::{normalize_mac, Envelope, ErrorCode, ServiceCode};

type S = State<Arc<Server>>;

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PushRequest {
    /// Name ("update_name") or number (1004).
    pub command: Value,
    #[serde(default = "empty_object")]
    pub params: Value,
    #[serde(default)]
    pub timeout_secs: Option<u64>,
}

fn empty_object() -> Value {
    json!({})
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OrderStart {
    pub start_id: i64,
    #[serde(default)]
    pub macs: Vec<String>,
}

fn reply(status: StatusCode, env: Envelope<Value>) -> Response {
    (status, Json(env)).into_response()
}

fn ok(data: Value) -> Response {
    reply(StatusCode::OK, Envelope::ok(data))
}

fn fail(status: StatusCode, code: ErrorCode, msg: impl Into<String>) -> Response {
    reply(status, Envelope::error(code, msg))
}

fn store_fail(e: super::store::StoreError) -> Response {
    fail(
        StatusCode::INTERNAL_SERVER_ERROR,
        ErrorCode::SystemError,
        e.to_string(),
    )
}

fn push_fail(e: PushError) -> Response {
    let status = match &e {
        PushError::NotConnected(_) => StatusCode::CONFLICT,
        PushError::Timeout(..) => StatusCode::GATEWAY_TIMEOUT,
        PushError::Bad(_) => StatusCode::BAD_REQUEST,
        PushError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
        PushError::NoReply(..) => StatusCode::OK,
        PushError::NotAdmitted(..) => StatusCode::FORBIDDEN,
        PushError::Invalid(..) => StatusCode::BAD_REQUEST,
    };
    fail(status, e.code(), e.to_string())
}

fn authorized(server: &Server, headers: &HeaderMap) -> bool {
    server.tokens.caller(headers).is_some()
}

/// A read-only token reads; anything else it asks is refused (and counted,
/// see `audit_action`).
async fn refuse_read_only(
    State(server): S,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if req.method() != axum::http::Method::GET {
        if let Some(c) = server.tokens.caller(req.headers()).filter(|c| c.read_only) {
            return fail(
                StatusCode::FORBIDDEN,
                ErrorCode::UserOrPasswordError,
                format!("the token of {} is read-only", c.name),
            );
        }
    }
    next.run(req).await
}

macro_rules! guard {
    ($server:expr, $headers:expr) => {
        if !authorized(&$server, &$headers) {
            return fail(
                StatusCode::UNAUTHORIZED,
                ErrorCode::UserOrPasswordError,
                "missing or wrong Bearer token",
            );
        }
    };
}

/// Largest operator request body.
pub const MAX_BODY: usize = 256 * 1024;

/// Every operator action (anything but a read) is one line at INFO and one
/// entry of the audit trail in the store: who (the token's name), from
/// where, what, on which terminals, and how it ended. A write refused for
/// its token (401, 403) is counted in the metrics instead: otherwise
/// anyone who reaches the port could push every real entry out of the
/// bounded trail (issue 38.9).
async fn audit_action(
    State(server): S,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if req.method() == axum::http::Method::GET {
        return next.run(req).await;
    }
    // The console sends `AA%3A…` for a MAC in a path.
    let path = percent_decoded(req.uri().path());
    let what = format!("{} {path}", req.method());
    let who = server
        .tokens
        .caller(req.headers())
        .map(|c| c.name.clone())
        .unwrap_or_else(|| "unauthenticated".into());
    let from = req
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.to_string())
        .unwrap_or_default();
    let mut terminals: Vec<String> = path
        .strip_prefix("/api/v1/terminals/")
        .and_then(|rest| rest.split('/').next())
        .and_then(normalize_mac)
        .into_iter()
        .collect();
    // A small JSON body is read to name the terminals it is for; a big one
    // (an agent package) is passed on untouched.
    let small = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .is_some_and(|n| n <= MAX_BODY);
    let req = if small {
        let (parts, body) = req.into_parts();
        let bytes = axum::body::to_bytes(body, MAX_BODY)
            .await
            .unwrap_or_default();
        if let Ok(v) = serde_json::from_slice::<Value>(&bytes) {
            for m in v["macs"].as_array().into_iter().flatten() {
                if let Some(m) = m.as_str().and_then(normalize_mac) {
                    terminals.push(m);
                }
            }
        }
        axum::extract::Request::from_parts(parts, axum::body::Body::from(bytes))
    } else {
        req
    };
    terminals.sort();
    terminals.dedup();
    let started = std::time::Instant::now();
    let resp = next.run(req).await;
    let status = resp.status();
    if matches!(status.as_u16(), 401 | 403) {
        server.metrics.api_refused(status.as_u16(), &from, &what);
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let bytes = axum::body::to_bytes(body, 4 << 20)
        .await
        .unwrap_or_default();
    let result = serde_json::from_slice::<Value>(&bytes)
        .ok()
        .map(|v| {
            let msg: String = v["msg"].as_str().unwrap_or("").chars().take(300).collect();
            format!("{} {msg}", v["code"]).trim().to_string()
        })
        .unwrap_or_default();
    log::info!(
        who = who.as_str();
        "{who} ({from}): {what} -> {status} in {:?}",
        started.elapsed()
    );
    let now = super::registry::now_ms();
    let entry = super::store::AuditEntry {
        seq: 0,
        at_ms: now,
        at: chrono::Local::now().to_rfc3339(),
        who,
        from,
        action: what,
        terminals,
        status: status.as_u16(),
        result,
    };
    let (max, days) = (
        server.cfg.audit_max_entries,
        server.cfg.audit_retention_days,
    );
    if let Err(e) = server
        .store
        .append_audit(entry, max, days.saturating_mul(86_400_000))
    {
        log::error!("audit trail: {e}");
    }
    Response::from_parts(parts, axum::body::Body::from(bytes))
}

/// `%XX` escapes of a path undone (invalid ones are kept as they are).
fn percent_decoded(path: &str) -> String {
    let b = path.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[derive(Debug, Deserialize)]
struct AuditQuery {
    limit: Option<usize>,
}

/// The audit trail, newest first.
#[utoipa::path(
    get,
    path = "/api/v1/audit",
    tag = "operators",
    params(
        ("limit" = Option<usize>, Query, description = "at most this many, newest first (200)")
    ),
    responses(
        (status = 200, description = "the audit trail", body = Envelope<AuditTrail>),
        (status = 401, description = "missing or wrong Bearer token", body = Failure)
    ),
    security(("bearer" = []))
)]
async fn audit_list(
    State(server): S,
    headers: HeaderMap,
    axum::extract::Query(q): axum::extract::Query<AuditQuery>,
) -> Response {
    guard!(server, headers);
    match server.store.audit(q.limit.unwrap_or(200).min(10_000)) {
        Ok(entries) => ok(json!({ "entries": entries })),
        Err(e) => store_fail(e),
    }
}

/// A declared length over `MAX_BODY` gets 413 with the envelope at once; a
/// body without one is cut off at the limit by `DefaultBodyLimit`.
async fn refuse_oversized(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let declared = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    // An agent package is the one body that is big.
    let limit = if req.uri().path().starts_with("/api/v1/upgrades/")
        && req.method() == axum::http::Method::PUT
    {
        super::upgrades::MAX_PACKAGE as u64
    } else {
        MAX_BODY as u64
    };
    if declared.is_some_and(|n| n > limit) {
        return fail(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::MessageError,
            format!("request body over {MAX_BODY} bytes"),
        );
    }
    next.run(req).await
}

pub async fn serve(server: Arc<Server>, listener: TcpListener) {
    let shutdown = server.shutdown.clone();
    let tls = match (&server.cfg.api_tls_cert, &server.cfg.api_tls_key) {
        (Some(cert), Some(key)) => match crate::tls::acceptor(cert, key, None) {
            Ok((a, fp)) => {
                log::info!("operator console and API speak TLS; certificate sha256 {fp}");
                Some(a)
            }
            Err(e) => {
                log::error!("operator API: TLS: {e}; not serving");
                return;
            }
        },
        _ => None,
    };
    let limits = server.cfg.limits.clone();
    let app = router(server);
    super::http_serve::serve("operator API", listener, app, tls, &limits, shutdown).await;
}

fn router(server: Arc<Server>) -> Router {
    Router::new()
        .route("/api/v1/terminals", get(terminals))
        .route(
            "/api/v1/terminals/:mac",
            get(terminal).delete(forget_terminal),
        )
        .route("/api/v1/terminals/:mac/commands", post(push))
        .route("/api/v1/terminals/:mac/delivery", put(set_delivery))
        .route("/api/v1/terminals/:mac/admission", put(set_admission))
        .route(
            "/api/v1/terminals/:mac/download_desktop",
            post(download_desktop),
        )
        .route("/api/v1/images", get(images).post(rescan_images))
        .route("/api/v1/desktop_groups", get(groups).put(put_group))
        .route("/api/v1/desktop_groups/:uuid", delete(delete_group))
        .route(
            "/api/v1/order",
            get(order_show).post(order_start).delete(order_cancel),
        )
        .route("/api/v1/events", get(events))
        .route("/api/v1/wake", get(wake_results).post(wake))
        .route("/api/v1/terminals/:mac/room", put(set_room))
        .route("/api/v1/terminals/:mac/may_upload", put(set_may_upload))
        .route("/api/v1/uploads/:torrent_id/accept", post(accept_upload))
        .route("/api/v1/uploads/:torrent_id/reject", post(reject_upload))
        .route("/api/v1/schedule", get(schedule_show).put(schedule_put))
        .route("/api/v1/audit", get(audit_list))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/api/v1/version", get(version))
        .route("/api/v1/openapi.json", get(openapi_json))
        .route("/api/v1/upgrades", get(upgrades_list))
        .route("/api/v1/upgrades/push", post(upgrades_push))
        .route(
            "/api/v1/upgrades/:platform/:version",
            put(upgrades_publish).layer(axum::extract::DefaultBodyLimit::max(
                super::upgrades::MAX_PACKAGE,
            )),
        )
        .merge(super::console::routes())
        // Every operator body is a small JSON document; a bigger one is
        // refused (413) before it is read into memory.
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn(refuse_oversized))
        .layer(axum::middleware::from_fn_with_state(
            server.clone(),
            refuse_read_only,
        ))
        .layer(axum::middleware::from_fn_with_state(
            server.clone(),
            audit_action,
        ))
        .with_state(server)
}

/// The event bus as Server-Sent Events. A viewer that falls behind (the
/// bus keeps a bounded ring for all readers) gets a `lagged` event and the
/// stream ends: it should reload what it shows and connect again. Nothing
/// is buffered for a slow reader, and readers are capped
/// (`[limits] max_event_readers`).
#[utoipa::path(
    get,
    path = "/api/v1/events",
    tag = "events",
    responses(
        (status = 200, description = "Server-Sent Events; each data line is one JSON event; a `lagged` event ends the stream", body = String, content_type = "text/event-stream"),
        (status = 401, description = "missing or wrong Bearer token", body = Failure),
        (status = 503, description = "too many readers", body = Failure)
    ),
    security(("bearer" = []))
)]
async fn events(State(server): S, headers: HeaderMap) -> Response {
    use axum::response::sse::{Event, KeepAlive, Sse};
    guard!(server, headers);
    let limits = &server.cfg.limits;
    // Read-only tokens (dashboards, wall screens) share all but the slots
    // kept for tokens that may act, so an operator still gets a stream
    // when a read-only token has opened all it can (issue 38.16).
    let read_only = server.tokens.caller(&headers).is_some_and(|c| c.read_only);
    let read_only_slot = if read_only {
        let cap = limits
            .max_event_readers
            .saturating_sub(limits.event_readers_kept_for_operators);
        match super::limits::Slot::take(&server.counters.read_only_event_readers, cap) {
            Some(s) => Some(s),
            None => {
                return (
                    StatusCode::SERVICE_UNAVAILABLE,
                    Json(json!({
                        "code": 503,
                        "msg": format!(
                            "read-only tokens hold {cap} event streams already; the other {} are kept for tokens that may act ([limits] max_event_readers, event_readers_kept_for_operators)",
                            limits.event_readers_kept_for_operators
                        ),
                    })),
                )
                    .into_response();
            }
        }
    } else {
        None
    };
    let Some(slot) = super::limits::Slot::take(
        &server.counters.event_readers,
        server.cfg.limits.max_event_readers,
    ) else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({
                "code": 503,
                "msg": format!(
                    "{} event-stream readers are connected already ([limits] max_event_readers)",
                    server.cfg.limits.max_event_readers
                ),
            })),
        )
            .into_response();
    };
    let rx = server.registry.events.subscribe();
    let stop = server.shutdown.clone();
    let stream = futures_util::stream::unfold(
        (rx, stop, (slot, read_only_slot), false),
        |(mut rx, stop, slot, ended)| async move {
            if ended {
                return None;
            }
            let ev = tokio::select! {
                r = rx.recv() => r,
                _ = stop.cancelled() => return None,
            };
            let (event, ended) = match ev {
                Ok(ev) => (
                    Event::default().data(serde_json::to_string(&ev).unwrap_or_default()),
                    false,
                ),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => (
                    Event::default().data(
                        json!({"event": "lagged", "missed": n, "reconnect": true}).to_string(),
                    ),
                    true,
                ),
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            };
            Some((
                Ok::<_, std::convert::Infallible>(event),
                (rx, stop, slot, ended),
            ))
        },
    );
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

/// What the library and the stored groups hold now, for terminal views.
struct Known {
    layers: std::collections::HashSet<String>,
    /// Each group's system disk uuids and its name.
    groups: Vec<(Vec<String>, String)>,
    /// Group uuid -> name.
    names: std::collections::HashMap<String, String>,
}

fn known(server: &Server) -> Known {
    let groups = server.store.groups().unwrap_or_default();
    let mut layers: std::collections::HashSet<String> = server
        .images
        .status()
        .into_iter()
        .map(|i| i.layer)
        .collect();
    for g in &groups {
        for d in &g.disks {
            for level in 0..=d.dif_level.clamp(0, 2) {
                if let Ok(n) = crate::disk::name::LayerName::new(&d.prefix, level, &d.uuid) {
                    layers.insert(n.to_string());
                }
            }
        }
    }
    Known {
        layers,
        names: groups
            .iter()
            .map(|g| (g.desktop_group_uuid.clone(), g.desktop_group_name.clone()))
            .collect(),
        groups: groups
            .iter()
            .map(|g| {
                (
                    g.disks
                        .iter()
                        .filter(|d| d.disk_type == 0)
                        .map(|d| d.uuid.clone())
                        .collect(),
                    if g.desktop_group_name.is_empty() {
                        g.desktop_group_uuid.clone()
                    } else {
                        g.desktop_group_name.clone()
                    },
                )
            })
            .collect(),
    }
}

/// A MAC from the URL, normalised, or the 400 that refuses it.
fn mac_param(mac: &str) -> Result<String, Box<Response>> {
    normalize_mac(mac).ok_or_else(|| {
        Box::new(fail(
            StatusCode::BAD_REQUEST,
            ErrorCode::TerminalMacError,
            "not a MAC",
        ))
    })
}

fn terminal_view(
    server: &Server,
    known: &Known,
    rec: &super::store::TerminalRecord,
    with_reports: bool,
) -> Value {
    let status = server.registry.status(server.cfg.offline_after());
    let (connected, online, ip, client_type) = match status.get(&rec.config.mac) {
        Some((online, ip, ct)) => (true, *online, ip.clone(), *ct),
        None => (false, false, rec.config.ip.clone(), rec.client_type),
    };
    let mut v = serde_json::to_value(&rec.config).unwrap_or_else(|_| json!({}));
    v["ip"] = json!(ip);
    v["client_type"] = json!(client_type);
    v["connected"] = json!(connected);
    v["online"] = json!(online);
    v["last_login"] = json!(rec.last_login);
    let generation = rec.generation();
    v["delivery"] = json!(generation.delivery);
    v["admission"] = json!(rec.admission);
    v["room"] = json!(rec.room);
    v["wake"] = json!(rec.wake);
    v["last_wake"] = json!(server
        .wakes
        .results(
            std::slice::from_ref(&rec.config.mac),
            super::registry::now_ms()
        )
        .first());
    let heartbeat_age = server
        .registry
        .heartbeat_ages()
        .get(&rec.config.mac)
        .copied();
    v["last_heartbeat_secs"] = json!(heartbeat_age);
    // Layers in transfer, for the room's progress bars: only layers the
    // library or a group still has (no ghost rows for deleted ones), with
    // the terminal's reason when one failed.
    v["transfers"] = json!(rec
        .reports
        .iter()
        .filter_map(|(k, r)| Some((k.strip_prefix("bt_task:")?, r)))
        .filter(|(layer, _)| known.layers.contains(*layer))
        .map(|(layer, r)| {
            let result = rec.reports.get(&format!("task_result:{layer}"));
            json!({
                "layer": layer,
                "progress": r["progress"],
                "state": r["state"],
                "result": result.map(|t| t["result"].clone()),
                "msg": result.and_then(|t| t.get("msg").cloned()),
            })
        })
        // A failure with no progress before it (a first delivery that
        // failed at once) is a row too, not only a report.
        .chain(
            rec.reports
                .iter()
                .filter_map(|(k, r)| Some((k.strip_prefix("task_result:")?, r)))
                .filter(|(layer, r)| {
                    r["result"] == 2
                        && known.layers.contains(*layer)
                        && !rec.reports.contains_key(&format!("bt_task:{layer}"))
                })
                .map(|(layer, r)| {
                    json!({
                        "layer": layer,
                        "progress": 0,
                        "state": "failed",
                        "result": r["result"],
                        "msg": r.get("msg").cloned(),
                    })
                }),
        )
        .collect::<Vec<_>>());
    v["desktops"] = rec
        .reports
        .get("desktop_groups")
        .cloned()
        .unwrap_or(Value::Null);
    // The groups those system disks belong to, by name.
    let held: Vec<&str> = v["desktops"]
        .as_str()
        .unwrap_or_default()
        .split(',')
        .filter(|u| !u.is_empty())
        .collect();
    v["desktop_group_names"] = json!(known
        .groups
        .iter()
        .filter(|(disks, _)| disks.iter().any(|d| held.contains(&d.as_str())))
        .map(|(_, name)| name.clone())
        .collect::<Vec<_>>());
    // What the desktop does now (our agent reports every change), and the
    // desktop that runs, only while the terminal is online and says so.
    let last_seen_ms =
        heartbeat_age.map(|age| super::registry::now_ms().saturating_sub(age * 1000));
    let (desktop, running) = super::desktop_state::view(rec, online, last_seen_ms, |uuid| {
        known
            .names
            .get(uuid)
            .cloned()
            .unwrap_or_else(|| uuid.to_string())
    });
    v["desktop"] = desktop;
    v["running_desktop"] = running;
    v["conflict"] = match server.registry.conflict(&rec.config.mac) {
        Some((ip, other_ip, at_ms)) => json!({ "ip": ip, "other_ip": other_ip, "at_ms": at_ms }),
        None => Value::Null,
    };
    if with_reports {
        v["reports"] = json!(rec.reports);
        v["recent_commands"] = json!(server.registry.recent_commands(&rec.config.mac));
    }
    v
}

#[utoipa::path(
    get,
    path = "/api/v1/terminals",
    tag = "terminals",
    responses(
        (status = 200, description = "every known terminal", body = Envelope<TerminalList>),
        (status = 401, description = "missing or wrong Bearer token", body = Failure),
        (status = 500, description = "store error", body = Failure)
    ),
    security(("bearer" = []))
)]
async fn terminals(State(server): S, headers: HeaderMap) -> Response {
    guard!(server, headers);
    match server.store.terminals() {
        Ok(list) => {
            let k = known(&server);
            let views: Vec<Value> = list
                .iter()
                .map(|r| terminal_view(&server, &k, r, false))
                .collect();
            ok(json!({ "terminals": views }))
        }
        Err(e) => store_fail(e),
    }
}

#[utoipa::path(
    get,
    path = "/api/v1/terminals/{mac}",
    tag = "terminals",
    params(
        ("mac" = String, Path, description = "the terminal's MAC, any common notation")
    ),
    responses(
        (status = 200, description = "one terminal with its reports", body = Envelope<TerminalDetail>),
        (status = 400, description = "not a MAC", body = Failure),
        (status = 401, description = "missing or wrong Bearer token", body = Failure),
        (status = 404, description = "no such terminal", body = Failure)
    ),
    security(("bearer" = []))
)]
async fn terminal(State(server): S, headers: HeaderMap, Path(mac): Path<String>) -> Response {
    guard!(server, headers);
    let mac = match mac_param(&mac) {
        Ok(m) => m,
        Err(refused) => return *refused,
    };
    match server.store.terminal(&mac) {
        Ok(Some(r)) => ok(terminal_view(&server, &known(&server), &r, true)),
        Ok(None) => fail(
            StatusCode::NOT_FOUND,
            ErrorCode::TerminalRecordNotExist,
            mac,
        ),
        Err(e) => store_fail(e),
    }
}

/// Forgets a terminal's record without telling the terminal (a retired or
/// dead machine). A connected terminal is refused: delete it with 1003, so
/// it forgets the server too, or wait until it is off.
#[utoipa::path(
    delete,
    path = "/api/v1/terminals/{mac}",
    tag = "terminals",
    params(
        ("mac" = String, Path, description = "the terminal's MAC, any common notation")
    ),
    responses(
        (status = 200, description = "the record is gone", body = Envelope<Forgotten>),
        (status = 400, description = "not a MAC", body = Failure),
        (status = 401, description = "missing or wrong Bearer token", body = Failure),
        (status = 403, description = "a read-only token", body = Failure),
        (status = 404, description = "no such terminal", body = Failure),
        (status = 409, description = "it is connected", body = Failure)
    ),
    security(("bearer" = []))
)]
async fn forget_terminal(
    State(server): S,
    headers: HeaderMap,
    Path(mac): Path<String>,
) -> Response {
    guard!(server, headers);
    let mac = match mac_param(&mac) {
        Ok(m) => m,
        Err(refused) => return *refused,
    };
    if server.registry.sender(&mac).is_some() {
        return fail(
            StatusCode::CONFLICT,
            ErrorCode::SystemError,
            format!("{mac} is connected: send it delete (1003) so it forgets this server too, or forget it once it is off"),
        );
    }
    match server.store.delete_terminal(&mac) {
        Ok(true) => {
            log::info!("{mac}: record forgotten by the operator");
            ok(json!({ "forgotten": mac }))
        }
        Ok(false) => fail(
            StatusCode::NOT_FOUND,
            ErrorCode::TerminalRecordNotExist,
            mac,
        ),
        Err(e) => store_fail(e),
    }
}

pub fn parse_command(v: &Value) -> Option<ServiceCode> {
    match v {
        Value::String(s) => ServiceCode::from_name(s)
            .or_else(|| s.parse::<u32>().ok().and_then(ServiceCode::from_u32)),
        Value::Number(n) => n
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .and_then(ServiceCode::from_u32),
        _ => None,
    }
}

#[utoipa::path(
    post,
    path = "/api/v1/terminals/{mac}/commands",
    tag = "terminals",
    request_body = PushRequest,
    params(
        ("mac" = String, Path, description = "the terminal's MAC, any common notation")
    ),
    responses(
        (status = 200, description = "sent; the reply, or why none comes", body = Envelope<Pushed>),
        (status = 400, description = "bad command or parameters", body = Failure),
        (status = 401, description = "missing or wrong Bearer token", body = Failure),
        (status = 403, description = "not admitted, or a read-only token", body = Failure),
        (status = 409, description = "not connected", body = Failure),
        (status = 504, description = "no reply in time", body = Failure)
    ),
    security(("bearer" = []))
)]
async fn push(
    State(server): S,
    headers: HeaderMap,
    Path(mac): Path<String>,
    body: Option<Json<PushRequest>>,
) -> Response {
    guard!(server, headers);
    let Some(Json(req)) = body else {
        return fail(
            StatusCode::BAD_REQUEST,
            ErrorCode::MessageError,
            "body must be {command, params}",
        );
    };
    let Some(code) = parse_command(&req.command).filter(|c| c.is_command()) else {
        return fail(
            StatusCode::BAD_REQUEST,
            ErrorCode::MessageError,
            format!("unknown command {}", req.command),
        );
    };
    let timeout = Duration::from_secs(req.timeout_secs.unwrap_or(30).clamp(1, 3600));
    match server.push(&mac, code, req.params, timeout).await {
        Ok((batch, env)) => ok(json!({ "command": code.name(), "batch_no": batch, "reply": env })),
        // Sent; this terminal's generation does not answer it. Said at
        // once, so the operator does not wait for a timeout.
        Err(PushError::NoReply(batch, why)) => (
            StatusCode::OK,
            Json(json!({
                "code": 0,
                "msg": why,
                "data": { "command": code.name(), "batch_no": batch, "reply": null, "no_reply": why },
            })),
        )
            .into_response(),
        Err(e) => push_fail(e),
    }
}

#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
struct AdmissionRequest {
    admission: String,
}

/// Accepts, rejects or returns a terminal to pending; an unknown MAC gets
/// a record (the way onto the allow-list).
#[utoipa::path(
    put,
    path = "/api/v1/terminals/{mac}/admission",
    tag = "terminals",
    request_body = AdmissionRequest,
    params(
        ("mac" = String, Path, description = "the terminal's MAC, any common notation")
    ),
    responses(
        (status = 200, description = "stored", body = Envelope<AdmissionSet>),
        (status = 400, description = "bad body or MAC", body = Failure),
        (status = 401, description = "missing or wrong Bearer token", body = Failure),
        (status = 403, description = "a read-only token", body = Failure)
    ),
    security(("bearer" = []))
)]
async fn set_admission(
    State(server): S,
    headers: HeaderMap,
    Path(mac): Path<String>,
    body: Option<Json<AdmissionRequest>>,
) -> Response {
    guard!(server, headers);
    let Some(admission) = body
        .as_ref()
        .and_then(|b| super::admission::Admission::parse(&b.admission))
    else {
        return fail(
            StatusCode::BAD_REQUEST,
            ErrorCode::MessageError,
            "body must be {admission: accepted | pending | rejected}",
        );
    };
    match server.set_admission(&mac, admission) {
        Ok(r) => ok(json!({ "mac": r.config.mac, "admission": r.admission })),
        Err(e) => push_fail(e),
    }
}

#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
struct DeliveryRequest {
    delivery: String,
}

/// Pins a terminal's desktop delivery style, or returns it to its version's.
#[utoipa::path(
    put,
    path = "/api/v1/terminals/{mac}/delivery",
    tag = "terminals",
    request_body = DeliveryRequest,
    params(
        ("mac" = String, Path, description = "the terminal's MAC, any common notation")
    ),
    responses(
        (status = 200, description = "stored", body = Envelope<DeliverySet>),
        (status = 400, description = "bad body or MAC", body = Failure),
        (status = 401, description = "missing or wrong Bearer token", body = Failure),
        (status = 403, description = "a read-only token", body = Failure),
        (status = 404, description = "no such terminal", body = Failure),
        (status = 409, description = "its generation cannot take that delivery", body = Failure)
    ),
    security(("bearer" = []))
)]
async fn set_delivery(
    State(server): S,
    headers: HeaderMap,
    Path(mac): Path<String>,
    body: Option<Json<DeliveryRequest>>,
) -> Response {
    guard!(server, headers);
    let mac = match mac_param(&mac) {
        Ok(m) => m,
        Err(refused) => return *refused,
    };
    let choice = match body.as_ref().map(|b| b.delivery.as_str()) {
        Some("auto") => None,
        Some(s) => match super::generation::Delivery::parse(s) {
            Some(d) => Some(d),
            None => {
                return fail(
                    StatusCode::BAD_REQUEST,
                    ErrorCode::MessageError,
                    "delivery must be 1015, 1017 or auto",
                )
            }
        },
        None => {
            return fail(
                StatusCode::BAD_REQUEST,
                ErrorCode::MessageError,
                "body must be {delivery}",
            )
        }
    };
    match server.store.terminal(&mac) {
        // v2.28 answers 1015 with 0 at once and downloads nothing (notes
        // §11): pinning it there would report layers that never arrive.
        Ok(Some(r))
            if r.generation().url_generation
                && choice == Some(super::generation::Delivery::TorrentPush) =>
        {
            return fail(
                StatusCode::CONFLICT,
                ErrorCode::MessageError,
                format!(
                    "{mac} runs {} (R >= 2.25): it answers 1015 and downloads nothing; it takes desktops by 1017 only",
                    r.generation().soft_version
                ),
            );
        }
        Ok(Some(_)) => {}
        Ok(None) => {
            return fail(
                StatusCode::NOT_FOUND,
                ErrorCode::TerminalRecordNotExist,
                mac,
            )
        }
        Err(e) => return store_fail(e),
    }
    match server.store.update_terminal(&mac, |r| r.delivery = choice) {
        Ok(r) => {
            let g = r.generation();
            ok(json!({ "mac": mac, "delivery": g.delivery, "pinned": r.delivery.is_some() }))
        }
        Err(e) => store_fail(e),
    }
}

#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
struct DownloadDesktopRequest {
    group_uuid: String,
    timeout_secs: Option<u64>,
}

/// 1008 then one 1015 per layer of the group.
#[utoipa::path(
    post,
    path = "/api/v1/terminals/{mac}/download_desktop",
    tag = "terminals",
    request_body = DownloadDesktopRequest,
    params(
        ("mac" = String, Path, description = "the terminal's MAC, any common notation")
    ),
    responses(
        (status = 200, description = "the commands sent", body = Envelope<DownloadSent>),
        (status = 400, description = "bad body or group", body = Failure),
        (status = 401, description = "missing or wrong Bearer token", body = Failure),
        (status = 403, description = "a read-only token", body = Failure),
        (status = 409, description = "not connected", body = Failure)
    ),
    security(("bearer" = []))
)]
async fn download_desktop(
    State(server): S,
    headers: HeaderMap,
    Path(mac): Path<String>,
    body: Option<Json<DownloadDesktopRequest>>,
) -> Response {
    guard!(server, headers);
    let Some(Json(req)) = body else {
        return fail(
            StatusCode::BAD_REQUEST,
            ErrorCode::MessageError,
            "body must be {group_uuid}",
        );
    };
    let timeout = Duration::from_secs(req.timeout_secs.unwrap_or(30).clamp(1, 3600));
    match server
        .download_desktop(&mac, &req.group_uuid, timeout)
        .await
    {
        Ok(sent) => ok(json!({ "sent": sent })),
        Err(e) => push_fail(e),
    }
}

/// The image library: each layer's torrent, how much the seeder uploaded,
/// the uploads from terminals, and every terminal's last 9025 per layer.
#[utoipa::path(
    get,
    path = "/api/v1/images",
    tag = "images",
    responses(
        (status = 200, description = "the library", body = Envelope<Library>),
        (status = 401, description = "missing or wrong Bearer token", body = Failure)
    ),
    security(("bearer" = []))
)]
async fn images(State(server): S, headers: HeaderMap) -> Response {
    guard!(server, headers);
    let mut progress = serde_json::Map::new();
    if let Ok(terms) = server.store.terminals() {
        for t in terms {
            let tasks: serde_json::Map<String, Value> = t
                .reports
                .iter()
                .filter_map(|(k, v)| {
                    k.strip_prefix("bt_task:")
                        .map(|n| (n.to_string(), v.clone()))
                })
                .collect();
            if !tasks.is_empty() {
                progress.insert(t.config.mac.clone(), Value::Object(tasks));
            }
        }
    }
    ok(json!({
        "images": server.images.status(),
        "refused": server.images.refused_list(),
        "settling": server.images.settling(),
        "uploads": server.images.uploads_list(),
        "progress": progress,
        "bt_port": server.images.listen_port(),
    }))
}

#[utoipa::path(
    post,
    path = "/api/v1/images",
    tag = "images",
    responses(
        (status = 200, description = "read again", body = Envelope<Rescanned>),
        (status = 401, description = "missing or wrong Bearer token", body = Failure),
        (status = 403, description = "a read-only token", body = Failure),
        (status = 500, description = "the library could not be read", body = Failure)
    ),
    security(("bearer" = []))
)]
async fn rescan_images(State(server): S, headers: HeaderMap) -> Response {
    guard!(server, headers);
    match server.scan_library().await {
        Ok(()) => ok(json!({
            "images": server.images.status(),
            "refused": server.images.refused_list(),
            "settling": server.images.settling(),
        })),
        Err(e) => fail(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::SystemError,
            format!("{e:#}"),
        ),
    }
}

#[utoipa::path(
    get,
    path = "/api/v1/desktop_groups",
    tag = "desktop groups",
    responses(
        (status = 200, description = "every stored group", body = Envelope<GroupList>),
        (status = 401, description = "missing or wrong Bearer token", body = Failure),
        (status = 500, description = "store error", body = Failure)
    ),
    security(("bearer" = []))
)]
async fn groups(State(server): S, headers: HeaderMap) -> Response {
    guard!(server, headers);
    match server.store.groups() {
        Ok(g) => {
            // Groups whose layers the library cannot serve (a file removed
            // or refused after the group was stored), with the reasons.
            let undeliverable: serde_json::Map<String, Value> = g
                .iter()
                .filter_map(|g| {
                    let p = undeliverable_layers(&server, g);
                    (!p.is_empty()).then(|| (g.desktop_group_uuid.clone(), json!(p)))
                })
                .collect();
            ok(json!({ "desktop_group_list": g, "undeliverable": undeliverable }))
        }
        Err(e) => store_fail(e),
    }
}

#[utoipa::path(
    put,
    path = "/api/v1/desktop_groups",
    tag = "desktop groups",
    request_body = DesktopGroup,
    responses(
        (status = 200, description = "stored, and terminals told", body = Envelope<GroupStored>),
        (status = 400, description = "not a desktop group", body = Failure),
        (status = 401, description = "missing or wrong Bearer token", body = Failure),
        (status = 403, description = "a read-only token", body = Failure),
        (status = 422, description = "a layer cannot be delivered", body = Failure)
    ),
    security(("bearer" = []))
)]
async fn put_group(
    State(server): S,
    headers: HeaderMap,
    body: Result<Json<DesktopGroup>, axum::extract::rejection::JsonRejection>,
) -> Response {
    guard!(server, headers);
    // What serde found wrong, and where the shape is described: a guessed
    // body gets told which field to fix.
    let g = match body {
        Ok(Json(g)) => g,
        Err(e) => {
            return fail(
                StatusCode::BAD_REQUEST,
                ErrorCode::MessageError,
                format!(
                    "body must be a desktop group (schema DesktopGroup in /api/v1/openapi.json, example in the README): {}",
                    e.body_text()
                ),
            )
        }
    };
    if uuid::Uuid::parse_str(&g.desktop_group_uuid).is_err() {
        return fail(
            StatusCode::BAD_REQUEST,
            ErrorCode::MessageError,
            "desktop_group_uuid is not a uuid",
        );
    }
    let problems = undeliverable_layers(&server, &g);
    if !problems.is_empty() {
        return fail(
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::MessageError,
            format!(
                "group {} cannot be delivered: {}",
                g.desktop_group_uuid,
                problems.join("; ")
            ),
        );
    }
    // The server owns operate_id: each disk gets its layer's version in
    // the library, whatever number the client sent, and the answer names
    // every number it overrode.
    let mut g = g;
    match server.sync_layer_versions(Some(&mut g)) {
        Ok(sync) => {
            let told = server.tell_groups_changed();
            let ignored: Vec<Value> = sync
                .overridden
                .iter()
                .map(|o| {
                    json!({
                        "layer": o.layer, "sent": o.sent, "library": o.library,
                        "why": "operate_id is the layer's version in the image library; it changes only when the layer's content does"
                    })
                })
                .collect();
            ok(json!({
                "desktop_group_uuid": g.desktop_group_uuid,
                "told_terminals": told,
                "operate_id_ignored": ignored,
            }))
        }
        Err(e) => store_fail(e),
    }
}

/// Every layer a group names that the library cannot serve, with the
/// reason: a terminal given such a group would ask for it forever.
pub fn undeliverable_layers(server: &Server, g: &DesktopGroup) -> Vec<String> {
    g.disks
        .iter()
        .filter_map(
            |d| match crate::disk::name::LayerName::new(&d.prefix, d.dif_level, &d.uuid) {
                Err(e) => Some(format!("disk {:?} level {}: {e}", d.uuid, d.dif_level)),
                Ok(layer) => server.images.unservable(&layer.to_string()),
            },
        )
        .collect()
}

#[utoipa::path(
    delete,
    path = "/api/v1/desktop_groups/{uuid}",
    tag = "desktop groups",
    params(
        ("uuid" = String, Path, description = "the group's uuid")
    ),
    responses(
        (status = 200, description = "deleted, and terminals told", body = Envelope<GroupDeleted>),
        (status = 401, description = "missing or wrong Bearer token", body = Failure),
        (status = 403, description = "a read-only token", body = Failure),
        (status = 404, description = "no such group", body = Failure)
    ),
    security(("bearer" = []))
)]
async fn delete_group(State(server): S, headers: HeaderMap, Path(uuid): Path<String>) -> Response {
    guard!(server, headers);
    match server.store.delete_group(&uuid) {
        Ok(true) => {
            let told = server.tell_groups_changed();
            ok(json!({ "deleted": uuid, "told_terminals": told }))
        }
        Ok(false) => fail(
            StatusCode::NOT_FOUND,
            ErrorCode::TerminalDesktopNotExist,
            uuid,
        ),
        Err(e) => store_fail(e),
    }
}

#[utoipa::path(
    get,
    path = "/api/v1/order",
    tag = "numbering",
    responses(
        (status = 200, description = "the running numbering, if any", body = Envelope<OrderState>),
        (status = 401, description = "missing or wrong Bearer token", body = Failure)
    ),
    security(("bearer" = []))
)]
async fn order_show(State(server): S, headers: HeaderMap) -> Response {
    guard!(server, headers);
    match server.store.order() {
        Ok(o) => ok(json!({ "order": o })),
        Err(e) => store_fail(e),
    }
}

#[utoipa::path(
    post,
    path = "/api/v1/order",
    tag = "numbering",
    request_body = OrderStart,
    responses(
        (status = 200, description = "started", body = Envelope<OrderState>),
        (status = 400, description = "bad body", body = Failure),
        (status = 401, description = "missing or wrong Bearer token", body = Failure),
        (status = 403, description = "a read-only token", body = Failure)
    ),
    security(("bearer" = []))
)]
async fn order_start(
    State(server): S,
    headers: HeaderMap,
    body: Option<Json<OrderStart>>,
) -> Response {
    guard!(server, headers);
    let Some(Json(req)) = body else {
        return fail(
            StatusCode::BAD_REQUEST,
            ErrorCode::MessageError,
            "body must be {start_id, macs}",
        );
    };
    match order::start(&server, req.start_id, req.macs).await {
        Ok(s) => ok(json!({ "order": s })),
        Err(e) => push_fail(e),
    }
}

#[utoipa::path(
    delete,
    path = "/api/v1/order",
    tag = "numbering",
    responses(
        (status = 200, description = "cancelled", body = Envelope<OrderCancelled>),
        (status = 401, description = "missing or wrong Bearer token", body = Failure),
        (status = 403, description = "a read-only token", body = Failure)
    ),
    security(("bearer" = []))
)]
async fn order_cancel(State(server): S, headers: HeaderMap) -> Response {
    guard!(server, headers);
    match order::cancel(&server).await {
        Ok(s) => ok(json!({ "cancelled": s })),
        Err(e) => push_fail(e),
    }
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WakeRequest {
    #[serde(default)]
    pub macs: Vec<String>,
    /// A room: every terminal whose `room` is this.
    #[serde(default)]
    pub room: Option<String>,
    #[serde(default)]
    pub all: bool,
    #[serde(default)]
    pub timeout_secs: Option<u64>,
}

/// Sends the magic packets at once; the answer says by which routes.
/// `GET /api/v1/wake` then tells "online after N s" or "did not come up".
#[utoipa::path(
    post,
    path = "/api/v1/wake",
    tag = "power",
    request_body = WakeRequest,
    responses(
        (status = 200, description = "packets sent, by route", body = Envelope<WakeResults>),
        (status = 400, description = "bad body", body = Failure),
        (status = 401, description = "missing or wrong Bearer token", body = Failure),
        (status = 403, description = "a read-only token", body = Failure)
    ),
    security(("bearer" = []))
)]
async fn wake(State(server): S, headers: HeaderMap, body: Option<Json<WakeRequest>>) -> Response {
    guard!(server, headers);
    let Some(Json(req)) = body else {
        return fail(
            StatusCode::BAD_REQUEST,
            ErrorCode::MessageError,
            "body must be {macs: [..]} or {room: \"..\"} or {all: true}",
        );
    };
    use super::wake::Selection;
    let sel = match (req.macs.is_empty(), req.room, req.all) {
        (false, None, false) => Selection::Macs(req.macs),
        (true, Some(room), false) => Selection::Room(room),
        (true, None, true) => Selection::All,
        _ => {
            return fail(
                StatusCode::BAD_REQUEST,
                ErrorCode::MessageError,
                "give exactly one of macs, room or all",
            )
        }
    };
    let macs = match server.select_terminals(&sel) {
        Ok(m) => m,
        Err(e) => return push_fail(e),
    };
    let timeout = req
        .timeout_secs
        .unwrap_or(server.cfg.wake.timeout_secs)
        .clamp(1, 3600);
    let results = server.wake(&macs, timeout).await;
    ok(json!({ "results": results }))
}

#[derive(Debug, Default, Deserialize)]
struct WakeQuery {
    /// Comma-separated MACs; all wakes when absent.
    macs: Option<String>,
}

#[utoipa::path(
    get,
    path = "/api/v1/wake",
    tag = "power",
    params(
        ("macs" = Option<String>, Query, description = "comma-separated MACs; every wake when absent")
    ),
    responses(
        (status = 200, description = "how each wake went", body = Envelope<WakeResults>),
        (status = 401, description = "missing or wrong Bearer token", body = Failure)
    ),
    security(("bearer" = []))
)]
async fn wake_results(
    State(server): S,
    headers: HeaderMap,
    axum::extract::Query(q): axum::extract::Query<WakeQuery>,
) -> Response {
    guard!(server, headers);
    let macs: Vec<String> = q
        .macs
        .unwrap_or_default()
        .split(',')
        .filter_map(normalize_mac)
        .collect();
    ok(json!({ "results": server.wakes.results(&macs, super::registry::now_ms()) }))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct RoomRequest {
    room: String,
}

/// Puts a terminal in a room (empty: in none).
#[utoipa::path(
    put,
    path = "/api/v1/terminals/{mac}/room",
    tag = "terminals",
    request_body = RoomRequest,
    params(
        ("mac" = String, Path, description = "the terminal's MAC, any common notation")
    ),
    responses(
        (status = 200, description = "stored", body = Envelope<RoomSet>),
        (status = 400, description = "bad body or MAC", body = Failure),
        (status = 401, description = "missing or wrong Bearer token", body = Failure),
        (status = 403, description = "a read-only token", body = Failure),
        (status = 404, description = "no such terminal", body = Failure)
    ),
    security(("bearer" = []))
)]
async fn set_room(
    State(server): S,
    headers: HeaderMap,
    Path(mac): Path<String>,
    body: Option<Json<RoomRequest>>,
) -> Response {
    guard!(server, headers);
    let mac = match mac_param(&mac) {
        Ok(m) => m,
        Err(refused) => return *refused,
    };
    let Some(Json(RoomRequest { room })) = body else {
        return fail(
            StatusCode::BAD_REQUEST,
            ErrorCode::MessageError,
            "body must be {room}",
        );
    };
    let room = room.trim().to_string();
    if room.len() > 64 || room.chars().any(|c| c.is_control()) {
        return fail(
            StatusCode::BAD_REQUEST,
            ErrorCode::MessageError,
            "room must be at most 64 printable characters",
        );
    }
    match update_known_terminal(&server, &mac, |r| r.room = room.clone()) {
        Ok(_) => ok(json!({ "mac": mac, "room": room })),
        Err(refused) => *refused,
    }
}

/// Changes a terminal's record, which must exist: 404 when it does not
/// (an operator setting must not make a record for a MAC never seen).
fn update_known_terminal(
    server: &Server,
    mac: &str,
    f: impl FnOnce(&mut super::store::TerminalRecord),
) -> Result<super::store::TerminalRecord, Box<Response>> {
    match server.store.terminal(mac) {
        Ok(Some(_)) => {}
        Ok(None) => {
            return Err(Box::new(fail(
                StatusCode::NOT_FOUND,
                ErrorCode::TerminalRecordNotExist,
                mac,
            )))
        }
        Err(e) => return Err(Box::new(store_fail(e))),
    }
    server
        .store
        .update_terminal(mac, f)
        .map_err(|e| Box::new(store_fail(e)))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct MayUploadRequest {
    may_upload: bool,
}

/// Marks a terminal as one that may upload its desktop on its own (a
/// teacher's machine): its 9018 is then answered yes without an operator's
/// 1016/1020. What it uploads still waits for review.
#[utoipa::path(
    put,
    path = "/api/v1/terminals/{mac}/may_upload",
    tag = "terminals",
    request_body = MayUploadRequest,
    params(
        ("mac" = String, Path, description = "the terminal's MAC, any common notation")
    ),
    responses(
        (status = 200, description = "stored", body = Envelope<Value>),
        (status = 400, description = "bad body or MAC", body = Failure),
        (status = 401, description = "missing or wrong Bearer token", body = Failure),
        (status = 403, description = "a read-only token", body = Failure),
        (status = 404, description = "no such terminal", body = Failure)
    ),
    security(("bearer" = []))
)]
async fn set_may_upload(
    State(server): S,
    headers: HeaderMap,
    Path(mac): Path<String>,
    body: Option<Json<MayUploadRequest>>,
) -> Response {
    guard!(server, headers);
    let mac = match mac_param(&mac) {
        Ok(m) => m,
        Err(refused) => return *refused,
    };
    let Some(Json(MayUploadRequest { may_upload })) = body else {
        return fail(
            StatusCode::BAD_REQUEST,
            ErrorCode::MessageError,
            "body must be {may_upload: true|false}",
        );
    };
    match update_known_terminal(&server, &mac, |r| r.may_upload = may_upload) {
        Ok(_) => ok(json!({ "mac": mac, "may_upload": may_upload })),
        Err(refused) => *refused,
    }
}

/// Accepts an uploaded layer awaiting review: it is checked and moved into
/// the image library, which signs and seeds it.
#[utoipa::path(
    post,
    path = "/api/v1/uploads/{torrent_id}/accept",
    tag = "images",
    params(("torrent_id" = String, Path, description = "the upload's torrent id (GET /api/v1/images lists uploads)")),
    responses(
        (status = 200, description = "in the library", body = Envelope<Value>),
        (status = 401, description = "missing or wrong Bearer token", body = Failure),
        (status = 403, description = "a read-only token", body = Failure),
        (status = 409, description = "no such upload awaiting review, or its check failed", body = Failure)
    ),
    security(("bearer" = []))
)]
async fn accept_upload(
    State(server): S,
    headers: HeaderMap,
    Path(torrent_id): Path<String>,
) -> Response {
    review_upload(server, headers, torrent_id, true).await
}

/// Rejects an uploaded layer awaiting review: its bytes are deleted.
#[utoipa::path(
    post,
    path = "/api/v1/uploads/{torrent_id}/reject",
    tag = "images",
    params(("torrent_id" = String, Path, description = "the upload's torrent id")),
    responses(
        (status = 200, description = "deleted", body = Envelope<Value>),
        (status = 401, description = "missing or wrong Bearer token", body = Failure),
        (status = 403, description = "a read-only token", body = Failure),
        (status = 409, description = "no such upload awaiting review", body = Failure)
    ),
    security(("bearer" = []))
)]
async fn reject_upload(
    State(server): S,
    headers: HeaderMap,
    Path(torrent_id): Path<String>,
) -> Response {
    review_upload(server, headers, torrent_id, false).await
}

async fn review_upload(
    server: Arc<Server>,
    headers: HeaderMap,
    torrent_id: String,
    accept: bool,
) -> Response {
    guard!(server, headers);
    match server.images.review_upload(&torrent_id, accept).await {
        Ok(up) => ok(json!(up)),
        Err(e) => fail(StatusCode::CONFLICT, ErrorCode::MessageError, e),
    }
}

#[utoipa::path(
    get,
    path = "/api/v1/schedule",
    tag = "power",
    responses(
        (status = 200, description = "the class schedule and what it did", body = Envelope<Schedule>),
        (status = 401, description = "missing or wrong Bearer token", body = Failure)
    ),
    security(("bearer" = []))
)]
async fn schedule_show(State(server): S, headers: HeaderMap) -> Response {
    guard!(server, headers);
    match server.store.schedule() {
        Ok(entries) => ok(json!({
            "entries": entries,
            "runs": server.schedule_runs.runs(),
            "now": server.clock.now().format("%Y-%m-%d %H:%M:%S").to_string(),
        })),
        Err(e) => store_fail(e),
    }
}

/// Replaces the whole schedule; nothing is stored when an entry is wrong.
#[utoipa::path(
    put,
    path = "/api/v1/schedule",
    tag = "power",
    request_body = Vec<ScheduleEntry>,
    responses(
        (status = 200, description = "the whole schedule replaced", body = Envelope<ScheduleStored>),
        (status = 400, description = "an entry is wrong; nothing stored", body = Failure),
        (status = 401, description = "missing or wrong Bearer token", body = Failure),
        (status = 403, description = "a read-only token", body = Failure)
    ),
    security(("bearer" = []))
)]
async fn schedule_put(
    State(server): S,
    headers: HeaderMap,
    body: Result<
        Json<Vec<super::wake::schedule::ScheduleEntry>>,
        axum::extract::rejection::JsonRejection,
    >,
) -> Response {
    guard!(server, headers);
    let entries = match body {
        Ok(Json(e)) => e,
        Err(e) => {
            return fail(
                StatusCode::BAD_REQUEST,
                ErrorCode::MessageError,
                format!("body must be a list of schedule entries: {e}"),
            )
        }
    };
    match server.put_schedule(entries) {
        Ok(entries) => ok(json!({ "entries": entries })),
        Err(e) => push_fail(e),
    }
}

/// Packages, and which terminal runs which version.
#[utoipa::path(
    get,
    path = "/api/v1/upgrades",
    tag = "agent upgrades",
    responses(
        (status = 200, description = "packages, and who runs what", body = Envelope<UpgradeLibrary>),
        (status = 401, description = "missing or wrong Bearer token", body = Failure)
    ),
    security(("bearer" = []))
)]
async fn upgrades_list(State(server): S, headers: HeaderMap) -> Response {
    guard!(server, headers);
    let terminals = match server.store.terminals() {
        Ok(t) => t,
        Err(e) => return store_fail(e),
    };
    let online = server.registry.status(server.cfg.offline_after());
    let rows: Vec<Value> = terminals
        .iter()
        .map(|r| {
            let running = r
                .upgrade
                .as_ref()
                .map(|u| u.running.clone())
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| r.config.soft_version.clone());
            json!({
                "mac": r.config.mac,
                "name": r.config.name,
                "platform": r.config.platform,
                "version": running,
                "online": online.get(&r.config.mac).is_some_and(|o| o.0),
                "upgrade": r.upgrade,
            })
        })
        .collect();
    ok(json!({
        "packages": server.upgrades.list(),
        "release_key": server.upgrades.public_key(),
        "terminals": rows,
    }))
}

#[derive(Debug, Deserialize)]
struct PublishQuery {
    #[serde(default)]
    raw: bool,
}

/// The body is the agent binary; it is stamped with the version and signed.
#[utoipa::path(
    put,
    path = "/api/v1/upgrades/{platform}/{version}",
    tag = "agent upgrades",
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "the agent binary"),
    params(
        ("platform" = String, Path, description = "x86 or arm"),
        ("version" = String, Path, description = "the version it is stamped with"),
        ("raw" = Option<bool>, Query, description = "publish as it is, without stamping the version slot")
    ),
    responses(
        (status = 200, description = "signed and offered", body = Envelope<Published>),
        (status = 400, description = "not an agent binary, or a bad version", body = Failure),
        (status = 401, description = "missing or wrong Bearer token", body = Failure),
        (status = 403, description = "a read-only token", body = Failure),
        (status = 413, description = "over the package limit", body = Failure)
    ),
    security(("bearer" = []))
)]
async fn upgrades_publish(
    State(server): S,
    headers: HeaderMap,
    Path((platform, version)): Path<(String, String)>,
    axum::extract::Query(q): axum::extract::Query<PublishQuery>,
    body: axum::body::Bytes,
) -> Response {
    guard!(server, headers);
    let up = server.upgrades.clone();
    match tokio::task::spawn_blocking(move || up.publish(&body, &platform, &version, q.raw)).await {
        Ok(Ok(m)) => ok(json!({ "manifest": m })),
        Ok(Err(e)) => fail(StatusCode::BAD_REQUEST, ErrorCode::MessageError, e),
        Err(e) => fail(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::SystemError,
            e.to_string(),
        ),
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct UpgradePush {
    #[serde(default)]
    macs: Vec<String>,
    #[serde(default)]
    all: bool,
    version: String,
    #[serde(default)]
    force: bool,
}

/// 1030 to each terminal; the answer has each one's reply.
#[utoipa::path(
    post,
    path = "/api/v1/upgrades/push",
    tag = "agent upgrades",
    request_body = UpgradePush,
    responses(
        (status = 200, description = "1030 sent; each terminal's answer", body = Envelope<UpgradeResults>),
        (status = 400, description = "bad body", body = Failure),
        (status = 401, description = "missing or wrong Bearer token", body = Failure),
        (status = 403, description = "a read-only token", body = Failure)
    ),
    security(("bearer" = []))
)]
async fn upgrades_push(
    State(server): S,
    headers: HeaderMap,
    body: Option<Json<UpgradePush>>,
) -> Response {
    guard!(server, headers);
    let Some(Json(req)) = body else {
        return fail(
            StatusCode::BAD_REQUEST,
            ErrorCode::MessageError,
            "body must be {macs: [..] | all: true, version, force?}",
        );
    };
    let macs = match (req.macs.is_empty(), req.all) {
        (false, false) => req
            .macs
            .iter()
            .filter_map(|m| normalize_mac(m))
            .collect::<Vec<_>>(),
        (true, true) => server.registry.macs(),
        _ => {
            return fail(
                StatusCode::BAD_REQUEST,
                ErrorCode::MessageError,
                "give macs or all",
            )
        }
    };
    let mut results = Vec::new();
    for mac in macs {
        let r = server.upgrade_terminal(&mac, &req.version, req.force).await;
        results.push(match r {
            Ok((_, env)) if env.is_ok() => json!({"mac": mac, "ok": true, "text": format!("installing {}", req.version)}),
            Ok((_, env)) => json!({"mac": mac, "ok": false, "text": format!("refused: {} {}", env.code, env.msg)}),
            Err(PushError::NoReply(_, why)) => json!({"mac": mac, "ok": true, "text": why}),
            Err(e) => json!({"mac": mac, "ok": false, "text": e.to_string()}),
        });
    }
    ok(json!({ "results": results }))
}

/// The operator API, described from its handlers and body types.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "voi-server operator API",
        description = "Every JSON answer but /healthz and /readyz is the `{code, msg, data}` envelope: code 0 and `data` on success, an error code and a message otherwise. Send the operator token as `Authorization: Bearer <token>`.",
        license(name = "MIT OR Apache-2.0")
    ),
    paths(
        terminals, terminal, forget_terminal, push, set_admission, set_delivery,
        download_desktop, set_room, set_may_upload, accept_upload, reject_upload,
        images, rescan_images, groups, put_group,
        delete_group, order_show, order_start, order_cancel, events, wake,
        wake_results, schedule_show, schedule_put, audit_list, metrics, healthz,
        readyz, version, openapi_json, upgrades_list, upgrades_push, upgrades_publish,
        super::console::page, super::console::script, super::console::style,
    ),
    modifiers(&BearerToken)
)]
pub struct ApiDoc;

struct BearerToken;

impl utoipa::Modify for BearerToken {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        doc.components
            .get_or_insert_with(Default::default)
            .add_security_scheme(
                "bearer",
                SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
            );
        doc.info.version = env!("CARGO_PKG_VERSION").into();
    }
}

/// The description as JSON (OpenAPI 3.1).
pub fn openapi() -> utoipa::openapi::OpenApi {
    <ApiDoc as utoipa::OpenApi>::openapi()
}

#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    tag = "health",
    responses((status = 200, description = "this description, OpenAPI 3.1", body = Object))
)]
async fn openapi_json() -> Response {
    static DOC: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let text = DOC.get_or_init(|| openapi().to_json().unwrap_or_default());
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        text.as_str(),
    )
        .into_response()
}

/// The process is alive and serving (no token: a probe's).
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "health",
    responses(
        (status = 200, description = "the process is alive", body = Health)
    )
)]
async fn healthz() -> Response {
    (StatusCode::OK, Json(json!({ "status": "ok" }))).into_response()
}

/// Ready: the store answers, the listeners are up (this one answers), and
/// the image library has been read (at start, before any listener).
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "health",
    responses(
        (status = 200, description = "ready", body = Health),
        (status = 503, description = "not ready, and why", body = Health)
    )
)]
async fn readyz(State(server): S) -> Response {
    let mut problems = Vec::new();
    if let Err(e) = server.store.order() {
        problems.push(format!("store: {e}"));
    }
    if !server.images.dir().is_dir() {
        problems.push(format!(
            "image library {} is gone",
            server.images.dir().display()
        ));
    }
    if server.shutdown.is_cancelled() {
        problems.push("stopping".into());
    }
    if problems.is_empty() {
        (StatusCode::OK, Json(json!({ "status": "ready" }))).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "not ready", "problems": problems })),
        )
            .into_response()
    }
}

#[utoipa::path(
    get,
    path = "/api/v1/version",
    tag = "health",
    responses(
        (status = 200, description = "this server's version", body = Envelope<Version>)
    )
)]
async fn version() -> Response {
    ok(json!({
        "name": "voi-server",
        "version": env!("CARGO_PKG_VERSION"),
        "commit": env!("VOI_COMMIT"),
    }))
}

/// Prometheus text exposition; the API's token unless `metrics_public`.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "health",
    responses(
        (status = 200, description = "Prometheus text exposition", body = String, content_type = "text/plain; version=0.0.4"),
        (status = 401, description = "the token is needed unless metrics_public", body = Failure)
    ),
    security(("bearer" = []))
)]
async fn metrics(State(server): S, headers: HeaderMap) -> Response {
    if !server.cfg.metrics_public {
        guard!(server, headers);
    }
    let s = server.clone();
    match tokio::task::spawn_blocking(move || super::scrape::render(&s)).await {
        Ok(text) => (
            [(
                axum::http::header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => fail(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::SystemError,
            e.to_string(),
        ),
    }
}
