//! Human sizes: `256m`, `1g`, `512Ki` ↔ bytes; human ages: `42s`, `5m`.

/// Parses a byte size: a plain number of bytes, or a number with a unit `k`, `m`, `g`, `t`
/// (powers of 1024, as Docker reads them), optionally followed by `b`/`i`/`ib`.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let lower = t.to_ascii_lowercase();
    let digits_end = lower
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(lower.len());
    let (num, unit) = lower.split_at(digits_end);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a size: expected e.g. 268435456, 256m or 1g"))?;
    let unit = unit.trim_end_matches("ib").trim_end_matches(['b', 'i']);
    let factor: u64 = match unit {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        "t" => 1 << 40,
        _ => return Err(format!("`{s}` has an unknown unit: use k, m, g or t")),
    };
    let bytes = value * factor as f64;
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err(format!("`{s}` is out of range"));
    }
    Ok(bytes.round() as u64)
}

/// Parses a duration: `500ms`, `10s`, `2m`, `1h`, or a plain number of seconds.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration: expected e.g. 500ms, 10s, 2m"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("`{s}` has an unknown unit: use ms, s, m or h")),
    };
    std::time::Duration::try_from_secs_f64(seconds).map_err(|_| format!("`{s}` is out of range"))
}

/// Formats bytes with a binary unit, one decimal: `256.0Mi`.
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["", "Ki", "Mi", "Gi", "Ti"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{bytes}B")
    } else {
        format!("{v:.1}{}", UNITS[i])
    }
}

/// `42s`, `5m`, `3h`, `2d`: how long ago.
pub fn age(time: Option<chrono::DateTime<chrono::Utc>>) -> String {
    let Some(time) = time else {
        return "-".to_string();
    };
    let secs = (chrono::Utc::now() - time).num_seconds().max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_docker_style_sizes() {
        assert_eq!(parse_bytes("268435456").unwrap(), 268_435_456);
        assert_eq!(parse_bytes("256m").unwrap(), 256 << 20);
        assert_eq!(parse_bytes("256Mi").unwrap(), 256 << 20);
        assert_eq!(parse_bytes("1G").unwrap(), 1 << 30);
        assert_eq!(parse_bytes("1.5k").unwrap(), 1536);
        assert!(parse_bytes("-5m").is_err());
        assert!(parse_bytes("12x").is_err());
        assert!(parse_bytes("").is_err());
    }

    #[test]
    fn parses_durations() {
        use std::time::Duration;
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("10").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("1d").is_err());
    }

    #[test]
    fn formats_binary_units() {
        assert_eq!(format_bytes(512), "512B");
        assert_eq!(format_bytes(256 << 20), "256.0Mi");
    }
}

/// Writes a duration the way [`parse_duration`] reads it: `500ms`, `10s`, `2m`.
pub fn format_duration(d: std::time::Duration) -> String {
    let ms = d.as_millis();
    if !ms.is_multiple_of(1000) {
        format!("{ms}ms")
    } else if !ms.is_multiple_of(60_000) || ms == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{}m", ms / 60_000)
    }
}

/// Serde for optional durations on the wire: `"5s"`, `"500ms"`, or a number of seconds.
pub mod opt_duration {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&super::format_duration(*d)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Seconds(f64),
        }
        match Option::<Raw>::deserialize(d)? {
            None => Ok(None),
            Some(Raw::Text(t)) => super::parse_duration(&t)
                .map(|d| Some(whole_millis(d)))
                .map_err(serde::de::Error::custom),
            Some(Raw::Seconds(n)) => Duration::try_from_secs_f64(n)
                .map(|d| Some(whole_millis(d)))
                .map_err(|_| {
                    serde::de::Error::custom("a duration must be a non-negative number of seconds")
                }),
        }
    }

    /// Durations on the wire are whole milliseconds, so they survive being written and read.
    fn whole_millis(d: Duration) -> Duration {
        Duration::from_millis(d.as_millis().min(u128::from(u64::MAX)) as u64)
    }
}
