//! The agent upgrades itself (1030 terminal_upgrade): fetched with resume
//! and a size limit, checked against the release key it was flashed with
//! before anything is written where it would run, installed as a new
//! version directory, switched with one rename of `current`, then proven:
//! the new version must log in within `confirm_secs`, or the previous one
//! comes back. STATE.md has the state machine and its power-cut cases.
//!
//! * `config`: `[upgrade]`;
//! * `state`: the durable state (`upgrade.json`);
//! * `install`: the version directories and the `current` switch;
//! * `fetch`: HTTP with resume and a size limit;
//! * this file: the command, the launcher, the proof and the rollback.

pub mod config;
mod fetch;
pub mod install;
pub mod state;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use self::state::UpgradeState;
use crate::agent::config::AgentConfig;
use crate::agent::terminal::Agent;
use crate::protocol::messages::TerminalUpgradeCmd;
use crate::upgrade_package::{self as pkg, UpgradeManifest};

/// Set in the environment of the version the launcher starts, so it does
/// not count its own start or start `current` again.
pub const LAUNCHED_ENV: &str = "VOI_AGENT_LAUNCHED";

/// The exit status that asks the service manager for a restart (systemd's
/// `Restart=always` restarts on any).
pub const RESTART_EXIT: u8 = 75;

pub fn state_path(cfg: &AgentConfig) -> PathBuf {
    state::path(cfg)
}

/// The highest release this terminal has committed (0: none yet).
fn release_floor_path(cfg: &AgentConfig) -> PathBuf {
    cfg.upgrade.root.join("release-floor")
}

pub fn release_floor(cfg: &AgentConfig) -> u64 {
    std::fs::read_to_string(release_floor_path(cfg))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// Runs first at every start of `voi-agent run`, in the binary on the
/// image: counts the starts of a version on trial, gives it up after
/// `max_starts` (a version that crashes or exits at once never runs the
/// code that would), and starts the version `current` names. Returns only
/// when this binary is the one to run.
pub fn launch(cfg: &AgentConfig) -> Result<(), String> {
    if std::env::var_os(LAUNCHED_ENV).is_some() {
        return Ok(());
    }
    let root = &cfg.upgrade.root;
    let path = state_path(cfg);
    if let UpgradeState::Switched {
        from,
        to,
        starts,
        release,
    } = state::load(&path)
    {
        if install::current_version(root).as_deref() == Some(to.as_str()) {
            let starts = starts + 1;
            if starts > cfg.upgrade.max_starts {
                let reason = format!(
                    "version {to} started {} times without logging in",
                    starts - 1
                );
                log::error!("upgrade: {reason}; going back to {from}");
                install::switch(root, &from).map_err(|e| format!("rollback to {from}: {e}"))?;
                state::save(
                    &path,
                    &UpgradeState::RolledBack {
                        from: from.clone(),
                        to: to.clone(),
                        reason,
                    },
                )
                .map_err(|e| e.to_string())?;
            } else {
                log::info!(
                    "upgrade: start {starts} of {to} (at most {})",
                    cfg.upgrade.max_starts
                );
                state::save(
                    &path,
                    &UpgradeState::Switched {
                        from,
                        to,
                        starts,
                        release,
                    },
                )
                .map_err(|e| e.to_string())?;
            }
        }
    }
    let Some(current) = install::current_binary(root) else {
        return Ok(());
    };
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    if same_file(&current, &me) {
        return Ok(());
    }
    use std::os::unix::process::CommandExt;
    let err = std::process::Command::new(&current)
        .args(std::env::args_os().skip(1))
        .env(LAUNCHED_ENV, "1")
        .exec();
    // A version that cannot even be started counts as a failed start: the
    // service manager starts us again, and we count.
    Err(format!("cannot start {}: {err}", current.display()))
}

/// Checks a 1030 before its reply, so a refusal is the reply.
pub fn check(agent: &Agent, cmd: &TerminalUpgradeCmd) -> Result<(), String> {
    pkg::check_version(&cmd.version)?;
    let url = cmd
        .manifest_url
        .as_deref()
        .ok_or("no manifest_url: this agent installs only signed packages over HTTP (TFTP upgrade_package is the vendor terminal's)")?;
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("manifest_url: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err("manifest_url must be http or https".into());
    }
    // Only from the server this agent is connected to (issue 38.17): a
    // rogue server must not make the terminal fetch from any host it names.
    let server = agent.server_ip();
    if !same_host(parsed.host_str().unwrap_or_default(), &server) {
        return Err(format!(
            "manifest_url names {}, not the server this terminal is connected to ({server})",
            parsed.host_str().unwrap_or("no host")
        ));
    }
    if !cmd.platform.is_empty() && cmd.platform != pkg::this_platform() {
        return Err(format!(
            "this terminal is {}, the package is for {}",
            pkg::this_platform(),
            cmd.platform
        ));
    }
    let running = crate::agent::version::running_version();
    if cmd.version == running {
        return Err(format!("this terminal runs {running} already"));
    }
    if pkg::is_downgrade(&running, &cmd.version) && !cmd.force {
        return Err(format!(
            "{} is older than the running {running}: a downgrade needs force",
            cmd.version
        ));
    }
    release_key(&agent.cfg)?;
    match state::load(&state_path(&agent.cfg)) {
        UpgradeState::Fetching { manifest, .. } => {
            Err(format!("an upgrade to {} is under way", manifest.version))
        }
        UpgradeState::Switched { to, .. } => Err(format!("version {to} is on trial")),
        _ => Ok(()),
    }
}

/// Whether a URL's host is the server's address (a name compares without
/// case, an IPv6 address without its brackets). When the agent knows its
/// server by name and the server names itself by address (its session's
/// local address), the name is resolved.
fn same_host(url_host: &str, server: &str) -> bool {
    let strip = |h: &str| {
        h.trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase()
    };
    let (a, b) = (strip(url_host), strip(server));
    match (a.parse::<std::net::IpAddr>(), b.parse::<std::net::IpAddr>()) {
        (Ok(x), Ok(y)) => x == y,
        (Ok(x), Err(_)) if !b.is_empty() => {
            use std::net::ToSocketAddrs;
            (b.as_str(), 0)
                .to_socket_addrs()
                .is_ok_and(|mut addrs| addrs.any(|s| s.ip() == x))
        }
        _ => !a.is_empty() && a == b,
    }
}

fn release_key(cfg: &AgentConfig) -> Result<ed25519_dalek::VerifyingKey, String> {
    let text = cfg
        .upgrade
        .key
        .as_deref()
        .or(cfg.bt.manifest_key.as_deref())
        .ok_or("this terminal has no release key ([upgrade] key or [bt] manifest_key): it accepts no package")?;
    crate::bt::manifest::parse_public_key(text)
}

/// Starts the install in the background (the reply has gone out).
pub fn begin(agent: Arc<Agent>, cmd: TerminalUpgradeCmd) {
    let url = cmd.manifest_url.clone().unwrap_or_default();
    let st = UpgradeState::Fetching {
        from: crate::agent::version::running_version(),
        manifest: UpgradeManifest {
            platform: pkg::this_platform().into(),
            version: cmd.version.clone(),
            size: 0,
            sha256: String::new(),
            signature: None,
            release: 0,
            release_signature: None,
        },
        url,
    };
    if let Err(e) = state::save(&state_path(&agent.cfg), &st) {
        log::error!("upgrade: {e}");
        return;
    }
    tokio::spawn(install_task(agent, cmd.force));
}

fn fail(agent: &Agent, version: &str, reason: String) {
    log::error!("upgrade to {version} refused: {reason}");
    let _ = state::save(
        &state_path(&agent.cfg),
        &UpgradeState::Failed {
            version: version.into(),
            reason: reason.clone(),
        },
    );
    agent.persist(|s| s.notice(format!("upgrade to {version} refused: {reason}")));
    // 9004 carries the outcome: a new login tells the server now.
    if let Some(link) = agent.link() {
        link.close();
    }
}

async fn install_task(agent: Arc<Agent>, force: bool) {
    let UpgradeState::Fetching {
        from,
        manifest,
        url,
    } = state::load(&state_path(&agent.cfg))
    else {
        return;
    };
    let version = manifest.version.clone();
    match install(&agent, &from, &version, &url, force).await {
        Ok(()) => {}
        Err(e) => fail(&agent, &version, e),
    }
}

async fn install(
    agent: &Arc<Agent>,
    from: &str,
    version: &str,
    url: &str,
    force: bool,
) -> Result<(), String> {
    let cfg = &agent.cfg;
    let root = &cfg.upgrade.root;
    let key = release_key(cfg)?;
    let manifest = fetch::manifest(url).await?;
    manifest.verify(&key)?;
    // Rollback protection (issue 38.8): whatever the wire says (`force`
    // included), never a release below or at the one committed last.
    let release = manifest.verify_release(&key)?;
    let floor = release_floor(cfg);
    if release <= floor {
        return Err(format!(
            "{version} is release {release}; this terminal has committed release {floor}: a downgrade is the older build published again as a new release (voi-server ctl upgrade --force)"
        ));
    }
    if manifest.version != version || manifest.platform != pkg::this_platform() {
        return Err(format!(
            "the package is {} for {}, not {version} for {}",
            manifest.version,
            manifest.platform,
            pkg::this_platform()
        ));
    }
    if pkg::is_downgrade(from, version) && !force {
        return Err(format!("{version} is older than {from}"));
    }
    if manifest.size > cfg.upgrade.max_bytes {
        return Err(format!(
            "the package is {} bytes; at most {} ([upgrade] max_bytes)",
            manifest.size, cfg.upgrade.max_bytes
        ));
    }
    let bin_url = url
        .strip_suffix("manifest.json")
        .map(|b| format!("{b}voi-agent"))
        .ok_or("manifest_url must end in manifest.json")?;
    let partial = root.join("partial");
    std::fs::create_dir_all(&partial).map_err(|e| format!("{}: {e}", partial.display()))?;
    let part = partial.join(format!("{version}.part"));
    let bytes = fetch::binary(&bin_url, &part, &manifest).await?;
    // The running version must be there to come back to.
    if !install::binary(root, from).is_file() {
        let me = std::env::current_exe().map_err(|e| e.to_string())?;
        let mine = std::fs::read(&me).map_err(|e| format!("{}: {e}", me.display()))?;
        install::put(root, from, &mine).map_err(|e| format!("keeping {from}: {e}"))?;
    }
    install::put(root, version, &bytes).map_err(|e| format!("installing {version}: {e}"))?;
    let _ = std::fs::remove_file(&part);
    // A running desktop is not cut off: the switch waits until it is off.
    while agent.desktop.status().state != "off" && agent.desktop.status().state != "failed" {
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    state::save(
        &state_path(cfg),
        &UpgradeState::Switched {
            from: from.into(),
            to: version.into(),
            starts: 0,
            release,
        },
    )
    .map_err(|e| e.to_string())?;
    install::switch(root, version).map_err(|e| format!("switching to {version}: {e}"))?;
    log::warn!("upgrade: {version} installed; restarting into it ({from} stays the fallback)");
    agent.request_restart();
    Ok(())
}

/// At the agent's start: finishes what a power cut interrupted, and puts a
/// version on trial to the proof.
pub async fn resume(agent: Arc<Agent>) {
    let cfg = &agent.cfg;
    let root = cfg.upgrade.root.clone();
    let running = crate::agent::version::running_version();
    match state::load(&state_path(cfg)) {
        UpgradeState::Fetching { .. } => {
            log::info!("upgrade: resuming the download");
            tokio::spawn(install_task(agent.clone(), true));
        }
        UpgradeState::Switched {
            from, to, release, ..
        } if running == to => {
            prove(agent.clone(), from, to, release).await;
        }
        UpgradeState::Switched { to, .. }
            if install::current_version(&root).as_deref() != Some(to.as_str()) =>
        {
            // Cut between the state and the switch: finish it.
            match install::switch(&root, &to) {
                Ok(()) => agent.request_restart(),
                Err(e) => fail(&agent, &to, format!("switch after a restart: {e}")),
            }
        }
        _ => {}
    }
}

/// The new version must log in within `confirm_secs`; then it is kept,
/// else the previous one comes back.
async fn prove(agent: Arc<Agent>, from: String, to: String, release: u64) {
    let cfg = &agent.cfg;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(cfg.upgrade.confirm_secs);
    log::info!(
        "upgrade: {to} must log in within {} s",
        cfg.upgrade.confirm_secs
    );
    loop {
        if agent.live().logins > 0 {
            log::info!("upgrade: {to} logged in; {from} is no longer needed");
            if release > release_floor(cfg) {
                if let Err(e) = crate::fsutil::atomic_write(
                    &release_floor_path(cfg),
                    release.to_string().as_bytes(),
                ) {
                    log::error!("upgrade: recording release {release}: {e}");
                }
            }
            let _ = state::save(
                &state_path(cfg),
                &UpgradeState::Committed {
                    from: from.clone(),
                    version: to.clone(),
                },
            );
            install::prune(&cfg.upgrade.root, &[&from, &to]);
            // The login's 9004 said "trial"; the server hears "installed" now.
            if let Some(link) = agent.link() {
                let req = crate::agent::identity_report::config_version_req(&agent);
                if let Err(e) = link
                    .request(crate::protocol::ServiceCode::GetConfigVersionId, &req)
                    .await
                {
                    log::warn!("upgrade: reporting the outcome: {e}");
                }
            }
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            _ = agent.shutdown.cancelled() => return,
        }
    }
    let reason = format!(
        "version {to} did not log in within {} s",
        cfg.upgrade.confirm_secs
    );
    log::error!("upgrade: {reason}; going back to {from}");
    if let Err(e) = install::switch(&cfg.upgrade.root, &from) {
        log::error!("upgrade: rollback to {from}: {e}");
        return;
    }
    let _ = state::save(
        &state_path(cfg),
        &UpgradeState::RolledBack { from, to, reason },
    );
    agent.request_restart();
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_the_servers_own_host_is_the_same_host() {
        use super::same_host;
        assert!(same_host("10.1.0.1", "10.1.0.1"));
        assert!(same_host("VOI-Server.school", "voi-server.school"));
        assert!(same_host("[::1]", "::1"));
        assert!(!same_host("10.1.0.2", "10.1.0.1"));
        assert!(!same_host("evil.example", "10.1.0.1"));
        assert!(!same_host("", ""));
        assert!(same_host("127.0.0.1", "localhost"));
        assert!(!same_host("127.0.0.2", "localhost"));
    }
}
