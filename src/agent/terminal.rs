//! The agent's shared state: identity, persisted state, the platform, the
//! desktops, the transfers and the current link. Everything above it
//! (session, commands, control socket, supervisor) works through an `Agent`.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

use crate::agent::config::AgentConfig;
use crate::agent::desktops::Desktops;
use crate::agent::platform::{NetworkConfig, Platform, SelectedPlatform};
use crate::agent::session::connection::Link;
use crate::agent::session::end::SessionEnd;
use crate::agent::state::{AgentState, PendingChange, StateStore};
use crate::disk::DiskStore;
use crate::protocol::messages::{DateTimeResp, DesktopGroup, TerminalConfig};
use crate::protocol::{normalize_mac, Envelope, Frame};

/// What `ctl status` shows about the connection; not persisted.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct LiveStatus {
    pub session: String,
    pub server: String,
    pub logged_in_since: Option<String>,
    pub last_heartbeat_answer: Option<String>,
    pub logins: u64,
    pub last_end: Option<String>,
    /// Why the server could not be reached, while it cannot.
    pub last_error: Option<String>,
    /// Since when it cannot be reached (local time, RFC 3339).
    pub unreachable_since: Option<String>,
    /// Logged in, but an operator has not accepted this terminal yet.
    pub pending_admission: bool,
    /// The last 1901 notice: what will happen, why, and when (ms since
    /// the epoch), for the screen's countdown.
    pub power_notice: Option<PowerNoticeLive>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct PowerNoticeLive {
    pub action: String,
    pub reason: String,
    pub at_ms: u64,
}

pub struct Agent {
    pub cfg: AgentConfig,
    pub mac: String,
    pub state: StateStore,
    pub platform: Arc<dyn Platform>,
    pub desktops: Arc<Desktops>,
    /// Boots and supervises the desktop guest.
    pub desktop: Arc<crate::agent::desktop::DesktopRuntime>,
    /// Set once the BitTorrent engine runs (see `distribution::start`).
    pub transfers: std::sync::OnceLock<Arc<crate::agent::transfers::tasks::Transfers>>,
    pub shutdown: CancellationToken,
    /// Commands are applied one at a time, across sessions.
    pub command_lock: tokio::sync::Mutex<()>,
    live: Mutex<LiveStatus>,
    link: Mutex<Option<Link>>,
    /// Wakes the pending-change watchdog (a change was armed or confirmed).
    change_armed: tokio::sync::Notify,
    /// This agent's hold on its data dir; `run` gives it up when it ends.
    pub(crate) dir_lock: Mutex<Option<crate::fsutil::DirLock>>,
    /// The auto-boot countdown, while it runs: when it ends (ms since the
    /// epoch), and how the terminal's screen stops it (any key).
    pub auto_boot_deadline_ms: Mutex<Option<u64>>,
    pub auto_boot_cancel: CancellationToken,
    /// Set when the agent stops to be started again (an upgrade).
    restart: std::sync::atomic::AtomicBool,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Config(#[from] crate::agent::config::ConfigError),
    #[error("cannot determine the terminal's MAC: {0}")]
    Mac(String),
    #[error("data dir {0}: {1}")]
    DataDir(std::path::PathBuf, std::io::Error),
    #[error("disks: {0}")]
    Disks(#[from] crate::disk::DiskError),
    #[error("{0}")]
    Busy(String),
}

/// A name that is also a valid host name label becomes the host name.
pub fn is_hostname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && !name.starts_with('-')
        && !name.ends_with('-')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// Bytes in the protocol's GB (2^30), to two decimals.
pub fn gb(bytes: u64) -> f64 {
    (bytes as f64 / (1u64 << 30) as f64 * 100.0).round() / 100.0
}

pub fn platform_name() -> &'static str {
    crate::upgrade_package::this_platform()
}

impl Agent {
    pub fn new(cfg: AgentConfig) -> Result<Arc<Agent>, AgentError> {
        cfg.validate()?;
        std::fs::create_dir_all(&cfg.data_dir)
            .map_err(|e| AgentError::DataDir(cfg.data_dir.clone(), e))?;
        // Before anything else is opened: a second agent on this dir
        // touches nothing.
        let dir_lock =
            crate::fsutil::lock_dir(&cfg.data_dir, "voi-agent").map_err(AgentError::Busy)?;
        let mac = match &cfg.mac {
            Some(m) => {
                normalize_mac(m).ok_or_else(|| AgentError::Mac(format!("{m:?} is not a MAC")))?
            }
            None => {
                let info = crate::agent::interfaces::detect(cfg.interface.as_deref())
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
        let desktops = Arc::new(Desktops::open(DiskStore::new(
            cfg.disk_dir(),
            cfg.disk_margin_mb << 20,
        )?)?);
        let desktop = crate::agent::desktop::DesktopRuntime::new(
            cfg.desktop.clone(),
            &cfg.data_dir,
            desktops.clone(),
        );
        Ok(Arc::new(Agent {
            desktop,
            mac,
            state,
            platform,
            desktops,
            transfers: std::sync::OnceLock::new(),
            shutdown: CancellationToken::new(),
            command_lock: tokio::sync::Mutex::new(()),
            live: Mutex::new(LiveStatus {
                session: "starting".into(),
                ..Default::default()
            }),
            link: Mutex::new(None),
            change_armed: tokio::sync::Notify::new(),
            dir_lock: Mutex::new(Some(dir_lock)),
            auto_boot_deadline_ms: Mutex::new(None),
            auto_boot_cancel: CancellationToken::new(),
            restart: std::sync::atomic::AtomicBool::new(false),
            cfg,
        }))
    }

    /// The server's address: one set by the server itself (1005, 9005) wins
    /// over the config file's.
    pub fn server_ip(&self) -> String {
        self.state
            .read(|s| s.server_ip_override.clone())
            .unwrap_or_else(|| self.cfg.server_ip.clone())
    }

    /// Stops the agent so that the service manager starts it again.
    pub fn request_restart(&self) {
        self.restart
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.shutdown.cancel();
    }

    pub fn restart_requested(&self) -> bool {
        self.restart.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn server_port(&self) -> u16 {
        self.state
            .read(|s| s.server_port_override)
            .unwrap_or(self.cfg.server_port)
    }

    pub fn server_addr(&self) -> String {
        let ip = self.server_ip();
        let port = self.server_port();
        match ip.parse::<IpAddr>() {
            Ok(IpAddr::V6(v6)) => format!("[{v6}]:{port}"),
            _ => format!("{ip}:{port}"),
        }
    }

    /// The IPv4 we report: the interface's, else the socket's local address.
    pub fn report_ip(&self, local_ip: &str) -> String {
        self.cfg
            .interface
            .as_deref()
            .and_then(|n| crate::agent::interfaces::detect(Some(n)).ok())
            .and_then(|i| i.ipv4)
            .map(|ip| ip.to_string())
            .unwrap_or_else(|| local_ip.to_string())
    }

    /// Free space of the data dir as 9004 and 9006 report it: the file
    /// system's, in the protocol's GB (2^30 bytes, the unit of a data
    /// disk's `size`). What thin data disks may still grow into is not
    /// taken off: the vendor's server ignores a 0 and keeps a stale figure,
    /// so an overcommit goes to the notices instead (add_data_disk).
    pub fn disk_residue_gb(&self) -> f64 {
        match nix::sys::statvfs::statvfs(&self.cfg.data_dir) {
            Ok(s) => {
                // u64 here, narrower on 32-bit ARM.
                #[allow(clippy::unnecessary_cast)]
                let free = s.blocks_available() as u64 * s.fragment_size() as u64;
                gb(free)
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

    pub(crate) fn set_live(&self, f: impl FnOnce(&mut LiveStatus)) {
        f(&mut self.live.lock().unwrap_or_else(|p| p.into_inner()));
    }

    pub fn logged_in(&self) {
        let now = chrono::Local::now().to_rfc3339();
        self.set_live(|l| {
            l.session = "logged_in".into();
            l.logged_in_since = Some(now.clone());
            l.logins += 1;
        });
        let confirmed = self.state.read(|s| s.pending_change.clone());
        self.persist(|s| {
            s.last_login = Some(now);
            if let Some(c) = &confirmed {
                s.pending_change = None;
                s.notice(format!("confirmed by a login: {}", describe(c)));
            }
        });
        if let Some(c) = confirmed {
            log::info!("confirmed by a login: {}", describe(&c));
            self.change_armed.notify_one();
        }
    }

    /// A name for a terminal the server never named: the host name if it
    /// fits the 13-byte limit, else "PC-" and the MAC's last three bytes.
    pub fn default_name(&self) -> String {
        let host = nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .filter(|h| !h.is_empty() && h.len() <= 13);
        host.unwrap_or_else(|| format!("PC-{}", self.mac.replace(':', "").get(6..).unwrap_or("0")))
    }

    pub fn interface_name(&self) -> Result<String, crate::agent::interfaces::NetInfoError> {
        match &self.cfg.interface {
            Some(i) => Ok(i.clone()),
            None => crate::agent::interfaces::detect(None).map(|i| i.name),
        }
    }

    /// Runs a platform effect off the async threads (it may run `ip`,
    /// write files, wait for networkd).
    async fn platform_effect(
        &self,
        effect: impl FnOnce(&dyn crate::agent::platform::Platform) -> crate::agent::platform::PlatformResult
            + Send
            + 'static,
    ) -> Result<(), String> {
        let platform = self.platform.clone();
        tokio::task::spawn_blocking(move || effect(platform.as_ref()))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())
    }

    async fn apply_network(&self, net: &NetworkConfig) -> Result<(), String> {
        let net = net.clone();
        self.platform_effect(move |p| p.apply_network(&net)).await
    }

    /// Puts `interface` on DHCP (the screen's settings, a 9005 is_dhcp).
    pub(crate) async fn apply_dhcp(&self, interface: &str) -> Result<(), String> {
        let interface = interface.to_string();
        self.platform_effect(move |p| p.apply_dhcp(&interface))
            .await
    }

    /// A 9005 with `is_dhcp: 1` while a static address is set here: back
    /// to DHCP through the same path as 1012, restored unless a login on
    /// the new address confirms it (issue 39.2).
    async fn change_to_dhcp(&self, old: NetworkConfig) -> Result<(), String> {
        let deadline = chrono::Utc::now().timestamp() + self.cfg.change_confirm_secs as i64;
        let interface = old.interface.clone();
        let change = PendingChange::Dhcp {
            interface: interface.clone(),
            old,
            deadline,
        };
        self.state
            .update(|s| {
                s.pending_change = Some(change.clone());
                s.network = None;
                s.terminal.is_dhcp = 1;
            })
            .map_err(|e| e.to_string())?;
        log::info!("the server puts this terminal back on DHCP (9005 is_dhcp 1) on {interface}");
        if let Err(e) = self.apply_dhcp(&interface).await {
            let msg = format!("switching {interface} to DHCP failed: {e}");
            self.rollback(change, &msg).await;
            return Err(msg);
        }
        self.change_armed.notify_one();
        Ok(())
    }

    /// update_ip after its reply: record the intent, apply, and arm the
    /// watchdog that restores the old network unless a login confirms it.
    pub async fn change_network(
        &self,
        net: NetworkConfig,
        conf_version: i64,
        mask: String,
    ) -> Result<(), String> {
        let old = self.state.read(|s| s.network.clone()).or_else(|| {
            crate::agent::interfaces::current_network(&net.interface, &self.cfg.platform.etc_dir)
        });
        let deadline = chrono::Utc::now().timestamp() + self.cfg.change_confirm_secs as i64;
        self.state
            .update(|s| {
                s.pending_change = Some(PendingChange::Network {
                    old: old.clone(),
                    new: net.clone(),
                    deadline,
                });
                s.network = Some(net.clone());
                s.terminal.is_dhcp = 0;
                s.terminal.ip = net.address.to_string();
                s.terminal.mask = mask;
                s.terminal.gateway = net.gateway.map(|g| g.to_string()).unwrap_or_default();
                s.terminal.dns1 = net.dns.first().map(|d| d.to_string()).unwrap_or_default();
                s.terminal.dns2 = net.dns.get(1).map(|d| d.to_string()).unwrap_or_default();
                s.terminal.conf_version = conf_version;
            })
            .map_err(|e| e.to_string())?;
        log::info!(
            "applying network {}/{} via {:?}",
            net.address,
            net.prefix_len,
            net.gateway
        );
        if let Err(e) = self.apply_network(&net).await {
            let msg = format!("applying {}/{} failed: {e}", net.address, net.prefix_len);
            self.rollback(
                PendingChange::Network {
                    old,
                    new: net,
                    deadline,
                },
                &msg,
            )
            .await;
            return Err(msg);
        }
        self.change_armed.notify_one();
        Ok(())
    }

    /// update_config with a new server: switch, and come back unless a
    /// login on the new server confirms it.
    /// Moves to another server (and port, from the screen), rolled back
    /// when no login there succeeds within `change_confirm_secs`.
    pub fn move_server(&self, new_ip: String, new_port: Option<u16>) {
        let (old, old_port) = self
            .state
            .read(|s| (s.server_ip_override.clone(), s.server_port_override));
        let new_port = new_port.or(old_port);
        let deadline = chrono::Utc::now().timestamp() + self.cfg.change_confirm_secs as i64;
        self.persist(|s| {
            s.server_ip_override = Some(new_ip.clone());
            s.server_port_override = new_port;
            s.terminal.setup_info.program.server_ip = new_ip.clone();
            s.pending_change = Some(PendingChange::Server {
                old,
                new: new_ip,
                deadline,
                old_port,
                new_port,
            });
        });
        self.change_armed.notify_one();
    }

    async fn rollback(&self, change: PendingChange, why: &str) {
        let text = format!("rolled back {}: {why}", describe(&change));
        log::error!("{text}");
        match &change {
            PendingChange::Network { old: Some(old), .. } | PendingChange::Dhcp { old, .. } => {
                if let Err(e) = self.apply_network(old).await {
                    log::error!(
                        "restoring {}/{} failed too: {e}",
                        old.address,
                        old.prefix_len
                    );
                }
                let old = old.clone();
                self.persist(|s| {
                    s.network = Some(old.clone());
                    s.terminal.is_dhcp = 0;
                    s.terminal.ip = old.address.to_string();
                    s.terminal.gateway = old.gateway.map(|g| g.to_string()).unwrap_or_default();
                    s.terminal.dns1 = old.dns.first().map(|d| d.to_string()).unwrap_or_default();
                    s.terminal.dns2 = old.dns.get(1).map(|d| d.to_string()).unwrap_or_default();
                });
            }
            PendingChange::Network { old: None, .. } => {
                log::error!("the previous network is unknown; keeping the new one");
            }
            PendingChange::Server { old, old_port, .. } => {
                let (old, old_port) = (old.clone(), *old_port);
                self.persist(|s| {
                    s.terminal.setup_info.program.server_ip = old.clone().unwrap_or_default();
                    s.server_ip_override = old;
                    s.server_port_override = old_port;
                });
            }
        }
        self.persist(|s| {
            s.pending_change = None;
            s.notice(text);
        });
    }

    /// Restores the previous network or server when a change is not
    /// confirmed by a login in time. A change found at start (the agent
    /// died mid-change) is applied again first, then watched the same way.
    pub(crate) async fn watch_pending_change(self: Arc<Self>) {
        match self.state.read(|s| s.pending_change.clone()) {
            Some(PendingChange::Network { new, .. }) => {
                log::warn!(
                    "resuming an unconfirmed network change to {}/{}",
                    new.address,
                    new.prefix_len
                );
                if let Err(e) = self.apply_network(&new).await {
                    log::error!("re-applying the pending network: {e}");
                }
            }
            Some(PendingChange::Dhcp { interface, .. }) => {
                log::warn!("resuming an unconfirmed switch to DHCP on {interface}");
                if let Err(e) = self.apply_dhcp(&interface).await {
                    log::error!("re-applying DHCP: {e}");
                }
            }
            _ => {}
        }
        loop {
            let pending = self.state.read(|s| s.pending_change.clone());
            let wait = match &pending {
                Some(p) => Duration::from_secs(
                    (p.deadline() - chrono::Utc::now().timestamp()).max(0) as u64,
                ),
                None => Duration::from_secs(3600),
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {
                    let still = self.state.read(|s| s.pending_change.clone());
                    if let (Some(p), Some(s)) = (&pending, &still) {
                        if p == s {
                            let why = format!("no login within {} s", self.cfg.change_confirm_secs);
                            self.rollback(s.clone(), &why).await;
                        }
                    }
                }
                _ = self.change_armed.notified() => {}
                _ = self.shutdown.cancelled() => return,
            }
        }
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

    /// A fresh 9007 answer: persist it, run the update decision, and carry
    /// out its local part (merges, deletions) off the async threads.
    pub async fn desktop_groups_received(self: &Arc<Self>, groups: Vec<DesktopGroup>) {
        let groups = strict_groups(groups);
        log::info!("server lists {} desktop group(s)", groups.len());
        let before = self.state.read(|s| s.desktop_groups.clone());
        let listed: Vec<String> = groups
            .iter()
            .map(|g| g.desktop_group_uuid.clone())
            .collect();
        self.persist(|s| s.desktop_groups = groups.clone());
        let me = self.clone();
        let plan = tokio::task::spawn_blocking(move || {
            let transfers = me.transfers.get().cloned();
            me.desktops.apply_groups(&groups, |layers| {
                // A layer being seeded is released before the chain deletes
                // or rewrites it.
                if let Some(t) = transfers {
                    tokio::runtime::Handle::current().block_on(t.release(layers));
                }
            })
        })
        .await;
        match plan {
            Ok(Ok(plan)) => {
                // Which group's absence removed which layer, one line each.
                for layer in &plan.delete {
                    let uuid = crate::disk::name::LayerName::parse(layer)
                        .map(|n| n.uuid_str())
                        .unwrap_or_default();
                    let gone: Vec<String> = before
                        .iter()
                        .filter(|g| g.disks.iter().any(|d| d.uuid == uuid))
                        .filter(|g| !listed.contains(&g.desktop_group_uuid))
                        .map(|g| format!("{:?} ({})", g.desktop_group_name, g.desktop_group_uuid))
                        .collect();
                    let why = plan.reasons.get(layer).cloned().unwrap_or_else(|| {
                        "the update decision dropped it without a reason (a bug)".into()
                    });
                    if gone.is_empty() {
                        log::info!("deleted {layer}: {why}");
                    } else {
                        log::info!(
                            "deleted {layer}: the server no longer lists group {}",
                            gone.join(", ")
                        );
                    }
                }
                // A transfer restored before this decision may stand for
                // a layer it just deleted (or one deleted while the agent
                // was down): it is dropped, so the fetch below starts.
                if let Some(t) = self.transfers.get() {
                    t.drop_broken().await;
                }
                if !plan.download.is_empty() {
                    log::info!("{} layer(s) to download", plan.download.len());
                }
                self.persist(|s| s.pending_downloads = plan.download);
            }
            Ok(Err(e)) => {
                log::error!("applying the desktop list: {e}");
                self.persist(|s| s.notice(format!("desktop update failed: {e}")));
            }
            Err(e) => log::error!("desktop update task: {e}"),
        }
    }

    /// 9026, 9011 and 9012: what this terminal holds.
    pub async fn report_desktops(self: &Arc<Self>, link: &Link) {
        use crate::protocol::messages::{GetDesktopInfoReq, PutDesktopGroupListReq};
        use crate::protocol::ServiceCode;
        let groups = self.state.read(|s| s.desktop_groups.clone());
        let me = self.clone();
        let g2 = groups.clone();
        let facts = tokio::task::spawn_blocking(move || {
            Ok::<_, crate::disk::DiskError>((
                me.desktops.system_disk_uuids(&g2)?,
                me.desktops.desktop_infos(&me.mac, &g2)?,
            ))
        })
        .await;
        let (uuids, infos) = match facts {
            Ok(Ok(f)) => f,
            Ok(Err(e)) => {
                log::warn!("cannot read the disk chains for reporting: {e}");
                return;
            }
            Err(_) => return,
        };
        let body = PutDesktopGroupListReq {
            sys_disk_uuids: uuids.join(","),
            mac: self.mac.clone(),
        };
        if let Err(e) = link.request(ServiceCode::PutDesktopGroupList, &body).await {
            log::warn!("put_desktop_group_list: {e}");
        }
        for info in &infos {
            if let Err(e) = link.request(ServiceCode::SyncDesktopInfo, info).await {
                log::warn!("sync_desktop_info: {e}");
            }
        }
        let default = groups
            .iter()
            .find(|g| g.default_desktop_group)
            .or(groups.first())
            .and_then(|g| {
                g.disks
                    .iter()
                    .find(|d| d.disk_type == 0 && uuids.contains(&d.uuid))
            });
        if let Some(d) = default {
            let req = GetDesktopInfoReq {
                mac: Some(self.mac.clone()),
                boot_disk: format!("{}_0_{}", d.prefix, d.uuid),
            };
            match link.request(ServiceCode::GetDesktopInfo, &req).await {
                Ok((_, env)) if env.is_ok() => self.persist(|s| s.desktop_info = env.data),
                Ok((_, env)) => log::info!("get_desktop_info: {} {}", env.code, env.msg),
                Err(e) => log::warn!("get_desktop_info: {e}"),
            }
        }
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
        // A name becomes the host name, as 1004's does.
        let old_name = self.state.read(|s| s.terminal.name.clone());
        if cfg.name != old_name && is_hostname(&cfg.name) {
            if let Err(e) = self.platform.set_hostname(&cfg.name) {
                log::warn!("9005 names this terminal {:?}; set hostname: {e}", cfg.name);
            }
        }
        let mut cfg = cfg;
        let back_to_dhcp = if cfg.is_dhcp == 1 {
            self.state.read(|s| s.network.clone())
        } else {
            None
        };
        self.persist(|s| {
            // Without a static address set here (1012), the terminal's
            // address is DHCP's: the `ip` in 9005 is the server's record of
            // where the session came from, not an order.
            if s.network.is_none() {
                let mine = &s.terminal;
                if cfg.ip != mine.ip && !cfg.ip.is_empty() {
                    log::info!(
                        "9005 names address {}; this terminal's address is not static, so it keeps {}",
                        cfg.ip,
                        if mine.ip.is_empty() { "what DHCP gives it" } else { &mine.ip }
                    );
                }
                cfg.ip = mine.ip.clone();
                cfg.is_dhcp = 1;
                cfg.mask = mine.mask.clone();
                cfg.gateway = mine.gateway.clone();
                cfg.dns1 = mine.dns1.clone();
                cfg.dns2 = mine.dns2.clone();
            }
            if back_to_dhcp.is_some() {
                // `change_to_dhcp` below sets the network fields.
                cfg.ip = s.terminal.ip.clone();
                cfg.mask = s.terminal.mask.clone();
                cfg.gateway = s.terminal.gateway.clone();
            }
            s.terminal = cfg;
            if moved {
                s.server_ip_override = Some(new_server.clone());
            }
        });
        if let Some(old) = back_to_dhcp {
            return match self.change_to_dhcp(old).await {
                // A new address, maybe: log in again from it, which
                // confirms the change.
                Ok(()) => Some(SessionEnd::Reconnect("back on DHCP (9005)".into())),
                Err(e) => {
                    log::error!("{e}");
                    None
                }
            };
        }
        moved.then(|| SessionEnd::Reconnect(format!("server moved to {new_server}")))
    }
}

fn describe(c: &PendingChange) -> String {
    match c {
        PendingChange::Network { new, .. } => {
            format!("network change to {}/{}", new.address, new.prefix_len)
        }
        PendingChange::Dhcp { interface, .. } => format!("switch to DHCP on {interface}"),
        PendingChange::Server { new, new_port, .. } => match new_port {
            Some(p) => format!("move to server {new}:{p}"),
            None => format!("move to server {new}"),
        },
    }
}

/// A server's identifier as this agent uses it (file names, QEMU's
/// `-name`, logs): hex digits and hyphens, 1 to 64 of them. The vendor's
/// own uuids are not always canonical ("…-971a-2222222222"), so this is a
/// character set and a length, not a uuid parse.
pub fn strict_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
}

/// What a server says a desktop is called, as this agent keeps it: no
/// control characters, at most 256 characters.
fn strict_name(name: &str) -> String {
    name.chars().filter(|c| !c.is_control()).take(256).collect()
}

/// The 9007 list through strict types before anything uses it (issue
/// 38.11): a group whose uuid, or one of whose disks' uuid, is not an
/// identifier is dropped with a warning (a rogue server's `,process=…`
/// reached QEMU's `-name`); names lose their control characters.
pub fn strict_groups(groups: Vec<DesktopGroup>) -> Vec<DesktopGroup> {
    groups
        .into_iter()
        .filter_map(|mut g| {
            let bad_disk = g.disks.iter().find(|d| !strict_id(&d.uuid));
            if !strict_id(&g.desktop_group_uuid) || bad_disk.is_some() {
                log::warn!(
                    "ignoring desktop group {:?}: {} is not an identifier (hex digits and hyphens)",
                    crate::cli_support::escape_controls(
                        &g.desktop_group_name.chars().take(64).collect::<String>()
                    ),
                    crate::cli_support::escape_controls(
                        &bad_disk
                            .map(|d| d.uuid.clone())
                            .unwrap_or_else(|| g.desktop_group_uuid.clone())
                            .chars()
                            .take(80)
                            .collect::<String>()
                    )
                );
                return None;
            }
            g.desktop_group_name = strict_name(&g.desktop_group_name);
            g.desktop_name = strict_name(&g.desktop_name);
            g.desktop_group_desc = strict_name(&g.desktop_group_desc);
            g.template_name = strict_name(&g.template_name);
            Some(g)
        })
        .collect()
}

#[cfg(test)]
mod strict_tests {
    use super::*;

    #[test]
    fn a_group_with_a_made_up_uuid_is_dropped_and_names_are_cleaned() {
        let mut good: DesktopGroup = serde_json::from_value(serde_json::json!({
            "desktop_group_name": "Math\u{1b}[2J lab",
            "desktop_group_uuid": "92f9d1ba-cb4a-41ba-971a-2222222222",
            "os_sys_type": 1,
            "disks": []
        }))
        .expect("group");
        let mut evil = good.clone();
        evil.desktop_group_uuid = "x,process=pwned".into();
        good.desktop_group_name.push('\n');
        let out = strict_groups(vec![good, evil]);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].desktop_group_name, "Math[2J lab");
        assert!(!strict_id(""));
        assert!(!strict_id(&"a".repeat(65)));
    }
}
