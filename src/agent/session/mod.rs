//! The agent's side of one logged-in session. See `STATE.md` beside this
//! file for the state machine.

pub mod backoff;
pub mod connection;
pub mod end;
mod startup;

pub use connection::{Link, LinkEnd, RequestError};
pub use end::SessionEnd;

use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::agent::terminal::Agent;
use crate::protocol::messages::HeartbeatReq;
use crate::protocol::{ClientType, Frame, ServiceCode};
use crate::tls::TLS_HANDSHAKE;

/// What the session does with the server's commands (1xxx frames): it hands
/// them over in arrival order and never looks inside. The agent's
/// `commands::Dispatcher` is the one implementation.
pub trait CommandHandler: Send + Sync + 'static {
    /// Applies `frames` until the channel closes (the connection ended). A
    /// command that needs a new session says so on `end`.
    fn serve(
        &self,
        link: Link,
        frames: mpsc::Receiver<Frame>,
        end: mpsc::Sender<SessionEnd>,
    ) -> futures_util::future::BoxFuture<'static, ()>;
}

/// Runs one session on a connected stream until it ends.
pub async fn run(
    agent: Arc<Agent>,
    stream: TcpStream,
    commands: Arc<dyn CommandHandler>,
) -> SessionEnd {
    let _ = stream.set_nodelay(true);
    let local_ip = stream
        .local_addr()
        .map(|a| a.ip().to_string())
        .unwrap_or_default();
    if !agent.cfg.tls.enabled {
        return run_on(agent, stream, &local_ip, commands).await;
    }
    // Built per connection: the server address may have moved (1005).
    let connector = match crate::tls::Connector::new(&agent.cfg.tls, &agent.server_ip()) {
        Ok(c) => c,
        Err(e) => return SessionEnd::Link(LinkEnd::Protocol(format!("TLS: {e}"))),
    };
    match tokio::time::timeout(TLS_HANDSHAKE, connector.connect(stream)).await {
        Ok(Ok(tls)) => run_on(agent, tls, &local_ip, commands).await,
        Ok(Err(e)) => SessionEnd::Link(LinkEnd::Protocol(format!("TLS handshake: {e}"))),
        Err(_) => SessionEnd::Link(LinkEnd::Protocol(format!(
            "TLS handshake: no answer within {TLS_HANDSHAKE:?}"
        ))),
    }
}

async fn run_on(
    agent: Arc<Agent>,
    stream: impl crate::tls::Stream,
    local_ip: &str,
    commands: Arc<dyn CommandHandler>,
) -> SessionEnd {
    let client_type = ClientType::from_u8(agent.cfg.client_type).unwrap_or(ClientType::Linux);
    let spawned = Link::spawn(
        stream,
        local_ip,
        client_type,
        Duration::from_secs(agent.cfg.request_timeout_secs),
        crate::protocol::codec::DEFAULT_MAX_BODY,
    );
    let link = spawned.link;
    let mut ended = spawned.ended;
    let (end_tx, mut end_rx) = mpsc::channel::<SessionEnd>(4);

    let startup = async {
        startup::login(&agent, &link).await?;
        agent.set_link(Some(link.clone()));
        startup::sequence(&agent, &link).await
    };
    let res = tokio::select! {
        r = startup => r,
        e = &mut ended => Err(SessionEnd::Link(e.unwrap_or(LinkEnd::Eof))),
        _ = agent.shutdown.cancelled() => Err(SessionEnd::Shutdown),
    };
    if let Err(end) = res {
        agent.set_link(None);
        link.close();
        return end;
    }

    // Commands run one at a time, in their own task, so a slow command never
    // delays a heartbeat.
    let worker = tokio::spawn(commands.serve(link.clone(), spawned.commands, end_tx.clone()));

    let hb_every = Duration::from_secs(agent.cfg.heartbeat_secs);
    let mut hb = tokio::time::interval(hb_every);
    hb.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (hb_tx, mut hb_rx) = mpsc::channel::<bool>(4);
    let mut missed = 0u32;
    let perf_every = agent.cfg.performance_secs;
    let mut perf = tokio::time::interval(Duration::from_secs(perf_every.max(1)));
    perf.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    // A change of the desktop's state goes out at once, in a heartbeat
    // (ours: its optional `desktop`), not at the next tick.
    let mut desktop_changes = agent.desktop.watch_changes();
    let end = loop {
        let beat = tokio::select! {
            _ = hb.tick() => true,
            Ok(()) = desktop_changes.changed() => true,
            Some(ok) = hb_rx.recv() => {
                if ok {
                    missed = 0;
                } else {
                    missed += 1;
                    if missed >= 2 {
                        break SessionEnd::MissedHeartbeats(missed);
                    }
                }
                false
            }
            _ = perf.tick(), if perf_every > 0 => {
                let link = link.clone();
                let mac = agent.mac.clone();
                tokio::spawn(async move {
                    let Ok(body) = tokio::task::spawn_blocking(move || crate::agent::performance_report::report(&mac)).await else {
                        return;
                    };
                    if let Err(e) = link.request(ServiceCode::UpdatePerformance, &body).await {
                        log::debug!("update_performance: {e}");
                    }
                });
                false
            }
            Some(end) = end_rx.recv() => break end,
            e = &mut ended => break SessionEnd::Link(e.unwrap_or(LinkEnd::Eof)),
            _ = agent.shutdown.cancelled() => break SessionEnd::Shutdown,
        };
        if beat {
            let link = link.clone();
            let agent = agent.clone();
            let hb_tx = hb_tx.clone();
            let body = HeartbeatReq {
                mac: agent.mac.clone(),
                desktop: Some(agent.desktop.report()),
            };
            tokio::spawn(async move {
                let ok = match link
                    .request_frame(ServiceCode::Heartbeat, &body, Some(hb_every))
                    .await
                {
                    Ok(frame) => {
                        agent.heartbeat_answered(&frame);
                        true
                    }
                    Err(e) => {
                        log::warn!("heartbeat: {e}");
                        false
                    }
                };
                let _ = hb_tx.send(ok).await;
            });
        }
    };
    agent.set_link(None);
    link.close();
    // The worker finishes the command in hand (its reply may be lost) and
    // then stops, because the command channel closes with the reader.
    drop(worker);
    end
}
