//! Agent configuration, read from TOML.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

use crate::protocol::DEFAULT_PORT;

/// How each machine-level effect is carried out. `linux` touches the real
/// machine; `recording` writes what would have happened to a journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum EffectMode {
    #[default]
    Linux,
    Recording,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlatformConfig {
    /// Power off and reboot.
    #[serde(default)]
    pub power: EffectMode,
    /// Next-boot selection (PXE, maintenance).
    #[serde(default)]
    pub boot: EffectMode,
    #[serde(default)]
    pub hostname: EffectMode,
    #[serde(default)]
    pub network: EffectMode,
    /// Arming wake-on-LAN on the NIC, and sending magic packets for the
    /// server (1900). `recording` journals both and only reads the NIC.
    #[serde(default)]
    pub wake: EffectMode,
    /// Where the recording implementation journals its calls; defaults to
    /// `<data_dir>/platform-journal.jsonl`.
    #[serde(default)]
    pub journal: Option<PathBuf>,
    /// Boot entry ids for `efibootmgr --bootnext`, and grub entry names for
    /// the `grub-reboot` fallback.
    #[serde(default)]
    pub pxe_boot_entry: Option<String>,
    #[serde(default)]
    pub maintenance_boot_entry: Option<String>,
    #[serde(default = "default_grub_pxe")]
    pub grub_pxe_entry: String,
    #[serde(default = "default_grub_maint")]
    pub grub_maintenance_entry: String,
    /// Root for files the network and hostname effects write
    /// (`/etc/systemd/network`, `/etc/resolv.conf`, `/etc/hostname`).
    #[serde(default = "default_etc")]
    pub etc_dir: PathBuf,
}

fn default_grub_pxe() -> String {
    "voi-pxe".into()
}
fn default_grub_maint() -> String {
    "voi-maintenance".into()
}
fn default_etc() -> PathBuf {
    PathBuf::from("/etc")
}

impl Default for PlatformConfig {
    fn default() -> Self {
        PlatformConfig {
            power: EffectMode::Linux,
            boot: EffectMode::Linux,
            hostname: EffectMode::Linux,
            network: EffectMode::Linux,
            wake: EffectMode::Linux,
            journal: None,
            pxe_boot_entry: None,
            maintenance_boot_entry: None,
            grub_pxe_entry: default_grub_pxe(),
            grub_maintenance_entry: default_grub_maint(),
            etc_dir: default_etc(),
        }
    }
}

impl PlatformConfig {
    pub fn all(mode: EffectMode) -> Self {
        PlatformConfig {
            power: mode,
            boot: mode,
            hostname: mode,
            network: mode,
            wake: mode,
            ..Default::default()
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Management server address (IP or host name).
    pub server_ip: String,
    #[serde(default = "default_port")]
    pub server_port: u16,
    /// Network interface to report and configure; default: the first
    /// interface that is up, not loopback, and has an IPv4 address.
    #[serde(default)]
    pub interface: Option<String>,
    /// Overrides the MAC read from the interface (several agents on one host).
    #[serde(default)]
    pub mac: Option<String>,
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Seconds between heartbeats; 1..=10 (the server marks a terminal
    /// offline after 20 s without one).
    #[serde(default = "default_heartbeat")]
    pub heartbeat_secs: u64,
    /// 2 = installed Linux, 5 = maintenance/deployment mode, 1 = UEFI client.
    #[serde(default = "default_client_type")]
    pub client_type: u8,
    /// Seconds to wait for the answer to a request.
    #[serde(default = "default_request_timeout")]
    pub request_timeout_secs: u64,
    /// Longest pause between reconnect attempts after a failed session.
    #[serde(default = "default_backoff_cap")]
    pub backoff_cap_secs: u64,
    /// Longest pause between connect attempts while the server refuses
    /// connections; small so a restarted server sees us within 2 s.
    #[serde(default = "default_connect_retry_ms")]
    pub connect_retry_ms: u64,
    /// Seconds between 9029 update_performance reports; 0 disables them.
    #[serde(default = "default_perf")]
    pub performance_secs: u64,
    /// After update_ip or a server move, how long a login may take before
    /// the previous network or server is restored.
    #[serde(default = "default_confirm")]
    pub change_confirm_secs: u64,
    /// Space kept free on the data disk beyond what an operation needs.
    #[serde(default = "default_margin")]
    pub disk_margin_mb: u64,
    /// Local control socket; default `<data_dir>/control.sock`.
    #[serde(default)]
    pub control_socket: Option<PathBuf>,
    /// Tokio worker threads (qemu-user and small terminals want few).
    #[serde(default = "default_threads")]
    pub worker_threads: usize,
    /// Reported as `soft_version` in 9004.
    #[serde(default = "default_soft_version")]
    pub soft_version: String,
    /// Serve Prometheus metrics here (a loopback address, e.g.
    /// "127.0.0.1:9101"); off when unset.
    #[serde(default)]
    pub metrics_listen: Option<String>,
    /// "text" (the default) or "json": one object a line, each with this
    /// terminal's MAC. `VOI_LOG_FORMAT` wins over it.
    #[serde(default)]
    pub log_format: crate::cli_support::LogFormat,
    /// md5 (hex) of the administrator password the terminal's screen
    /// accepts when the server cannot be reached; the one the server last
    /// accepted (9008) is kept and used first.
    #[serde(default)]
    pub admin_password_md5: Option<String>,
    #[serde(default)]
    pub platform: PlatformConfig,
    #[serde(default)]
    pub bt: BtConfig,
    /// The desktop runtime: how desktops boot as QEMU guests.
    #[serde(default)]
    pub desktop: crate::agent::desktop::DesktopConfig,
    /// TLS on the terminal port; off unless the server speaks it too.
    #[serde(default)]
    pub tls: crate::tls::AgentTlsConfig,
    /// Self-upgrade (1030): where versions live, how a new one is proven.
    #[serde(default)]
    pub upgrade: crate::agent::upgrade::config::UpgradeConfig,
}

/// BitTorrent: layers come from the server and from the other terminals of
/// the room. A closed LAN needs no DHT or UPnP; both stay off.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BtConfig {
    /// Port other peers reach this terminal on; 0 picks a free one.
    #[serde(default = "default_bt_port")]
    pub listen_port: u16,
    /// Seconds between 9025 progress reports while downloading; 1..=10.
    #[serde(default = "default_bt_progress")]
    pub progress_secs: u64,
    /// Bytes per second, 0 for unlimited.
    #[serde(default)]
    pub upload_limit: u32,
    #[serde(default)]
    pub download_limit: u32,
    /// Checking finished layers against the server's manifest:
    /// "if_published" (default), "required" or "off".
    #[serde(default)]
    pub manifest: crate::bt::manifest::ManifestPolicy,
    /// The server's manifest signing key (64 hex, `voi-server` logs it at
    /// start), flashed in at provisioning. When set, a layer becomes
    /// bootable only with a manifest this key signed and the layer matching
    /// it, whatever `manifest` says and whatever the transport.
    #[serde(default)]
    pub manifest_key: Option<String>,
    /// MiB of received data that may wait in memory for the disk writers,
    /// which write and hash pieces while the network goes on; 0 makes
    /// the receiving task write and hash each piece itself. 0..=1024.
    #[serde(default = "default_write_buffer_mib")]
    pub write_buffer_mib: usize,
}

impl Default for BtConfig {
    fn default() -> Self {
        BtConfig {
            listen_port: default_bt_port(),
            progress_secs: default_bt_progress(),
            upload_limit: 0,
            download_limit: 0,
            manifest: Default::default(),
            manifest_key: None,
            write_buffer_mib: default_write_buffer_mib(),
        }
    }
}

/// Measured on loopback (`voi-bench single --rounds 6`, 512 MiB): without
/// the queue the agent took a median of 0.78x plain librqbit's throughput,
/// with it and two writers 0.985x (median of 18 rounds); 16 MiB keeps a
/// terminal's RSS while downloading under 40 MB.
fn default_write_buffer_mib() -> usize {
    16
}

fn default_bt_port() -> u16 {
    6881
}
fn default_bt_progress() -> u64 {
    5
}

fn default_port() -> u16 {
    DEFAULT_PORT
}
fn default_data_dir() -> PathBuf {
    PathBuf::from("/var/lib/voi-agent")
}
fn default_heartbeat() -> u64 {
    10
}
fn default_client_type() -> u8 {
    2
}
fn default_request_timeout() -> u64 {
    10
}
fn default_backoff_cap() -> u64 {
    30
}
fn default_connect_retry_ms() -> u64 {
    1000
}
fn default_perf() -> u64 {
    60
}
fn default_confirm() -> u64 {
    90
}
fn default_margin() -> u64 {
    1024
}
fn default_threads() -> usize {
    2
}
fn default_soft_version() -> String {
    crate::agent::version::soft_version()
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config {path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("config: {0}")]
    Invalid(String),
}

impl AgentConfig {
    pub fn new(server_ip: impl Into<String>, data_dir: impl Into<PathBuf>) -> Self {
        AgentConfig {
            server_ip: server_ip.into(),
            server_port: default_port(),
            interface: None,
            mac: None,
            data_dir: data_dir.into(),
            heartbeat_secs: default_heartbeat(),
            client_type: default_client_type(),
            request_timeout_secs: default_request_timeout(),
            backoff_cap_secs: default_backoff_cap(),
            connect_retry_ms: default_connect_retry_ms(),
            performance_secs: default_perf(),
            change_confirm_secs: default_confirm(),
            disk_margin_mb: default_margin(),
            control_socket: None,
            worker_threads: default_threads(),
            soft_version: default_soft_version(),
            admin_password_md5: None,
            metrics_listen: None,
            log_format: Default::default(),
            platform: PlatformConfig::default(),
            bt: BtConfig::default(),
            tls: Default::default(),
            upgrade: Default::default(),
            desktop: Default::default(),
        }
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        let cfg: AgentConfig = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.into(),
            source,
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The manifest key, parsed (checked by `validate`).
    pub fn manifest_key(&self) -> Option<ed25519_dalek::VerifyingKey> {
        self.bt
            .manifest_key
            .as_deref()
            .and_then(|k| crate::bt::manifest::parse_public_key(k).ok())
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.desktop.validate().map_err(ConfigError::Invalid)?;
        if let Some(k) = &self.bt.manifest_key {
            crate::bt::manifest::parse_public_key(k)
                .map_err(|e| ConfigError::Invalid(format!("[bt] manifest_key: {e}")))?;
        }
        if self.tls.enabled {
            // Read the CA and check the pin now, not at the first connect.
            crate::tls::Connector::new(&self.tls, &self.server_ip)
                .map_err(|e| ConfigError::Invalid(format!("[tls]: {e}")))?;
        }
        if !(1..=10).contains(&self.heartbeat_secs) {
            return Err(ConfigError::Invalid(format!(
                "heartbeat_secs = {} is outside 1..=10; the server marks a terminal offline after 20 s",
                self.heartbeat_secs
            )));
        }
        if ![1, 2, 3, 5].contains(&self.client_type) {
            return Err(ConfigError::Invalid(format!(
                "client_type = {} (use 2 installed, 5 maintenance, 1 uefi, 3 windows)",
                self.client_type
            )));
        }
        if self.server_ip.trim().is_empty() {
            return Err(ConfigError::Invalid("server_ip is empty".into()));
        }
        if let Some(mac) = &self.mac {
            if crate::protocol::normalize_mac(mac).is_none() {
                return Err(ConfigError::Invalid(format!(
                    "mac = {mac:?} is not a MAC address"
                )));
            }
        }
        if self.worker_threads == 0 {
            return Err(ConfigError::Invalid(
                "worker_threads must be at least 1".into(),
            ));
        }
        if !(1..=10).contains(&self.bt.progress_secs) {
            return Err(ConfigError::Invalid(format!(
                "bt.progress_secs = {} is outside 1..=10",
                self.bt.progress_secs
            )));
        }
        if self.bt.write_buffer_mib > 1024 {
            return Err(ConfigError::Invalid(format!(
                "bt.write_buffer_mib = {} is outside 0..=1024",
                self.bt.write_buffer_mib
            )));
        }
        if self.request_timeout_secs == 0 || self.backoff_cap_secs == 0 {
            return Err(ConfigError::Invalid("timeouts must be at least 1 s".into()));
        }
        Ok(())
    }

    pub fn control_socket_path(&self) -> PathBuf {
        self.control_socket
            .clone()
            .unwrap_or_else(|| self.data_dir.join("control.sock"))
    }

    pub fn disk_dir(&self) -> PathBuf {
        self.data_dir.join("disks")
    }

    /// The BitTorrent engine's own resume data.
    pub fn bt_state_dir(&self) -> PathBuf {
        self.data_dir.join("bt")
    }

    pub fn state_path(&self) -> PathBuf {
        self.data_dir.join("state.json")
    }

    pub fn journal_path(&self) -> PathBuf {
        self.platform
            .journal
            .clone()
            .unwrap_or_else(|| self.data_dir.join("platform-journal.jsonl"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_toml_gets_defaults() {
        let c: AgentConfig = toml::from_str(r#"server_ip = "10.0.0.1""#).expect("ok");
        assert_eq!(c.server_port, 50007);
        assert_eq!(c.heartbeat_secs, 10);
        c.validate().expect("valid");
    }

    #[test]
    fn heartbeat_above_ten_is_refused() {
        let c: AgentConfig = toml::from_str("server_ip = \"x\"\nheartbeat_secs = 20").expect("ok");
        assert!(c.validate().is_err());
    }

    #[test]
    fn write_buffer_defaults_to_16_mib_and_a_huge_one_is_refused() {
        let c: AgentConfig = toml::from_str(r#"server_ip = "x""#).expect("ok");
        assert_eq!(c.bt.write_buffer_mib, 16);
        let c: AgentConfig =
            toml::from_str("server_ip = \"x\"\n[bt]\nwrite_buffer_mib = 4096").expect("ok");
        let e = c.validate().expect_err("refused");
        assert!(e.to_string().contains("write_buffer_mib"), "{e}");
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(toml::from_str::<AgentConfig>("server_ip = \"x\"\nhartbeat = 3").is_err());
    }

    #[test]
    fn platform_modes() {
        let c: AgentConfig = toml::from_str(
            "server_ip = \"x\"\n[platform]\npower = \"recording\"\nnetwork = \"linux\"",
        )
        .expect("ok");
        assert_eq!(c.platform.power, EffectMode::Recording);
        assert_eq!(c.platform.boot, EffectMode::Linux);
    }
}
