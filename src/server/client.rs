//! HTTP client of the operator API, for the CLI, the demo and tests.

use serde::Serialize;
use serde_json::Value;

use crate::protocol::Envelope;

#[derive(Clone)]
pub struct ApiClient {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl ApiClient {
    pub fn new(base: impl Into<String>, token: impl Into<String>) -> Self {
        ApiClient {
            base: base.into().trim_end_matches('/').to_string(),
            token: token.into(),
            http: reqwest::Client::new(),
        }
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> anyhow::Result<Envelope<Value>> {
        let resp = req.bearer_auth(&self.token).send().await?;
        let status = resp.status();
        let text = resp.text().await?;
        serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("HTTP {status}: {e}: {text}"))
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Envelope<Value>> {
        self.send(self.http.get(format!("{}{path}", self.base)))
            .await
    }

    pub async fn post<T: Serialize>(
        &self,
        path: &str,
        body: &T,
    ) -> anyhow::Result<Envelope<Value>> {
        self.send(self.http.post(format!("{}{path}", self.base)).json(body))
            .await
    }

    pub async fn put<T: Serialize>(&self, path: &str, body: &T) -> anyhow::Result<Envelope<Value>> {
        self.send(self.http.put(format!("{}{path}", self.base)).json(body))
            .await
    }

    /// PUT of raw bytes (an agent package).
    pub async fn put_bytes(&self, path: &str, body: Vec<u8>) -> anyhow::Result<Envelope<Value>> {
        self.send(
            self.http
                .put(format!("{}{path}", self.base))
                .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                .body(body),
        )
        .await
    }

    pub async fn delete(&self, path: &str) -> anyhow::Result<Envelope<Value>> {
        self.send(self.http.delete(format!("{}{path}", self.base)))
            .await
    }

    /// Pushes a command to a terminal and returns the API's answer.
    pub async fn push(
        &self,
        mac: &str,
        command: &str,
        params: Value,
        timeout_secs: u64,
    ) -> anyhow::Result<Envelope<Value>> {
        let body = serde_json::json!({ "command": command, "params": params, "timeout_secs": timeout_secs });
        self.post(&format!("/api/v1/terminals/{mac}/commands"), &body)
            .await
    }
}

/// The server's live events (`GET /api/v1/events`), one JSON object each.
pub struct EventStream {
    resp: reqwest::Response,
    buf: String,
}

impl ApiClient {
    /// Subscribes to the event stream; events before this call are not seen.
    pub async fn events(&self) -> anyhow::Result<EventStream> {
        let resp = self
            .http
            .get(format!("{}/api/v1/events", self.base))
            .bearer_auth(&self.token)
            .send()
            .await?;
        if !resp.status().is_success() {
            anyhow::bail!("event stream: HTTP {}", resp.status());
        }
        Ok(EventStream {
            resp,
            buf: String::new(),
        })
    }
}

impl EventStream {
    /// The next event; `None` when the server ends the stream.
    pub async fn next(&mut self) -> anyhow::Result<Option<Value>> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let data: Vec<&str> = block
                    .lines()
                    .filter_map(|l| l.strip_prefix("data:"))
                    .map(str::trim_start)
                    .collect();
                if data.is_empty() {
                    continue;
                }
                match serde_json::from_str(&data.join("\n")) {
                    Ok(v) => return Ok(Some(v)),
                    Err(e) => log::warn!("unreadable event: {e}"),
                }
                continue;
            }
            match self.resp.chunk().await? {
                Some(bytes) => self.buf.push_str(&String::from_utf8_lossy(&bytes)),
                None => return Ok(None),
            }
        }
    }
}
