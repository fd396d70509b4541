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
