//! A small QMP client: the greeting, `qmp_capabilities`, commands with
//! their answers, and the events QEMU sends in between (kept, bounded, for
//! the supervisor). One line of JSON each way.

use serde_json::{json, Value};
use std::collections::VecDeque;
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// Most events kept between two reads of them.
const MAX_EVENTS: usize = 256;
/// Longest QMP line taken: anything longer is not QEMU talking.
const MAX_LINE: usize = 1 << 20;

pub struct Qmp {
    reader: BufReader<tokio::net::unix::OwnedReadHalf>,
    writer: tokio::net::unix::OwnedWriteHalf,
    events: VecDeque<Value>,
}

#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("QMP socket {0}: {1}")]
    Io(String, std::io::Error),
    #[error("QMP: {0}")]
    Protocol(String),
    #[error("QMP command {0} failed: {1}")]
    Command(String, String),
}

impl Qmp {
    /// Connects, retrying while QEMU has not made the socket yet.
    pub async fn connect(path: &Path, within: Duration) -> Result<Qmp, QmpError> {
        let start = std::time::Instant::now();
        let stream = loop {
            match UnixStream::connect(path).await {
                Ok(s) => break s,
                Err(e) if start.elapsed() < within => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => return Err(QmpError::Io(path.display().to_string(), e)),
            }
        };
        let (r, w) = stream.into_split();
        let mut q = Qmp {
            reader: BufReader::new(r),
            writer: w,
            events: VecDeque::new(),
        };
        let greeting = q.read().await?;
        if greeting.get("QMP").is_none() {
            return Err(QmpError::Protocol(format!("no greeting: {greeting}")));
        }
        q.execute("qmp_capabilities", json!({})).await?;
        Ok(q)
    }

    async fn read(&mut self) -> Result<Value, QmpError> {
        let mut line = String::new();
        let n = (&mut self.reader)
            .take(MAX_LINE as u64)
            .read_line(&mut line)
            .await
            .map_err(|e| QmpError::Io("read".into(), e))?;
        if n == 0 {
            return Err(QmpError::Protocol("QEMU closed the socket".into()));
        }
        serde_json::from_str(&line).map_err(|e| QmpError::Protocol(format!("{e}: {line:.200}")))
    }

    /// Runs a command; events that arrive first are kept.
    pub async fn execute(&mut self, command: &str, args: Value) -> Result<Value, QmpError> {
        let mut msg = json!({ "execute": command });
        if args.as_object().is_some_and(|o| !o.is_empty()) {
            msg["arguments"] = args;
        }
        let mut line = msg.to_string();
        line.push('\n');
        self.writer
            .write_all(line.as_bytes())
            .await
            .map_err(|e| QmpError::Io("write".into(), e))?;
        loop {
            let v = self.read().await?;
            if v.get("event").is_some() {
                self.keep(v);
                continue;
            }
            if let Some(err) = v.get("error") {
                return Err(QmpError::Command(command.into(), err["desc"].to_string()));
            }
            return Ok(v.get("return").cloned().unwrap_or(Value::Null));
        }
    }

    fn keep(&mut self, ev: Value) {
        if self.events.len() >= MAX_EVENTS {
            self.events.pop_front();
        }
        self.events.push_back(ev);
    }

    /// The next event: a kept one, or the next QEMU sends.
    pub async fn next_event(&mut self) -> Result<Value, QmpError> {
        if let Some(ev) = self.events.pop_front() {
            return Ok(ev);
        }
        loop {
            let v = self.read().await?;
            if v.get("event").is_some() {
                return Ok(v);
            }
        }
    }
}

use tokio::io::AsyncReadExt;
