//! The agent process: identity, persisted state, the reconnect loop, and the
//! local control socket.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::config::AgentConfig;
use crate::platform::{Platform, SelectedPlatform};
use crate::protocol::messages::{DateTimeResp, DesktopGroup, TerminalConfig};
use crate::protocol::{normalize_mac, Envelope, Frame};
use crate::session::backoff::Backoff;
use crate::session::{self, Link, SessionEnd};
use crate::state::{AgentState, StateStore};

/// What `ctl status` shows about the connection; not persisted.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct LiveStatus {
    pub session: String,
    pub server: String,
    pub logged_in_since: Option<String>,
    pub last_heartbeat_answer: Option<String>,
    pub logins: u64,
    pub last_end: Option<String>,
}

pub struct Agent {
    pub cfg: AgentConfig,
    pub mac: String,
    pub state: StateStore,
    pub platform: Arc<dyn Platform>,
    pub shutdown: CancellationToken,
    /// Commands are applied one at a time, across sessions.
    pub command_lock: tokio::sync::Mutex<()>,
    live: Mutex<LiveStatus>,
    link: Mutex<Option<Link>>,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("cannot determine the terminal's MAC: {0}")]
    Mac(String),
    #[error("data dir {0}: {1}")]
    DataDir(std::path::PathBuf, std::io::Error),
}

pub fn platform_name() -> &'static str {
    if cfg!(target_arch = "aarch64") || cfg!(target_arch = "arm") {
        "arm"
    } else {
        "x86"
    }
}

impl Agent {
    pub fn new(cfg: AgentConfig) -> Result<Arc<Agent>, AgentError> {
        cfg.validate()?;
        std::fs::create_dir_all(&cfg.data_dir)
            .map_err(|e| AgentError::DataDir(cfg.data_dir.clone(), e))?;
        let mac = match &cfg.mac {
            Some(m) => {
                normalize_mac(m).ok_or_else(|| AgentError::Mac(format!("{m:?} is not a MAC")))?
            }
            None => {
                let info = crate::netinfo::detect(cfg.interface.as_deref())
                    .map_err(|e| AgentError::Mac(e.to_string()))?;
                if info.mac == "00:00:00:00:00:00" {
                    return Err(AgentError::Mac(format!(
                        "interface {} has no hardware address; set `mac` in the config",
                        info.name
                    )));
                }
                info.mac
            }
        };
        let (state, warning) = StateStore::open(&cfg.state_path())
            .map_err(|e| AgentError::DataDir(cfg.state_path(), e))?;
        if let Some(w) = warning {
            log::error!("{w}");
        }
        let platform = SelectedPlatform::from_config(&cfg);
        Ok(Arc::new(Agent {
            mac,
            state,
            platform,
            shutdown: CancellationToken::new(),
            command_lock: tokio::sync::Mutex::new(()),
            live: Mutex::new(LiveStatus {
                session: "starting".into(),
                ..Default::default()
            }),
            link: Mutex::new(None),
            cfg,
        }))
    }

    /// Where to connect: a server address set by the server itself wins over
    /// the config file's.
    pub fn server_addr(&self) -> String {
        let ip = self
            .state
            .read(|s| s.server_ip_override.clone())
            .unwrap_or_else(|| self.cfg.server_ip.clone());
        match ip.parse::<IpAddr>() {
            Ok(IpAddr::V6(v6)) => format!("[{v6}]:{}", self.cfg.server_port),
            _ => format!("{ip}:{}", self.cfg.server_port),
        }
    }

    /// The IPv4 we report: the interface's, else the socket's local address.
    pub fn report_ip(&self, local_ip: &str) -> String {
        self.cfg
            .interface
            .as_deref()
            .and_then(|n| crate::netinfo::detect(Some(n)).ok())
            .and_then(|i| i.ipv4)
            .map(|ip| ip.to_string())
            .unwrap_or_else(|| local_ip.to_string())
    }

    /// Free space of the data dir in GB, as 9004 and 9006 report it.
    pub fn disk_residue_gb(&self) -> f64 {
        match nix::sys::statvfs::statvfs(&self.cfg.data_dir) {
            Ok(s) => {
                let bytes = s.blocks_available() as f64 * s.fragment_size() as f64;
                (bytes / 1e9 * 100.0).round() / 100.0
            }
            Err(_) => 0.0,
        }
    }

    pub fn persist(&self, f: impl FnOnce(&mut AgentState)) {
        if let Err(e) = self.state.update(f) {
            log::error!("{e}");
        }
    }

    pub fn set_link(&self, link: Option<Link>) {
        *self.link.lock().unwrap_or_else(|p| p.into_inner()) = link;
    }

    pub fn link(&self) -> Option<Link> {
        self.link.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn live(&self) -> LiveStatus {
        self.live.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set_live(&self, f: impl FnOnce(&mut LiveStatus)) {
        f(&mut self.live.lock().unwrap_or_else(|p| p.into_inner()));
    }

    pub fn logged_in(&self) {
        let now = chrono::Local::now().to_rfc3339();
        self.set_live(|l| {
            l.session = "logged_in".into();
            l.logged_in_since = Some(now.clone());
            l.logins += 1;
        });
        self.persist(|s| s.last_login = Some(now));
    }

    pub fn heartbeat_answered(&self, frame: &Frame) {
        let now = chrono::Local::now().to_rfc3339();
        self.set_live(|l| l.last_heartbeat_answer = Some(now));
        if let Ok(env) = frame.json::<Envelope<serde_json::Value>>() {
            if let Ok(Some(dt)) = env.data_as::<DateTimeResp>() {
                // In memory only: a write per heartbeat would wear the flash.
                self.set_live(|l| l.session = format!("logged_in (server time {})", dt.datetime));
            }
        }
    }

    pub fn desktop_groups_received(&self, groups: Vec<DesktopGroup>) {
        log::info!("server lists {} desktop group(s)", groups.len());
        self.persist(|s| s.desktop_groups = groups);
    }

    /// Applies a configuration pulled with 9005. Returns a session end when
    /// the server moved us elsewhere.
    pub async fn apply_server_config(&self, cfg: TerminalConfig) -> Option<SessionEnd> {
        let new_server = cfg.setup_info.program.server_ip.trim().to_string();
        let current = self
            .state
            .read(|s| s.server_ip_override.clone())
            .unwrap_or_else(|| self.cfg.server_ip.clone());
        let moved =
            !new_server.is_empty() && new_server != current && new_server.parse::<IpAddr>().is_ok();
        log::info!(
            "applying server configuration version {} (terminal_id {}, name {:?})",
            cfg.conf_version,
            cfg.terminal_id,
            cfg.name
        );
        self.persist(|s| {
            s.terminal = cfg;
            if moved {
                s.server_ip_override = Some(new_server.clone());
            }
        });
        moved.then(|| SessionEnd::Reconnect(format!("server moved to {new_server}")))
    }

    /// Connects, runs sessions, and reconnects until `shutdown` fires.
    pub async fn run(self: Arc<Self>) {
        let control = crate::control::serve(self.clone());
        let control = match control {
            Ok(task) => Some(task),
            Err(e) => {
                log::error!(
                    "control socket {}: {e}",
                    self.cfg.control_socket_path().display()
                );
                None
            }
        };
        let mut connect_backoff = Backoff::new(
            Duration::from_millis(100),
            Duration::from_millis(self.cfg.connect_retry_ms.max(100)),
        );
        let mut session_backoff = Backoff::new(
            Duration::from_millis(200),
            Duration::from_secs(self.cfg.backoff_cap_secs),
        );
        while !self.shutdown.is_cancelled() {
            let addr = self.server_addr();
            self.set_live(|l| {
                l.session = "connecting".into();
                l.server = addr.clone();
            });
            let connect = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(&addr));
            let stream = tokio::select! {
                r = connect => r,
                _ = self.shutdown.cancelled() => break,
            };
            let stream = match stream {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    log::debug!("connect {addr}: {e}");
                    self.pause(connect_backoff.next_delay()).await;
                    continue;
                }
                Err(_) => {
                    log::debug!("connect {addr}: timed out");
                    self.pause(connect_backoff.next_delay()).await;
                    continue;
                }
            };
            connect_backoff.reset();
            let started = Instant::now();
            let end = session::run(self.clone(), stream).await;
            let text = format!("{end:?}");
            self.set_live(|l| {
                l.session = "disconnected".into();
                l.last_end = Some(text.clone());
            });
            match &end {
                SessionEnd::Shutdown => break,
                e if e.is_planned() => {
                    log::info!("session ended: {text}; reconnecting now");
                    session_backoff.reset();
                    continue;
                }
                _ => {}
            }
            if started.elapsed() > Duration::from_secs(60) {
                session_backoff.reset();
            }
            let delay = session_backoff.next_delay();
            log::warn!("session ended: {text}; reconnecting in {delay:?}");
            self.pause(delay).await;
        }
        if let Some(task) = control {
            task.abort();
        }
        let _ = std::fs::remove_file(self.cfg.control_socket_path());
    }

    async fn pause(&self, d: Duration) {
        self.set_live(|l| l.session = format!("waiting {} ms to reconnect", d.as_millis()));
        tokio::select! {
            _ = tokio::time::sleep(d) => {}
            _ = self.shutdown.cancelled() => {}
        }
    }
}
