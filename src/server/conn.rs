//! One terminal connection on the server side.

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::codec::{FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;

use super::admission::{self, AtLogin};
use super::conn_shares::Share;
use super::conn_state::ConnState;
use super::handlers;
use super::registry::{Online, ServerEvent};
use super::service::Server;
use crate::protocol::messages::{LoginReq, LoginResp};
use crate::protocol::{
    normalize_mac, token_for, BatchNo, ClientType, Envelope, ErrorCode, Frame, FrameCodec,
    ServiceCode,
};

/// Accepts one terminal connection: TLS first when the server has it on.
pub async fn accept(
    server: Arc<Server>,
    stream: TcpStream,
    peer: SocketAddr,
    id: u64,
    unauthenticated: Option<Share>,
) {
    let _ = stream.set_nodelay(true);
    server.metrics.sessions_opened.inc();
    struct Closed(Arc<Server>);
    impl Drop for Closed {
        fn drop(&mut self) {
            self.0.metrics.sessions_closed.inc();
        }
    }
    let _closed = Closed(server.clone());
    let local = stream.local_addr().ok();
    let Some(tls) = server.tls.clone() else {
        return run(server, stream, peer, local, id, None, unauthenticated).await;
    };
    // A bounded handshake: a peer that opens the port and says nothing
    // (or speaks plain frames to a TLS port) is dropped, not kept.
    match tokio::time::timeout(crate::tls::TLS_HANDSHAKE, tls.accept(stream)).await {
        Ok(Ok(s)) => {
            // Under mutual TLS the handshake already checked the chain and
            // dates; the certificate must also name one MAC.
            let cert_mac = match s.get_ref().1.peer_certificates() {
                Some([cert, ..]) => match crate::tls::certificate_mac(cert) {
                    Ok(mac) => Some(mac),
                    Err(e) => {
                        log::warn!("{peer}: client certificate refused: {e}");
                        return;
                    }
                },
                _ => None,
            };
            run(server, s, peer, local, id, cert_mac, unauthenticated).await
        }
        Ok(Err(e)) => log::warn!("{peer}: TLS handshake failed: {e}"),
        Err(_) => log::warn!("{peer}: TLS handshake timed out"),
    }
}

pub async fn run(
    server: Arc<Server>,
    stream: impl crate::tls::Stream,
    peer: SocketAddr,
    local: Option<SocketAddr>,
    id: u64,
    cert_mac: Option<String>,
    unauthenticated: Option<Share>,
) {
    let (rd, wr) = tokio::io::split(stream);
    let limits = &server.cfg.limits;
    // Before login a frame is a login: small. The body limit rises with it.
    let mut reader = FramedRead::new(
        rd,
        FrameCodec::new(server.cfg.max_body.min(limits.max_body_before_login)),
    );
    let mut writer = FramedWrite::new(wr, FrameCodec::new(server.cfg.max_body));
    let (tx, mut rx) = mpsc::channel::<Frame>(64);
    let close = CancellationToken::new();

    let writer_close = close.clone();
    let writer_task = tokio::spawn(async move {
        loop {
            tokio::select! {
                f = rx.recv() => match f {
                    Some(f) => if let Err(e) = writer.send(f).await {
                        log::debug!("write to {peer}: {e}");
                        break;
                    },
                    None => break,
                },
                _ = writer_close.cancelled() => break,
            }
        }
    });

    let mut st = ConnState {
        id,
        peer,
        local,
        token: token_for(&peer),
        mac: None,
        cert_mac,
        standing: Default::default(),
        unauthenticated,
    };
    let idle = Duration::from_secs(server.cfg.idle_close_secs);
    // A socket must log in by then, whatever it sends meanwhile: answers to
    // bad frames are not activity.
    let login_by = Instant::now() + limits.login_deadline();
    let mut raised = false;
    let reason = loop {
        let wait = if st.mac.is_some() {
            idle
        } else {
            match login_by.checked_duration_since(Instant::now()) {
                Some(left) if !left.is_zero() => left.min(idle),
                _ => break format!("no login within {:?}", limits.login_deadline()),
            }
        };
        // Before login, a newer socket from the same address (or, at the
        // cap, from the biggest holder) can take this one's place.
        let displaced = st.unauthenticated.as_ref().map(Share::displaced);
        let next = tokio::select! {
            n = tokio::time::timeout(wait, reader.next()) => n,
            _ = close.cancelled() => break "closed by server".to_string(),
            _ = async {
                match &displaced {
                    Some(d) => d.cancelled().await,
                    None => std::future::pending().await,
                }
            } => break "displaced before login by newer connections from its address".to_string(),
            _ = server.shutdown.cancelled() => break "server shutting down".to_string(),
        };
        let frame = match next {
            Err(_) if st.mac.is_none() => {
                break format!("no login within {:?}", limits.login_deadline())
            }
            Err(_) => break format!("silent for {idle:?}"),
            Ok(None) => break "peer closed".to_string(),
            Ok(Some(Err(e))) => {
                log::warn!("{peer}: closing connection: {e}");
                break e.to_string();
            }
            Ok(Some(Ok(f))) => f,
        };
        if let Some(mac) = &st.mac {
            server.registry.with(mac, |o| {
                if o.conn_id == id {
                    o.last_seen = Instant::now();
                }
            });
        }
        let flow = on_frame(&server, &mut st, &tx, &close, frame).await;
        if st.mac.is_some() && !raised {
            reader.decoder_mut().set_max_body(server.cfg.max_body);
            raised = true;
        }
        match flow {
            Flow::Continue => {}
            Flow::Close(why) => {
                // Let the last answer reach the peer before closing.
                tokio::time::sleep(Duration::from_millis(50)).await;
                break why;
            }
        }
    };
    close.cancel();
    drop(tx);
    let _ = writer_task.await;
    if let Some(mac) = st.mac {
        if server.registry.unbind(&mac, id) {
            server
                .registry
                .emit(ServerEvent::Disconnected { mac, reason });
        }
    } else {
        log::debug!("{peer}: connection ended before login: {reason}");
    }
}

enum Flow {
    Continue,
    Close(String),
}

async fn answer(tx: &mpsc::Sender<Frame>, req: &Frame, token: &str, env: &Envelope<Value>) {
    match Frame::response_json(
        req,
        ClientType::Server,
        &token.as_bytes().to_vec().into(),
        env,
    ) {
        Ok(f) => {
            let _ = tx.send(f).await;
        }
        Err(e) => log::error!("cannot encode answer: {e}"),
    }
}

async fn on_frame(
    server: &Arc<Server>,
    st: &mut ConnState,
    tx: &mpsc::Sender<Frame>,
    close: &CancellationToken,
    frame: Frame,
) -> Flow {
    let code = frame.service();

    // A terminal's reply to one of our commands: match it, answer nothing.
    if frame.is_response() {
        if frame.token_str() != st.token || st.mac.is_none() {
            log::warn!("{}: reply with a wrong or missing token dropped", st.peer);
            return Flow::Continue;
        }
        on_command_reply(server, st, &frame);
        return Flow::Continue;
    }

    if code == Some(ServiceCode::TerminalLogin) {
        return login(server, st, tx, close, &frame).await;
    }
    if frame.token.is_empty() || frame.token_str() != st.token {
        // The vendor server echoes the token it got, so the terminal can
        // tell which of its requests was refused.
        let env: Envelope<Value> = Envelope::error(ErrorCode::TerminalTokenError, "");
        match Frame::response_json(&frame, ClientType::Server, &frame.token, &env) {
            Ok(f) => {
                let _ = tx.send(f).await;
            }
            Err(e) => log::error!("cannot encode answer: {e}"),
        }
        return Flow::Continue;
    }
    let Some(mac) = st.mac.clone() else {
        // Right token for this socket but no login on it: the original
        // server answers 60002 and closes.
        answer(
            tx,
            &frame,
            &st.token,
            &Envelope::error(ErrorCode::TerminalNotLogin, ""),
        )
        .await;
        return Flow::Close("request before login".into());
    };
    let Some(code) = code.filter(|c| !c.is_command()) else {
        let env = Envelope::error(
            ErrorCode::MessageError,
            format!("unknown service code {}", frame.service_code),
        );
        answer(tx, &frame, &st.token, &env).await;
        return Flow::Continue;
    };
    let env = if admission::may_request(st.standing, code) {
        handlers::handle(server, st, &mac, code, &frame).await
    } else {
        Envelope::error(ErrorCode::TerminalLoginFail, admission::PENDING)
    };
    if code == ServiceCode::Heartbeat {
        let back_online = server
            .registry
            .with(&mac, |o| {
                o.last_heartbeat = Instant::now();
                std::mem::replace(&mut o.offline_reported, false)
            })
            .unwrap_or(false);
        if back_online {
            log::info!("{mac} is back online");
        }
        server
            .registry
            .emit(ServerEvent::Heartbeat { mac: mac.clone() });
    } else {
        server.registry.emit(ServerEvent::Request {
            mac: mac.clone(),
            service: code.name().into(),
            code: env.code,
        });
    }
    answer(tx, &frame, &st.token, &env).await;
    if code == ServiceCode::TerminalLogout && env.is_ok() {
        // Logged out, but the socket stays: the vendor server keeps it and
        // answers the heartbeats that still come on it. The terminal is
        // offline to the operator until it logs in again.
        if server.registry.unbind(&mac, st.id) {
            server.registry.emit(ServerEvent::Disconnected {
                mac,
                reason: "logout".into(),
            });
        }
    }
    Flow::Continue
}

async fn login(
    server: &Arc<Server>,
    st: &mut ConnState,
    tx: &mpsc::Sender<Frame>,
    close: &CancellationToken,
    frame: &Frame,
) -> Flow {
    let req: LoginReq = match frame.json() {
        Ok(r) => r,
        Err(e) => {
            let env = Envelope::error(ErrorCode::MessageError, format!("bad login body: {e}"));
            answer(tx, frame, "", &env).await;
            return Flow::Continue;
        }
    };
    let Some(mac) = normalize_mac(&req.mac) else {
        answer(
            tx,
            frame,
            "",
            &Envelope::error(ErrorCode::TerminalMacError, format!("{:?}", req.mac)),
        )
        .await;
        return Flow::Continue;
    };
    // The address the terminal says it has is stored, shown and logged: an
    // IPv4 address or nothing (then the socket's is taken), never free
    // text (issue 38.10: a newline in it forged log lines).
    let ip = req.ip.trim();
    if !ip.is_empty() && ip.parse::<std::net::Ipv4Addr>().is_err() {
        let env = Envelope::error(
            ErrorCode::MessageError,
            format!(
                "ip {:?} is not an IPv4 address",
                crate::cli_support::escape_controls(&ip.chars().take(64).collect::<String>())
            ),
        );
        answer(tx, frame, "", &env).await;
        return Flow::Continue;
    }
    if let Some(prev) = &st.mac {
        if prev != &mac {
            let env = Envelope::error(
                ErrorCode::TerminalRepeatLogin,
                format!("this connection is {prev}"),
            );
            answer(tx, frame, &st.token, &env).await;
            return Flow::Continue;
        }
    }
    if let Some(cert_mac) = st.cert_mac.as_ref().filter(|c| **c != mac) {
        let why = format!("its client certificate is for {cert_mac}, not {mac}");
        return refuse_login(server, st, tx, frame, mac, why).await;
    }
    let known = match server.store.terminal(&mac) {
        Ok(r) => r.map(|r| r.admission),
        Err(e) => {
            log::error!("login of {mac}: {e}");
            let env = Envelope::error(ErrorCode::TerminalLoginFail, e.to_string());
            answer(tx, frame, "", &env).await;
            return Flow::Continue;
        }
    };
    let standing = match admission::at_login(server.cfg.admission, known) {
        AtLogin::Admit(s) => s,
        AtLogin::Refuse(why) => return refuse_login(server, st, tx, frame, mac, why).await,
    };
    // Global: made-up MACs cannot multiply the per-terminal bounds past
    // the records kept (issue 38.7); known terminals keep logging in.
    if known.is_none() {
        let cap = server.cfg.limits.max_terminal_records;
        if server.store.terminal_count().unwrap_or(0) >= cap {
            super::handlers::global_bound_reached(server, "max_terminal_records", &mac);
            let why = format!(
                "the server keeps {cap} terminal records and takes no new MAC ([limits] max_terminal_records); forget retired terminals or raise it"
            );
            return refuse_login(server, st, tx, frame, mac, why).await;
        }
    }
    // A MAC never seen that would wait for admission makes a record: past
    // the cap, made-up MACs make none.
    if known.is_none() && standing == admission::Admission::Pending {
        let cap = server.cfg.limits.max_pending;
        if super::limits::Slot::take(&server.counters.pending, cap)
            .map(std::mem::forget)
            .is_none()
        {
            let why = format!(
                "{cap} terminals already wait for an operator's decision ([limits] max_pending); accept or reject some first"
            );
            return refuse_login(server, st, tx, frame, mac, why).await;
        }
    }
    let ip = if req.ip.trim().is_empty() {
        st.peer.ip().to_string()
    } else {
        req.ip.trim().to_string()
    };
    let now = chrono::Local::now().to_rfc3339();
    let stored = server.store.update_terminal_reported(&mac, |r| {
        r.config.ip = ip.clone();
        r.client_type = frame.client_type;
        r.last_login = now;
        r.admission = standing;
    });
    if let Err(e) = stored {
        log::error!("login of {mac}: {e}");
        answer(
            tx,
            frame,
            "",
            &Envelope::error(ErrorCode::TerminalLoginFail, e.to_string()),
        )
        .await;
        return Flow::Continue;
    }
    let instant = Instant::now();
    server.registry.bind(
        &mac,
        Online {
            conn_id: st.id,
            tx: tx.clone(),
            token: st.token.clone(),
            ip: ip.clone(),
            peer_ip: st.peer.ip(),
            local: st.local,
            client_type: frame.client_type,
            since: instant,
            last_heartbeat: instant,
            last_seen: instant,
            offline_reported: false,
            close: close.clone(),
        },
        server.cfg.offline_after(),
    );
    st.mac = Some(mac.clone());
    st.standing = standing;
    st.unauthenticated = None;
    if standing == admission::Admission::Pending {
        log::warn!("{mac} ({ip}) logged in and waits for an operator to accept it");
    }
    let env = Envelope::ok(
        serde_json::to_value(LoginResp {
            token: st.token.clone(),
            datetime: chrono::Local::now().format("%Y-%m-%d %H:%M:%S").to_string(),
        })
        .unwrap_or(Value::Null),
    );
    // The token goes in the header too: that is where terminals read it.
    answer(tx, frame, &st.token, &env).await;
    server.metrics.logins.inc();
    server.wakes.logged_in(&mac, super::registry::now_ms());
    server.registry.emit(ServerEvent::Login {
        mac,
        ip,
        client_type: frame.client_type,
    });
    Flow::Continue
}

/// Refuses a login with the documented 60001 and closes: nothing about
/// the terminal is stored, so a stream of made-up MACs grows nothing.
async fn refuse_login(
    server: &Arc<Server>,
    st: &ConnState,
    tx: &mpsc::Sender<Frame>,
    frame: &Frame,
    mac: String,
    why: String,
) -> Flow {
    log::warn!("{}: login as {mac} refused: {why}", st.peer);
    server.metrics.rejected(&why);
    let env = Envelope::error(ErrorCode::TerminalLoginFail, why.clone());
    answer(tx, frame, "", &env).await;
    server.registry.emit(ServerEvent::Refused {
        mac,
        reason: why.clone(),
    });
    Flow::Close(why)
}

fn on_command_reply(server: &Arc<Server>, st: &ConnState, frame: &Frame) {
    let env: Envelope<Value> = match frame.json() {
        Ok(e) => e,
        Err(e) => {
            log::warn!(
                "{}: unreadable reply to {}: {e}",
                st.peer,
                frame.service_code
            );
            return;
        }
    };
    let data = env.data.clone().unwrap_or(Value::Null);
    let mac = data
        .get("mac")
        .and_then(|m| m.as_str())
        .and_then(normalize_mac)
        .or_else(|| st.mac.clone())
        .unwrap_or_default();
    if Some(&mac) != st.mac.as_ref() {
        log::warn!(
            "{}: reply names mac {mac} but the session is {:?}; dropped",
            st.peer,
            st.mac
        );
        return;
    }
    let batch = data
        .get("batch_no")
        .and_then(|b| serde_json::from_value::<BatchNo>(b.clone()).ok())
        .unwrap_or_default();
    let command = ServiceCode::from_u32(frame.service_code)
        .map(|c| c.name().to_string())
        .unwrap_or_else(|| frame.service_code.to_string());
    server.registry.emit(ServerEvent::CommandReply {
        mac: mac.clone(),
        command,
        batch_no: batch.clone(),
        code: env.code,
        msg: env.msg.clone(),
    });
    if !server
        .registry
        .complete(frame.service_code, &mac, &batch, env)
    {
        log::debug!(
            "reply {} batch {batch} from {mac} had no waiter",
            frame.service_code
        );
    }
}
