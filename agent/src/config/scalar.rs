//! Sizes and durations read from whatever a user wrote — a number, a
//! negative number, text — so that a wrong value gets an error in the
//! user's own words (the value, what would work) rather than serde's
//! ("data did not match any variant of untagged enum", "invalid type").

use std::fmt;

use serde::{
    Deserializer,
    de::{self, Visitor},
};

/// What a scalar config value was written as.
pub enum Scalar {
    Unsigned(u64),
    Negative(i64),
    Float(f64),
    Text(String),
    Bool(bool),
}

impl fmt::Display for Scalar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unsigned(n) => write!(f, "{n}"),
            Self::Negative(n) => write!(f, "{n}"),
            Self::Float(n) => write!(f, "{n}"),
            Self::Text(text) => write!(f, "{text:?}"),
            Self::Bool(b) => write!(f, "{b}"),
        }
    }
}

struct ScalarVisitor;

impl<'de> Visitor<'de> for ScalarVisitor {
    type Value = Scalar;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a single value (a number or text), not a list or a map")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Scalar, E> {
        Ok(Scalar::Bool(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
        Ok(Scalar::Unsigned(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
        Ok(u64::try_from(v).map_or(Scalar::Negative(v), Scalar::Unsigned))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar, E> {
        Ok(Scalar::Float(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
        Ok(Scalar::Text(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Scalar, E> {
        Ok(Scalar::Text(v))
    }
}

/// Reads one scalar, whatever its type.
pub fn scalar<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Scalar, D::Error> {
    deserializer.deserialize_any(ScalarVisitor)
}

/// The text of a size, or an error for what cannot be one.
pub fn size_text<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    match scalar(deserializer)? {
        Scalar::Unsigned(n) => Ok(n.to_string()),
        Scalar::Text(text) => Ok(text),
        other => Err(de::Error::custom(format!(
            "{other} is not a size; write a whole number of bytes or a number with KiB, MiB \
             or GiB (e.g. 64MiB)"
        ))),
    }
}

/// The text of a duration, or an error for what cannot be one; a bare
/// number has no unit, so it is refused with the units that would work.
pub fn duration_text<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    match scalar(deserializer)? {
        Scalar::Text(text) => Ok(text),
        Scalar::Unsigned(n) => Err(de::Error::custom(format!(
            "{n} has no unit; write e.g. {n}s for seconds, {n}ms or {n}m"
        ))),
        other => Err(de::Error::custom(format!(
            "{other} is not a duration; write e.g. 500ms, 10s, 5m or 1h"
        ))),
    }
}
