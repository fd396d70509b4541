//! The HTTP listeners (operator API and console, tracker): hyper with a
//! header timeout, a cap on connections and an optional TLS handshake in
//! front. axum::serve has neither bound, so a LAN peer could hold every
//! file descriptor with silent sockets.

use axum::Router;
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::limits::{Limits, Slot};

/// Largest request head (start line and headers) read, in bytes.
const MAX_HEADER_BYTES: usize = 16 * 1024;

/// Serves `app` on `listener` until `shutdown`. `what` names the listener
/// in log lines.
pub async fn serve(
    what: &'static str,
    listener: TcpListener,
    app: Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    limits: &Limits,
    shutdown: CancellationToken,
) {
    let open = Arc::new(AtomicUsize::new(0));
    let header_timeout = Duration::from_secs(limits.http_header_timeout_secs.max(1));
    let cap = limits.http_max_connections.max(1);
    let mut refused_since_log = 0u64;
    let mut last_log: Option<std::time::Instant> = None;
    loop {
        let (tcp, peer) = tokio::select! {
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    log::warn!("{what} accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let Some(slot) = Slot::take(&open, cap) else {
            refused_since_log += 1;
            if last_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                log::warn!(
                    "{what}: {cap} connections open, refusing more ({refused_since_log} since the last report; latest from {peer}); [limits] http_max_connections"
                );
                refused_since_log = 0;
                last_log = Some(std::time::Instant::now());
            }
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let (tls, app, stop) = (tls.clone(), app.clone(), shutdown.clone());
        tokio::spawn(async move {
            let _slot = slot;
            match tls {
                None => serve_one(what, tcp, peer, app, header_timeout, stop).await,
                Some(tls) => {
                    let stream = match tokio::time::timeout(
                        crate::tls::TLS_HANDSHAKE,
                        tls.accept(tcp),
                    )
                    .await
                    {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => return log::debug!("{what} {peer}: TLS: {e}"),
                        Err(_) => return log::debug!("{what} {peer}: TLS handshake timed out"),
                    };
                    serve_one(what, stream, peer, app, header_timeout, stop).await
                }
            }
        });
    }
}

async fn serve_one<IO>(
    what: &'static str,
    io: IO,
    peer: SocketAddr,
    app: Router,
    header_timeout: Duration,
    stop: CancellationToken,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use axum::extract::connect_info::ConnectInfo;
    // Handlers that ask for the peer's address (the tracker) find it.
    let app = app.layer(axum::Extension(ConnectInfo(peer)));
    let service = hyper_util::service::TowerToHyperService::new(app);
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_buf_size(MAX_HEADER_BYTES)
        .serve_connection(hyper_util::rt::TokioIo::new(io), service);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => if let Err(e) = r {
            log::debug!("{what} {peer}: {e}");
        },
        _ = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(2), conn).await;
        }
    }
}
