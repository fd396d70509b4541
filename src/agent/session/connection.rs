//! One TCP connection to the server: a writer task, a reader task that routes
//! answers to whoever is waiting and commands to the command queue, and the
//! `Link` handle the rest of the agent uses to talk.

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::{FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;

use crate::protocol::{ClientType, Envelope, ErrorCode, Frame, FrameCodec, ServiceCode};

/// Why a connection ended, as the reader or a requester saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEnd {
    Eof,
    Protocol(String),
    Io(String),
    /// The server answered 60002: it does not know us (it restarted).
    NotLoggedIn,
}

#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("no answer to {0} within {1:?}")]
    Timeout(&'static str, Duration),
    #[error("connection closed before {0} was answered")]
    Closed(&'static str),
    #[error("answer to {0} is not valid JSON: {1}")]
    BadAnswer(&'static str, serde_json::Error),
    #[error("cannot encode {0}: {1}")]
    Encode(&'static str, serde_json::Error),
}

struct Waiter {
    code: u32,
    seq: u32,
    tx: oneshot::Sender<Frame>,
}

type Outgoing = (Frame, Option<oneshot::Sender<bool>>);

/// Cheap to clone; all clones talk over the same connection.
#[derive(Clone)]
pub struct Link {
    out: mpsc::Sender<Outgoing>,
    waiters: Arc<Mutex<VecDeque<Waiter>>>,
    token: Arc<RwLock<Bytes>>,
    seq: Arc<AtomicU32>,
    client_type: ClientType,
    timeout: Duration,
    /// Our address on this connection, reported when the interface has none.
    local_ip: Arc<str>,
    /// Cancelled when the session is over: both halves of the socket are
    /// dropped at once, whatever the peer does (a server that trickles
    /// bytes or never reads must not keep the old connection alive).
    closed: CancellationToken,
}

pub struct Spawned {
    pub link: Link,
    /// Commands (1xxx) from the server, in arrival order.
    pub commands: mpsc::Receiver<Frame>,
    /// Resolves once when the connection is over.
    pub ended: oneshot::Receiver<LinkEnd>,
}

impl Link {
    /// Runs a link over `stream` (plain TCP or TLS); `local_ip` is our
    /// address on it.
    pub fn spawn(
        stream: impl crate::tls::Stream,
        local_ip: &str,
        client_type: ClientType,
        timeout: Duration,
        max_body: usize,
    ) -> Spawned {
        let local_ip: Arc<str> = local_ip.into();
        let (rd, wr) = tokio::io::split(stream);
        let mut reader = FramedRead::new(rd, FrameCodec::new(max_body));
        let mut writer = FramedWrite::new(wr, FrameCodec::new(max_body));
        let (out_tx, mut out_rx) = mpsc::channel::<Outgoing>(64);
        let (cmd_tx, cmd_rx) = mpsc::channel::<Frame>(64);
        let (end_tx, end_rx) = oneshot::channel();
        let waiters: Arc<Mutex<VecDeque<Waiter>>> = Arc::default();

        let closed = CancellationToken::new();
        let writer_closed = closed.clone();
        tokio::spawn(async move {
            loop {
                let (frame, ack) = tokio::select! {
                    next = out_rx.recv() => match next {
                        Some(next) => next,
                        None => break,
                    },
                    _ = writer_closed.cancelled() => break,
                };
                let ok = tokio::select! {
                    r = writer.send(frame) => r.is_ok(),
                    _ = writer_closed.cancelled() => false,
                };
                if let Some(ack) = ack {
                    let _ = ack.send(ok);
                }
                if !ok {
                    break;
                }
            }
        });

        let w = waiters.clone();
        let reader_closed = closed.clone();
        tokio::spawn(async move {
            let end = loop {
                let next = tokio::select! {
                    next = reader.next() => next,
                    _ = reader_closed.cancelled() => break LinkEnd::Eof,
                };
                match next {
                    None => break LinkEnd::Eof,
                    Some(Err(e)) => {
                        log::warn!("closing connection: {e}");
                        break match e {
                            crate::protocol::FrameError::Io(io) => LinkEnd::Io(io.to_string()),
                            other => LinkEnd::Protocol(other.to_string()),
                        };
                    }
                    Some(Ok(frame)) => {
                        if is_not_logged_in(&frame) {
                            break LinkEnd::NotLoggedIn;
                        }
                        // Unknown codes go to the worker too, which answers
                        // them 88888 rather than leaving the server waiting.
                        let is_command =
                            !frame.is_response() && frame.service().is_none_or(|c| c.is_command());
                        if is_command {
                            if cmd_tx.send(frame).await.is_err() {
                                break LinkEnd::Eof;
                            }
                        } else {
                            route_answer(&w, frame);
                        }
                    }
                }
            };
            // Dropping the waiters wakes every requester with Closed.
            w.lock().unwrap_or_else(|p| p.into_inner()).clear();
            reader_closed.cancel();
            let _ = end_tx.send(end);
        });

        Spawned {
            link: Link {
                out: out_tx,
                waiters,
                token: Arc::new(RwLock::new(Bytes::new())),
                seq: Arc::new(AtomicU32::new(0)),
                client_type,
                timeout,
                local_ip,
                closed,
            },
            commands: cmd_rx,
            ended: end_rx,
        }
    }

    /// Ends the connection now: the reader and writer stop and the socket
    /// is closed.
    pub fn close(&self) {
        self.closed.cancel();
    }

    pub fn set_token(&self, token: Bytes) {
        *self.token.write().unwrap_or_else(|p| p.into_inner()) = token;
    }

    pub fn token(&self) -> Bytes {
        self.token.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn client_type(&self) -> ClientType {
        self.client_type
    }

    pub fn local_ip(&self) -> &str {
        &self.local_ip
    }

    /// Queues a frame and waits until it has been written to the socket.
    pub async fn send(&self, frame: Frame) -> bool {
        let (tx, rx) = oneshot::channel();
        if self.out.send((frame, Some(tx))).await.is_err() {
            return false;
        }
        rx.await.unwrap_or(false)
    }

    /// Sends a request and returns the raw answer frame.
    pub async fn request_frame<T: Serialize>(
        &self,
        code: ServiceCode,
        body: &T,
        timeout: Option<Duration>,
    ) -> Result<Frame, RequestError> {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
        let frame = Frame::request_json(code, seq, self.client_type, &self.token(), body)
            .map_err(|e| RequestError::Encode(code.name(), e))?;
        self.exchange(code, frame, timeout).await
    }

    /// Sends a binary request (data_type 0, e.g. 9014's torrent struct) and
    /// parses the JSON answer.
    pub async fn request_binary(
        &self,
        code: ServiceCode,
        payload: bytes::Bytes,
    ) -> Result<(Frame, Envelope<serde_json::Value>), RequestError> {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
        let frame = Frame {
            service_code: code as u32,
            sequence_code: seq,
            data_type: crate::protocol::DataType::Binary as u8,
            client_type: self.client_type as u8,
            req_or_res: 1,
            token: self.token(),
            payload,
        };
        let frame = self.exchange(code, frame, None).await?;
        let env = frame
            .json()
            .map_err(|e| RequestError::BadAnswer(code.name(), e))?;
        Ok((frame, env))
    }

    async fn exchange(
        &self,
        code: ServiceCode,
        frame: Frame,
        timeout: Option<Duration>,
    ) -> Result<Frame, RequestError> {
        let seq = frame.sequence_code;
        let (tx, rx) = oneshot::channel();
        self.waiters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back(Waiter {
                code: code as u32,
                seq,
                tx,
            });
        let timeout = timeout.unwrap_or(self.timeout);
        if !self.send(frame).await {
            self.forget(seq);
            return Err(RequestError::Closed(code.name()));
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(frame)) => Ok(frame),
            Ok(Err(_)) => Err(RequestError::Closed(code.name())),
            Err(_) => {
                self.forget(seq);
                Err(RequestError::Timeout(code.name(), timeout))
            }
        }
    }

    /// Sends a request and parses the `{code, msg, data}` answer.
    pub async fn request<T: Serialize>(
        &self,
        code: ServiceCode,
        body: &T,
    ) -> Result<(Frame, Envelope<serde_json::Value>), RequestError> {
        let frame = self.request_frame(code, body, None).await?;
        let env = frame
            .json()
            .map_err(|e| RequestError::BadAnswer(code.name(), e))?;
        Ok((frame, env))
    }

    fn forget(&self, seq: u32) {
        self.waiters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|w| w.seq != seq);
    }
}

/// Matches an answer to its request by sequence number; servers that answer
/// with sequence 0 (as the original terminal did) are matched by service
/// code, oldest first.
fn route_answer(waiters: &Mutex<VecDeque<Waiter>>, frame: Frame) {
    let mut w = waiters.lock().unwrap_or_else(|p| p.into_inner());
    let pos = w
        .iter()
        .position(|x| x.code == frame.service_code && x.seq == frame.sequence_code)
        .or_else(|| w.iter().position(|x| x.code == frame.service_code));
    match pos.and_then(|i| w.remove(i)) {
        Some(waiter) => {
            let _ = waiter.tx.send(frame);
        }
        None => log::debug!(
            "unexpected answer: service {} sequence {}",
            frame.service_code,
            frame.sequence_code
        ),
    }
}

fn is_not_logged_in(frame: &Frame) -> bool {
    #[derive(serde::Deserialize)]
    struct Code {
        #[serde(deserialize_with = "crate::protocol::flex::int")]
        code: i64,
    }
    frame.is_response()
        && frame
            .json::<Code>()
            .is_ok_and(|c| c.code == i64::from(ErrorCode::TerminalNotLogin.code()))
}
