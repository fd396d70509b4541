//! The BitTorrent tracker built into voi-server: HTTP announce (BEP 3) with
//! compact peer lists (BEP 23), IPv4, in memory. Peers that stop announcing
//! expire after three intervals, in every swarm (a sweep runs once an
//! interval, so a swarm nobody announces to any more empties too). Swarms,
//! peers per swarm and peers per address per swarm are capped
//! (`[limits] tracker_*`): one LAN host cannot fill a swarm with dead
//! "seeders" that the terminals would try first.
//!
//! Against a LAN that lies (issue 38.4):
//! - swarms are kept only for info hashes the server knows (its library's
//!   layers, the uploads it took, and what a terminal it asked for an
//!   upload announces), so random hashes fill nothing;
//! - a full swarm makes room for a newcomer by dropping the stalest entry
//!   of the address holding the most, instead of refusing;
//! - an answer lists the server's own seeder first, then peers that
//!   finished a download recently (`event=completed`), then the other
//!   complete peers, freshest first, then the rest.

use crate::bt::bencode::{put_bytes, put_int};
use axum::extract::{ConnectInfo, RawQuery, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub type InfoHash = [u8; 20];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announce {
    pub info_hash: InfoHash,
    pub peer_id: [u8; 20],
    pub port: u16,
    pub left: u64,
    pub event: Event,
    pub numwant: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    None,
    Started,
    Completed,
    Stopped,
}

#[derive(Debug, Clone)]
struct Peer {
    addr: Ipv4Addr,
    port: u16,
    left: u64,
    seen: Instant,
    /// When it last announced `completed`: it downloaded the layer, so it
    /// holds it (a peer that only claims `left=0` may be a lie).
    completed: Option<Instant>,
}

/// Which swarms the tracker keeps: the server's layers and uploads (and,
/// from a terminal asked for an upload, the torrent it is about to send).
pub type KnownHashes = Arc<dyn Fn(&InfoHash, Ipv4Addr) -> bool + Send + Sync>;

pub struct Tracker {
    interval: Duration,
    limits: crate::server::limits::Limits,
    swarms: Mutex<Swarms>,
    known: std::sync::OnceLock<KnownHashes>,
    /// The server's own seeder's port: listed first in every answer, at
    /// the address the asking peer reached the tracker on.
    seeder_port: std::sync::OnceLock<u16>,
}

#[derive(Default)]
struct Swarms {
    by_hash: HashMap<InfoHash, HashMap<[u8; 20], Peer>>,
    last_sweep: Option<Instant>,
}

fn percent_decode(s: &str) -> Result<Vec<u8>, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = b.get(i + 1..i + 3).ok_or("truncated %-escape")?;
                let hex = std::str::from_utf8(hex).map_err(|_| "bad %-escape")?;
                out.push(u8::from_str_radix(hex, 16).map_err(|_| "bad %-escape")?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    Ok(out)
}

fn twenty(name: &str, v: Option<&Vec<u8>>) -> Result<[u8; 20], String> {
    let v = v.ok_or(format!("missing {name}"))?;
    <[u8; 20]>::try_from(v.as_slice())
        .map_err(|_| format!("{name} must be 20 bytes, got {}", v.len()))
}

fn number<T: std::str::FromStr>(name: &str, v: Option<&Vec<u8>>) -> Result<Option<T>, String> {
    match v {
        None => Ok(None),
        Some(v) => std::str::from_utf8(v)
            .ok()
            .and_then(|s| s.parse().ok())
            .map(Some)
            .ok_or(format!("{name} is not a number")),
    }
}

/// Parses an announce query string (before %-decoding: info_hash and
/// peer_id are raw bytes).
pub fn parse_announce(raw: &str) -> Result<Announce, String> {
    if raw.len() > 4096 {
        return Err("query too long".into());
    }
    let mut kv: HashMap<&str, Vec<u8>> = HashMap::new();
    for pair in raw.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        kv.insert(k, percent_decode(v)?);
    }
    let port: u16 = number("port", kv.get("port"))?.ok_or("missing port")?;
    if port == 0 {
        return Err("port 0".into());
    }
    let event = match kv.get("event").map(|v| v.as_slice()) {
        None | Some(b"") => Event::None,
        Some(b"started") => Event::Started,
        Some(b"completed") => Event::Completed,
        Some(b"stopped") => Event::Stopped,
        Some(_) => return Err("unknown event".into()),
    };
    Ok(Announce {
        info_hash: twenty("info_hash", kv.get("info_hash"))?,
        peer_id: twenty("peer_id", kv.get("peer_id"))?,
        port,
        left: number("left", kv.get("left"))?.unwrap_or(0),
        event,
        numwant: number::<usize>("numwant", kv.get("numwant"))?
            .unwrap_or(50)
            .min(200),
    })
}

pub fn failure(reason: &str) -> Vec<u8> {
    let mut out = b"d".to_vec();
    put_bytes(&mut out, b"failure reason");
    put_bytes(&mut out, reason.as_bytes());
    out.push(b'e');
    out
}

impl Tracker {
    pub fn new(interval: Duration, limits: crate::server::limits::Limits) -> Tracker {
        Tracker {
            interval,
            limits,
            swarms: Mutex::new(Swarms::default()),
            known: std::sync::OnceLock::new(),
            seeder_port: std::sync::OnceLock::new(),
        }
    }

    /// From now on, swarms only for what `known` accepts, and the server's
    /// seeder (on `seeder_port`) first in every answer.
    pub fn set_origin(&self, known: KnownHashes, seeder_port: Option<u16>) {
        let _ = self.known.set(known);
        if let Some(p) = seeder_port.filter(|p| *p != 0) {
            let _ = self.seeder_port.set(p);
        }
    }

    /// Records the announce and returns the bencoded answer. `reached` is
    /// the tracker's own address as the peer reached it (where the
    /// server's seeder is, for that peer).
    pub fn announce(&self, a: &Announce, from: Ipv4Addr, reached: Option<Ipv4Addr>) -> Vec<u8> {
        if self
            .known
            .get()
            .is_some_and(|known| !known(&a.info_hash, from))
        {
            return failure(
                "this tracker keeps swarms only for the server's layers and the uploads it took",
            );
        }
        let mut all = self.swarms.lock().unwrap_or_else(|p| p.into_inner());
        let expiry = self.interval * 3;
        if all.last_sweep.is_none_or(|t| t.elapsed() >= self.interval) {
            all.by_hash.retain(|_, swarm| {
                swarm.retain(|_, p| p.seen.elapsed() < expiry);
                !swarm.is_empty()
            });
            all.last_sweep = Some(Instant::now());
        }
        let swarms = &mut all.by_hash;
        if !swarms.contains_key(&a.info_hash) && swarms.len() >= self.limits.tracker_max_swarms {
            return failure("this tracker keeps no more swarms ([limits] tracker_max_swarms)");
        }
        let swarm = swarms.entry(a.info_hash).or_default();
        swarm.retain(|_, p| p.seen.elapsed() < expiry);
        if a.event == Event::Stopped {
            swarm.remove(&a.peer_id);
        } else {
            // The same address and port under a new peer id is the same
            // peer restarted: it replaces its old entry instead of taking
            // another of its address's places.
            swarm.retain(|id, p| *id == a.peer_id || p.addr != from || p.port != a.port);
            let known = swarm.contains_key(&a.peer_id);
            let from_address = || swarm.values().filter(|p| p.addr == from).count();
            let refused = if known {
                None
            } else if from_address() >= self.limits.tracker_max_peers_per_address {
                Some("too many peers from this address ([limits] tracker_max_peers_per_address)")
            } else if swarm.len() >= self.limits.tracker_max_peers_per_swarm {
                // Full: the address holding the most gives up its stalest
                // entry, unless that is the newcomer's own address.
                let mut held: HashMap<Ipv4Addr, usize> = HashMap::new();
                for p in swarm.values() {
                    *held.entry(p.addr).or_default() += 1;
                }
                let mine = held.get(&from).copied().unwrap_or(0);
                let biggest = held
                    .into_iter()
                    .max_by_key(|(_, n)| *n)
                    .filter(|(_, n)| *n > mine + 1)
                    .map(|(a, _)| a);
                let stalest = biggest.and_then(|addr| {
                    swarm
                        .iter()
                        .filter(|(_, p)| p.addr == addr)
                        .min_by_key(|(_, p)| p.seen)
                        .map(|(id, _)| *id)
                });
                match stalest {
                    Some(id) => {
                        swarm.remove(&id);
                        None
                    }
                    None => Some("this swarm is full ([limits] tracker_max_peers_per_swarm)"),
                }
            } else {
                None
            };
            if let Some(why) = refused {
                if swarm.is_empty() {
                    swarms.remove(&a.info_hash);
                }
                return failure(why);
            }
            let completed = if a.event == Event::Completed {
                Some(Instant::now())
            } else {
                swarm.get(&a.peer_id).and_then(|p| p.completed)
            };
            swarm.insert(
                a.peer_id,
                Peer {
                    addr: from,
                    port: a.port,
                    left: a.left,
                    seen: Instant::now(),
                    completed: completed.filter(|_| a.left == 0),
                },
            );
        }
        let complete = swarm.values().filter(|p| p.left == 0).count() as u64;
        let incomplete = swarm.len() as u64 - complete;
        let mut peers = Vec::new();
        let mut listed = std::collections::HashSet::new();
        // The server's own seeder first, at the address this peer reached
        // us on: whatever else the swarm holds, one peer has the layer.
        if let (Some(port), Some(ip)) = (self.seeder_port.get(), reached) {
            if a.left > 0 && a.numwant > 0 {
                peers.extend_from_slice(&ip.octets());
                peers.extend_from_slice(&port.to_be_bytes());
                listed.insert((ip, *port));
            }
        }
        // Then who finished a download recently, then other complete
        // peers, then the rest; freshest first within each. A seeder needs
        // no other seeders.
        let recent = self.interval * 3;
        let mut order: Vec<(&[u8; 20], &Peer)> = swarm
            .iter()
            .filter(|(id, p)| **id != a.peer_id && !(a.left == 0 && p.left == 0))
            .collect();
        order.sort_by_key(|(_, p)| {
            let rank = match (
                p.completed.is_some_and(|t| t.elapsed() < recent),
                p.left == 0,
            ) {
                (true, _) => 0,
                (false, true) => 1,
                (false, false) => 2,
            };
            (rank, std::cmp::Reverse(p.seen))
        });
        for (_, p) in order {
            if peers.len() / 6 >= a.numwant {
                break;
            }
            if !listed.insert((p.addr, p.port)) {
                continue;
            }
            peers.extend_from_slice(&p.addr.octets());
            peers.extend_from_slice(&p.port.to_be_bytes());
        }
        if swarm.is_empty() {
            swarms.remove(&a.info_hash);
        }
        let mut out = b"d".to_vec();
        put_bytes(&mut out, b"complete");
        put_int(&mut out, complete);
        put_bytes(&mut out, b"incomplete");
        put_int(&mut out, incomplete);
        // A leecher that found no seeder (the server's seeder may still be
        // checking its image) comes back soon instead of in 30 s.
        let interval = if a.left > 0 && complete == 0 {
            self.interval.min(Duration::from_secs(5))
        } else {
            self.interval
        };
        put_bytes(&mut out, b"interval");
        put_int(&mut out, interval.as_secs().max(1));
        put_bytes(&mut out, b"peers");
        put_bytes(&mut out, &peers);
        out.push(b'e');
        out
    }

    /// (swarms, peers) the tracker holds, for the metrics.
    pub fn totals(&self) -> (usize, usize) {
        let all = self.swarms.lock().unwrap_or_else(|p| p.into_inner());
        (
            all.by_hash.len(),
            all.by_hash.values().map(|s| s.len()).sum(),
        )
    }

    /// Peers known for a torrent (for the operator's view).
    pub fn swarm_size(&self, info_hash: &InfoHash) -> usize {
        self.swarms
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .by_hash
            .get(info_hash)
            .map_or(0, |s| s.len())
    }
}

async fn announce(
    State(t): State<Arc<Tracker>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    local: Option<axum::Extension<crate::server::http_serve::LocalAddr>>,
    RawQuery(q): RawQuery,
) -> Response {
    let v4 = |ip: IpAddr| match ip {
        IpAddr::V4(v4) => Some(v4),
        IpAddr::V6(v6) => v6.to_ipv4_mapped(),
    };
    let reached = local
        .and_then(|l| v4(l.0 .0.ip()))
        .filter(|ip| !ip.is_unspecified());
    let body = match parse_announce(q.as_deref().unwrap_or("")) {
        Ok(a) => match v4(peer.ip()) {
            Some(from) => t.announce(&a, from, reached),
            None => failure("IPv6 peers are not supported"),
        },
        Err(e) => failure(&e),
    };
    ([("content-type", "text/plain")], body).into_response()
}

/// Serves the announce endpoint plus `extra` routes (the torrent files).
pub async fn serve(
    tracker: Arc<Tracker>,
    listener: TcpListener,
    shutdown: CancellationToken,
    extra: Router,
    limits: &crate::server::limits::Limits,
) {
    let app = Router::new()
        .route("/announce", get(announce))
        .with_state(tracker)
        .merge(extra);
    crate::server::http_serve::serve("tracker", listener, app, None, limits, shutdown).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(hash: &[u8; 20], id: &[u8; 20], port: u16, left: u64, event: &str) -> String {
        let enc = |b: &[u8]| b.iter().map(|x| format!("%{x:02X}")).collect::<String>();
        format!(
            "info_hash={}&peer_id={}&port={port}&uploaded=0&downloaded=0&left={left}&compact=1&event={event}",
            enc(hash),
            enc(id)
        )
    }

    #[test]
    fn compact_peers_and_stop() {
        let t = Tracker::new(Duration::from_secs(30), Default::default());
        let h = [7u8; 20];
        let seeder = parse_announce(&q(&h, &[1; 20], 6881, 0, "started")).expect("valid");
        let r = t.announce(&seeder, Ipv4Addr::new(10, 0, 0, 1), None);
        assert_eq!(
            r,
            b"d8:completei1e10:incompletei0e8:intervali30e5:peers0:e".to_vec()
        );
        let leecher = parse_announce(&q(&h, &[2; 20], 6882, 100, "started")).expect("valid");
        let r = t.announce(&leecher, Ipv4Addr::new(10, 0, 0, 2), None);
        let mut want = b"d8:completei1e10:incompletei1e8:intervali30e5:peers6:".to_vec();
        want.extend_from_slice(&[10, 0, 0, 1, 0x1a, 0xe1]);
        want.push(b'e');
        assert_eq!(r, want);
        let stop = parse_announce(&q(&h, &[1; 20], 6881, 0, "stopped")).expect("valid");
        t.announce(&stop, Ipv4Addr::new(10, 0, 0, 1), None);
        assert_eq!(t.swarm_size(&h), 1);
    }

    /// The hostile-LAN finding: one host announced 5000 dead "seeders" on
    /// as many ports, and a new agent tried them before the server.
    #[test]
    fn one_address_fills_no_swarm_and_the_tracker_keeps_few_swarms() {
        let limits = crate::server::limits::Limits {
            tracker_max_peers_per_address: 3,
            tracker_max_peers_per_swarm: 5,
            tracker_max_swarms: 2,
            ..Default::default()
        };
        let t = Tracker::new(Duration::from_secs(30), limits);
        let h = [7u8; 20];
        let liar = Ipv4Addr::new(10, 0, 0, 66);
        let mut refused = 0;
        for n in 0..5000u16 {
            let mut id = [0u8; 20];
            id[..2].copy_from_slice(&n.to_be_bytes());
            let a = parse_announce(&q(&h, &id, 1000 + n, 0, "started")).expect("valid");
            if t.announce(&a, liar, None)
                .starts_with(b"d14:failure reason")
            {
                refused += 1;
            }
        }
        assert_eq!(t.swarm_size(&h), 3);
        assert_eq!(refused, 4997);
        // A peer restarted (same address and port, new id) replaces itself.
        let restarted = parse_announce(&q(&h, &[0xee; 20], 1000, 0, "started")).expect("valid");
        assert!(!t
            .announce(&restarted, liar, None)
            .starts_with(b"d14:failure"));
        assert_eq!(t.swarm_size(&h), 3);
        // An announce again from a known peer is not a new peer.
        let again = parse_announce(&q(&h, &[0xee; 20], 1000, 0, "")).expect("valid");
        assert!(!t.announce(&again, liar, None).starts_with(b"d14:failure"));
        // Other addresses fill the rest, up to the swarm's cap.
        for n in 0..4u8 {
            let a = parse_announce(&q(&h, &[100 + n; 20], 6881, 0, "started")).expect("valid");
            t.announce(&a, Ipv4Addr::new(10, 0, 1, n), None);
        }
        assert_eq!(t.swarm_size(&h), 5);
        // Two swarms at most.
        for (i, hash) in [[1u8; 20], [2; 20]].iter().enumerate() {
            let a = parse_announce(&q(hash, &[9; 20], 6881, 0, "started")).expect("valid");
            let r = t.announce(&a, Ipv4Addr::new(10, 0, 2, 1), None);
            assert_eq!(r.starts_with(b"d14:failure"), i == 1, "swarm {i}");
        }
    }

    #[test]
    fn a_swarm_nobody_announces_to_is_swept() {
        let t = Tracker::new(Duration::from_millis(20), Default::default());
        let old = [3u8; 20];
        let a = parse_announce(&q(&old, &[1; 20], 6881, 0, "started")).expect("valid");
        t.announce(&a, Ipv4Addr::new(10, 0, 0, 1), None);
        assert_eq!(t.swarm_size(&old), 1);
        std::thread::sleep(Duration::from_millis(80));
        let b = parse_announce(&q(&[4; 20], &[1; 20], 6881, 0, "started")).expect("valid");
        t.announce(&b, Ipv4Addr::new(10, 0, 0, 1), None);
        assert_eq!(
            t.swarm_size(&old),
            0,
            "expired with nobody announcing to it"
        );
    }

    /// The compact peer list of an answer, as (last octet, port).
    fn peers_of(answer: &[u8]) -> Vec<(u8, u16)> {
        let Some(at) = answer.windows(6).position(|w| w == b"5:peer") else {
            return Vec::new();
        };
        let rest = &answer[at + 7..];
        let colon = rest.iter().position(|b| *b == b':').expect("length");
        let n: usize = std::str::from_utf8(&rest[..colon])
            .expect("utf8")
            .parse()
            .expect("n");
        rest[colon + 1..colon + 1 + n]
            .chunks(6)
            .map(|c| (c[3], u16::from_be_bytes([c[4], c[5]])))
            .collect()
    }

    #[test]
    fn only_known_swarms_and_the_origin_first_then_who_completed() {
        let t = Tracker::new(
            Duration::from_secs(30),
            crate::server::limits::Limits {
                tracker_max_peers_per_swarm: 6,
                tracker_max_peers_per_address: 4,
                ..Default::default()
            },
        );
        let layer = [7u8; 20];
        t.set_origin(Arc::new(move |h, _| *h == layer), Some(6000));
        let random = parse_announce(&q(&[8; 20], &[1; 20], 6881, 0, "started")).expect("valid");
        assert!(t
            .announce(&random, Ipv4Addr::new(10, 0, 9, 1), None)
            .starts_with(b"d14:failure"));
        assert_eq!(
            t.totals().0,
            0,
            "no swarm for a hash the server does not know"
        );
        // Liars claim to be seeders from one address; a real terminal
        // finished its download; a leecher asks.
        for n in 0..4u8 {
            let a = parse_announce(&q(&layer, &[n; 20], 7000 + u16::from(n), 0, "started"))
                .expect("valid");
            t.announce(&a, Ipv4Addr::new(10, 0, 9, 11), None);
        }
        let done = parse_announce(&q(&layer, &[50; 20], 6881, 0, "completed")).expect("valid");
        t.announce(&done, Ipv4Addr::new(10, 0, 0, 5), None);
        // The swarm (6) fills from a second liar address; the newcomer
        // takes the place of the biggest holder's stalest entry.
        for n in 0..2u8 {
            let a = parse_announce(&q(&layer, &[60 + n; 20], 7100 + u16::from(n), 0, "started"))
                .expect("valid");
            t.announce(&a, Ipv4Addr::new(10, 0, 9, 12), None);
        }
        assert_eq!(t.swarm_size(&layer), 6);
        let leecher = parse_announce(&q(&layer, &[99; 20], 6881, 100, "started")).expect("valid");
        let answer = t.announce(
            &leecher,
            Ipv4Addr::new(10, 0, 0, 7),
            Some(Ipv4Addr::new(10, 0, 0, 1)),
        );
        assert!(
            !answer.starts_with(b"d14:failure"),
            "a full swarm takes a newcomer"
        );
        assert_eq!(t.swarm_size(&layer), 6);
        let peers = peers_of(&answer);
        assert_eq!(peers[0], (1, 6000), "the server's seeder first: {peers:?}");
        assert_eq!(peers[1], (5, 6881), "then who completed: {peers:?}");
        assert_eq!(
            peers.iter().filter(|(o, _)| *o == 1).count(),
            1,
            "the seeder once"
        );
    }

    #[test]
    fn bad_queries_are_refused() {
        assert!(parse_announce("info_hash=abc&peer_id=x&port=1").is_err());
        assert!(parse_announce(&q(&[1; 20], &[2; 20], 0, 0, "")).is_err());
        assert!(parse_announce("info_hash=%ZZ").is_err());
        assert!(parse_announce(&q(&[1; 20], &[2; 20], 1, 0, "bogus")).is_err());
        assert!(parse_announce(&"a".repeat(5000)).is_err());
        assert_eq!(failure("x"), b"d14:failure reason1:xe".to_vec());
    }
}
