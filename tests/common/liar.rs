//! A lying BitTorrent peer for the hostile-LAN tests: it announces itself
//! to a tracker as a seeder, claims every piece, and answers every request
//! with bytes of its own. Some of its connections answer at once, some
//! slowly and then hang up, so that pieces are stolen from it by honest
//! peers and its death lands while those are written and checked (the
//! interleaving that got its bytes into a verified layer before librqbit
//! patch 15).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

#[derive(Default)]
pub struct LiarStats {
    /// Bytes of lies sent in piece messages.
    pub lied_bytes: AtomicU64,
    /// Connections accepted.
    pub connections: AtomicU64,
}

pub struct Liars {
    pub stats: Arc<LiarStats>,
    pub ports: Vec<u16>,
    stop: CancellationToken,
}

impl Drop for Liars {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

fn percent_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("%{b:02x}")).collect()
}

/// Starts a liar on each of `binds` (addresses of this machine), each on
/// its own port, and announces each to `announce` as a seeder of
/// `info_hash` (hex), from its own address: on loopback, 127.0.0.2 and up
/// are peers of their own, not the origin (the server's 127.0.0.1).
pub async fn start(
    binds: &[std::net::IpAddr],
    announce: &str,
    info_hash_hex: &str,
    pieces: usize,
    seed: u64,
) -> Liars {
    let info_hash: [u8; 20] = (0..20)
        .map(|i| u8::from_str_radix(&info_hash_hex[2 * i..2 * i + 2], 16).expect("hex"))
        .collect::<Vec<u8>>()
        .try_into()
        .expect("20 bytes");
    let stats = Arc::new(LiarStats::default());
    let stop = CancellationToken::new();
    let mut ports = Vec::new();
    let mut urls = Vec::new();
    for (n, &bind) in binds.iter().enumerate() {
        let client = reqwest::Client::builder()
            .local_address(bind)
            .build()
            .expect("client");
        let listener = TcpListener::bind(SocketAddr::new(bind, 0))
            .await
            .expect("bind a liar");
        let port = listener.local_addr().expect("addr").port();
        ports.push(port);
        let mut peer_id = *b"-LI0001-000000000000";
        peer_id[8..].copy_from_slice(format!("{n:012}").as_bytes());
        let url = format!(
            "{announce}?info_hash={}&peer_id={}&port={port}&uploaded=0&downloaded=0&left=0&event=started&compact=1",
            percent_encode(&info_hash),
            percent_encode(&peer_id)
        );
        let answer = client.get(&url).send().await.expect("announce");
        assert!(answer.status().is_success(), "tracker took the liar");
        urls.push((client, url));
        let (stats, stop) = (stats.clone(), stop.clone());
        tokio::spawn(async move {
            let mut conn_no = 0u64;
            loop {
                let accepted = tokio::select! {
                    _ = stop.cancelled() => return,
                    a = listener.accept() => a,
                };
                let Ok((sock, _)) = accepted else { continue };
                conn_no += 1;
                stats.connections.fetch_add(1, Ordering::Relaxed);
                let mut rng = seed ^ ((n as u64) << 32) ^ conn_no.wrapping_mul(0x9e37_79b9);
                rng |= 1;
                let slow = xorshift(&mut rng) % 2 == 0;
                let (stats, stop) = (stats.clone(), stop.clone());
                tokio::spawn(async move {
                    tokio::select! {
                        _ = stop.cancelled() => {}
                        _ = lie(sock, info_hash, peer_id, pieces, slow, rng, &stats) => {}
                    }
                });
            }
        });
    }
    // Announced again before the tracker forgets them.
    let again = stop.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = again.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(20)) => {}
            }
            for (client, url) in &urls {
                let _ = client.get(url).send().await;
            }
        }
    });
    Liars { stats, ports, stop }
}

async fn lie(
    mut sock: TcpStream,
    info_hash: [u8; 20],
    peer_id: [u8; 20],
    pieces: usize,
    slow: bool,
    mut rng: u64,
    stats: &LiarStats,
) -> std::io::Result<()> {
    let mut hs = [0u8; 68];
    sock.read_exact(&mut hs).await?;
    if hs[28..48] != info_hash {
        return Ok(());
    }
    let mut out = Vec::with_capacity(68);
    out.push(19);
    out.extend_from_slice(b"BitTorrent protocol");
    out.extend_from_slice(&[0; 8]);
    out.extend_from_slice(&info_hash);
    out.extend_from_slice(&peer_id);
    // Every piece, and unchoked.
    let mut bits = vec![0xffu8; pieces.div_ceil(8)];
    if pieces % 8 != 0 {
        if let Some(last) = bits.last_mut() {
            *last = 0xff << (8 - pieces % 8);
        }
    }
    out.extend_from_slice(&(1 + bits.len() as u32).to_be_bytes());
    out.push(5);
    out.extend_from_slice(&bits);
    out.extend_from_slice(&1u32.to_be_bytes());
    out.push(1);
    sock.write_all(&out).await?;
    let (mut rd, mut wr) = sock.into_split();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<([u8; 8], usize)>();
    // A liar hangs up after a few answers, with requests in flight; and a
    // few milliseconds after it is told a piece was taken from it (a
    // Cancel): that is when the thief completes and checks the piece.
    let mut answers_left = 3 + xorshift(&mut rng) % 40;
    let hang_up_after_cancel = Duration::from_millis(1 + xorshift(&mut rng) % 15);
    let mut writer_rng = xorshift(&mut rng) | 1;
    let writer = async move {
        while let Some((at, length)) = rx.recv().await {
            if slow {
                tokio::time::sleep(Duration::from_millis(20 + xorshift(&mut writer_rng) % 130))
                    .await;
            }
            let mut piece = Vec::with_capacity(13 + length);
            piece.extend_from_slice(&(9 + length as u32).to_be_bytes());
            piece.push(7);
            piece.extend_from_slice(&at);
            for _ in 0..length {
                piece.push(xorshift(&mut writer_rng) as u8);
            }
            wr.write_all(&piece).await?;
            stats.lied_bytes.fetch_add(length as u64, Ordering::Relaxed);
            answers_left = answers_left.saturating_sub(1);
            if answers_left == 0 {
                return Ok(());
            }
        }
        Ok::<(), std::io::Error>(())
    };
    let (cancelled_tx, cancelled_rx) = tokio::sync::oneshot::channel::<()>();
    let reader = async move {
        let mut cancelled_tx = Some(cancelled_tx);
        loop {
            let mut len = [0u8; 4];
            rd.read_exact(&mut len).await?;
            let len = u32::from_be_bytes(len) as usize;
            if len == 0 {
                continue;
            }
            if len > 1 << 20 {
                return Ok(());
            }
            let mut msg = vec![0u8; len];
            rd.read_exact(&mut msg).await?;
            match (msg[0], msg.len()) {
                (6, 13) => {
                    let length = u32::from_be_bytes([msg[9], msg[10], msg[11], msg[12]]) as usize;
                    if length > 1 << 17 {
                        return Ok(());
                    }
                    let mut at = [0u8; 8];
                    at.copy_from_slice(&msg[1..9]);
                    if tx.send((at, length)).is_err() {
                        return Ok(());
                    }
                }
                (8, 13) => {
                    if let Some(t) = cancelled_tx.take() {
                        let _ = t.send(());
                    }
                }
                _ => {}
            }
        }
        #[allow(unreachable_code)]
        Ok::<(), std::io::Error>(())
    };
    let die_after_cancel = async move {
        if cancelled_rx.await.is_ok() {
            tokio::time::sleep(hang_up_after_cancel).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        r = writer => r,
        r = reader => r,
        _ = die_after_cancel => Ok(()),
    }
}
