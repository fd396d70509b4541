//! Agent packages the server publishes: `<data_dir>/upgrades/<platform>/
//! <version>/{voi-agent, manifest.json}`, the binary stamped with its
//! version and the manifest signed with the release key (the manifest key
//! unless `release_signing_key` is set). Terminals fetch both over HTTP
//! from the tracker port, with Range for resume (`serve.rs`). TFTP, the
//! vendor terminal's way, is not carried: our agents fetch over HTTP, and
//! the vendor's terminals are upgraded by the vendor's server.

pub mod cli;
pub mod serve;

use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

use crate::upgrade_package::{self as pkg, UpgradeManifest};

pub const PLATFORMS: [&str; 2] = ["x86", "arm"];
/// The largest package accepted.
pub const MAX_PACKAGE: usize = 256 << 20;

pub struct Upgrades {
    dir: PathBuf,
    signer: ed25519_dalek::SigningKey,
}

fn check_platform(p: &str) -> Result<(), String> {
    if PLATFORMS.contains(&p) {
        Ok(())
    } else {
        Err(format!("platform {p:?}: x86 or arm"))
    }
}

impl Upgrades {
    pub fn new(data_dir: &Path, signer: ed25519_dalek::SigningKey) -> Upgrades {
        Upgrades {
            dir: data_dir.join("upgrades"),
            signer,
        }
    }

    pub fn public_key(&self) -> String {
        crate::bt::manifest::to_hex(self.signer.verifying_key().as_bytes())
    }

    fn version_dir(&self, platform: &str, version: &str) -> Result<PathBuf, String> {
        check_platform(platform)?;
        pkg::check_version(version)?;
        Ok(self.dir.join(platform).join(version))
    }

    /// Stamps, signs and stores a package; the binary lands before its
    /// manifest, so a manifest always names a complete binary.
    pub fn publish(
        &self,
        bytes: &[u8],
        platform: &str,
        version: &str,
        raw: bool,
    ) -> Result<UpgradeManifest, String> {
        let dir = self.version_dir(platform, version)?;
        if bytes.is_empty() || bytes.len() > MAX_PACKAGE {
            return Err(format!("a package is 1 to {MAX_PACKAGE} bytes"));
        }
        let bytes = if raw {
            bytes.to_vec()
        } else {
            pkg::stamp_version(bytes, version)
                .map_err(|e| format!("{e} (publish with raw to store it unstamped)"))?
        };
        let mut m = UpgradeManifest {
            platform: platform.into(),
            version: version.into(),
            size: bytes.len() as u64,
            sha256: crate::bt::manifest::to_hex(&Sha256::digest(&bytes)),
            signature: None,
            release: self.next_release(),
            release_signature: None,
        };
        m.sign(&self.signer);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        crate::fsutil::atomic_write(&dir.join("voi-agent"), &bytes).map_err(|e| e.to_string())?;
        crate::fsutil::write_json(&dir.join("manifest.json"), &m).map_err(|e| e.to_string())?;
        log::info!(
            "published voi-agent {version} for {platform}: {} bytes, sha256 {}",
            m.size,
            m.sha256
        );
        Ok(m)
    }

    /// One more than the highest release published, on any platform.
    fn next_release(&self) -> u64 {
        self.list().iter().map(|m| m.release).max().unwrap_or(0) + 1
    }

    /// Publishes an already published package again as a new release (a
    /// downgrade an operator asked for with `--force`): same bytes, a new
    /// release number, signed again.
    pub fn republish(&self, platform: &str, version: &str) -> Result<UpgradeManifest, String> {
        let dir = self.version_dir(platform, version)?;
        let mut m = self
            .manifest(platform, version)
            .ok_or_else(|| format!("no package {version} for {platform}"))?;
        m.release = self.next_release();
        m.sign(&self.signer);
        crate::fsutil::write_json(&dir.join("manifest.json"), &m).map_err(|e| e.to_string())?;
        log::warn!(
            "voi-agent {version} for {platform} published again as release {} (a downgrade an operator forced)",
            m.release
        );
        Ok(m)
    }

    /// Packages published before release numbers get them now, in version
    /// order, so agents with rollback protection can install them.
    pub fn number_old_releases(&self) {
        let old: Vec<UpgradeManifest> = self
            .list()
            .into_iter()
            .filter(|m| m.release_signature.is_none())
            .collect();
        for m in old {
            if let Err(e) = self.republish(&m.platform, &m.version) {
                log::warn!("numbering {} {}: {e}", m.platform, m.version);
            }
        }
    }

    pub fn manifest(&self, platform: &str, version: &str) -> Option<UpgradeManifest> {
        let dir = self.version_dir(platform, version).ok()?;
        let m: UpgradeManifest =
            serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).ok()?).ok()?;
        (m.platform == platform && m.version == version).then_some(m)
    }

    pub fn binary_path(&self, platform: &str, version: &str) -> Option<PathBuf> {
        let p = self.version_dir(platform, version).ok()?.join("voi-agent");
        p.is_file().then_some(p)
    }

    /// Every published package, by platform then version.
    pub fn list(&self) -> Vec<UpgradeManifest> {
        let mut out = Vec::new();
        for platform in PLATFORMS {
            let Ok(entries) = std::fs::read_dir(self.dir.join(platform)) else {
                continue;
            };
            for e in entries.flatten() {
                let v = e.file_name().to_string_lossy().into_owned();
                if let Some(m) = self.manifest(platform, &v) {
                    out.push(m);
                }
            }
        }
        out.sort_by(|a, b| {
            (a.platform.clone(), pkg::parse_version(&a.version))
                .cmp(&(b.platform.clone(), pkg::parse_version(&b.version)))
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_checks_names_and_signs() {
        let d = tempfile::tempdir().expect("tmp");
        let key = ed25519_dalek::SigningKey::from_bytes(&[3; 32]);
        let u = Upgrades::new(d.path(), key.clone());
        assert!(u.publish(b"x", "mips", "0.2.0", true).is_err());
        assert!(u.publish(b"x", "x86", "../../etc", true).is_err());
        assert!(
            u.publish(b"no slot", "x86", "0.2.0", false).is_err(),
            "an unstamped file needs raw"
        );
        let m = u
            .publish(b"#!/bin/sh\n", "x86", "0.2.0", true)
            .expect("publish");
        assert!(m.verify(&key.verifying_key()).is_ok());
        assert_eq!(u.list(), vec![m.clone()]);
        assert_eq!(u.manifest("x86", "0.2.0"), Some(m));
        assert!(u.binary_path("x86", "0.2.0").is_some());
        assert!(u.manifest("arm", "0.2.0").is_none());
    }
}
