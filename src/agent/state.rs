//! What the agent must remember across restarts, in `<data_dir>/state.json`.
//! Every change goes through `StateStore::update`, which persists atomically
//! before the change is visible to anyone else.

use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::agent::platform::NetworkConfig;
use crate::fsutil;
use crate::protocol::messages::{DesktopGroup, TerminalConfig};
use crate::protocol::BatchNo;

/// How many handled commands are kept (for `ctl status` and to answer a
/// re-sent batch without applying it twice).
pub const COMMAND_HISTORY: usize = 32;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandRecord {
    pub service_code: u32,
    pub name: String,
    pub batch_no: BatchNo,
    /// md5 of the command body: a re-sent command is byte-identical, while
    /// the numbering server legitimately reuses one batch_no for different
    /// proposals.
    #[serde(default)]
    pub body_md5: String,
    pub code: i64,
    pub msg: String,
    /// RFC 3339 time the reply was sent.
    pub at: String,
    /// Written before the command is applied and cleared after: a record
    /// still pending after a restart means the agent died during `apply`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pending: bool,
}

/// A change that cut us off from the server until proven good: if no login
/// succeeds before `deadline` (unix seconds), the agent restores `old`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PendingChange {
    Network {
        old: Option<NetworkConfig>,
        new: NetworkConfig,
        deadline: i64,
    },
    /// Back to DHCP (a 9005 with `is_dhcp: 1`, as the vendor's server puts
    /// a room back on DHCP), from the static `old`.
    Dhcp {
        interface: String,
        old: NetworkConfig,
        deadline: i64,
    },
    Server {
        old: Option<String>,
        new: String,
        deadline: i64,
        /// The port override before and after (the screen can change it).
        #[serde(default)]
        old_port: Option<u16>,
        #[serde(default)]
        new_port: Option<u16>,
    },
}

impl PendingChange {
    pub fn deadline(&self) -> i64 {
        match self {
            PendingChange::Network { deadline, .. }
            | PendingChange::Dhcp { deadline, .. }
            | PendingChange::Server { deadline, .. } => *deadline,
        }
    }
}

/// A numbering session proposed by the server (1011) that the local screen
/// has not confirmed yet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingOrder {
    pub batch_no: BatchNo,
    pub terminal_id: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentState {
    /// Terminal configuration as last agreed with the server.
    pub terminal: TerminalConfig,
    /// Server address set by 1005 update_config or 9005; overrides the
    /// config file's when present.
    #[serde(default)]
    pub server_ip_override: Option<String>,
    /// Server port set on the terminal's screen; overrides the config's.
    #[serde(default)]
    pub server_port_override: Option<u16>,
    /// What older agents kept here (md5 of the password a server said yes
    /// to) is read and dropped: a rogue server could plant it.
    #[serde(default, skip_serializing)]
    pub admin_md5: Option<String>,
    /// The offline settings password the server signed (issue 38.13),
    /// kept only when the signature verified with `[bt] manifest_key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offline_admin: Option<crate::offline_admin::OfflineAdmin>,
    #[serde(default)]
    pub desktop_groups: Vec<DesktopGroup>,
    #[serde(default)]
    pub trackers: Vec<String>,
    #[serde(default)]
    pub watermark: bool,
    #[serde(default)]
    pub pending_order: Option<PendingOrder>,
    /// The static network this agent last applied (update_ip).
    #[serde(default)]
    pub network: Option<NetworkConfig>,
    #[serde(default)]
    pub pending_change: Option<PendingChange>,
    /// Layers the last update decision wants fetched.
    #[serde(default)]
    pub pending_downloads: Vec<crate::agent::update_plan::Download>,
    /// The server's answer to 9012 for the default desktop.
    #[serde(default)]
    pub desktop_info: Option<serde_json::Value>,
    #[serde(default)]
    pub last_login: Option<String>,
    #[serde(default)]
    pub server_time: Option<String>,
    #[serde(default)]
    pub commands: VecDeque<CommandRecord>,
    /// Free-form notes the agent wants an operator to see (e.g. a network
    /// rollback), newest last.
    #[serde(default)]
    pub notices: VecDeque<String>,
}

impl Default for AgentState {
    fn default() -> Self {
        AgentState {
            terminal: TerminalConfig {
                terminal_id: -1,
                conf_version: -1,
                ..Default::default()
            },
            server_ip_override: None,
            server_port_override: None,
            admin_md5: None,
            offline_admin: None,
            desktop_groups: Vec::new(),
            trackers: Vec::new(),
            watermark: false,
            pending_order: None,
            network: None,
            pending_change: None,
            pending_downloads: Vec::new(),
            desktop_info: None,
            last_login: None,
            server_time: None,
            commands: VecDeque::new(),
            notices: VecDeque::new(),
        }
    }
}

impl AgentState {
    /// Adds a record, or completes the pending one of the same command.
    pub fn record_command(&mut self, rec: CommandRecord) {
        if let Some(prev) = self.commands.iter_mut().rev().find(|r| {
            r.pending
                && r.service_code == rec.service_code
                && r.batch_no == rec.batch_no
                && r.body_md5 == rec.body_md5
        }) {
            *prev = rec;
            return;
        }
        self.commands.push_back(rec);
        while self.commands.len() > COMMAND_HISTORY {
            self.commands.pop_front();
        }
    }

    /// The record of an already handled identical command, if any.
    pub fn handled(
        &self,
        service_code: u32,
        batch_no: &BatchNo,
        body_md5: &str,
    ) -> Option<&CommandRecord> {
        self.commands.iter().rev().find(|r| {
            r.service_code == service_code && &r.batch_no == batch_no && r.body_md5 == body_md5
        })
    }

    /// Keeps a group a command announced (1008, 1017), so what it delivers
    /// boots before any 9007 lists it (a vendor server may never). A group
    /// the server's 9007 already listed stays as it said.
    pub fn keep_announced_group(&mut self, group: DesktopGroup, command: &str) {
        if self
            .desktop_groups
            .iter()
            .any(|g| g.desktop_group_uuid == group.desktop_group_uuid)
        {
            return;
        }
        log::info!(
            "keeping desktop group {:?} ({}) from its {command}",
            group.desktop_group_name,
            group.desktop_group_uuid
        );
        self.desktop_groups.push(group);
    }

    pub fn notice(&mut self, text: impl Into<String>) {
        self.notices.push_back(text.into());
        while self.notices.len() > 16 {
            self.notices.pop_front();
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot persist state to {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("state file {path} is unreadable ({source}); it was kept as {backup} and a fresh state started")]
    Corrupt {
        path: PathBuf,
        backup: PathBuf,
        source: serde_json::Error,
    },
}

#[derive(Clone)]
pub struct StateStore {
    path: PathBuf,
    inner: Arc<Mutex<AgentState>>,
}

impl StateStore {
    /// Opens the state file. An unreadable file is moved aside (never
    /// deleted) and a fresh state is used, so a torn disk cannot brick the
    /// terminal; the returned warning says so.
    pub fn open(path: &Path) -> std::io::Result<(StateStore, Option<StateError>)> {
        let mut warning = None;
        let state = match std::fs::read(path) {
            Ok(bytes) => match serde_json::from_slice::<AgentState>(&bytes) {
                Ok(s) => s,
                Err(source) => {
                    let backup =
                        path.with_extension(format!("corrupt.{}", chrono::Utc::now().timestamp()));
                    std::fs::rename(path, &backup)?;
                    warning = Some(StateError::Corrupt {
                        path: path.into(),
                        backup,
                        source,
                    });
                    AgentState::default()
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => AgentState::default(),
            Err(e) => return Err(e),
        };
        Ok((
            StateStore {
                path: path.into(),
                inner: Arc::new(Mutex::new(state)),
            },
            warning,
        ))
    }

    fn lock(&self) -> MutexGuard<'_, AgentState> {
        // A panic while holding the lock cannot leave a half-persisted
        // state (we persist a clone first), so poisoning is safe to ignore.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn snapshot(&self) -> AgentState {
        self.lock().clone()
    }

    pub fn read<R>(&self, f: impl FnOnce(&AgentState) -> R) -> R {
        f(&self.lock())
    }

    /// Applies `f` to a copy, persists the copy, and only then publishes it.
    /// If the write fails the in-memory state is unchanged.
    pub fn update<R>(&self, f: impl FnOnce(&mut AgentState) -> R) -> Result<R, StateError> {
        let mut guard = self.lock();
        let mut next = guard.clone();
        let r = f(&mut next);
        if next != *guard {
            fsutil::write_json(&self.path, &next).map_err(|source| StateError::Write {
                path: self.path.clone(),
                source,
            })?;
            *guard = next;
        }
        Ok(r)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn survives_reopen() {
        let d = tempfile::tempdir().expect("tmp");
        let p = d.path().join("state.json");
        let (s, w) = StateStore::open(&p).expect("open");
        assert!(w.is_none());
        s.update(|st| st.terminal.name = "PC-1".into())
            .expect("persist");
        let (s2, _) = StateStore::open(&p).expect("open");
        assert_eq!(s2.snapshot().terminal.name, "PC-1");
    }

    #[test]
    fn corrupt_file_is_kept_aside() {
        let d = tempfile::tempdir().expect("tmp");
        let p = d.path().join("state.json");
        std::fs::write(&p, b"{\"terminal\": tru").expect("write");
        let (s, w) = StateStore::open(&p).expect("open");
        assert!(matches!(w, Some(StateError::Corrupt { .. })));
        assert_eq!(s.snapshot(), AgentState::default());
        let kept = std::fs::read_dir(d.path())
            .expect("ls")
            .filter_map(|e| e.ok())
            .any(|e| e.file_name().to_string_lossy().contains("corrupt"));
        assert!(kept);
    }

    #[test]
    fn failed_write_changes_nothing() {
        let d = tempfile::tempdir().expect("tmp");
        let p = d.path().join("sub").join("state.json");
        let (s, _) = StateStore::open(&p).expect("open");
        assert!(s.update(|st| st.watermark = true).is_err());
        assert!(!s.snapshot().watermark);
    }
}
