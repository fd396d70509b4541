//! What every command file uses: the context a command applies in, what it
//! returns, and how its body is read.

use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::agent::session::connection::Link;
use crate::agent::terminal::Agent;
use crate::protocol::{BatchNo, DataType, ErrorCode, Frame};

/// Delay between a power or boot command's reply and the act, so the reply
/// reaches the server before the network goes down.
pub const POWER_DELAY: Duration = Duration::from_millis(1500);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandError {
    pub code: ErrorCode,
    pub msg: String,
}

impl CommandError {
    pub fn new(code: ErrorCode, msg: impl Into<String>) -> Self {
        CommandError {
            code,
            msg: msg.into(),
        }
    }

    pub fn message(msg: impl Into<String>) -> Self {
        Self::new(ErrorCode::MessageError, msg)
    }

    pub fn system(msg: impl Into<String>) -> Self {
        Self::new(ErrorCode::SystemError, msg)
    }
}

/// What happens once the reply has been written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum After {
    Nothing,
    PowerOff,
    Reboot,
    /// End this session and log in again (new server, new address).
    Reconnect(String),
    /// Ask for 9007 again so the desktop decision runs on fresh data.
    RefreshDesktops,
    /// Apply a validated static network, then log in again from it.
    ChangeNetwork {
        net: crate::agent::platform::NetworkConfig,
        conf_version: i64,
        mask: String,
    },
    /// Log in to another server.
    MoveServer(String),
}

#[derive(Debug, Default)]
pub struct Applied {
    pub extra: BTreeMap<String, serde_json::Value>,
    pub after: Option<After>,
    /// Replaces the request's batch_no in the reply (1015 answers with its
    /// task uuid).
    pub batch_no: Option<BatchNo>,
}

impl Applied {
    pub fn done() -> Self {
        Applied::default()
    }

    pub fn then(after: After) -> Self {
        Applied {
            extra: BTreeMap::new(),
            after: Some(after),
            batch_no: None,
        }
    }
}

pub type CmdResult = Result<Applied, CommandError>;

/// What a command's `apply` may use.
pub struct Ctx<'a> {
    pub agent: &'a Arc<Agent>,
    pub link: &'a Link,
}

/// Reads a command body as JSON, with the protocol's error for bad input.
pub fn parse_json<T: DeserializeOwned>(frame: &Frame) -> Result<T, CommandError> {
    if frame.data_type != DataType::Json as u8 {
        return Err(CommandError::message(format!(
            "expected a JSON body (data_type 1), got data_type {}",
            frame.data_type
        )));
    }
    frame
        .json()
        .map_err(|e| CommandError::message(format!("bad {} body: {e}", frame.service_code)))
}

/// A URL the agent will fetch from: http or https only, so a command cannot
/// make it read local files or talk to other schemes.
pub fn check_download_url(url: &str) -> Result<(), CommandError> {
    let parsed = reqwest::Url::parse(url)
        .map_err(|e| CommandError::message(format!("download_url {url:?}: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(CommandError::message(format!(
            "download_url {url:?} must be http or https"
        )));
    }
    Ok(())
}
