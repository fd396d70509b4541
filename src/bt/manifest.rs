//! The image manifest: what the server says each layer is (size, sha256,
//! parent layer, BitTorrent info hash), published beside its torrent at
//! `/manifest/<layer>.json` on the tracker's port. A downloaded layer whose
//! pieces all hash right can still be the wrong layer (a torrent pushed by
//! someone else, a library file replaced under the same name); the agent
//! checks the finished file against the manifest before the layer becomes
//! bootable, and refuses it on any difference.

use serde::{Deserialize, Serialize};
use std::io::Read;
use std::path::Path;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerManifest {
    pub layer: String,
    pub size: u64,
    /// Lower-case hex of the whole file.
    pub sha256: String,
    /// The layer this one's qcow2 header names as its backing file; none
    /// for a base.
    pub parent: Option<String>,
    pub info_hash: String,
    /// The version of the layer the server publishes now (the desktop
    /// group's `operate_id`, bumped when an operator updates it). Signed,
    /// so an old signed manifest cannot stand in for a newer layer.
    #[serde(default)]
    pub operate_id: u32,
    /// `piece_list_hash` of the file in its torrent's pieces: lets an agent
    /// check pieces as they arrive, in any order, instead of reading the
    /// whole file again for `sha256` after the last one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub piece_sha256: Option<String>,
    /// ed25519 over `signed_bytes()`, lower-case hex; absent from servers
    /// that do not sign (the vendor's has no manifests at all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

/// What a signature covers: every field but the signature, in a fixed
/// order, after a domain tag (a signature made for anything else never
/// verifies as a manifest).
#[derive(Serialize)]
struct Signed<'a> {
    layer: &'a str,
    size: u64,
    sha256: &'a str,
    parent: &'a Option<String>,
    info_hash: &'a str,
    operate_id: u32,
    piece_sha256: &'a Option<String>,
}

const SIGNATURE_DOMAIN: &[u8] = b"voi-layer-manifest-v2\n";

pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn from_hex(text: &str) -> Option<Vec<u8>> {
    let t = text.trim();
    if t.len() % 2 != 0 {
        return None;
    }
    (0..t.len())
        .step_by(2)
        .map(|i| t.get(i..i + 2).and_then(|b| u8::from_str_radix(b, 16).ok()))
        .collect()
}

/// A public key as `agent.toml` carries it (64 hex characters).
pub fn parse_public_key(text: &str) -> Result<ed25519_dalek::VerifyingKey, String> {
    let bytes: [u8; 32] = from_hex(text)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| "a manifest key is 64 hex characters (32 bytes)".to_string())?;
    ed25519_dalek::VerifyingKey::from_bytes(&bytes).map_err(|e| format!("manifest key: {e}"))
}

/// How strictly the agent wants manifests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ManifestPolicy {
    /// Check when the server publishes one; a server that answers 404 (the
    /// vendor's, which has no manifests) is trusted on the torrent alone.
    #[default]
    IfPublished,
    /// No layer without a matching manifest.
    Required,
    Off,
}

/// The hash of a file's piece list: sha256 over the concatenated sha256 of
/// each piece (pieces as its torrent cuts them), lower-case hex. Pieces can
/// be hashed in any order and listed at the end.
#[derive(Default)]
pub struct PieceList {
    list: sha2::Sha256,
}

impl PieceList {
    pub fn push_piece(&mut self, piece: &[u8]) {
        use sha2::{Digest, Sha256};
        self.list.update(Sha256::digest(piece));
    }

    pub fn push_digest(&mut self, digest: &[u8; 32]) {
        use sha2::Digest;
        self.list.update(digest);
    }

    pub fn finish(self) -> String {
        use sha2::Digest;
        format!("{:x}", self.list.finalize())
    }
}

/// sha256 of a file as lower-case hex, read in 1 MiB blocks.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    use sha2::{Digest, Sha256};
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(format!("{:x}", h.finalize()))
}

impl LayerManifest {
    fn signed_bytes(&self) -> Vec<u8> {
        let body = Signed {
            layer: &self.layer,
            size: self.size,
            sha256: &self.sha256,
            parent: &self.parent,
            info_hash: &self.info_hash,
            operate_id: self.operate_id,
            piece_sha256: &self.piece_sha256,
        };
        let mut out = SIGNATURE_DOMAIN.to_vec();
        out.extend(serde_json::to_vec(&body).unwrap_or_default());
        out
    }

    pub fn sign(&mut self, key: &ed25519_dalek::SigningKey) {
        use ed25519_dalek::Signer;
        self.signature = Some(to_hex(&key.sign(&self.signed_bytes()).to_bytes()));
    }

    /// Whether the server holding `key` signed exactly this manifest.
    pub fn verify(&self, key: &ed25519_dalek::VerifyingKey) -> Result<(), String> {
        let sig = self
            .signature
            .as_deref()
            .ok_or_else(|| "the manifest is not signed".to_string())?;
        let bytes: [u8; 64] = from_hex(sig)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| "the manifest's signature is not 64 hex bytes".to_string())?;
        key.verify_strict(
            &self.signed_bytes(),
            &ed25519_dalek::Signature::from_bytes(&bytes),
        )
        .map_err(|_| "the manifest's signature does not verify with the configured key".into())
    }

    /// Refuses a manifest older than the layer version the server asked
    /// for: a replay of what it signed before an operator's update.
    pub fn current_for(&self, operate_id: i64) -> Result<(), String> {
        if i64::from(self.operate_id) < operate_id {
            return Err(format!(
                "the signed manifest is for operate_id {}, older than the {operate_id} the server asked for (a replayed manifest)",
                self.operate_id
            ));
        }
        Ok(())
    }

    /// Compares a finished download with the manifest. `parent` is what the
    /// file's own header names; `pieces` is the download's piece list hash
    /// (from checking as it arrived) and `sha256` the whole file's, when the
    /// caller has them. With both sides' piece lists the whole file is not
    /// read again; otherwise its sha256 is (read here if not given).
    pub fn check(
        &self,
        layer: &str,
        info_hash: &str,
        parent: Option<&str>,
        path: &Path,
        pieces: Option<&str>,
        sha256: Option<&str>,
    ) -> Result<(), String> {
        let mut wrong = Vec::new();
        if self.layer != layer {
            wrong.push(format!("layer {} (manifest {})", layer, self.layer));
        }
        if !self.info_hash.eq_ignore_ascii_case(info_hash) {
            wrong.push(format!(
                "info hash {info_hash} (manifest {})",
                self.info_hash
            ));
        }
        if self.parent.as_deref() != parent {
            wrong.push(format!("parent {parent:?} (manifest {:?})", self.parent));
        }
        let size = std::fs::metadata(path).map_err(|e| e.to_string())?.len();
        if size != self.size {
            wrong.push(format!("size {size} (manifest {})", self.size));
        }
        if wrong.is_empty() {
            match (self.piece_sha256.as_deref(), pieces) {
                (Some(want), Some(got)) => {
                    if !got.eq_ignore_ascii_case(want) {
                        wrong.push(format!("piece sha256 list {got} (manifest {want})"));
                    }
                }
                _ => {
                    let sum = match sha256 {
                        Some(s) => s.to_string(),
                        None => sha256_file(path).map_err(|e| e.to_string())?,
                    };
                    if !sum.eq_ignore_ascii_case(&self.sha256) {
                        wrong.push(format!("sha256 {sum} (manifest {})", self.sha256));
                    }
                }
            }
        }
        if wrong.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "does not match the server's manifest: {}",
                wrong.join(", ")
            ))
        }
    }
}

/// What asking the server for a manifest gave.
#[derive(Debug)]
pub enum Fetched {
    Found(LayerManifest),
    /// The server answered and has none (404, or any 4xx from a tracker
    /// that has no manifests, as the vendor's has not).
    NotPublished,
    /// Nobody to ask: no HTTP tracker is known, or nothing listens where
    /// one should (connection refused). A vendor server publishes nothing.
    NoPublisher(String),
    /// No answer worth trusting (unreachable, 5xx, bad JSON); ask later.
    Unavailable(String),
}

/// `http://host:port/announce` → `http://host:port/manifest/<layer>.json`.
pub fn url_for(tracker: &str, layer: &str) -> Option<String> {
    let mut url = reqwest::Url::parse(tracker).ok()?;
    if !matches!(url.scheme(), "http" | "https") {
        return None;
    }
    url.set_query(None);
    url.set_path(&format!("/manifest/{layer}.json"));
    Some(url.to_string())
}

/// Asks each tracker's host in turn; the first real answer wins.
pub async fn fetch(trackers: &[String], layer: &str) -> Fetched {
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
    {
        Ok(c) => c,
        Err(e) => return Fetched::Unavailable(e.to_string()),
    };
    let mut last = "no http tracker is known".to_string();
    let mut not_found = false;
    let mut asked = 0;
    let mut refused = 0;
    for url in trackers.iter().filter_map(|t| url_for(t, layer)) {
        asked += 1;
        match client.get(&url).send().await {
            Ok(r) if r.status().is_client_error() => not_found = true,
            Ok(r) if r.status().is_success() => {
                // A manifest is a few hundred bytes; refuse anything large.
                match r.bytes().await {
                    Ok(b) if b.len() <= 64 * 1024 => {
                        match serde_json::from_slice::<LayerManifest>(&b) {
                            Ok(m) => return Fetched::Found(m),
                            Err(e) => last = format!("{url}: {e}"),
                        }
                    }
                    Ok(b) => last = format!("{url}: {} bytes is no manifest", b.len()),
                    Err(e) => last = format!("{url}: {e}"),
                }
            }
            Ok(r) => last = format!("{url}: HTTP {}", r.status()),
            Err(e) => {
                if e.is_connect() && !e.is_timeout() {
                    refused += 1;
                }
                last = format!("{url}: {e}");
            }
        }
    }
    if not_found {
        Fetched::NotPublished
    } else if asked == refused {
        Fetched::NoPublisher(last)
    } else {
        Fetched::Unavailable(last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_url_sits_beside_the_tracker() {
        assert_eq!(
            url_for("http://10.0.0.1:50021/announce", "voi_0_x").as_deref(),
            Some("http://10.0.0.1:50021/manifest/voi_0_x.json")
        );
        assert_eq!(url_for("udp://10.0.0.1:6969", "voi_0_x"), None);
    }

    #[test]
    fn every_difference_is_refused() {
        let d = tempfile::tempdir().expect("tmp");
        let p = d.path().join("f");
        std::fs::write(&p, b"layer bytes").expect("write");
        let good = LayerManifest {
            layer: "voi_1_u".into(),
            size: 11,
            sha256: sha256_file(&p).expect("sha"),
            parent: Some("voi_0_u".into()),
            info_hash: "ab".into(),
            operate_id: 0,
            piece_sha256: None,
            signature: None,
        };
        assert!(good
            .check("voi_1_u", "AB", Some("voi_0_u"), &p, None, None)
            .is_ok());
        let sum = sha256_file(&p).expect("sha");
        assert!(good
            .check("voi_1_u", "ab", Some("voi_0_u"), &p, None, Some(&sum))
            .is_ok());
        let cases = [
            LayerManifest {
                sha256: "00".repeat(32),
                ..good.clone()
            },
            LayerManifest {
                size: 12,
                ..good.clone()
            },
            LayerManifest {
                parent: None,
                ..good.clone()
            },
            LayerManifest {
                info_hash: "cd".into(),
                ..good.clone()
            },
            LayerManifest {
                layer: "voi_1_v".into(),
                ..good.clone()
            },
        ];
        for m in cases {
            let e = m
                .check("voi_1_u", "ab", Some("voi_0_u"), &p, None, None)
                .expect_err("refused");
            assert!(e.contains("manifest"), "{e}");
        }
    }

    #[test]
    fn a_piece_list_checked_on_arrival_stands_in_for_reading_the_file_again() {
        let d = tempfile::tempdir().expect("tmp");
        let p = d.path().join("voi_0_u");
        std::fs::write(&p, vec![5u8; 40_000]).expect("write");
        let (t, hashes) =
            crate::bt::torrent::create_with_sha256(&p, "http://t/announce", 16384).expect("t");
        let m = LayerManifest {
            layer: "voi_0_u".into(),
            size: 40_000,
            sha256: hashes.whole.clone(),
            parent: None,
            info_hash: t.info_hash_hex(),
            operate_id: 0,
            piece_sha256: Some(hashes.pieces.clone()),
            signature: None,
        };
        let ih = t.info_hash_hex();
        assert!(m
            .check("voi_0_u", &ih, None, &p, Some(&hashes.pieces), None)
            .is_ok());
        let e = m
            .check("voi_0_u", &ih, None, &p, Some(&"ab".repeat(32)), None)
            .expect_err("another piece list");
        assert!(e.contains("piece sha256 list"), "{e}");
        // Without a piece list on one side, the whole file's sha256 decides.
        assert!(m.check("voi_0_u", &ih, None, &p, None, None).is_ok());
        let older = LayerManifest {
            piece_sha256: None,
            ..m.clone()
        };
        assert!(older
            .check("voi_0_u", &ih, None, &p, Some(&hashes.pieces), None)
            .is_ok());
        std::fs::write(&p, vec![6u8; 40_000]).expect("write");
        assert!(older
            .check("voi_0_u", &ih, None, &p, Some(&hashes.pieces), None)
            .is_err());
    }

    fn key(seed: u8) -> ed25519_dalek::SigningKey {
        ed25519_dalek::SigningKey::from_bytes(&[seed; 32])
    }

    #[test]
    fn a_signed_manifest_verifies_only_whole_and_with_its_key() {
        let mut m = LayerManifest {
            layer: "voi_1_u".into(),
            size: 11,
            sha256: "11".repeat(32),
            parent: Some("voi_0_u".into()),
            info_hash: "ab".into(),
            operate_id: 0,
            piece_sha256: None,
            signature: None,
        };
        let k = key(7);
        assert!(m.verify(&k.verifying_key()).is_err(), "unsigned");
        m.sign(&k);
        assert!(m.verify(&k.verifying_key()).is_ok());
        // Through JSON, as the agent gets it.
        let back: LayerManifest =
            serde_json::from_slice(&serde_json::to_vec(&m).expect("json")).expect("parse");
        assert!(back.verify(&k.verifying_key()).is_ok());
        assert!(m.verify(&key(8).verifying_key()).is_err(), "another key");
        for forged in [
            LayerManifest {
                sha256: "22".repeat(32),
                ..m.clone()
            },
            LayerManifest {
                size: 12,
                ..m.clone()
            },
            LayerManifest {
                parent: None,
                ..m.clone()
            },
            LayerManifest {
                info_hash: "cd".into(),
                ..m.clone()
            },
            LayerManifest {
                layer: "voi_1_v".into(),
                ..m.clone()
            },
            LayerManifest {
                operate_id: 3,
                ..m.clone()
            },
            LayerManifest {
                signature: Some("00".repeat(64)),
                ..m.clone()
            },
            LayerManifest {
                signature: Some("zz".into()),
                ..m.clone()
            },
        ] {
            assert!(forged.verify(&k.verifying_key()).is_err(), "{forged:?}");
        }
        let hex = to_hex(k.verifying_key().as_bytes());
        // Versions: the manifest of operate_id 2 serves a request for 2 or
        // less, never one for 3.
        m.operate_id = 2;
        m.sign(&k);
        assert!(m.verify(&k.verifying_key()).is_ok());
        assert!(m.current_for(2).is_ok() && m.current_for(0).is_ok());
        let e = m.current_for(3).expect_err("replayed");
        assert!(e.contains("replayed"), "{e}");
        assert_eq!(parse_public_key(&hex).expect("key"), k.verifying_key());
        assert!(parse_public_key("abc").is_err());
    }
}
