//! Lenient numeric fields: the original system sends the same field as a JSON
//! number in one place and as a decimal string in another (sizes are strings
//! of 512-byte sectors, notes §4.2). Each helper accepts both.

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use std::fmt;

struct IntVisitor;

impl Visitor<'_> for IntVisitor {
    type Value = i64;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an integer or a string holding one")
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<i64, E> {
        Ok(v)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<i64, E> {
        i64::try_from(v).map_err(|_| E::custom(format!("integer {v} out of range")))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<i64, E> {
        if v.fract() == 0.0 && v >= i64::MIN as f64 && v <= i64::MAX as f64 {
            Ok(v as i64)
        } else {
            Err(E::custom(format!("{v} is not an integer")))
        }
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<i64, E> {
        let t = v.trim();
        if t.is_empty() {
            return Err(E::custom("empty string where an integer was expected"));
        }
        t.parse::<i64>()
            .or_else(|_| {
                t.parse::<f64>()
                    .map_err(|_| ())
                    .and_then(|f| self.visit_f64::<E>(f).map_err(|_| ()))
            })
            .map_err(|_| E::custom(format!("{v:?} is not an integer")))
    }
}

struct FloatVisitor;

impl Visitor<'_> for FloatVisitor {
    type Value = f64;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a number or a string holding one")
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<f64, E> {
        Ok(v as f64)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<f64, E> {
        Ok(v as f64)
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<f64, E> {
        Ok(v)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<f64, E> {
        match v.trim().parse::<f64>() {
            Ok(f) if f.is_finite() => Ok(f),
            _ => Err(E::custom(format!("{v:?} is not a number"))),
        }
    }
}

struct TextVisitor;

impl Visitor<'_> for TextVisitor {
    type Value = String;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string or an integer")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<String, E> {
        Ok(v.to_string())
    }
}

/// An id the vendor's programs send as a string in one place and as a
/// number in another (D's BT task ids): kept as the text of it.
pub fn text<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    d.deserialize_any(TextVisitor)
}

pub fn int<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    d.deserialize_any(IntVisitor)
}

pub fn float<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    d.deserialize_any(FloatVisitor)
}

pub fn opt_int<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    Option::<FlexInt>::deserialize(d).map(|o| o.map(|v| v.0))
}

pub fn opt_float<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    Option::<FlexFloat>::deserialize(d).map(|o| o.map(|v| v.0))
}

/// An i64 that deserialises from a number or a numeric string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(transparent)]
pub struct FlexInt(pub i64);

impl<'de> Deserialize<'de> for FlexInt {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(IntVisitor).map(FlexInt)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
#[serde(transparent)]
pub struct FlexFloat(pub f64);

impl<'de> Deserialize<'de> for FlexFloat {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(FloatVisitor).map(FlexFloat)
    }
}

/// A count of 512-byte sectors. Sent as a decimal string like the original
/// server does; read from a string or a number. Negative values are refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Hash)]
pub struct Sectors(pub u64);

impl Sectors {
    pub const SIZE: u64 = 512;

    /// The sectors a file of `bytes` takes, rounded up: a terminal sizes
    /// its allocation from it, so it must never be short.
    pub fn of_length(bytes: u64) -> Sectors {
        Sectors(bytes.div_ceil(Self::SIZE))
    }

    pub fn from_bytes_floor(bytes: u64) -> Sectors {
        Sectors(bytes / Self::SIZE)
    }

    pub fn bytes(self) -> Option<u64> {
        self.0.checked_mul(Self::SIZE)
    }
}

impl Serialize for Sectors {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0.to_string())
    }
}

impl<'de> Deserialize<'de> for Sectors {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = d.deserialize_any(IntVisitor)?;
        u64::try_from(v)
            .map(Sectors)
            .map_err(|_| de::Error::custom(format!("negative sector count {v}")))
    }
}

/// `batch_no` is an integer in JSON commands but the task uuid string in the
/// 1015 reply. Kept as received so it is echoed byte for byte.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum BatchNo {
    Int(i64),
    Text(String),
}

impl Default for BatchNo {
    fn default() -> Self {
        BatchNo::Int(0)
    }
}

impl fmt::Display for BatchNo {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            BatchNo::Int(i) => write!(f, "{i}"),
            BatchNo::Text(s) => f.write_str(s),
        }
    }
}

impl BatchNo {
    /// Integer view, accepting a numeric string as the server may send.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            BatchNo::Int(i) => Some(*i),
            BatchNo::Text(s) => s.trim().parse().ok(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct T {
        #[serde(deserialize_with = "int")]
        a: i64,
        #[serde(default, deserialize_with = "opt_int")]
        b: Option<i64>,
        s: Sectors,
        #[serde(deserialize_with = "float")]
        f: f64,
    }

    #[test]
    fn accepts_numbers_and_strings() {
        let t: T =
            serde_json::from_str(r#"{"a":"12","b":3,"s":"8888888888","f":"5.92"}"#).expect("ok");
        assert_eq!(
            (t.a, t.b, t.s, t.f),
            (12, Some(3), Sectors(8888888888), 5.92)
        );
        let t: T = serde_json::from_str(r#"{"a":12.0,"s":50,"f":1}"#).expect("ok");
        assert_eq!((t.a, t.b, t.s.0), (12, None, 50));
    }

    #[test]
    fn refuses_nonsense() {
        for bad in [
            r#"{"a":"x","s":"1","f":1}"#,
            r#"{"a":1.5,"s":"1","f":1}"#,
            r#"{"a":1,"s":"-4","f":1}"#,
            r#"{"a":1,"s":"1","f":"nan"}"#,
            r#"{"a":18446744073709551615,"s":"1","f":1}"#,
            r#"{"a":"","s":"1","f":1}"#,
        ] {
            assert!(serde_json::from_str::<T>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sectors_serialise_as_strings() {
        assert_eq!(serde_json::to_string(&Sectors(42)).expect("ok"), r#""42""#);
    }

    #[test]
    fn batch_no_echoes_as_received() {
        let b: BatchNo = serde_json::from_str("66").expect("ok");
        assert_eq!(serde_json::to_string(&b).expect("ok"), "66");
        let b: BatchNo =
            serde_json::from_str(r#""f15a1759-789e-4e17-a3e1-e723121e9314""#).expect("ok");
        assert!(matches!(b, BatchNo::Text(_)));
    }
}
