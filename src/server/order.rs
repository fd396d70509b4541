//! Terminal numbering (1011 order, 9009 order_confirm, 9010 order_query),
//! as the original server runs it (notes §3).

use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;

use super::registry::ServerEvent;
use super::service::{PushError, Server};
use super::store::OrderSession;
use crate::protocol::messages::OrderConfirmReq;
use crate::protocol::{BatchNo, Envelope, ErrorCode, ServiceCode};

/// Starts numbering at `start_id` for `macs` (all connected terminals when
/// empty) and proposes `start_id` to each of them.
pub async fn start(
    server: &Arc<Server>,
    start_id: i64,
    macs: Vec<String>,
) -> Result<OrderSession, PushError> {
    if start_id < 0 {
        return Err(PushError::Bad("start_id must be 0 or more".into()));
    }
    let mut macs: Vec<String> = if macs.is_empty() {
        server.registry.macs()
    } else {
        macs.iter()
            .map(|m| {
                crate::protocol::normalize_mac(m)
                    .ok_or_else(|| PushError::Bad(format!("{m:?} is not a MAC")))
            })
            .collect::<Result<_, _>>()?
    };
    macs.sort();
    macs.dedup();
    // R >= 2.25 has no numbering (it never answers 1011 nor confirms): a
    // session waiting for it would never close.
    // Nor does a terminal the operator has not accepted take a number.
    let mut skipped = Vec::new();
    let mut not_admitted = Vec::new();
    macs.retain(|m| {
        let rec = server.store.terminal(m).ok().flatten();
        if rec
            .as_ref()
            .is_some_and(|r| r.admission != crate::server::admission::Admission::Accepted)
        {
            not_admitted.push(m.clone());
            return false;
        }
        let numbered = rec
            .map(|r| r.generation())
            .is_none_or(|g| g.answers(ServiceCode::Order));
        if !numbered {
            skipped.push(m.clone());
        }
        numbered
    });
    if !skipped.is_empty() {
        log::info!(
            "numbering leaves out {}: their software does not answer order",
            skipped.join(", ")
        );
    }
    if !not_admitted.is_empty() {
        log::info!(
            "numbering leaves out {}: not accepted by an operator",
            not_admitted.join(", ")
        );
    }
    if macs.is_empty() && !not_admitted.is_empty() && skipped.is_empty() {
        return Err(PushError::Bad(format!(
            "no terminal to number: {} not accepted by an operator",
            not_admitted.join(", ")
        )));
    }
    if macs.is_empty() {
        return Err(PushError::Bad(if skipped.is_empty() {
            "no terminal to number".into()
        } else {
            format!(
                "no terminal to number: the software of {} does not answer order",
                skipped.join(", ")
            )
        }));
    }
    let session = OrderSession {
        batch_no: BatchNo::Int(server.store.next_batch_no()?),
        start_id,
        current_id: start_id,
        macs,
        confirmed: BTreeMap::new(),
    };
    let s = session.clone();
    server.store.modify_order(|o| *o = Some(s))?;
    server.registry.emit(ServerEvent::Order);
    propose(server, &session, &session.macs, start_id).await;
    Ok(session)
}

/// Ends numbering: every terminal of the session gets `terminal_id = -1`.
pub async fn cancel(server: &Arc<Server>) -> Result<Option<OrderSession>, PushError> {
    let session = server.store.modify_order(|o| o.take())?;
    server.registry.emit(ServerEvent::Order);
    if let Some(s) = &session {
        propose(server, s, &s.macs, -1).await;
    }
    Ok(session)
}

/// Sends 1011 to each MAC; replies to `order` are not awaited (the original
/// server ignores them), offline terminals learn the state from 9010.
async fn propose(server: &Arc<Server>, session: &OrderSession, macs: &[String], terminal_id: i64) {
    for mac in macs {
        let params = json!({ "batch_no": session.batch_no, "terminal_id": terminal_id });
        if let Err(e) = server.send_command(mac, ServiceCode::Order, params).await {
            log::info!("order: {mac}: {e}");
        }
    }
}

pub async fn confirm(server: &Arc<Server>, mac: &str, req: &OrderConfirmReq) -> Envelope<Value> {
    let result = server.store.modify_order(|o| {
        let Some(s) = o.as_mut() else {
            return Err(Envelope::error(
                ErrorCode::TerminalOrderMacError,
                "no numbering session is running",
            ));
        };
        if !s.macs.iter().any(|m| m == mac) || req.batch_no.as_int() != s.batch_no.as_int() {
            return Err(Envelope::error(ErrorCode::TerminalOrderMacError, ""));
        }
        if req.terminal_id < s.start_id {
            return Err(Envelope::error(
                ErrorCode::TerminalOrderIdLittleStartId,
                format!("{} < {}", req.terminal_id, s.start_id),
            ));
        }
        if s.confirmed
            .iter()
            .any(|(m, id)| *id == req.terminal_id && m != mac)
        {
            return Err(Envelope::error(
                ErrorCode::TerminalAlreadyOrdered,
                req.terminal_id.to_string(),
            ));
        }
        s.confirmed.insert(mac.to_string(), req.terminal_id);
        s.current_id = s.next_free();
        let snapshot = s.clone();
        if s.unconfirmed().is_empty() {
            *o = None;
        }
        Ok(snapshot)
    });
    let session = match result {
        Ok(Ok(s)) => s,
        Ok(Err(env)) => return env,
        Err(e) => return Envelope::error(ErrorCode::SystemError, e.to_string()),
    };
    if let Err(e) = server.store.update_terminal(mac, |r| {
        r.config.terminal_id = req.terminal_id;
        r.config.conf_version += 1;
    }) {
        return Envelope::error(ErrorCode::SystemError, e.to_string());
    }
    // The next number goes only to those still without one, as the vendor
    // server does; a terminal that confirmed left its numbering screen, and
    // once everyone has a number nothing more is sent.
    server.registry.emit(ServerEvent::Order);
    let rest = session.unconfirmed();
    if !rest.is_empty() {
        let server = server.clone();
        tokio::spawn(async move {
            propose(&server, &session, &rest, session.current_id).await;
        });
    }
    Envelope::success()
}
