//! systemd's notification protocol (`sd_notify`), without libsystemd:
//! one datagram per message to `$NOTIFY_SOCKET`.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

fn socket_path() -> Option<String> {
    std::env::var("NOTIFY_SOCKET")
        .ok()
        .filter(|s| !s.is_empty())
}

/// Sends `state` (e.g. "READY=1"). Ok(false) when not run by systemd.
pub fn notify(state: &str) -> std::io::Result<bool> {
    let Some(path) = socket_path() else {
        return Ok(false);
    };
    let sock = UnixDatagram::unbound()?;
    if let Some(name) = path.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
        sock.send_to_addr(state.as_bytes(), &addr)?;
    } else {
        sock.send_to(state.as_bytes(), &path)?;
    }
    Ok(true)
}

/// How often to send WATCHDOG=1: half of `WATCHDOG_USEC`, when the
/// watchdog is enabled for this process.
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok() != Some(std::process::id()) {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

/// Logs instead of failing: a broken notify socket must not stop the agent.
pub fn notify_logged(state: &str) {
    if let Err(e) = notify(state) {
        log::warn!("sd_notify {state:?}: {e}");
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn silent_without_systemd() {
        if std::env::var("NOTIFY_SOCKET").is_err() {
            assert!(!super::notify("READY=1").expect("no error"));
        }
    }
}
