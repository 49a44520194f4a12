//! Human units in plan and bench files: durations (`30s`, `15m`, `1h30m`,
//! `500ms`) and byte sizes (`16KiB`, `1.5 KB`, `4096`).
//!
//! Parsing is delegated to `humantime` and `bytesize`; this module only pins
//! the accepted forms and how they print in reports.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A duration written as text in YAML.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Dur(pub Duration);

/// Text that is not a duration, with what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadDuration {
    #[error("expected a duration such as 30s, 15m or 1h30m, found an empty string")]
    Empty,
    #[error("expected a duration with a unit such as {0}s or {0}m, found a bare number `{0}`")]
    BareNumber(String),
    #[error("expected a duration such as 30s, 15m or 1h30m, found `{0}`")]
    Other(String),
}

/// Text that is not a byte size.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected a byte size such as 16KiB, 512B or 2MB, found `{0}`")]
pub struct BadBytes(pub String);

impl Dur {
    pub fn parse(s: &str) -> Result<Dur, BadDuration> {
        let s = s.trim();
        if s.is_empty() {
            return Err(BadDuration::Empty);
        }
        if s.chars().all(|c| c.is_ascii_digit()) {
            return Err(BadDuration::BareNumber(s.to_owned()));
        }
        humantime::parse_duration(s)
            .map(Dur)
            .map_err(|_| BadDuration::Other(s.to_owned()))
    }

    pub fn secs_f64(self) -> f64 {
        self.0.as_secs_f64()
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&fmt_duration(self.0))
    }
}

/// Compact rendering: `1h30m`, `15m`, `2.5s`, `250ms`.
pub fn fmt_duration(d: Duration) -> String {
    let ms = d.as_millis() as u64;
    if ms == 0 {
        return "0s".into();
    }
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let total_s = ms / 1000;
    let (h, m, s) = (total_s / 3600, (total_s / 60) % 60, total_s % 60);
    let frac = ms % 1000;
    let mut out = String::new();
    if h > 0 {
        out += &format!("{h}h");
    }
    if m > 0 {
        out += &format!("{m}m");
    }
    if s > 0 || frac > 0 {
        if frac > 0 && h == 0 && m == 0 {
            out += &format!("{}s", (ms as f64 / 1000.0 * 10.0).round() / 10.0);
        } else {
            out += &format!("{s}s");
        }
    }
    out
}

/// `HH:MM:SS` since run start, as the verdict table and console logs show it.
pub fn fmt_clock(ms: u64) -> String {
    let s = ms / 1000;
    format!("{:02}:{:02}:{:02}.{:03}", s / 3600, (s / 60) % 60, s % 60, ms % 1000)
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Dur::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

/// A byte count written as text (`16KiB`) or a plain integer in YAML.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Bytes(pub u64);

impl Bytes {
    pub fn parse(s: &str) -> Result<Bytes, BadBytes> {
        let t = s.trim();
        t.parse::<bytesize::ByteSize>()
            .map(|b| Bytes(b.as_u64()))
            .map_err(|_| BadBytes(t.to_owned()))
    }
}

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&fmt_bytes(self.0))
    }
}

/// `812 B`, `4.1 KiB`, `2.3 MiB`.
pub fn fmt_bytes(n: u64) -> String {
    if n < 1024 {
        format!("{n} B")
    } else if n < 1024 * 1024 {
        format!("{:.1} KiB", n as f64 / 1024.0)
    } else {
        format!("{:.1} MiB", n as f64 / (1024.0 * 1024.0))
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(Bytes(n)),
            Raw::S(s) => Bytes::parse(&s).map_err(serde::de::Error::custom),
        }
    }
}

impl Serialize for Bytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units_only() {
        assert_eq!(Dur::parse("30s").unwrap().0, Duration::from_secs(30));
        assert_eq!(Dur::parse("15m").unwrap().0, Duration::from_secs(900));
        assert_eq!(Dur::parse("1h30m").unwrap().0, Duration::from_secs(5400));
        assert_eq!(Dur::parse("500ms").unwrap().0, Duration::from_millis(500));
        assert!(Dur::parse("30").unwrap_err().to_string().contains("bare number"));
        assert!(
            Dur::parse("soon")
                .unwrap_err()
                .to_string()
                .contains("expected a duration")
        );
    }

    #[test]
    fn durations_print_compactly() {
        assert_eq!(fmt_duration(Duration::from_secs(5400)), "1h30m");
        assert_eq!(fmt_duration(Duration::from_millis(2500)), "2.5s");
        assert_eq!(fmt_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(fmt_clock(3_723_004), "01:02:03.004");
    }

    #[test]
    fn bytes_parse_binary_and_decimal_units() {
        assert_eq!(Bytes::parse("16KiB").unwrap().0, 16 * 1024);
        assert_eq!(Bytes::parse("2KB").unwrap().0, 2000);
        assert_eq!(Bytes::parse("512").unwrap().0, 512);
        assert!(Bytes::parse("lots").is_err());
        assert_eq!(fmt_bytes(4198), "4.1 KiB");
    }
}
