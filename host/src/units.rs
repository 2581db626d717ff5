//! Durations (`250ms`, `2s`, `1m30s`) and sizes (`64MiB`, `1GiB`, `4096`) as
//! written in workflow files and on the command line.

use std::time::Duration;

/// A duration or size that could not be read. The message says what is
/// accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} `{text}`: {why}")]
pub struct UnitError {
    what: &'static str,
    text: String,
    why: &'static str,
}

const DURATION_HINT: &str =
    "write a number with a unit, e.g. `250ms`, `2s`, `1m30s`, `1h`, `1d` (units: ms, s, m, h, d)";
const SIZE_HINT: &str =
    "write bytes, or a number with a unit, e.g. `64MiB`, `1GiB`, `512KiB` (units: B, KiB, MiB, GiB, KB, MB, GB)";

/// Reads a duration: one or more `<number><unit>` parts, units `ms`, `s`,
/// `m`, `h`, `d` (24 hours), largest first (`1d12h`, `1h30m`, `250ms`).
pub fn parse_duration(text: &str) -> Result<Duration, UnitError> {
    let err = |why| UnitError { what: "duration", text: text.to_string(), why };
    let s = text.trim();
    if s.is_empty() {
        return Err(err(DURATION_HINT));
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    let mut last_rank = u8::MAX;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        if digits == 0 {
            return Err(err(DURATION_HINT));
        }
        let n: u64 = rest[..digits].parse().map_err(|_| err("the number is too large"))?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let (unit, tail) = rest.split_at(unit_len);
        let (part, rank) = match unit {
            "ms" => (Duration::from_millis(n), 0),
            "s" => (Duration::from_secs(n), 1),
            "m" => (Duration::from_secs(n.saturating_mul(60)), 2),
            "h" => (Duration::from_secs(n.saturating_mul(3600)), 3),
            "d" => (Duration::from_secs(n.saturating_mul(86_400)), 4),
            _ => return Err(err(DURATION_HINT)),
        };
        if rank >= last_rank {
            return Err(err("write units largest first and once each, e.g. `1m30s`"));
        }
        last_rank = rank;
        total = total.checked_add(part).ok_or_else(|| err("the duration is too large"))?;
        rest = tail;
    }
    Ok(total)
}

/// Reads a size in bytes: a plain number, or a number with a unit
/// (`KiB`/`MiB`/`GiB` are powers of 1024; `KB`/`MB`/`GB` powers of 1000).
pub fn parse_size(text: &str) -> Result<u64, UnitError> {
    let err = |why| UnitError { what: "size", text: text.to_string(), why };
    let s = text.trim();
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    if digits == 0 {
        return Err(err(SIZE_HINT));
    }
    let n: u64 = s[..digits].parse().map_err(|_| err("the number is too large"))?;
    let mult: u64 = match s[digits..].trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return Err(err(SIZE_HINT)),
    };
    n.checked_mul(mult).ok_or_else(|| err("the size is too large"))
}

/// Writes a duration the way users write them (`1m30s`, `250ms`, `0s`).
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".to_string();
    }
    let (h, m, s, ms) = (ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000);
    let mut out = String::new();
    for (n, unit) in [(h, "h"), (m, "m"), (s, "s"), (ms, "ms")] {
        if n > 0 {
            out.push_str(&format!("{n}{unit}"));
        }
    }
    out
}

/// Writes a size with the largest binary unit that divides it (`64MiB`).
pub fn format_size(bytes: u64) -> String {
    for (unit, mult) in [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
        if bytes >= mult && bytes.is_multiple_of(mult) {
            return format!("{}{unit}", bytes / mult);
        }
    }
    format!("{bytes}B")
}

/// Seconds since the Unix epoch, now.
pub(crate) fn epoch_now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_in_every_documented_form() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("1m30s500ms").unwrap(), Duration::from_millis(90_500));
    }

    #[test]
    fn bad_durations_say_what_is_accepted() {
        for bad in ["", "10", "s", "1.5s", "10sec", "30s1m", "1s1s", "-1s"] {
            let e = parse_duration(bad).unwrap_err().to_string();
            assert!(e.contains(&format!("`{bad}`")), "{e}");
        }
        assert!(parse_duration("10").unwrap_err().to_string().contains("e.g. `250ms`"));
    }

    #[test]
    fn sizes_binary_decimal_and_plain() {
        assert_eq!(parse_size("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("2MB").unwrap(), 2_000_000);
        assert!(parse_size("64 megs").unwrap_err().to_string().contains("MiB"));
        assert!(parse_size("99999999999GiB").is_err());
    }

    #[test]
    fn formatting_round_trips() {
        for s in ["250ms", "2s", "1m30s", "1h", "0s"] {
            assert_eq!(format_duration(parse_duration(s).unwrap()), s);
        }
        for s in ["64MiB", "1GiB", "512KiB", "1000B"] {
            assert_eq!(format_size(parse_size(s).unwrap()), s);
        }
    }
}
