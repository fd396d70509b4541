//! Connection caps that no one address can take whole (issue 38.5).
//!
//! A plain counter (`limits::Slot`) refuses the newcomer when the cap is
//! reached, so 512 idle sockets from one host locked every terminal out of
//! the tracker, and 8,192 out of login. Here a newcomer is always let in:
//! - an address at its share gives up its own oldest connection;
//! - when the whole cap is taken, the address holding the most gives up its
//!   oldest.
//!
//! So whoever floods only ever displaces itself, and an address with few
//! connections keeps them. The displaced connection sees its `Share`'s
//! token cancelled and closes.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// One listener's connections, by address.
#[derive(Debug)]
pub struct ConnShares {
    what: &'static str,
    cap: usize,
    per_address: usize,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    by_address: HashMap<IpAddr, VecDeque<Entry>>,
    total: usize,
    next_id: u64,
    displaced_since_log: u64,
    last_log: Option<Instant>,
}

#[derive(Debug)]
struct Entry {
    id: u64,
    displace: CancellationToken,
}

/// A connection's place: given back on drop. `displaced()` resolves when a
/// newcomer took it.
#[derive(Debug)]
pub struct Share {
    shares: Arc<ConnShares>,
    address: IpAddr,
    id: u64,
    displace: CancellationToken,
}

impl Share {
    /// Cancelled when this connection must close for a newcomer.
    pub fn displaced(&self) -> CancellationToken {
        self.displace.clone()
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        self.shares.remove(self.address, self.id);
    }
}

impl ConnShares {
    /// `cap` connections in all, at most `per_address` from one address
    /// (each at least 1; the share is at most the cap).
    pub fn new(what: &'static str, cap: usize, per_address: usize) -> Arc<ConnShares> {
        let cap = cap.max(1);
        Arc::new(ConnShares {
            what,
            cap,
            per_address: per_address.clamp(1, cap),
            inner: Mutex::default(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits a connection from `address`, displacing one as the module
    /// says when a bound is reached.
    pub fn admit(self: &Arc<Self>, address: IpAddr) -> Share {
        let mut g = self.lock();
        let own = g.by_address.get(&address).map_or(0, VecDeque::len);
        let victim = if own >= self.per_address {
            Some(address)
        } else if g.total >= self.cap {
            // The biggest holder; ties go to whichever the map yields.
            g.by_address
                .iter()
                .max_by_key(|(_, q)| q.len())
                .map(|(a, _)| *a)
        } else {
            None
        };
        if let Some(victim) = victim {
            let popped = g.by_address.get_mut(&victim).and_then(VecDeque::pop_front);
            if let Some(e) = popped {
                e.displace.cancel();
                g.total -= 1;
                if g.by_address.get(&victim).is_some_and(VecDeque::is_empty) {
                    g.by_address.remove(&victim);
                }
                g.displaced_since_log += 1;
                if g.last_log
                    .is_none_or(|t| t.elapsed() >= Duration::from_secs(60))
                {
                    log::warn!(
                        "{}: {} connection(s) closed for newcomers since the last report (latest from {victim}, which held {}); one address may hold {} of {}",
                        self.what,
                        g.displaced_since_log,
                        if victim == address { own } else { g.by_address.get(&victim).map_or(0, VecDeque::len) + 1 },
                        self.per_address,
                        self.cap
                    );
                    g.displaced_since_log = 0;
                    g.last_log = Some(Instant::now());
                }
            }
        }
        let id = g.next_id;
        g.next_id += 1;
        let displace = CancellationToken::new();
        g.by_address.entry(address).or_default().push_back(Entry {
            id,
            displace: displace.clone(),
        });
        g.total += 1;
        Share {
            shares: self.clone(),
            address,
            id,
            displace,
        }
    }

    fn remove(&self, address: IpAddr, id: u64) {
        let mut g = self.lock();
        let Some(q) = g.by_address.get_mut(&address) else {
            return;
        };
        // Displaced entries are already gone (and already uncounted).
        let Some(i) = q.iter().position(|e| e.id == id) else {
            return;
        };
        q.remove(i);
        if q.is_empty() {
            g.by_address.remove(&address);
        }
        g.total -= 1;
    }

    /// Connections held now, in all.
    #[cfg(test)]
    pub fn total(&self) -> usize {
        self.lock().total
    }

    /// Connections held now by `address`.
    #[cfg(test)]
    pub fn held_by(&self, address: IpAddr) -> usize {
        self.lock()
            .by_address
            .get(&address)
            .map_or(0, VecDeque::len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn a_flooding_address_displaces_only_itself() {
        let shares = ConnShares::new("test", 10, 4);
        let honest = shares.admit(ip("10.0.0.1"));
        let flood: Vec<Share> = (0..100).map(|_| shares.admit(ip("10.0.0.2"))).collect();
        assert!(!honest.displaced().is_cancelled());
        assert_eq!(shares.held_by(ip("10.0.0.2")), 4);
        // The newest four of the flood hold; every older one was told.
        assert_eq!(
            flood
                .iter()
                .filter(|s| !s.displaced().is_cancelled())
                .count(),
            4
        );
        assert_eq!(shares.total(), 5);
        drop(flood);
        assert_eq!(shares.total(), 1);
        drop(honest);
        assert_eq!(shares.total(), 0);
    }

    #[test]
    fn a_full_cap_takes_from_the_biggest_holder() {
        let shares = ConnShares::new("test", 6, 4);
        let a: Vec<Share> = (0..4).map(|_| shares.admit(ip("10.0.0.2"))).collect();
        let b: Vec<Share> = (0..2).map(|_| shares.admit(ip("10.0.0.3"))).collect();
        assert_eq!(shares.total(), 6);
        let c = shares.admit(ip("10.0.0.4"));
        assert!(
            a[0].displaced().is_cancelled(),
            "the biggest holder's oldest"
        );
        assert!(a[1..].iter().all(|s| !s.displaced().is_cancelled()));
        assert!(b.iter().all(|s| !s.displaced().is_cancelled()));
        assert!(!c.displaced().is_cancelled());
        assert_eq!(shares.total(), 6);
        // Dropping a displaced share does not count it twice.
        drop(a);
        assert_eq!(shares.total(), 3);
    }
}
