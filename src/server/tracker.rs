//! The BitTorrent tracker built into voi-server: HTTP announce (BEP 3) with
//! compact peer lists (BEP 23), IPv4, in memory. Peers that stop announcing
//! expire after three intervals, in every swarm (a sweep runs once an
//! interval, so a swarm nobody announces to any more empties too). Swarms,
//! peers per swarm and peers per address per swarm are capped
//! (`[limits] tracker_*`): one LAN host cannot fill a swarm with dead
//! "seeders" that the terminals would try first.

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
}

pub struct Tracker {
    interval: Duration,
    limits: crate::server::limits::Limits,
    swarms: Mutex<Swarms>,
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
        }
    }

    /// Records the announce and returns the bencoded answer.
    pub fn announce(&self, a: &Announce, from: Ipv4Addr) -> Vec<u8> {
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
            } else if swarm.len() >= self.limits.tracker_max_peers_per_swarm {
                Some("this swarm is full ([limits] tracker_max_peers_per_swarm)")
            } else if from_address() >= self.limits.tracker_max_peers_per_address {
                Some("too many peers from this address ([limits] tracker_max_peers_per_address)")
            } else {
                None
            };
            if let Some(why) = refused {
                if swarm.is_empty() {
                    swarms.remove(&a.info_hash);
                }
                return failure(why);
            }
            swarm.insert(
                a.peer_id,
                Peer {
                    addr: from,
                    port: a.port,
                    left: a.left,
                    seen: Instant::now(),
                },
            );
        }
        let complete = swarm.values().filter(|p| p.left == 0).count() as u64;
        let incomplete = swarm.len() as u64 - complete;
        let mut peers = Vec::new();
        // A seeder needs no other seeders.
        for (id, p) in swarm.iter() {
            if *id == a.peer_id || (a.left == 0 && p.left == 0) {
                continue;
            }
            if peers.len() / 6 >= a.numwant {
                break;
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
    RawQuery(q): RawQuery,
) -> Response {
    let body = match parse_announce(q.as_deref().unwrap_or("")) {
        Ok(a) => match peer.ip() {
            IpAddr::V4(v4) => t.announce(&a, v4),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => t.announce(&a, v4),
                None => failure("IPv6 peers are not supported"),
            },
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
        let r = t.announce(&seeder, Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(
            r,
            b"d8:completei1e10:incompletei0e8:intervali30e5:peers0:e".to_vec()
        );
        let leecher = parse_announce(&q(&h, &[2; 20], 6882, 100, "started")).expect("valid");
        let r = t.announce(&leecher, Ipv4Addr::new(10, 0, 0, 2));
        let mut want = b"d8:completei1e10:incompletei1e8:intervali30e5:peers6:".to_vec();
        want.extend_from_slice(&[10, 0, 0, 1, 0x1a, 0xe1]);
        want.push(b'e');
        assert_eq!(r, want);
        let stop = parse_announce(&q(&h, &[1; 20], 6881, 0, "stopped")).expect("valid");
        t.announce(&stop, Ipv4Addr::new(10, 0, 0, 1));
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
            if t.announce(&a, liar).starts_with(b"d14:failure reason") {
                refused += 1;
            }
        }
        assert_eq!(t.swarm_size(&h), 3);
        assert_eq!(refused, 4997);
        // A peer restarted (same address and port, new id) replaces itself.
        let restarted = parse_announce(&q(&h, &[0xee; 20], 1000, 0, "started")).expect("valid");
        assert!(!t.announce(&restarted, liar).starts_with(b"d14:failure"));
        assert_eq!(t.swarm_size(&h), 3);
        // An announce again from a known peer is not a new peer.
        let again = parse_announce(&q(&h, &[0xee; 20], 1000, 0, "")).expect("valid");
        assert!(!t.announce(&again, liar).starts_with(b"d14:failure"));
        // Other addresses fill the rest, up to the swarm's cap.
        for n in 0..4u8 {
            let a = parse_announce(&q(&h, &[100 + n; 20], 6881, 0, "started")).expect("valid");
            t.announce(&a, Ipv4Addr::new(10, 0, 1, n));
        }
        assert_eq!(t.swarm_size(&h), 5);
        // Two swarms at most.
        for (i, hash) in [[1u8; 20], [2; 20]].iter().enumerate() {
            let a = parse_announce(&q(hash, &[9; 20], 6881, 0, "started")).expect("valid");
            let r = t.announce(&a, Ipv4Addr::new(10, 0, 2, 1));
            assert_eq!(r.starts_with(b"d14:failure"), i == 1, "swarm {i}");
        }
    }

    #[test]
    fn a_swarm_nobody_announces_to_is_swept() {
        let t = Tracker::new(Duration::from_millis(20), Default::default());
        let old = [3u8; 20];
        let a = parse_announce(&q(&old, &[1; 20], 6881, 0, "started")).expect("valid");
        t.announce(&a, Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(t.swarm_size(&old), 1);
        std::thread::sleep(Duration::from_millis(80));
        let b = parse_announce(&q(&[4; 20], &[1; 20], 6881, 0, "started")).expect("valid");
        t.announce(&b, Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(
            t.swarm_size(&old),
            0,
            "expired with nobody announcing to it"
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
