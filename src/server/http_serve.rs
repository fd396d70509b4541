//! The HTTP listeners (operator API and console, tracker): hyper with a
//! header timeout, a cap on connections and an optional TLS handshake in
//! front. axum::serve has neither bound, so a LAN peer could hold every
//! file descriptor with silent sockets. The cap is shared between addresses
//! (`conn_shares`), and a response nobody reads is cut after
//! `http_write_timeout_secs` (`WriteStall`).

use axum::Router;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::conn_shares::ConnShares;
use super::limits::Limits;

/// Largest request head (start line and headers) read, in bytes.
const MAX_HEADER_BYTES: usize = 16 * 1024;

/// The listener's own address as a connection reached it (handlers that
/// name the server to the peer use it: the tracker's seeder entry).
#[derive(Debug, Clone, Copy)]
pub struct LocalAddr(pub SocketAddr);

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
    let shares = ConnShares::new(
        what,
        limits.http_max_connections,
        limits.http_max_connections_per_address,
    );
    let header_timeout = Duration::from_secs(limits.http_header_timeout_secs.max(1));
    let write_timeout = Duration::from_secs(limits.http_write_timeout_secs.max(1));
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
        let share = shares.admit(peer.ip());
        let _ = tcp.set_nodelay(true);
        let local = tcp.local_addr().ok();
        let (tls, mut app, stop) = (tls.clone(), app.clone(), shutdown.clone());
        if let Some(local) = local {
            app = app.layer(axum::Extension(LocalAddr(local)));
        }
        let displaced = share.displaced();
        let tcp = WriteStall::new(tcp, write_timeout);
        tokio::spawn(async move {
            let _share = share;
            let timeouts = (header_timeout, displaced);
            match tls {
                None => serve_one(what, tcp, peer, app, timeouts, stop).await,
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
                    serve_one(what, stream, peer, app, timeouts, stop).await
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
    (header_timeout, displaced): (Duration, CancellationToken),
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
        // A newer connection from the same address took this one's place.
        _ = displaced.cancelled() => log::debug!("{what} {peer}: displaced by a newer connection"),
        _ = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(2), conn).await;
        }
    }
}

/// A socket whose writes fail with `TimedOut` once one has made no progress
/// for `limit`: a client that stops reading a download (or an event
/// stream) releases its connection instead of holding it for ever. Reads
/// are not timed here: hyper's header timeout covers an idle connection,
/// and an event stream's reader rightly sends nothing.
struct WriteStall<IO> {
    io: IO,
    limit: Duration,
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<IO> WriteStall<IO> {
    fn new(io: IO, limit: Duration) -> Self {
        WriteStall {
            io,
            limit,
            stalled: None,
        }
    }

    /// Turns a pending write into an error once it has waited too long.
    fn watch<T>(
        &mut self,
        cx: &mut Context<'_>,
        r: Poll<std::io::Result<T>>,
    ) -> Poll<std::io::Result<T>> {
        if r.is_ready() {
            self.stalled = None;
            return r;
        }
        let limit = self.limit;
        let sleep = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("the peer read nothing for {limit:?}"),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for WriteStall<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for WriteStall<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        self.watch(cx, r)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let r = Pin::new(&mut self.io).poll_flush(cx);
        self.watch(cx, r)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let r = Pin::new(&mut self.io).poll_shutdown(cx);
        self.watch(cx, r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.watch(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}
