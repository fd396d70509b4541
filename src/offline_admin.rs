//! The terminal's offline settings password (issue 38.13), shared by the
//! server (which makes and signs it) and the agent (which checks and keeps
//! it).
//!
//! The agent used to keep md5 of any password a server said yes to, so a
//! rogue server answering "yes" to anything planted the password that opens
//! the settings offline. Now a 9008 "yes" alone sets nothing: the server's
//! answer may carry `offline_admin`, a scrypt hash of the password (its md5
//! hex, which is all the server may know) under a random salt, signed with
//! the manifest key the agent was flashed with. The agent keeps it only
//! when that signature verifies.

use serde::{Deserialize, Serialize};

const DOMAIN: &[u8] = b"voi-offline-admin-v1\n";

/// scrypt's cost: 2^14 × 8 × 128 bytes = 16 MiB, some 50 ms on a terminal.
fn params() -> scrypt::Params {
    // The constants are valid: log_n 14, r 8, p 1, a 32-byte output.
    scrypt::Params::new(14, 8, 1, 32).unwrap_or_else(|_| scrypt::Params::recommended())
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OfflineAdmin {
    pub user: String,
    /// Hex, 16 random bytes.
    pub salt: String,
    /// Hex: scrypt(md5 hex of the password, salt).
    pub hash: String,
    /// Hex ed25519 signature over the fields above.
    pub signature: String,
}

fn hash_of(md5_hex: &str, salt: &[u8]) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    scrypt::scrypt(
        md5_hex.to_ascii_lowercase().as_bytes(),
        salt,
        &params(),
        &mut out,
    )
    .ok()?;
    Some(out)
}

fn signed_bytes(user: &str, salt: &str, hash: &str) -> Vec<u8> {
    let mut b = DOMAIN.to_vec();
    b.extend(format!("{user}\n{salt}\n{hash}\n").as_bytes());
    b
}

impl OfflineAdmin {
    /// The server's: `md5_hex` is what it compares 9008 against.
    pub fn make(user: &str, md5_hex: &str, key: &ed25519_dalek::SigningKey) -> Option<Self> {
        use ed25519_dalek::Signer;
        let mut salt = [0u8; 16];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut salt))
            .ok()?;
        let salt = crate::bt::manifest::to_hex(&salt);
        let raw = crate::bt::manifest::from_hex(&salt)?;
        let hash = crate::bt::manifest::to_hex(&hash_of(md5_hex, &raw)?);
        let signature =
            crate::bt::manifest::to_hex(&key.sign(&signed_bytes(user, &salt, &hash)).to_bytes());
        Some(OfflineAdmin {
            user: user.to_string(),
            salt,
            hash,
            signature,
        })
    }

    /// Whether the server whose manifest key is `key` signed it.
    pub fn verify(&self, key: &ed25519_dalek::VerifyingKey) -> bool {
        let Some(sig) = crate::bt::manifest::from_hex(&self.signature)
            .and_then(|b| <[u8; 64]>::try_from(b).ok())
        else {
            return false;
        };
        key.verify_strict(
            &signed_bytes(&self.user, &self.salt, &self.hash),
            &ed25519_dalek::Signature::from_bytes(&sig),
        )
        .is_ok()
    }

    /// Whether `user` and `password` are the ones it was made for.
    pub fn matches(&self, user: &str, password: &str) -> bool {
        let Some(salt) = crate::bt::manifest::from_hex(&self.salt) else {
            return false;
        };
        let md5 = crate::protocol::md5_hex(password.as_bytes());
        user == self.user
            && hash_of(&md5, &salt).is_some_and(|h| crate::bt::manifest::to_hex(&h) == self.hash)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_servers_key_makes_one_and_only_the_password_opens_it() {
        let key = ed25519_dalek::SigningKey::from_bytes(&[5; 32]);
        let other = ed25519_dalek::SigningKey::from_bytes(&[6; 32]);
        let md5 = crate::protocol::md5_hex(b"s3cret");
        let o = OfflineAdmin::make("admin", &md5, &key).expect("made");
        assert!(o.verify(&key.verifying_key()));
        assert!(!o.verify(&other.verifying_key()), "another server's key");
        assert!(o.matches("admin", "s3cret"));
        assert!(!o.matches("admin", "admin"));
        assert!(!o.matches("root", "s3cret"));
        let mut forged = o.clone();
        forged.hash = crate::bt::manifest::to_hex(
            &hash_of(&crate::protocol::md5_hex(b"x"), &[0; 16]).expect("h"),
        );
        assert!(!forged.verify(&key.verifying_key()), "a changed hash");
        assert_ne!(
            OfflineAdmin::make("admin", &md5, &key).expect("again").salt,
            o.salt,
            "salted"
        );
    }
}
