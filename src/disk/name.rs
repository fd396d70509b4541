//! Layer file names: `prefix_level_uuid`, e.g. `voi_0_<uuid>` for a base and
//! `voi_1_<uuid>` for its first diff. Parsing is strict: a name that is not
//! exactly canonical is refused before any path is built from it.

use std::fmt;
use uuid::Uuid;

/// 0 base, 1–2 server diffs, 3 commit temp layer, 4–5 local layers.
pub const MAX_LEVEL: u8 = 5;
/// Levels that come from the server.
pub const SERVER_LEVELS: std::ops::RangeInclusive<u8> = 0..=2;
/// The layer a running desktop writes to.
pub const USER_LEVEL: u8 = 4;
const MAX_PREFIX: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LayerName {
    pub prefix: String,
    pub level: u8,
    pub uuid: Uuid,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("layer name {0:?} is not prefix_level_uuid")]
    Shape(String),
    #[error("prefix {0:?} must be 1–16 characters of [a-z0-9]")]
    Prefix(String),
    #[error("level {0:?} must be a single digit 0–{MAX_LEVEL}")]
    Level(String),
    #[error("uuid {0:?} is not a canonical lower-case uuid")]
    Uuid(String),
}

/// A uuid exactly as the protocol writes it: lower-case, hyphenated.
pub fn parse_uuid(s: &str) -> Result<Uuid, NameError> {
    match Uuid::parse_str(s) {
        Ok(u) if u.hyphenated().to_string() == s => Ok(u),
        _ => Err(NameError::Uuid(s.chars().take(64).collect())),
    }
}

pub fn check_prefix(p: &str) -> Result<(), NameError> {
    if p.is_empty()
        || p.len() > MAX_PREFIX
        || !p
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    {
        return Err(NameError::Prefix(p.chars().take(32).collect()));
    }
    Ok(())
}

impl LayerName {
    pub fn new(prefix: &str, level: i64, uuid: &str) -> Result<LayerName, NameError> {
        check_prefix(prefix)?;
        let level = u8::try_from(level)
            .ok()
            .filter(|l| *l <= MAX_LEVEL)
            .ok_or_else(|| NameError::Level(level.to_string()))?;
        Ok(LayerName {
            prefix: prefix.into(),
            level,
            uuid: parse_uuid(uuid)?,
        })
    }

    pub fn parse(s: &str) -> Result<LayerName, NameError> {
        let shape = || NameError::Shape(s.chars().take(64).collect());
        if s.len() > MAX_PREFIX + 3 + 36 || !s.is_ascii() {
            return Err(shape());
        }
        let mut parts = s.splitn(3, '_');
        let (Some(prefix), Some(level), Some(uuid)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(shape());
        };
        check_prefix(prefix)?;
        if level.len() != 1 || !level.bytes().all(|b| b.is_ascii_digit()) {
            return Err(NameError::Level(level.into()));
        }
        let level: u8 = level.parse().map_err(|_| NameError::Level(level.into()))?;
        if level > MAX_LEVEL {
            return Err(NameError::Level(level.to_string()));
        }
        Ok(LayerName {
            prefix: prefix.into(),
            level,
            uuid: parse_uuid(uuid)?,
        })
    }

    pub fn with_level(&self, level: u8) -> LayerName {
        LayerName {
            level,
            ..self.clone()
        }
    }

    pub fn uuid_str(&self) -> String {
        self.uuid.hyphenated().to_string()
    }
}

impl fmt::Display for LayerName {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "{}_{}_{}",
            self.prefix,
            self.level,
            self.uuid.hyphenated()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const U: &str = "91f9d1ba-cb4a-41ba-971a-618f9e306571";

    #[test]
    fn round_trip() {
        let n = LayerName::parse(&format!("voi_1_{U}")).expect("valid");
        assert_eq!((n.prefix.as_str(), n.level), ("voi", 1));
        assert_eq!(n.to_string(), format!("voi_1_{U}"));
        assert_eq!(
            LayerName::new("voi", 0, U).expect("ok").to_string(),
            format!("voi_0_{U}")
        );
    }

    #[test]
    fn refuses_tricks() {
        for bad in [
            format!("../voi_0_{U}"),
            format!("voi_0_{U}/x"),
            "voi_0_../../etc/passwd".to_string(),
            format!("voi_0_{}", U.to_uppercase()),
            format!("VOI_0_{U}"),
            format!("voi_9_{U}"),
            format!("voi_01_{U}"),
            format!("voi_-1_{U}"),
            format!("voi_+1_{U}"),
            format!("voi_0_{U}\0"),
            format!("voi_0_{U}x"),
            format!("voi_0_{}", U.replace('-', "")),
            format!("voi_0_{{{U}}}"),
            format!("v.i_0_{U}"),
            format!("{}_0_{U}", "a".repeat(17)),
            "voi_0".into(),
            "".into(),
            format!("voi_0_{U}_"),
            format!("vöi_0_{U}"),
        ] {
            assert!(LayerName::parse(&bad).is_err(), "accepted {bad:?}");
        }
        assert!(LayerName::new("voi", 6, U).is_err());
        assert!(LayerName::new("voi", -1, U).is_err());
        assert!(LayerName::new("voi/..", 0, U).is_err());
    }
}
