//! The server's configuration (`server.toml`); every key has a default.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Terminal protocol listener.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Operator API listener; keep it on loopback.
    #[serde(default = "default_api_listen")]
    pub api_listen: String,
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Bearer token of the operator API; default: generated once and kept in
    /// `<data_dir>/api-token`.
    #[serde(default)]
    pub api_token: Option<String>,
    /// More tokens, each with a name for the audit trail, some read-only
    /// (`tokens.rs`).
    #[serde(default)]
    pub api_tokens: Vec<super::tokens::NamedToken>,
    /// The terminals' heartbeat interval; a terminal is offline after three
    /// intervals without one.
    #[serde(default = "default_hb")]
    pub heartbeat_secs: u64,
    /// A socket silent this long is closed.
    #[serde(default = "default_idle")]
    pub idle_close_secs: u64,
    /// The address terminals should use for this server (9005
    /// `setup_info.program.server_ip`); unset, none is advertised.
    #[serde(default)]
    pub advertise_ip: Option<String>,
    /// The BitTorrent tracker's listener (the original's port is 50021).
    #[serde(default = "default_tracker_listen")]
    pub tracker_listen: String,
    /// Tracker announce URL handed out by 9019; default: this server's
    /// address as the terminal sees it, with the tracker's port.
    #[serde(default)]
    pub tracker_url: Option<String>,
    /// The ed25519 key that signs layer manifests (64 hex characters in a
    /// file); default `<data_dir>/manifest-signing.key`, made at first start.
    #[serde(default)]
    pub manifest_signing_key: Option<PathBuf>,
    /// Signs agent packages; default the manifest key. Terminals check
    /// packages with `[upgrade] key` (or `[bt] manifest_key`).
    #[serde(default)]
    pub release_signing_key: Option<PathBuf>,
    #[serde(default = "default_admin_user")]
    pub admin_user: String,
    /// md5 hex of the admin password (9008 / 9016 compare md5 of what the
    /// terminal sends). Unset: a random password is made at first start,
    /// kept in `<data_dir>/admin-password` (0600) and logged once, as the
    /// API token is (the vendor's admin/admin was guessable in a second).
    #[serde(default)]
    pub admin_password_md5: Option<String>,
    /// Largest frame body accepted from a terminal.
    #[serde(default = "default_max_body")]
    pub max_body: usize,
    /// BitTorrent peer port of the seeder (terminals use 6881); 0 picks a
    /// free one.
    #[serde(default = "default_bt_port")]
    pub bt_listen_port: u16,
    /// Seeder upload cap in bytes per second; 0 is unlimited.
    #[serde(default)]
    pub bt_upload_limit: u32,
    /// A new or changed file of the image library is taken only once two
    /// looks this far apart saw the same size and modification time (a
    /// copy still being written is not hashed half-made).
    #[serde(default = "default_library_settle_ms")]
    pub library_settle_ms: u64,
    /// TLS on the terminal port: certificate chain and key, PEM. Both or
    /// neither; off by default (the vendor's terminals speak plain TCP).
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// Mutual TLS: a CA (PEM) whose certificates terminals must present;
    /// each certificate names its terminal's MAC (see `tls.rs`). Needs
    /// `tls_cert`/`tls_key`.
    #[serde(default)]
    pub tls_client_ca: Option<PathBuf>,
    /// TLS on the operator listener (console and API), certificate chain and
    /// key, PEM: for reaching the console from another machine.
    #[serde(default)]
    pub api_tls_cert: Option<PathBuf>,
    #[serde(default)]
    pub api_tls_key: Option<PathBuf>,
    /// Who may join: "open" (default), "pending" or "allow-list"
    /// (`admission.rs`).
    #[serde(default)]
    pub admission: super::admission::AdmissionPolicy,
    /// Bounds on what terminals and LAN peers can make the server hold
    /// (`limits.rs`).
    #[serde(default)]
    pub limits: super::limits::Limits,
    /// `/metrics` answers without the API token (for a scraper on a
    /// trusted network).
    #[serde(default)]
    pub metrics_public: bool,
    /// "text" (the default) or "json": one object a line, with the
    /// terminal's MAC as a field. `VOI_LOG_FORMAT` wins over it.
    #[serde(default)]
    pub log_format: crate::cli_support::LogFormat,
    /// The audit trail of operator actions keeps at most this many…
    #[serde(default = "default_audit_max")]
    pub audit_max_entries: usize,
    /// …and none older than this.
    #[serde(default = "default_audit_days")]
    pub audit_retention_days: u64,
    /// Wake-on-LAN and the class schedule.
    #[serde(default)]
    pub wake: WakeConfig,
}

/// `[wake]`. Nothing is sent until an operator asks or a schedule entry
/// that an operator wrote falls due.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WakeConfig {
    /// How long a woken terminal has to log in before the wake is
    /// reported as "did not come up".
    #[serde(default = "default_wake_timeout")]
    pub timeout_secs: u64,
    /// Ask an online agent of ours on a terminal's subnet to send the
    /// packet there (1900) when the server has no interface on it.
    #[serde(default = "default_true")]
    pub relay: bool,
    /// How often the class schedule is looked at.
    #[serde(default = "default_tick_ms")]
    pub schedule_tick_ms: u64,
}

impl Default for WakeConfig {
    fn default() -> Self {
        WakeConfig {
            timeout_secs: default_wake_timeout(),
            relay: true,
            schedule_tick_ms: default_tick_ms(),
        }
    }
}

fn default_wake_timeout() -> u64 {
    180
}
fn default_true() -> bool {
    true
}
fn default_tick_ms() -> u64 {
    10_000
}

fn default_audit_max() -> usize {
    10_000
}
fn default_audit_days() -> u64 {
    90
}

fn default_bt_port() -> u16 {
    6880
}

fn default_listen() -> String {
    format!("0.0.0.0:{}", crate::protocol::DEFAULT_PORT)
}
fn default_api_listen() -> String {
    "127.0.0.1:50080".into()
}
fn default_tracker_listen() -> String {
    format!("0.0.0.0:{}", crate::protocol::DEFAULT_TRACKER_PORT)
}
fn default_data_dir() -> PathBuf {
    PathBuf::from("/var/lib/voi-server")
}
fn default_library_settle_ms() -> u64 {
    2000
}
fn default_hb() -> u64 {
    10
}
fn default_idle() -> u64 {
    120
}
fn default_admin_user() -> String {
    "admin".into()
}
fn default_max_body() -> usize {
    crate::protocol::codec::DEFAULT_MAX_BODY
}

impl Default for ServerConfig {
    fn default() -> Self {
        toml::from_str("").unwrap_or_else(|_| unreachable!("all fields have defaults"))
    }
}

impl ServerConfig {
    pub fn load(path: &std::path::Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        let cfg: ServerConfig =
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        if cfg.heartbeat_secs == 0 || cfg.idle_close_secs == 0 {
            anyhow::bail!("heartbeat_secs and idle_close_secs must be at least 1");
        }
        if cfg.api_tls_cert.is_some() != cfg.api_tls_key.is_some() {
            anyhow::bail!("api_tls_cert and api_tls_key go together");
        }
        if cfg.tls_client_ca.is_some() && cfg.tls_cert.is_none() {
            anyhow::bail!("tls_client_ca needs tls_cert and tls_key: client certificates are asked for inside TLS");
        }
        Ok(cfg)
    }

    pub fn offline_after(&self) -> Duration {
        Duration::from_secs(self.heartbeat_secs * 3)
    }
}
