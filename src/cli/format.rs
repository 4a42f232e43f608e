//! Text forms of values that several client commands share: digit grouping, hex digests, byte
//! sizes, durations and points in time given on the command line.
//!
//! It sits below every command module (files, bench, events, metrics, …) so that none of them
//! imports another for a helper. It only converts text and values; it never does I/O and never
//! talks to a server.

use sha2::{Digest, Sha256};
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// 1234567 → "1,234,567".
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Lowercase hex of a finished SHA-256.
pub fn hex_digest(hasher: Sha256) -> String {
    format!("{:x}", hasher.finalize())
}

/// Parses a byte size: plain bytes (`1048576`) or a number with a unit, decimal (`kB`, `MB`,
/// `GB`, `TB`: powers of 1000) or binary (`KiB`, `MiB`, `GiB`, `TiB`: powers of 1024). Units are
/// case-insensitive, `K`/`M`/`G`/`T` alone are decimal, and fractions are allowed (`1.5GiB`).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '_'))
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let number = number.replace('_', "");
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1000,
        "kib" | "ki" => 1 << 10,
        "m" | "mb" => 1000 * 1000,
        "mib" | "mi" => 1 << 20,
        "g" | "gb" => 1000 * 1000 * 1000,
        "gib" | "gi" => 1 << 30,
        "t" | "tb" => 1000 * 1000 * 1000 * 1000,
        "tib" | "ti" => 1 << 40,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {text:?}; use B, kB, MB, GB, TB, KiB, MiB, GiB or TiB"
            ));
        }
    };
    if number.is_empty() {
        return Err(format!(
            "{text:?} is not a size; try 1GiB, 512MiB, 100MB or 65536"
        ));
    }
    if let Ok(whole) = number.parse::<u64>() {
        return whole
            .checked_mul(multiplier)
            .ok_or_else(|| format!("{text:?} is too large"));
    }
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size; try 1GiB, 512MiB, 100MB or 65536"))?;
    let bytes = (value * multiplier as f64).round();
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        return Err(format!("{text:?} is too large"));
    }
    Ok(bytes as u64)
}

/// `90`, `90s`, `15m`, `1h`, `7d`: a whole number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration; try 90s, 15m, 1h or 7d"))?;
    let unit: u64 = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {text:?}; use s, m, h or d"
            ));
        }
    };
    number
        .checked_mul(unit)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{text:?} is too long"))
}

/// A point in time given on the command line (`--since`, `--until`): a duration ago, or an
/// RFC 3339 time.
#[derive(Debug, Clone, PartialEq)]
pub enum When {
    Ago(Duration),
    At(prost_types::Timestamp),
}

impl When {
    /// The point as a protobuf Timestamp, a duration ago counted back from `now`.
    pub fn timestamp(&self, now: SystemTime) -> prost_types::Timestamp {
        match self {
            When::At(ts) => *ts,
            When::Ago(ago) => {
                let t = now
                    .checked_sub(*ago)
                    .unwrap_or(UNIX_EPOCH)
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default();
                prost_types::Timestamp {
                    seconds: t.as_secs() as i64,
                    nanos: t.subsec_nanos() as i32,
                }
            }
        }
    }
}

/// The value parser of every `--since` and `--until`: `90s`, `15m`, `1h`, `7d` (that long ago)
/// or an RFC 3339 time such as `2026-11-26T08:00:00Z`.
pub fn parse_when(text: &str) -> Result<When, String> {
    if text.contains('T') || text.contains('-') || text.contains(':') {
        return prost_types::Timestamp::from_str(text.trim())
            .map(When::At)
            .map_err(|e| {
                format!(
                    "{text:?} is neither a duration (90s, 15m, 1h, 7d) nor an RFC 3339 time \
                     (2026-11-26T08:00:00Z): {e}"
                )
            });
    }
    parse_duration(text).map(When::Ago).map_err(|_| {
        format!(
            "{text:?} is neither a duration (90s, 15m, 1h, 7d) nor an RFC 3339 time \
             (2026-11-26T08:00:00Z)"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1234567), "1,234,567");
    }

    #[test]
    fn sizes_parse_in_decimal_and_binary_units() {
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("100MB"), Ok(100_000_000));
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("65536"), Ok(65536));
        assert_eq!(parse_size("1.5 kib"), Ok(1536));
        assert_eq!(parse_size("7b"), Ok(7));
        assert!(parse_size("GiB").is_err());
        assert!(parse_size("1 furlong").is_err());
        assert!(parse_size("99999999999TiB").is_err());
    }

    #[test]
    fn durations_and_times_parse() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(604_800)));
        assert!(parse_duration("10x").is_err());
        assert!(parse_duration("m").is_err());
        assert!(matches!(
            parse_when("2026-01-02T03:04:05Z"),
            Ok(When::At(_))
        ));
        assert_eq!(parse_when("1h"), Ok(When::Ago(Duration::from_secs(3600))));
        assert!(parse_when("yesterday").is_err());
        let now = UNIX_EPOCH + Duration::from_secs(10_000);
        assert_eq!(
            When::Ago(Duration::from_secs(90)).timestamp(now),
            prost_types::Timestamp {
                seconds: 9_910,
                nanos: 0
            }
        );
    }
}
