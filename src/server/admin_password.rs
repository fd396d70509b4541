//! The terminals' settings password (9008, 9016): where it comes from and
//! how fast it can be guessed (issue 38.14).
//!
//! The vendor's default is admin/admin, and a LAN device made 8,400 guesses
//! a second. Here, unless the config names one, a random password is made
//! at first start, kept in `<data_dir>/admin-password` (0600) and logged
//! once, as the API token is; and wrong answers are throttled per MAC and
//! per address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::protocol::md5_hex;

/// md5 hex of the password 9008/9016 compare with: the config's, else the
/// one kept in `<data_dir>/admin-password`, else a new one (logged once).
pub fn load_or_create(configured: Option<&str>, data_dir: &Path) -> anyhow::Result<String> {
    if let Some(md5) = configured {
        return Ok(md5.to_ascii_lowercase());
    }
    let path = data_dir.join("admin-password");
    if let Ok(p) = std::fs::read_to_string(&path) {
        let p = p.trim();
        if !p.is_empty() {
            return Ok(md5_hex(p.as_bytes()));
        }
    }
    let mut bytes = [0u8; 12];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .map_err(|e| anyhow::anyhow!("cannot read /dev/urandom: {e}"))?;
    // Letters and digits a teacher can type on a terminal's keyboard.
    const ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyz23456789";
    let password: String = bytes
        .iter()
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
        .collect();
    crate::fsutil::atomic_write(&path, password.as_bytes())?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    log::warn!(
        "the terminals' settings password (9008) is {password:?} for the admin user; it is kept in {} (set admin_password_md5 in server.toml to choose one)",
        path.display()
    );
    Ok(md5_hex(password.as_bytes()))
}

/// Wrong passwords allowed before waits begin.
const FREE_TRIES: u32 = 3;
/// The longest wait between tries.
const MAX_WAIT: Duration = Duration::from_secs(60);
/// Keys (MACs and addresses) remembered at once.
const MAX_KEYS: usize = 4096;

/// Failed tries per MAC and per address: after `FREE_TRIES`, each wrong
/// answer doubles the wait before the next try is even checked (1 s, 2 s,
/// … `MAX_WAIT`).
#[derive(Default)]
pub struct GuessThrottle {
    keys: Mutex<HashMap<String, (u32, Instant)>>,
}

impl GuessThrottle {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (u32, Instant)>> {
        self.keys.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How long `mac` or `ip` must still wait, if at all.
    pub fn wait(&self, mac: &str, ip: IpAddr) -> Option<Duration> {
        let now = Instant::now();
        let keys = self.lock();
        [format!("mac {mac}"), format!("ip {ip}")]
            .iter()
            .filter_map(|k| keys.get(k))
            .filter_map(|(_, until)| until.checked_duration_since(now))
            .max()
    }

    pub fn failed(&self, mac: &str, ip: IpAddr) {
        let now = Instant::now();
        let mut keys = self.lock();
        if keys.len() >= MAX_KEYS {
            keys.retain(|_, (_, until)| *until > now);
            if keys.len() >= MAX_KEYS {
                keys.clear();
            }
        }
        for k in [format!("mac {mac}"), format!("ip {ip}")] {
            let e = keys.entry(k).or_insert((0, now));
            e.0 += 1;
            if e.0 > FREE_TRIES {
                let doublings = (e.0 - FREE_TRIES - 1).min(6);
                e.1 = now + Duration::from_secs(1 << doublings).min(MAX_WAIT);
            }
        }
    }

    pub fn succeeded(&self, mac: &str) {
        self.lock().remove(&format!("mac {mac}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_grow_after_the_free_tries_and_a_success_clears_the_mac() {
        let t = GuessThrottle::default();
        let ip: IpAddr = "10.0.0.9".parse().expect("ip");
        for _ in 0..FREE_TRIES {
            assert!(t.wait("AA", ip).is_none());
            t.failed("AA", ip);
        }
        assert!(t.wait("AA", ip).is_none());
        t.failed("AA", ip);
        assert!(t
            .wait("AA", ip)
            .is_some_and(|w| w <= Duration::from_secs(1)));
        // Another MAC from the same address waits too.
        assert!(t.wait("BB", ip).is_some());
        for _ in 0..10 {
            t.failed("AA", ip);
        }
        assert!(t
            .wait("AA", ip)
            .is_some_and(|w| w > Duration::from_secs(30)));
    }

    #[test]
    fn a_password_is_made_once_and_kept() {
        let d = tempfile::tempdir().expect("tmp");
        let a = load_or_create(None, d.path()).expect("made");
        let b = load_or_create(None, d.path()).expect("kept");
        assert_eq!(a, b);
        let p = std::fs::read_to_string(d.path().join("admin-password")).expect("file");
        assert_eq!(md5_hex(p.trim().as_bytes()), a);
        assert_ne!(a, md5_hex(b"admin"));
        assert_eq!(
            load_or_create(Some("ABC"), d.path()).expect("configured"),
            "abc"
        );
    }
}
