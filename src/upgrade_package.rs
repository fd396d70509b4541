//! Agent release packages, shared by the server (which signs and serves
//! them) and the agent (which checks and installs them).
//!
//! A package is the static `voi-agent` binary of one platform and version,
//! and a manifest naming its size and sha256, signed with ed25519 by the
//! server's manifest key or a release key. The agent checks the signature
//! with the key it was flashed with before it writes anything where it
//! would run.
//!
//! The version a binary reports is read from a slot in the binary itself
//! (`VERSION_SLOT_PREFIX` then up to 32 bytes), so a release is the same
//! build stamped with its version (`stamp_version`), as `-X` does for Go.

use serde::{Deserialize, Serialize};

pub const SIGNATURE_DOMAIN: &[u8] = b"voi-agent-upgrade-v1\n";
/// The domain of the release signature, which also covers the release
/// number (issue 38.8).
pub const RELEASE_SIGNATURE_DOMAIN: &[u8] = b"voi-agent-release-v2\n";
pub const VERSION_SLOT_PREFIX: &[u8] = b"VOI-AGENT-VERSION-SLOT:";
pub const VERSION_SLOT_LEN: usize = 32;
/// The largest manifest an agent reads.
pub const MAX_MANIFEST_BYTES: u64 = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UpgradeManifest {
    /// "x86" or "arm", as 1030 names it.
    pub platform: String,
    pub version: String,
    pub size: u64,
    pub sha256: String,
    #[serde(default)]
    pub signature: Option<String>,
    /// The server's release number: it only grows, one per publication
    /// (a downgrade is the older build published again as a new release).
    /// An agent never installs a release below the highest it committed,
    /// whatever the wire says (TUF's rollback rule).
    #[serde(default)]
    pub release: u64,
    /// Signature over everything above, release included. `signature`
    /// stays for agents that predate release numbers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release_signature: Option<String>,
}

impl UpgradeManifest {
    fn signed_bytes(&self) -> Vec<u8> {
        let mut out = SIGNATURE_DOMAIN.to_vec();
        out.extend(
            format!(
                "{}\n{}\n{}\n{}\n",
                self.platform, self.version, self.size, self.sha256
            )
            .as_bytes(),
        );
        out
    }

    fn release_signed_bytes(&self) -> Vec<u8> {
        let mut out = RELEASE_SIGNATURE_DOMAIN.to_vec();
        out.extend(
            format!(
                "{}\n{}\n{}\n{}\n{}\n",
                self.platform, self.version, self.size, self.sha256, self.release
            )
            .as_bytes(),
        );
        out
    }

    pub fn sign(&mut self, key: &ed25519_dalek::SigningKey) {
        use ed25519_dalek::Signer;
        self.signature = Some(crate::bt::manifest::to_hex(
            &key.sign(&self.signed_bytes()).to_bytes(),
        ));
        self.release_signature = (self.release > 0).then(|| {
            crate::bt::manifest::to_hex(&key.sign(&self.release_signed_bytes()).to_bytes())
        });
    }

    /// The release number, once its signature verifies: a manifest without
    /// one (published before release numbers) is refused, so the old
    /// packages an impersonator could replay are not installable.
    pub fn verify_release(&self, key: &ed25519_dalek::VerifyingKey) -> Result<u64, String> {
        let sig = self.release_signature.as_deref().ok_or_else(|| {
            format!(
                "{} carries no signed release number (published before this agent's rollback protection): publish it again",
                self.version
            )
        })?;
        let bytes: [u8; 64] = crate::bt::manifest::from_hex(sig)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| "the package's release signature is not 64 hex bytes".to_string())?;
        key.verify_strict(
            &self.release_signed_bytes(),
            &ed25519_dalek::Signature::from_bytes(&bytes),
        )
        .map_err(|_| {
            "the package's release signature does not verify with this terminal's key".to_string()
        })?;
        Ok(self.release)
    }

    pub fn verify(&self, key: &ed25519_dalek::VerifyingKey) -> Result<(), String> {
        let sig = self
            .signature
            .as_deref()
            .ok_or_else(|| "the package is not signed".to_string())?;
        let bytes: [u8; 64] = crate::bt::manifest::from_hex(sig)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| "the package's signature is not 64 hex bytes".to_string())?;
        key.verify_strict(
            &self.signed_bytes(),
            &ed25519_dalek::Signature::from_bytes(&bytes),
        )
        .map_err(|_| "the package's signature does not verify with this terminal's key (unsigned, tampered, or from another server)".to_string())
    }
}

/// "x86" / "arm" for this build.
pub fn this_platform() -> &'static str {
    if cfg!(target_arch = "aarch64") || cfg!(target_arch = "arm") {
        "arm"
    } else {
        "x86"
    }
}

/// A version as numbers: "2.28.1" → [2, 28, 1]. None when it is not one.
pub fn parse_version(v: &str) -> Option<Vec<u64>> {
    let v = v.trim();
    if v.is_empty() || v.len() > VERSION_SLOT_LEN {
        return None;
    }
    v.split('.').map(|p| p.parse::<u64>().ok()).collect()
}

/// Whether `to` is older than `from` (both versions).
pub fn is_downgrade(from: &str, to: &str) -> bool {
    match (parse_version(from), parse_version(to)) {
        (Some(a), Some(b)) => b < a,
        _ => false,
    }
}

/// A version fit for a slot and a directory name: digits and dots.
pub fn check_version(v: &str) -> Result<(), String> {
    parse_version(v).map(|_| ()).ok_or_else(|| {
        format!(
            "version {v:?} must be numbers and dots (e.g. 0.2.0), at most {VERSION_SLOT_LEN} bytes"
        )
    })
}

/// Where the version slots are: the prefix followed by a version and NUL
/// padding. (The prefix alone also appears where the code names it; that
/// copy is not followed by a version.)
fn slots(binary: &[u8]) -> Vec<usize> {
    let n = VERSION_SLOT_PREFIX.len();
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(i) = binary[from..]
        .windows(n)
        .position(|w| w == VERSION_SLOT_PREFIX)
    {
        let start = from + i + n;
        if let Some(slot) = binary.get(start..start + VERSION_SLOT_LEN) {
            let end = slot
                .iter()
                .position(|b| *b == 0)
                .unwrap_or(VERSION_SLOT_LEN);
            let padded = slot[end..].iter().all(|b| *b == 0);
            let valid = std::str::from_utf8(&slot[..end])
                .ok()
                .and_then(parse_version)
                .is_some();
            if padded && valid {
                out.push(start);
            }
        }
        from = start;
    }
    out
}

/// A copy of `binary` whose version slot says `version`.
pub fn stamp_version(binary: &[u8], version: &str) -> Result<Vec<u8>, String> {
    check_version(version)?;
    let at = slots(binary);
    if at.is_empty() {
        return Err("this file has no version slot: not a voi-agent binary".into());
    }
    let mut out = binary.to_vec();
    for start in at {
        let slot = &mut out[start..start + VERSION_SLOT_LEN];
        slot.fill(0);
        slot[..version.len()].copy_from_slice(version.as_bytes());
    }
    Ok(out)
}

/// The version in a binary's slot, if it has one.
pub fn slot_version(binary: &[u8]) -> Option<String> {
    let start = *slots(binary).first()?;
    let slot = &binary[start..start + VERSION_SLOT_LEN];
    let end = slot.iter().position(|b| *b == 0).unwrap_or(slot.len());
    std::str::from_utf8(&slot[..end]).ok().map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_bind_every_field() {
        let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
        let other = ed25519_dalek::SigningKey::from_bytes(&[8; 32]);
        let mut m = UpgradeManifest {
            platform: "x86".into(),
            version: "0.2.0".into(),
            size: 10,
            sha256: "ab".repeat(32),
            signature: None,
            release: 4,
            release_signature: None,
        };
        assert!(m.verify(&key.verifying_key()).is_err(), "unsigned");
        m.sign(&key);
        assert!(m.verify(&key.verifying_key()).is_ok());
        assert!(m.verify(&other.verifying_key()).is_err(), "foreign key");
        let mut t = m.clone();
        t.version = "0.3.0".into();
        assert!(t.verify(&key.verifying_key()).is_err(), "tampered version");
        let mut t = m.clone();
        t.size = 11;
        assert!(t.verify(&key.verifying_key()).is_err(), "tampered size");
        assert_eq!(m.verify_release(&key.verifying_key()), Ok(4));
        let mut t = m.clone();
        t.release = 9;
        assert!(
            t.verify_release(&key.verifying_key()).is_err(),
            "tampered release"
        );
        assert!(
            t.verify(&key.verifying_key()).is_ok(),
            "the legacy signature does not cover it"
        );
        t.release_signature = None;
        assert!(
            t.verify_release(&key.verifying_key()).is_err(),
            "no release signature"
        );
    }

    #[test]
    fn versions_compare_as_numbers() {
        assert!(is_downgrade("0.10.0", "0.9.9"));
        assert!(!is_downgrade("0.9.9", "0.10.0"));
        assert!(!is_downgrade("1.0", "1.0"));
        assert!(check_version("0.2.0").is_ok());
        for bad in ["", "1.x", "../1", "1 .2", "1;2"] {
            assert!(check_version(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn stamping_rewrites_only_the_slot() {
        let mut bin = b"junk".to_vec();
        bin.extend(VERSION_SLOT_PREFIX);
        let mut slot = [0u8; VERSION_SLOT_LEN];
        slot[..5].copy_from_slice(b"0.1.0");
        bin.extend(slot);
        bin.extend(b"tail");
        assert_eq!(slot_version(&bin).as_deref(), Some("0.1.0"));
        let new = stamp_version(&bin, "0.12.3").expect("stamp");
        assert_eq!(new.len(), bin.len());
        assert_eq!(slot_version(&new).as_deref(), Some("0.12.3"));
        assert!(new.ends_with(b"tail") && new.starts_with(b"junk"));
        assert!(stamp_version(b"no slot here", "0.2.0").is_err());
        // The prefix alone (as the code names it) is no slot.
        let mut named = VERSION_SLOT_PREFIX.to_vec();
        named.extend(b"garbage that is not a version....");
        named.extend(&bin);
        let n = stamp_version(&named, "0.3.0").expect("stamp");
        assert_eq!(slot_version(&n).as_deref(), Some("0.3.0"));
        assert!(
            n.starts_with(VERSION_SLOT_PREFIX)
                && n[VERSION_SLOT_PREFIX.len()..].starts_with(b"garbage")
        );
        assert!(stamp_version(&bin, "9;rm").is_err());
    }
}
