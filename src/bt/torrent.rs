//! Single-file .torrent creation (BEP 3) for disk layers, as the server
//! needs for every image it seeds.

use super::bencode::{put_bytes, put_int};
use sha1::{Digest, Sha1};
use std::io::Read;
use std::path::Path;

/// About this many pieces per layer: enough that a room of terminals holds
/// different pieces to trade (and a piece stolen from a slow peer wastes
/// little), few enough that the torrent stays small.
const TARGET_PIECES: u64 = 1024;

/// The piece length for a layer of `len` bytes: a power of two from
/// 256 KiB to 16 MiB (a 30 GB layer: 16 MiB pieces, a 40 KB torrent).
pub fn piece_length_for(len: u64) -> u64 {
    (len / TARGET_PIECES)
        .next_power_of_two()
        .clamp(256 << 10, 16 << 20)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedTorrent {
    /// The bencoded .torrent.
    pub bytes: Vec<u8>,
    pub info_hash: [u8; 20],
    pub length: u64,
    pub piece_length: u64,
}

impl CreatedTorrent {
    pub fn info_hash_hex(&self) -> String {
        self.info_hash.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// Hashes `path` in `piece_length` pieces and builds its torrent. The
/// torrent's name is the file name, so a layer keeps its
/// `prefix_level_uuid` name wherever it is downloaded.
/// A torrent this module made, announcing `announce` instead: the info
/// dictionary (and so the info hash) is kept byte for byte. `None` when the
/// bytes are not of the shape `build` writes.
pub fn with_announce(torrent: &[u8], announce: &str) -> Option<Vec<u8>> {
    let at = torrent.windows(7).position(|w| w == b"4:infod")?;
    let info = torrent.get(at + 6..torrent.len().checked_sub(1)?)?;
    if torrent.last() != Some(&b'e') || !torrent.starts_with(b"d8:announce") {
        return None;
    }
    let created_by = torrent
        .windows(13)
        .position(|w| w == b"10:created by")
        .and_then(|p| torrent.get(p..at));
    let mut out = b"d".to_vec();
    put_bytes(&mut out, b"announce");
    put_bytes(&mut out, announce.as_bytes());
    if let Some(c) = created_by {
        out.extend_from_slice(c);
    }
    out.extend_from_slice(b"4:info");
    out.extend_from_slice(info);
    out.push(b'e');
    Some(out)
}

pub fn create(path: &Path, announce: &str, piece_length: u64) -> std::io::Result<CreatedTorrent> {
    build(path, announce, piece_length, false).map(|(t, _)| t)
}

/// What the image manifest holds about a file's bytes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LayerHashes {
    /// sha256 of the whole file.
    pub whole: String,
    /// `bt::manifest::piece_list_hash` of the file's pieces.
    pub pieces: String,
}

/// As `create`, plus the manifest's hashes from the same read.
pub fn create_with_sha256(
    path: &Path,
    announce: &str,
    piece_length: u64,
) -> std::io::Result<(CreatedTorrent, LayerHashes)> {
    let (t, sha) = build(path, announce, piece_length, true)?;
    Ok((t, sha.unwrap_or_default()))
}

fn build(
    path: &Path,
    announce: &str,
    piece_length: u64,
    sha256: bool,
) -> std::io::Result<(CreatedTorrent, Option<LayerHashes>)> {
    if piece_length < 16 * 1024 || !piece_length.is_power_of_two() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "piece length must be a power of two of at least 16 KiB",
        ));
    }
    let name = path.file_name().and_then(|n| n.to_str()).ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "file name is not UTF-8")
    })?;
    let mut f = std::fs::File::open(path)?;
    let mut pieces = Vec::new();
    let mut buf = vec![0u8; piece_length as usize];
    let mut length = 0u64;
    let mut whole = sha256.then(sha2::Sha256::new);
    let mut list = sha256.then(crate::bt::manifest::PieceList::default);
    loop {
        let mut filled = 0;
        while filled < buf.len() {
            let n = f.read(&mut buf[filled..])?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        if filled == 0 {
            break;
        }
        length += filled as u64;
        if let Some(h) = whole.as_mut() {
            h.update(&buf[..filled]);
        }
        if let Some(l) = list.as_mut() {
            l.push_piece(&buf[..filled]);
        }
        pieces.extend_from_slice(&Sha1::digest(&buf[..filled]));
        if filled < buf.len() {
            break;
        }
    }
    // Keys in sorted order, as bencoding requires.
    let mut info = b"d".to_vec();
    put_bytes(&mut info, b"length");
    put_int(&mut info, length);
    put_bytes(&mut info, b"name");
    put_bytes(&mut info, name.as_bytes());
    put_bytes(&mut info, b"piece length");
    put_int(&mut info, piece_length);
    put_bytes(&mut info, b"pieces");
    put_bytes(&mut info, &pieces);
    info.push(b'e');
    let info_hash: [u8; 20] = Sha1::digest(&info).into();

    let mut out = b"d".to_vec();
    put_bytes(&mut out, b"announce");
    put_bytes(&mut out, announce.as_bytes());
    put_bytes(&mut out, b"created by");
    put_bytes(
        &mut out,
        concat!("voi-agent ", env!("CARGO_PKG_VERSION")).as_bytes(),
    );
    put_bytes(&mut out, b"info");
    out.extend_from_slice(&info);
    out.push(b'e');
    Ok((
        CreatedTorrent {
            bytes: out,
            info_hash,
            length,
            piece_length,
        },
        whole.zip(list).map(|(h, l)| LayerHashes {
            whole: format!("{:x}", h.finalize()),
            pieces: l.finish(),
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_announce_keeps_the_info_hash() {
        let d = tempfile::tempdir().expect("tmp");
        let p = d.path().join("voi_0_91f9d1ba-cb4a-41ba-971a-618f9e306571");
        std::fs::write(&p, vec![7u8; 40_000]).expect("write");
        let t = create(&p, "http://10.0.0.1:50021/announce", 16384).expect("torrent");
        let moved = with_announce(&t.bytes, "http://10.0.0.9:50099/announce").expect("ours");
        let a = crate::bt::meta::TorrentMeta::parse(&t.bytes).expect("old");
        let b = crate::bt::meta::TorrentMeta::parse(&moved).expect("new");
        assert_eq!(a.info_hash, b.info_hash);
        assert_eq!(
            b.announce,
            vec!["http://10.0.0.9:50099/announce".to_string()]
        );
        assert!(with_announce(b"d4:spam3:egge", "x").is_none());
    }

    #[test]
    fn known_layout_and_hash() {
        let d = tempfile::tempdir().expect("tmp");
        let p = d.path().join("voi_0_91f9d1ba-cb4a-41ba-971a-618f9e306571");
        std::fs::write(&p, vec![7u8; 40_000]).expect("write");
        let t = create(&p, "http://10.0.0.1:50021/announce", 16384).expect("torrent");
        assert_eq!(t.length, 40_000);
        let text = String::from_utf8_lossy(&t.bytes);
        assert!(text.starts_with("d8:announce30:http://10.0.0.1:50021/announce10:created by"));
        assert!(text.contains("4:infod6:lengthi40000e4:name42:voi_0_91f9d1ba-cb4a-41ba-971a-618f9e30657112:piece lengthi16384e6:pieces60:"));
        // Three pieces: 16384 + 16384 + 7232, each hashed.
        let p1 = Sha1::digest(vec![7u8; 16384]);
        let p3 = Sha1::digest(vec![7u8; 7232]);
        let pos = t
            .bytes
            .windows(9)
            .position(|w| w == b"pieces60:")
            .expect("pieces")
            + 9;
        assert_eq!(&t.bytes[pos..pos + 20], p1.as_slice());
        assert_eq!(&t.bytes[pos + 40..pos + 60], p3.as_slice());
        // The info hash is the SHA-1 of the bencoded info dictionary.
        let start = t
            .bytes
            .windows(5)
            .position(|w| w == b"4:inf")
            .expect("info")
            + 6;
        assert_eq!(
            Sha1::digest(&t.bytes[start..t.bytes.len() - 1]).as_slice(),
            &t.info_hash
        );
        assert!(create(&p, "x", 1000).is_err());
    }
}
