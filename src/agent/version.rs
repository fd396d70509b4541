//! The version this binary reports, read from a slot inside the binary so
//! a release is this build stamped with its version
//! (`upgrade_package::stamp_version`, `voi-server ctl upgrade-publish`).

use crate::upgrade_package::{VERSION_SLOT_LEN, VERSION_SLOT_PREFIX};

const PREFIX_LEN: usize = 23;
const SLOT_BYTES: usize = PREFIX_LEN + VERSION_SLOT_LEN;

const fn slot() -> [u8; SLOT_BYTES] {
    let mut out = [0u8; SLOT_BYTES];
    let prefix = VERSION_SLOT_PREFIX;
    let mut i = 0;
    while i < PREFIX_LEN {
        out[i] = prefix[i];
        i += 1;
    }
    let v = env!("CARGO_PKG_VERSION").as_bytes();
    let mut j = 0;
    while j < v.len() && j < VERSION_SLOT_LEN {
        out[PREFIX_LEN + j] = v[j];
        j += 1;
    }
    out
}

#[used]
static SLOT: [u8; SLOT_BYTES] = slot();

/// This binary's version ("0.1.0"), as stamped.
pub fn running_version() -> String {
    // Volatile: the compiler must not fold the build's version in; the
    // stamped bytes in the file are what counts.
    let bytes: [u8; SLOT_BYTES] = unsafe { std::ptr::read_volatile(&SLOT) };
    let slot = &bytes[PREFIX_LEN..];
    let end = slot.iter().position(|b| *b == 0).unwrap_or(slot.len());
    match std::str::from_utf8(&slot[..end]) {
        Ok(v) if crate::upgrade_package::parse_version(v).is_some() => v.to_string(),
        _ => env!("CARGO_PKG_VERSION").to_string(),
    }
}

/// `voi-agent --version`: the stamped version and the commit.
pub fn version_text() -> &'static str {
    static TEXT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TEXT.get_or_init(|| format!("{} (commit {})", running_version(), env!("VOI_COMMIT")))
}

/// What 9004 reports as `soft_version`: major.minor, as the vendor's
/// server reads it.
pub fn soft_version() -> String {
    let v = running_version();
    let mut it = v.split('.');
    format!("{}.{}", it.next().unwrap_or("0"), it.next().unwrap_or("1"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_slot_holds_the_crate_version() {
        assert_eq!(super::running_version(), env!("CARGO_PKG_VERSION"));
        assert_eq!(super::VERSION_SLOT_PREFIX.len(), super::PREFIX_LEN);
    }
}
