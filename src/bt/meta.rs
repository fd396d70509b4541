//! What a .torrent from the network says, checked before anything is
//! written: a layer travels as a single-file torrent whose name is one plain
//! path component, so a hostile torrent cannot place data outside the
//! directory it is downloaded into.

use sha1::{Digest, Sha1};
use sha2::Sha256;
use std::path::Path;

/// A .torrent larger than this is refused (a 30 GB layer in 4 MiB pieces
/// takes about 150 KB).
pub const MAX_TORRENT_BYTES: usize = 2 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TorrentMeta {
    /// Lower-case hex.
    pub info_hash: String,
    /// The single file's name.
    pub name: String,
    pub length: u64,
    pub piece_length: u64,
    /// 20-byte SHA-1 per piece.
    pieces: Vec<[u8; 20]>,
    pub announce: Vec<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MetaError {
    #[error("torrent of {0} bytes is larger than the {MAX_TORRENT_BYTES}-byte limit")]
    TooLarge(usize),
    #[error("not a torrent: {0}")]
    Parse(String),
    #[error("a layer torrent must hold exactly one file")]
    MultiFile,
    #[error("torrent file name {0:?} is not a plain file name")]
    BadName(String),
    #[error("torrent pieces: {0}")]
    Pieces(String),
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("size is {actual} bytes, the torrent says {expected}")]
    Size { actual: u64, expected: u64 },
    #[error("piece {piece} of {total} was still being written when the layer was checked")]
    Unsettled { piece: usize, total: usize },
    #[error("{bad} of {total} pieces do not match their hash (first: piece {first})")]
    Pieces {
        bad: usize,
        total: usize,
        first: usize,
    },
}

fn safe_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name != "."
        && name != ".."
        && !name.starts_with('.')
        && !name.contains(['/', '\\', '\0'])
        && !name.chars().any(char::is_control)
}

impl TorrentMeta {
    pub fn parse(bytes: &[u8]) -> Result<TorrentMeta, MetaError> {
        if bytes.len() > MAX_TORRENT_BYTES {
            return Err(MetaError::TooLarge(bytes.len()));
        }
        let t = librqbit::torrent_from_bytes::<librqbit::ByteBuf<'_>>(bytes)
            .map_err(|e| MetaError::Parse(format!("{e:#}")))?;
        let info = &t.info;
        if info.files.is_some() {
            return Err(MetaError::MultiFile);
        }
        let length = info.length.ok_or(MetaError::MultiFile)?;
        let name_bytes = info
            .name
            .as_ref()
            .ok_or_else(|| MetaError::BadName(String::new()))?;
        let name = std::str::from_utf8(name_bytes.as_ref())
            .map_err(|_| MetaError::BadName(String::from_utf8_lossy(name_bytes.as_ref()).into()))?
            .to_string();
        if !safe_name(&name) {
            return Err(MetaError::BadName(name));
        }
        let piece_length = u64::from(info.piece_length);
        if piece_length == 0 {
            return Err(MetaError::Pieces("piece length 0".into()));
        }
        let raw: &[u8] = info.pieces.as_ref();
        if raw.len() % 20 != 0 {
            return Err(MetaError::Pieces(format!(
                "{} bytes of hashes is not a multiple of 20",
                raw.len()
            )));
        }
        let pieces: Vec<[u8; 20]> = raw
            .chunks_exact(20)
            .map(|c| {
                let mut h = [0u8; 20];
                h.copy_from_slice(c);
                h
            })
            .collect();
        let expected = length.div_ceil(piece_length);
        if pieces.len() as u64 != expected {
            return Err(MetaError::Pieces(format!(
                "{} hashes for {expected} pieces",
                pieces.len()
            )));
        }
        let mut announce = Vec::new();
        let text =
            |b: &librqbit::ByteBuf<'_>| std::str::from_utf8(b.as_ref()).ok().map(String::from);
        if let Some(a) = t.announce.as_ref().and_then(text) {
            announce.push(a);
        }
        for tier in &t.announce_list {
            for a in tier.iter().filter_map(text) {
                if !announce.contains(&a) {
                    announce.push(a);
                }
            }
        }
        Ok(TorrentMeta {
            info_hash: t.info_hash.as_string(),
            name,
            length,
            piece_length,
            pieces,
            announce,
        })
    }

    pub fn piece_count(&self) -> usize {
        self.pieces.len()
    }

    /// Hashes every piece of `path` against the torrent. Run before a layer
    /// joins its chain when it was not checked as it arrived: the engine
    /// checks pieces as they come, but a restart resumes from a saved
    /// bitfield that a power cut may have made stale. With `sha256`, the
    /// same read also yields the manifest's hashes (whole file and piece
    /// list), so a layer is read once, not twice.
    pub fn verify_file(
        &self,
        path: &Path,
        sha256: bool,
    ) -> Result<Option<crate::bt::torrent::LayerHashes>, VerifyError> {
        use std::io::Read;
        let io = |source| VerifyError::Io {
            path: path.display().to_string(),
            source,
        };
        let mut f = std::fs::File::open(path).map_err(io)?;
        let actual = f.metadata().map_err(io)?.len();
        if actual != self.length {
            return Err(VerifyError::Size {
                actual,
                expected: self.length,
            });
        }
        let mut buf = vec![0u8; self.piece_length as usize];
        let mut bad = 0;
        let mut first = None;
        let mut whole = sha256.then(Sha256::new);
        let mut list = sha256.then(crate::bt::manifest::PieceList::default);
        for (i, want) in self.pieces.iter().enumerate() {
            let start = i as u64 * self.piece_length;
            let len = (self.length - start).min(self.piece_length) as usize;
            f.read_exact(&mut buf[..len]).map_err(io)?;
            if let Some(h) = whole.as_mut() {
                h.update(&buf[..len]);
            }
            if let Some(l) = list.as_mut() {
                l.push_piece(&buf[..len]);
            }
            if Sha1::digest(&buf[..len]).as_slice() != want {
                bad += 1;
                first.get_or_insert(i);
            }
        }
        match first {
            None => Ok(whole
                .zip(list)
                .map(|(h, l)| crate::bt::torrent::LayerHashes {
                    whole: format!("{:x}", h.finalize()),
                    pieces: l.finish(),
                })),
            Some(first) => Err(VerifyError::Pieces {
                bad,
                total: self.pieces.len(),
                first,
            }),
        }
    }
}

/// The check of `verify_file`, done while the file grows, in whatever order
/// pieces arrive, so that little is left when the last one lands.
///
/// A piece the engine downloaded and checked in this process comes with
/// the sha256 it took in that same read (librqbit patch 12): it was just
/// checked against the torrent, so it is taken as it is, not read again.
/// Any other piece the engine says it has (restored at start from a resume
/// bitfield that may be stale, or from an engine that keeps no digests) is
/// read back and checked here, SHA-1 against the torrent and sha256 for
/// the manifest's piece list. The state is in memory: a restart begins
/// again with no piece checked, and every restored piece is read.
pub struct PieceVerifier {
    meta: TorrentMeta,
    /// Each checked piece: its sha256, whether its SHA-1 matched, and the
    /// engine's write count for the piece when its bytes were taken.
    checked_pieces: Vec<Option<Checked>>,
    checked: usize,
    /// How many checked pieces came with the engine's digest.
    from_engine: usize,
    buf: Vec<u8>,
}

#[derive(Debug, Clone, Copy)]
struct Checked {
    sha256: [u8; 32],
    sha1_ok: bool,
    writes: u32,
    from_engine: bool,
}

/// What the engine says of a layer's pieces at one moment: which it has,
/// the digests it took as it checked them, and each piece's write count
/// (librqbit patch 15). A digest, the engine's or ours, describes the bytes
/// on disk only while the piece's write count is the one it was taken at;
/// an odd count is a write in progress. Missing entries read as "not had",
/// "no digest" and "never written".
#[derive(Debug, Clone, Default)]
pub struct EngineView {
    pub have: Vec<bool>,
    pub digests: Vec<Option<crate::bt::engine::PieceDigest>>,
    pub writes: Vec<u32>,
}

impl EngineView {
    fn writes(&self, i: usize) -> u32 {
        self.writes.get(i).copied().unwrap_or(0)
    }
}

/// What one `PieceVerifier::advance` did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Advanced {
    /// Pieces newly checked, by either way.
    pub pieces: usize,
    /// Bytes read back from the file (pieces without the engine's digest).
    pub read: u64,
    /// Checked pieces dropped because the engine wrote them again since.
    pub stale: usize,
}

impl PieceVerifier {
    pub fn new(meta: TorrentMeta) -> PieceVerifier {
        PieceVerifier {
            checked_pieces: vec![None; meta.pieces.len()],
            checked: 0,
            from_engine: 0,
            buf: Vec::new(),
            meta,
        }
    }

    pub fn checked(&self) -> usize {
        self.checked
    }

    /// How many checked pieces were taken on the engine's word.
    pub fn from_engine(&self) -> usize {
        self.from_engine
    }

    pub fn pieces(&self) -> usize {
        self.meta.pieces.len()
    }

    /// Checks pieces the engine holds and that are not checked yet, reading
    /// at most `budget` bytes. A piece checked before and written since is
    /// checked again. `all` treats every piece as held (the end).
    pub fn advance(
        &mut self,
        path: &Path,
        view: &EngineView,
        all: bool,
        budget: u64,
    ) -> Result<Advanced, VerifyError> {
        use sha2::Digest as _;
        use std::os::unix::fs::FileExt;
        let io = |source| VerifyError::Io {
            path: path.display().to_string(),
            source,
        };
        let mut file: Option<std::fs::File> = None;
        let mut done = Advanced::default();
        for i in 0..self.meta.pieces.len() {
            let writes = view.writes(i);
            if let Some(c) = self.checked_pieces[i] {
                if c.writes == writes {
                    continue;
                }
                // Written after its bytes were taken: take them again.
                self.checked_pieces[i] = None;
                self.checked -= 1;
                if c.from_engine {
                    self.from_engine -= 1;
                }
                done.stale += 1;
            }
            if !all && !view.have.get(i).copied().unwrap_or(false) {
                continue;
            }
            if writes % 2 == 1 {
                continue;
            }
            if let Some(d) = view.digests.get(i).copied().flatten() {
                if d.writes == writes {
                    self.checked_pieces[i] = Some(Checked {
                        sha256: d.sha256,
                        sha1_ok: true,
                        writes,
                        from_engine: true,
                    });
                    self.checked += 1;
                    self.from_engine += 1;
                    done.pieces += 1;
                    continue;
                }
            }
            if done.read >= budget {
                continue;
            }
            let start = i as u64 * self.meta.piece_length;
            let len = (self.meta.length - start).min(self.meta.piece_length) as usize;
            let f = match &file {
                Some(f) => f,
                None => file.insert(std::fs::File::open(path).map_err(io)?),
            };
            self.buf.resize(len, 0);
            f.read_exact_at(&mut self.buf[..len], start).map_err(io)?;
            done.read += len as u64;
            self.checked_pieces[i] = Some(Checked {
                sha256: Sha256::digest(&self.buf[..len]).into(),
                sha1_ok: Sha1::digest(&self.buf[..len]).as_slice() == self.meta.pieces[i],
                writes,
                from_engine: false,
            });
            self.checked += 1;
            done.pieces += 1;
        }
        Ok(done)
    }

    /// Checks whatever is left, and again whatever the engine wrote since it
    /// was checked; the piece list hash for the manifest, or the verdict of
    /// `verify_file` on a bad piece. `view` must be taken after the engine
    /// finished the layer.
    pub fn finish(mut self, path: &Path, view: &EngineView) -> Result<String, VerifyError> {
        let actual = std::fs::metadata(path)
            .map_err(|source| VerifyError::Io {
                path: path.display().to_string(),
                source,
            })?
            .len();
        if actual != self.meta.length {
            return Err(VerifyError::Size {
                actual,
                expected: self.meta.length,
            });
        }
        self.advance(path, view, true, u64::MAX)?;
        let total = self.meta.pieces.len();
        if let Some(first) = self.checked_pieces.iter().position(Option::is_none) {
            return Err(VerifyError::Unsettled {
                piece: first,
                total,
            });
        }
        let bad: Vec<usize> = self
            .checked_pieces
            .iter()
            .enumerate()
            .filter(|(_, c)| c.is_some_and(|c| !c.sha1_ok))
            .map(|(i, _)| i)
            .collect();
        if let Some(&first) = bad.first() {
            return Err(VerifyError::Pieces {
                bad: bad.len(),
                total,
                first,
            });
        }
        let mut list = crate::bt::manifest::PieceList::default();
        for c in self.checked_pieces.iter().flatten() {
            list.push_digest(&c.sha256);
        }
        Ok(list.finish())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bt::bencode::{put_bytes, put_int};

    fn view(have: &[bool]) -> EngineView {
        EngineView {
            have: have.to_vec(),
            ..EngineView::default()
        }
    }

    #[test]
    fn checking_as_pieces_arrive_gives_the_verdict_of_one_read_at_the_end() {
        let d = tempfile::tempdir().expect("tmp");
        let path = d.path().join("voi_0_x");
        let data: Vec<u8> = (0..(5 * 16384 + 100))
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        std::fs::write(&path, &data).expect("write");
        let (t, hashes) = crate::bt::torrent::create_with_sha256(&path, "http://x/announce", 16384)
            .expect("torrent");
        let meta = TorrentMeta::parse(&t.bytes).expect("meta");
        assert_eq!(
            meta.verify_file(&path, true).expect("verify"),
            Some(hashes.clone())
        );

        // Pieces 3, 1 and 5 arrived first, out of order.
        let mut v = PieceVerifier::new(meta.clone());
        let have = view(&[false, true, false, true, false, true]);
        let done = v.advance(&path, &have, false, u64::MAX).expect("advance");
        assert_eq!(
            done,
            Advanced {
                pieces: 3,
                read: 2 * 16384 + 100,
                stale: 0
            }
        );
        assert_eq!(v.checked(), 3);
        // A budget stops it too, after whole pieces.
        let mut w = PieceVerifier::new(meta.clone());
        w.advance(&path, &view(&[]), true, 1).expect("advance");
        assert_eq!(w.checked(), 1);
        let end = EngineView::default();
        assert_eq!(v.finish(&path, &end).expect("finish"), hashes.pieces);
        assert_eq!(w.finish(&path, &end).expect("finish"), hashes.pieces);

        // A piece wrong when it is read is caught, checked early or late.
        let mut bad = data.clone();
        bad[3 * 16384] ^= 1;
        std::fs::write(&path, &bad).expect("write");
        let mut v = PieceVerifier::new(meta.clone());
        v.advance(&path, &view(&[false, false, false, true]), false, u64::MAX)
            .expect("advance");
        assert!(matches!(
            v.finish(&path, &end),
            Err(VerifyError::Pieces {
                bad: 1,
                first: 3,
                ..
            })
        ));
        assert!(matches!(
            PieceVerifier::new(meta.clone()).finish(&path, &end),
            Err(VerifyError::Pieces {
                bad: 1,
                first: 3,
                ..
            })
        ));
        // Short files are refused before any reading.
        std::fs::write(&path, &data[..100]).expect("write");
        assert!(matches!(
            PieceVerifier::new(meta).finish(&path, &end),
            Err(VerifyError::Size { .. })
        ));
    }

    fn digest_view(data: &[u8], pieces: usize, engine_has: impl Fn(usize) -> bool) -> EngineView {
        use sha2::Digest as _;
        EngineView {
            have: vec![true; pieces],
            digests: (0..pieces)
                .map(|i| {
                    engine_has(i).then(|| crate::bt::engine::PieceDigest {
                        sha256: Sha256::digest(&data[i * 16384..(i + 1) * 16384]).into(),
                        writes: 2,
                    })
                })
                .collect(),
            writes: vec![2; pieces],
        }
    }

    /// A four-piece layer of known bytes in `dir`, its torrent's meta and
    /// its hashes.
    fn four_pieces(
        dir: &Path,
    ) -> (
        std::path::PathBuf,
        Vec<u8>,
        TorrentMeta,
        crate::bt::torrent::LayerHashes,
    ) {
        let path = dir.join("voi_0_x");
        let data: Vec<u8> = (0..(4 * 16384)).map(|i| (i * 13 % 241) as u8).collect();
        std::fs::write(&path, &data).expect("write");
        let (t, hashes) = crate::bt::torrent::create_with_sha256(&path, "http://x/announce", 16384)
            .expect("torrent");
        let meta = TorrentMeta::parse(&t.bytes).expect("meta");
        (path, data, meta, hashes)
    }

    /// A piece the engine checked in this process is taken with its digest
    /// and not read again; a piece without one (restored from a resume
    /// bitfield) is read and checked as before.
    #[test]
    fn pieces_the_engine_checked_are_not_read_again_and_the_others_are() {
        let d = tempfile::tempdir().expect("tmp");
        let (path, data, meta, hashes) = four_pieces(d.path());
        // The engine checked pieces 0 and 2.
        let engine = digest_view(&data, 4, |i| i % 2 == 0);
        let mut v = PieceVerifier::new(meta.clone());
        let done = v.advance(&path, &engine, false, u64::MAX).expect("advance");
        assert_eq!(
            done,
            Advanced {
                pieces: 4,
                read: 2 * 16384,
                stale: 0
            }
        );
        assert_eq!(v.from_engine(), 2);
        assert_eq!(v.finish(&path, &engine).expect("finish"), hashes.pieces);

        // Piece 1 on disk goes bad: it has no digest from the engine, so it
        // is read and caught.
        let mut bad = data.clone();
        bad[16384] ^= 1;
        std::fs::write(&path, &bad).expect("write");
        assert!(matches!(
            PieceVerifier::new(meta.clone()).finish(&path, &engine),
            Err(VerifyError::Pieces {
                bad: 1,
                first: 1,
                ..
            })
        ));
        // The budget bounds reading only: digests are taken past it.
        std::fs::write(&path, &data).expect("write");
        let mut w = PieceVerifier::new(meta);
        let done = w.advance(&path, &engine, false, 1).expect("advance");
        assert_eq!(
            done,
            Advanced {
                pieces: 3,
                read: 16384,
                stale: 0
            }
        );
    }

    /// The finding of the hostile-LAN issue, at the verifier: the engine
    /// checked piece 2 and took its digest, then a late chunk overwrote it.
    /// The write count moved, so the digest is dropped, the piece is read
    /// as it stands, and the layer is refused. A write still in progress
    /// (odd count) at the end is refused too.
    #[test]
    fn a_piece_written_after_its_digest_was_taken_is_read_again_and_caught() {
        let d = tempfile::tempdir().expect("tmp");
        let (path, data, meta, hashes) = four_pieces(d.path());
        let engine = digest_view(&data, 4, |_| true);
        let mut v = PieceVerifier::new(meta.clone());
        v.advance(&path, &engine, false, u64::MAX).expect("advance");
        assert_eq!(v.from_engine(), 4);

        let mut bad = data.clone();
        bad[2 * 16384 + 5] ^= 0xff;
        std::fs::write(&path, &bad).expect("write");
        let mut after = engine.clone();
        after.writes[2] = 4;
        assert!(matches!(
            v.finish(&path, &after),
            Err(VerifyError::Pieces {
                bad: 1,
                first: 2,
                ..
            })
        ));

        // Same digests, unchanged counts: the stale check is what caught it.
        let mut v = PieceVerifier::new(meta.clone());
        v.advance(&path, &engine, false, u64::MAX).expect("advance");
        assert!(
            v.finish(&path, &engine).is_ok(),
            "counts equal: taken as is"
        );

        let mut busy = engine.clone();
        busy.writes[1] = 3;
        busy.digests[1] = None;
        assert!(matches!(
            PieceVerifier::new(meta.clone()).finish(&path, &busy),
            Err(VerifyError::Unsettled { piece: 1, .. })
        ));
        std::fs::write(&path, &data).expect("write");
        assert_eq!(
            PieceVerifier::new(meta)
                .finish(&path, &engine)
                .expect("finish"),
            hashes.pieces
        );
    }

    /// Fuzzer finds (fuzz/corpus/torrent_meta/regress-*): each used to
    /// panic inside librqbit-bencode; see vendor/librqbit-bencode.
    #[test]
    fn hostile_bencode_is_an_error_not_a_panic() {
        let cases: [&[u8]; 6] = [
            b"d4:infod5:filesld6:lengthi1e4:path",
            b"d4:infod5:filesl",
            b"l",
            b"d4:info18446744073709551615:x",
            b"d4:infod6:lengthie",
            b"d4:infoi-e",
        ];
        for c in cases {
            assert!(
                TorrentMeta::parse(c).is_err(),
                "{:?}",
                String::from_utf8_lossy(c)
            );
        }
    }

    fn torrent(name: &[u8], length: u64, piece: u64, pieces: &[u8]) -> Vec<u8> {
        let mut info = Vec::new();
        info.push(b'd');
        put_bytes(&mut info, b"length");
        put_int(&mut info, length);
        put_bytes(&mut info, b"name");
        put_bytes(&mut info, name);
        put_bytes(&mut info, b"piece length");
        put_int(&mut info, piece);
        put_bytes(&mut info, b"pieces");
        put_bytes(&mut info, pieces);
        info.push(b'e');
        let mut t = b"d".to_vec();
        put_bytes(&mut t, b"announce");
        put_bytes(&mut t, b"http://127.0.0.1:1/announce");
        put_bytes(&mut t, b"info");
        t.extend_from_slice(&info);
        t.push(b'e');
        t
    }

    #[test]
    fn created_torrents_parse_and_verify() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("voi_0_x");
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&p, &data).unwrap();
        let t = crate::bt::torrent::create(&p, "http://t/announce", 16384).unwrap();
        let m = TorrentMeta::parse(&t.bytes).unwrap();
        assert_eq!(m.info_hash, t.info_hash_hex());
        assert_eq!(m.name, "voi_0_x");
        assert_eq!(m.length, 100_000);
        assert_eq!(m.piece_count(), 7);
        assert_eq!(m.announce, vec!["http://t/announce".to_string()]);
        assert_eq!(m.verify_file(&p, false).unwrap(), None);
        // The sha256 both read paths give is the manifest's, from one read.
        let whole = crate::bt::manifest::sha256_file(&p).unwrap();
        let (t2, sha) =
            crate::bt::torrent::create_with_sha256(&p, "http://t/announce", 16384).unwrap();
        assert_eq!(m.verify_file(&p, true).unwrap(), Some(sha.clone()));
        assert_eq!((t2, sha.whole), (t, whole));

        let mut changed = data.clone();
        changed[50_000] ^= 1;
        std::fs::write(&p, &changed).unwrap();
        match m.verify_file(&p, false) {
            Err(VerifyError::Pieces { bad, first, .. }) => assert_eq!((bad, first), (1, 3)),
            other => panic!("{other:?}"),
        }
        std::fs::write(&p, &data[..99_999]).unwrap();
        assert!(matches!(
            m.verify_file(&p, false),
            Err(VerifyError::Size { .. })
        ));
    }

    #[test]
    fn hostile_torrents_are_refused() {
        let h = [0u8; 20];
        for name in [
            &b"../etc/passwd"[..],
            b"a/b",
            b"..",
            b".hidden",
            b"",
            b"x\0y",
        ] {
            assert!(
                matches!(
                    TorrentMeta::parse(&torrent(name, 10, 16384, &h)),
                    Err(MetaError::BadName(_))
                ),
                "{name:?}"
            );
        }
        assert!(matches!(
            TorrentMeta::parse(&torrent(b"ok", 10, 16384, &[0u8; 19])),
            Err(MetaError::Pieces(_))
        ));
        assert!(matches!(
            TorrentMeta::parse(&torrent(b"ok", 40000, 16384, &h)),
            Err(MetaError::Pieces(_))
        ));
        assert!(matches!(
            TorrentMeta::parse(b"d4:infoi1ee"),
            Err(MetaError::Parse(_))
        ));
        assert!(matches!(
            TorrentMeta::parse(b"garbage"),
            Err(MetaError::Parse(_))
        ));
        assert!(TorrentMeta::parse(&torrent(b"ok", 10, 16384, &h)).is_ok());
    }
}
