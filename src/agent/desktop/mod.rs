//! The desktop runtime: a desktop group boots as a QEMU guest on the
//! terminal's own Linux (the IDV model), supervised, with QMP for power and
//! screendumps, restore and persistent modes, and rollback after a failed
//! boot. See `STATE.md` beside this file.
//!
//! * `config`: `[desktop]` in agent.toml;
//! * `cmdline`: the QEMU command line (pure);
//! * `qmp`: the QMP client;
//! * `supervise`: the child process and its output;
//! * `modes`: the disks of one boot (restore / persistent);
//! * `rollback`: booting the previous level after failed boots.

pub mod cmdline;
pub mod config;
pub mod modes;
pub mod qmp;
pub mod rollback;
pub mod supervise;

pub use config::DesktopConfig;

use serde::Serialize;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Notify};

use crate::agent::desktops::Desktops;
use crate::protocol::messages::DesktopGroup;

/// What the runtime tells the rest of the agent (and through it, the
/// server).
#[derive(Debug, Clone, PartialEq)]
pub enum DesktopEvent {
    /// The guest runs (9024 desktop_login).
    Running {
        group_uuid: String,
        accelerator: String,
        since_ms: u64,
    },
    /// A boot failed; with `rolled_back`, the previous level runs instead
    /// (9015 with the reason, against the failing layer).
    Failed {
        group_uuid: String,
        layer: String,
        reason: String,
        rolled_back_to: Option<String>,
    },
    Off {
        group_uuid: String,
    },
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct DesktopStatus {
    /// off, preparing, starting, running, stopping, failed.
    pub state: String,
    pub group_uuid: String,
    pub accelerator: String,
    pub since_ms: u64,
    /// When `state` last changed, ms since the epoch.
    pub changed_ms: u64,
    pub boots: u32,
    pub reason: String,
    pub rolled_back: Option<rollback::RolledBack>,
    /// The layers the guest has open.
    pub in_use: Vec<String>,
    /// Why this runs on TCG though KVM was asked for ("auto"): KVM failed
    /// to run a guest here, until the agent restarts. Empty otherwise.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub accel_note: String,
    pub serial_log: String,
}

pub struct DesktopRuntime {
    cfg: DesktopConfig,
    dir: PathBuf,
    desktops: Arc<Desktops>,
    status: Mutex<DesktopStatus>,
    qmp: tokio::sync::Mutex<Option<qmp::Qmp>>,
    stop: Notify,
    stopping: std::sync::atomic::AtomicBool,
    events: mpsc::UnboundedSender<DesktopEvent>,
    events_rx: Mutex<Option<mpsc::UnboundedReceiver<DesktopEvent>>>,
    /// KVM opened but could not run the guest (nested virtualisation, an
    /// old CPU): TCG from then on.
    kvm_broken: std::sync::atomic::AtomicBool,
    /// Why KVM was given up, for the status (and the screen).
    kvm_broken_why: Mutex<String>,
    /// A guest has run under KVM here (stayed up `healthy_secs`, or went
    /// off on its own): from then on a quick failure under KVM may be the
    /// layer's. Before it, it is the accelerator's.
    kvm_proven: std::sync::atomic::AtomicBool,
    rollback: rollback::Rollback,
    /// Bumped at every change of state: the session sends a heartbeat
    /// with the new state at once.
    changes: tokio::sync::watch::Sender<u64>,
    /// `reset` was asked: the reset that follows is not a failed boot.
    reset_asked: std::sync::atomic::AtomicBool,
}

#[derive(Debug, thiserror::Error)]
pub enum DesktopError {
    #[error("a desktop is already {0}")]
    Busy(String),
    #[error(transparent)]
    Disk(#[from] crate::disk::DiskError),
    #[error("{0}")]
    Other(String),
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// How one run of QEMU ended.
#[derive(Debug, Clone, PartialEq)]
enum Ended {
    /// The guest powered itself off, or we stopped it.
    Off,
    /// The guest reset (QEMU runs with -no-reboot) or panicked.
    Reset(String),
    /// QEMU failed.
    Error(String),
    /// KVM could not run it.
    KvmFailed(String),
    /// QEMU exited (or was killed) before its QMP greeting: the guest
    /// never ran.
    BeforeGuest(String),
}

impl DesktopRuntime {
    pub fn new(
        cfg: DesktopConfig,
        data_dir: &Path,
        desktops: Arc<Desktops>,
    ) -> Arc<DesktopRuntime> {
        let dir = data_dir.join("desktop");
        let _ = std::fs::create_dir_all(&dir);
        supervise::reap_leftover(&dir.join(supervise::PID_FILE));
        let (tx, rx) = mpsc::unbounded_channel();
        Arc::new(DesktopRuntime {
            rollback: rollback::Rollback::new(&dir),
            cfg,
            dir,
            desktops,
            status: Mutex::new(DesktopStatus {
                state: "off".into(),
                ..Default::default()
            }),
            qmp: tokio::sync::Mutex::new(None),
            stop: Notify::new(),
            stopping: Default::default(),
            events: tx,
            events_rx: Mutex::new(Some(rx)),
            kvm_broken: Default::default(),
            kvm_broken_why: Mutex::new(String::new()),
            kvm_proven: Default::default(),
            changes: tokio::sync::watch::channel(0).0,
            reset_asked: Default::default(),
        })
    }

    /// The event stream; taken once, by whoever reports to the server.
    pub fn take_events(&self) -> Option<mpsc::UnboundedReceiver<DesktopEvent>> {
        self.events_rx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    pub fn status(&self) -> DesktopStatus {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set(&self, f: impl FnOnce(&mut DesktopStatus)) {
        let mut s = self.status.lock().unwrap_or_else(|p| p.into_inner());
        let before = s.state.clone();
        f(&mut s);
        if s.state != before {
            s.changed_ms = now_ms();
            log::info!("desktop: {before} -> {}", s.state);
            drop(s);
            self.changes.send_modify(|n| *n += 1);
        }
    }

    /// Wakes at every change of the desktop's state.
    pub fn watch_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// The state as our heartbeat reports it to the server.
    pub fn report(&self) -> crate::protocol::messages::DesktopState {
        let s = self.status();
        let reason = if s.state == "failed" || s.accel_note.is_empty() {
            s.reason.clone()
        } else {
            s.accel_note.clone()
        };
        crate::protocol::messages::DesktopState {
            state: s.state,
            desktop_group_uuid: s.group_uuid,
            changed_ms: s.changed_ms,
            accelerator: s.accelerator,
            reason: reason.chars().take(1000).collect(),
            rolled_back_from: s.rolled_back.map(|r| r.broken),
        }
    }

    pub fn serial_log(&self) -> PathBuf {
        self.dir.join("serial.log")
    }

    fn accelerator(&self) -> &'static str {
        match self.cfg.accel.as_str() {
            "kvm" => "kvm",
            "tcg" => "tcg",
            _ if !self.kvm_broken.load(std::sync::atomic::Ordering::Relaxed)
                && supervise::kvm_available(&self.cfg.kvm_device) =>
            {
                "kvm"
            }
            _ => "tcg",
        }
    }

    /// Boots `group_uuid` and supervises it until it is off. Returns once
    /// the first start is under way.
    pub fn boot(
        self: &Arc<Self>,
        groups: Vec<DesktopGroup>,
        group_uuid: &str,
    ) -> Result<(), DesktopError> {
        {
            let mut s = self.status.lock().unwrap_or_else(|p| p.into_inner());
            if !matches!(s.state.as_str(), "off" | "failed") {
                return Err(DesktopError::Busy(s.state.clone()));
            }
            if !groups.iter().any(|g| g.desktop_group_uuid == group_uuid) {
                return Err(DesktopError::Other(format!(
                    "desktop group {group_uuid} is not on this terminal"
                )));
            }
            // `boots` counts every start of this process, across groups.
            *s = DesktopStatus {
                state: "preparing".into(),
                group_uuid: group_uuid.into(),
                serial_log: self.serial_log().display().to_string(),
                boots: s.boots,
                changed_ms: now_ms(),
                ..Default::default()
            };
        }
        self.changes.send_modify(|n| *n += 1);
        self.stopping
            .store(false, std::sync::atomic::Ordering::SeqCst);
        let me = self.clone();
        let group_uuid = group_uuid.to_string();
        tokio::spawn(async move { me.supervise(groups, group_uuid).await });
        Ok(())
    }

    async fn supervise(self: Arc<Self>, groups: Vec<DesktopGroup>, group_uuid: String) {
        let os_sys_type = groups
            .iter()
            .find(|g| g.desktop_group_uuid == group_uuid)
            .map_or(0, |g| g.os_sys_type);
        let mut failed_boots = 0u32;
        loop {
            if self.stopping.load(std::sync::atomic::Ordering::SeqCst) {
                break;
            }
            self.set(|s| s.state = "preparing".into());
            let prepared = {
                let d = self.desktops.clone();
                let g = groups.clone();
                let u = group_uuid.clone();
                tokio::task::spawn_blocking(move || modes::prepare(&d, &g, &u, None)).await
            };
            let mut prepared = match prepared {
                Ok(Ok(p)) => p,
                Ok(Err(e)) => {
                    self.fail(&group_uuid, "", format!("cannot prepare the disks: {e}"));
                    return;
                }
                Err(e) => {
                    self.fail(&group_uuid, "", e.to_string());
                    return;
                }
            };
            let rolled = self.rollback.active(&group_uuid, &prepared.server_top);
            if let Some(r) = &rolled {
                match self.rollback.fresh_overlay(self.desktops.store.dir(), r) {
                    Ok(p) => {
                        prepared.disks[0].path = p;
                        prepared.in_use.retain(|l| l != &r.broken);
                        log::warn!(
                            "desktop: {} failed to boot ({}); booting {} instead",
                            r.broken,
                            r.reason,
                            r.booted
                        );
                    }
                    Err(e) => {
                        self.fail(&group_uuid, &r.broken, format!("rollback overlay: {e}"));
                        return;
                    }
                }
            } else {
                self.rollback.clear();
            }
            self.desktops.set_in_use(prepared.in_use.clone());
            let accel = self.accelerator();
            let started = Instant::now();
            let ended = self
                .run_once(&group_uuid, os_sys_type, &prepared, accel, rolled.clone())
                .await;
            self.desktops.set_in_use(Vec::new());
            // A reset the operator asked for is not the chain failing.
            let asked = self
                .reset_asked
                .swap(false, std::sync::atomic::Ordering::SeqCst);
            let quick = !asked && started.elapsed() < Duration::from_secs(self.cfg.healthy_secs);
            let proven = self.kvm_proven.load(std::sync::atomic::Ordering::Relaxed);
            if accel == "kvm" && (!quick || ended == Ended::Off) {
                self.kvm_proven
                    .store(true, std::sync::atomic::Ordering::Relaxed);
            }
            let ended = match accelerator_fault(accel, proven, quick, ended) {
                Ok(ended) => ended,
                Err(why) if self.cfg.accel == "auto" => {
                    // Not the layer's fault: the same chain again at once,
                    // on TCG, and no failed boot counted against it.
                    let note =
                        format!("KVM failed here ({why}); running on TCG until the agent restarts");
                    log::warn!("desktop: {note}");
                    *self
                        .kvm_broken_why
                        .lock()
                        .unwrap_or_else(|p| p.into_inner()) = note;
                    self.kvm_broken
                        .store(true, std::sync::atomic::Ordering::Relaxed);
                    continue;
                }
                Err(why) => {
                    // KVM forced by the config: nothing to fall back to,
                    // and no layer to blame.
                    self.fail(
                        &group_uuid,
                        "",
                        format!("KVM cannot run guests here ({why}); set [desktop] accel = \"auto\" or \"tcg\""),
                    );
                    return;
                }
            };
            // On TCG (or a KVM that has run guests here), a QEMU that
            // cannot start this chain is a failed boot like any other.
            match ended {
                Ended::Off => break,
                Ended::Reset(why)
                | Ended::Error(why)
                | Ended::KvmFailed(why)
                | Ended::BeforeGuest(why)
                    if quick =>
                {
                    failed_boots += 1;
                    log::warn!("desktop: boot {failed_boots} failed: {why}");
                    if failed_boots < self.cfg.max_failed_boots {
                        continue;
                    }
                    failed_boots = 0;
                    if rolled.is_none() {
                        if let Some(r) = self.rollback.engage(
                            self.desktops.store.dir(),
                            &group_uuid,
                            &prepared.server_top,
                            &why,
                        ) {
                            let _ = self.events.send(DesktopEvent::Failed {
                                group_uuid: group_uuid.clone(),
                                layer: r.broken.clone(),
                                reason: why.clone(),
                                rolled_back_to: Some(r.booted.clone()),
                            });
                            continue;
                        }
                    }
                    self.fail(&group_uuid, &prepared.server_top, why);
                    return;
                }
                // A reset after a healthy start is the student rebooting:
                // boot again (a restore group comes back clean).
                Ended::Reset(why) => {
                    log::info!("desktop: the guest restarted ({why}); booting it again");
                    failed_boots = 0;
                }
                Ended::Error(why) | Ended::KvmFailed(why) | Ended::BeforeGuest(why) => {
                    failed_boots = 0;
                    log::warn!("desktop: QEMU ended: {why}; booting again");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
        self.set(|s| {
            s.state = "off".into();
            s.in_use.clear();
        });
        let _ = self.events.send(DesktopEvent::Off { group_uuid });
    }

    fn fail(&self, group_uuid: &str, layer: &str, reason: String) {
        log::error!("desktop {group_uuid}: {reason}");
        self.set(|s| {
            s.state = "failed".into();
            s.reason = reason.clone();
            s.in_use.clear();
        });
        let _ = self.events.send(DesktopEvent::Failed {
            group_uuid: group_uuid.into(),
            layer: layer.into(),
            reason,
            rolled_back_to: None,
        });
    }

    async fn run_once(
        &self,
        group_uuid: &str,
        os_sys_type: i64,
        prepared: &modes::Prepared,
        accel: &'static str,
        rolled: Option<rollback::RolledBack>,
    ) -> Ended {
        let (vcpus, memory_mib) = cmdline::sizing(&self.cfg);
        let qmp_path = self.dir.join("qmp.sock");
        let qmp_commands = self.dir.join("qmp-commands.sock");
        let _ = std::fs::remove_file(&qmp_path);
        let _ = std::fs::remove_file(&qmp_commands);
        let launch = cmdline::Launch {
            name: format!("voi-{group_uuid}"),
            disks: prepared.disks.clone(),
            os_sys_type,
            accel,
            vcpus,
            memory_mib,
            qmp: qmp_path.clone(),
            qmp_commands: qmp_commands.clone(),
            serial: self.serial_log(),
            vnc_socket: self.dir.join("vnc.sock"),
            usb: cmdline::allowed_usb(&self.cfg),
        };
        // One boot's console per file: nobody reads the last boot's lines
        // as this one's.
        let _ = std::fs::remove_file(self.serial_log());
        let args = cmdline::args(&self.cfg, &launch);
        let qemu = self.cfg.qemu.clone().unwrap_or_else(cmdline::default_qemu);
        log::info!(
            "desktop: starting {group_uuid} on {accel} ({vcpus} vCPU, {memory_mib} MiB): {} {}",
            qemu.display(),
            args.join(" ")
        );
        let note = if accel == "tcg" && self.kvm_broken.load(std::sync::atomic::Ordering::Relaxed) {
            self.kvm_broken_why
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
        } else {
            String::new()
        };
        self.set(|s| {
            s.state = "starting".into();
            s.accelerator = accel.into();
            s.accel_note = note;
            s.in_use = prepared.in_use.clone();
            s.rolled_back = rolled;
            s.boots += 1;
        });
        let mut guest = match supervise::spawn(&qemu, &args, "qemu") {
            Ok(g) => g,
            Err(e) => return Ended::Error(format!("cannot run {}: {e}", qemu.display())),
        };
        // An agent killed outright leaves its QEMU running on the chain; the
        // next agent finds it by this file and stops it before booting.
        let pid_file = self.dir.join(supervise::PID_FILE);
        if let Some(pid) = guest.child.id() {
            if let Err(e) = crate::fsutil::atomic_write(&pid_file, format!("{pid}\n").as_bytes()) {
                log::warn!("desktop: {}: {e}", pid_file.display());
            }
        }
        let qmp = tokio::select! {
            q = qmp::Qmp::connect(&qmp_path, Duration::from_secs(15)) => q,
            status = guest.child.wait() => {
                return match exited(&guest, status.ok(), None, accel).await {
                    Ended::KvmFailed(w) => Ended::KvmFailed(w),
                    Ended::Off => Ended::BeforeGuest("QEMU exited before its QMP greeting".into()),
                    Ended::Error(w) | Ended::Reset(w) | Ended::BeforeGuest(w) => Ended::BeforeGuest(w),
                };
            }
        };
        let mut events = match qmp {
            Ok(q) => q,
            Err(e) => {
                let _ = guest.child.kill().await;
                return Ended::Error(format!("QMP: {e}"));
            }
        };
        // A second connection for commands (powerdown, screendump); this
        // one reads events.
        match qmp::Qmp::connect(&qmp_commands, Duration::from_secs(5)).await {
            Ok(cmd) => *self.qmp.lock().await = Some(cmd),
            Err(e) => log::warn!("desktop: second QMP connection: {e}"),
        }
        let since = now_ms();
        self.set(|s| {
            s.state = "running".into();
            s.since_ms = since;
        });
        log::info!("desktop: {group_uuid} runs on {accel}");
        let _ = self.events.send(DesktopEvent::Running {
            group_uuid: group_uuid.into(),
            accelerator: accel.into(),
            since_ms: since,
        });
        let mut reset: Option<String> = None;
        let ended = loop {
            tokio::select! {
                status = guest.child.wait() => {
                    break exited(&guest, status.ok(), reset.take(), accel).await;
                }
                ev = events.next_event() => match ev {
                    Ok(ev) => match ev["event"].as_str() {
                        Some("SHUTDOWN") => {
                            let why = ev["data"]["reason"].as_str().unwrap_or_default().to_string();
                            if why == "guest-reset" {
                                reset = Some("the guest reset".into());
                            } else if why == "host-qmp-system-reset" {
                                reset = Some("reset asked on the terminal (ctl desktop reset)".into());
                            }
                        }
                        Some("GUEST_PANICKED") => {
                            reset = Some("the guest kernel panicked".into());
                            let _ = guest.child.kill().await;
                        }
                        _ => {}
                    },
                    Err(_) => {
                        // QEMU is going away; its exit tells the rest.
                        let status = guest.child.wait().await;
                        break exited(&guest, status.ok(), reset.take(), accel).await;
                    }
                },
                _ = self.stop.notified() => {
                    let _ = self.powerdown_and_wait(&mut guest).await;
                    break Ended::Off;
                }
            }
        };
        *self.qmp.lock().await = None;
        let _ = std::fs::remove_file(&pid_file);
        if self.stopping.load(std::sync::atomic::Ordering::SeqCst) {
            return Ended::Off;
        }
        ended
    }

    async fn powerdown_and_wait(&self, guest: &mut supervise::Guest) -> bool {
        self.set(|s| s.state = "stopping".into());
        let wait = Duration::from_secs(self.cfg.stop_timeout_secs);
        let deadline = tokio::time::Instant::now() + wait;
        // Pressed again every few seconds: a guest still booting has no
        // one listening to the power button yet.
        let ended = loop {
            if let Some(q) = self.qmp.lock().await.as_mut() {
                if let Err(e) = q.execute("system_powerdown", json!({})).await {
                    log::warn!("desktop: system_powerdown: {e}");
                }
            }
            let next = (tokio::time::Instant::now() + Duration::from_secs(5)).min(deadline);
            match tokio::time::timeout_at(next, guest.child.wait()).await {
                Ok(_) => break true,
                Err(_) if next >= deadline => break false,
                Err(_) => {}
            }
        };
        match ended {
            true => {
                log::info!("desktop: the guest powered off");
                true
            }
            false => {
                log::warn!(
                    "desktop: the guest did not power off within {wait:?} of ACPI powerdown; stopping it"
                );
                let _ = guest.child.kill().await;
                false
            }
        }
    }

    /// Powers the guest down through ACPI, then hard after the configured
    /// time; returns when it is off. Nothing to do when none runs.
    pub async fn stop(&self) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::SeqCst);
        if matches!(self.status().state.as_str(), "off" | "failed") {
            return;
        }
        self.stop.notify_one();
        let limit = Duration::from_secs(self.cfg.stop_timeout_secs + 10);
        let start = Instant::now();
        while !matches!(self.status().state.as_str(), "off" | "failed") && start.elapsed() < limit {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Resets the running guest, as its reset button would (QMP
    /// `system_reset`): the runtime boots the same desktop again at once
    /// (a restore group comes back clean), and counts no failed boot.
    pub async fn reset(&self) -> Result<(), DesktopError> {
        self.running_qmp_command("system_reset", json!({}), true)
            .await
    }

    /// Sends Ctrl-Alt-Del to the guest, as the terminal's keyboard would
    /// (QMP `send-key`): a Windows desktop shows its security screen, a
    /// guest that reboots on it reboots by itself.
    pub async fn ctrl_alt_delete(&self) -> Result<(), DesktopError> {
        let keys: Vec<serde_json::Value> = ["ctrl", "alt", "delete"]
            .iter()
            .map(|k| json!({"type": "qcode", "data": k}))
            .collect();
        self.running_qmp_command("send-key", json!({ "keys": keys }), false)
            .await
    }

    /// Presses the guest's power button (ACPI, QMP `system_powerdown`)
    /// and waits up to `stop_timeout_secs` for it to go off; a guest that
    /// ignores it keeps running (`ctl stop` stops it hard).
    pub async fn powerdown(&self) -> Result<(), DesktopError> {
        self.running_qmp_command("system_powerdown", json!({}), false)
            .await?;
        let limit = Duration::from_secs(self.cfg.stop_timeout_secs);
        let start = Instant::now();
        while self.status().state == "running" && start.elapsed() < limit {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    /// A QMP command to the running guest; refused when none runs.
    async fn running_qmp_command(
        &self,
        command: &str,
        args: serde_json::Value,
        reset: bool,
    ) -> Result<(), DesktopError> {
        if self.status().state != "running" {
            return Err(DesktopError::Other(format!(
                "no desktop is running (it is {})",
                self.status().state
            )));
        }
        let mut q = self.qmp.lock().await;
        let q = q
            .as_mut()
            .ok_or_else(|| DesktopError::Other("no desktop is running".into()))?;
        if reset {
            self.reset_asked
                .store(true, std::sync::atomic::Ordering::SeqCst);
        }
        log::info!("desktop: {command} asked on the terminal");
        q.execute(command, args).await.map(drop).map_err(|e| {
            self.reset_asked
                .store(false, std::sync::atomic::Ordering::SeqCst);
            DesktopError::Other(format!("{command}: {e}"))
        })
    }

    /// QMP screendump of the guest's screen (PNG).
    pub async fn screendump(&self, path: &Path) -> Result<(), DesktopError> {
        let mut q = self.qmp.lock().await;
        let q = q
            .as_mut()
            .ok_or_else(|| DesktopError::Other("no desktop is running".into()))?;
        q.execute(
            "screendump",
            json!({ "filename": path.display().to_string(), "format": "png" }),
        )
        .await
        .map(drop)
        .map_err(|e| DesktopError::Other(e.to_string()))
    }
}

/// Whether a run under `accel` failed because of the accelerator rather
/// than the chain (`Err(why)`): under KVM, any KVM error text, an exit
/// before the guest ran (before QMP greeted us, or killed by a signal such
/// as the SIGABRT of a failed `kvm_buf_set_msrs`), and, while no guest has
/// yet run under KVM here, any quick failure. TCG is never blamed.
fn accelerator_fault(
    accel: &str,
    kvm_proven: bool,
    quick: bool,
    ended: Ended,
) -> Result<Ended, String> {
    if accel != "kvm" {
        return Ok(ended);
    }
    match ended {
        Ended::KvmFailed(why) | Ended::BeforeGuest(why) => Err(why),
        Ended::Error(why) if quick && (!kvm_proven || killed_by_signal(&why)) => Err(why),
        Ended::Reset(why) if quick && !kvm_proven => Err(why),
        other => Ok(other),
    }
}

fn killed_by_signal(why: &str) -> bool {
    why.contains("signal:")
}

/// How a run ended, once QEMU has exited: a reset or panic seen on QMP
/// before the exit names it, unless KVM itself failed.
async fn exited(
    guest: &supervise::Guest,
    status: Option<std::process::ExitStatus>,
    reset: Option<String>,
    accel: &str,
) -> Ended {
    // Give the output readers a moment to drain.
    tokio::time::sleep(Duration::from_millis(200)).await;
    match (reset, classify_exit(status, &guest.last_output(), accel)) {
        (_, Ended::KvmFailed(w)) => Ended::KvmFailed(w),
        (Some(r), _) => Ended::Reset(r),
        (None, e) => e,
    }
}

fn classify_exit(status: Option<std::process::ExitStatus>, output: &str, accel: &str) -> Ended {
    if accel == "kvm" && output.contains("KVM internal error") {
        return Ended::KvmFailed(output.chars().take(200).collect());
    }
    match status {
        Some(s) if s.success() => Ended::Off,
        Some(s) => Ended::Error(format!("QEMU exited with {s}: {output}")),
        None => Ended::Error(format!("QEMU ended: {output}")),
    }
}
