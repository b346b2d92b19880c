//! Sizes as people write them (`64MiB`, `512KiB`, `4096`), and probabilities.

use std::{fmt, str::FromStr};

/// A number of bytes, parsed from `N`, `NKiB`, `NMiB` or `NGiB` (also `KB`,
/// `MB`, `GB`, `K`, `M`, `G`, read as powers of 1024).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0:?} is not a size; write bytes or a number with KiB, MiB or GiB (e.g. 64MiB)")]
pub struct ByteSizeError(String);

impl FromStr for ByteSize {
    type Err = ByteSizeError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let trimmed = text.trim();
        let split = trimmed
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(trimmed.len());
        let (number, unit) = trimmed.split_at(split);
        let shift = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 0,
            "k" | "kb" | "kib" => 10,
            "m" | "mb" | "mib" => 20,
            "g" | "gb" | "gib" => 30,
            _ => return Err(ByteSizeError(text.to_owned())),
        };
        let number: u64 = number.parse().map_err(|_| ByteSizeError(text.to_owned()))?;
        number
            .checked_mul(1 << shift)
            .map(ByteSize)
            .ok_or_else(|| ByteSizeError(text.to_owned()))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bytes = self.0;
        for (shift, unit) in [(30, "GiB"), (20, "MiB"), (10, "KiB")] {
            if bytes >= 1 << shift && bytes.is_multiple_of(1 << shift) {
                return write!(f, "{}{unit}", bytes >> shift);
            }
        }
        write!(f, "{bytes}B")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_usual_spellings() {
        for (text, bytes) in [
            ("4096", 4096),
            ("8KiB", 8 << 10),
            ("64MiB", 64 << 20),
            ("64 mb", 64 << 20),
            ("1G", 1 << 30),
        ] {
            assert_eq!(text.parse::<ByteSize>(), Ok(ByteSize(bytes)), "{text}");
        }
    }

    #[test]
    fn refuses_what_is_not_a_size() {
        for text in ["", "MiB", "12parsecs", "-1", "1.5MiB", "99999999999999GiB"] {
            let err = text.parse::<ByteSize>().unwrap_err();
            assert!(err.to_string().contains("64MiB"), "{text}: {err}");
        }
    }

    #[test]
    fn displays_in_the_largest_exact_unit() {
        assert_eq!(ByteSize(4 << 20).to_string(), "4MiB");
        assert_eq!(ByteSize(8 << 10).to_string(), "8KiB");
        assert_eq!(ByteSize(1000).to_string(), "1000B");
    }
}

/// A probability above 0 and at most 1 (`0.25`, `1`).
#[derive(Clone, Copy, Debug, PartialEq, PartialOrd)]
pub struct Probability(pub f64);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "{0:?} is not a probability; write a number above 0 and at most 1 (e.g. 0.1, or 1 for all)"
)]
pub struct ProbabilityError(String);

impl FromStr for Probability {
    type Err = ProbabilityError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.trim().parse::<f64>() {
            Ok(p) if p > 0.0 && p <= 1.0 => Ok(Probability(p)),
            _ => Err(ProbabilityError(text.to_owned())),
        }
    }
}

impl fmt::Display for Probability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl serde::Serialize for Probability {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_f64(self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Probability {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Number {
            Float(f64),
            Text(String),
        }
        let text = match Number::deserialize(deserializer)? {
            Number::Float(p) => p.to_string(),
            Number::Text(text) => text,
        };
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod probability_tests {
    use super::*;

    #[test]
    fn probabilities_outside_zero_to_one_are_refused_with_what_to_write() {
        assert_eq!("0.25".parse(), Ok(Probability(0.25)));
        assert_eq!(" 1 ".parse(), Ok(Probability(1.0)));
        for bad in ["0", "-0.5", "1.5", "half", "NaN", ""] {
            let err = bad.parse::<Probability>().unwrap_err().to_string();
            assert!(err.contains("above 0 and at most 1"), "{bad}: {err}");
        }
    }
}
