//! Durations as operators write them: `3600` (seconds), `90s`, `30m`, `24h`, `90d`, `1h30m`,
//! `500ms`, or Go's `24h0m0s` as Istio prints it.

use std::time::Duration;

/// Parses a duration; the error says what was expected.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty duration; write e.g. 3600, 90s, 30m, 24h or 90d".into());
    }
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!("{s:?}: expected a number before {rest:?}"));
        }
        let n: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("{s:?}: number too large"))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n * 60),
            "h" => Duration::from_secs(n * 3600),
            "d" => Duration::from_secs(n * 86400),
            other => {
                return Err(format!(
                    "{s:?}: unknown unit {other:?}; use ms, s, m, h or d"
                ));
            }
        };
        total += unit;
        rest = &rest[unit_len..];
    }
    Ok(total)
}

/// A duration as a flag's default is shown in `--help`, in the largest unit that divides it,
/// days only from two on (`24h` as Istio writes it, `90d`, `2m`, `500ms`); [`parse_duration`]
/// reads it back to the same value.
pub fn flag(d: Duration) -> String {
    let ms = d.as_millis();
    if !ms.is_multiple_of(1000) {
        return format!("{ms}ms");
    }
    let s = d.as_secs();
    for (unit, secs) in [("d", 86400), ("h", 3600), ("m", 60)] {
        if s != 0 && s.is_multiple_of(secs) && (unit != "d" || s >= 2 * 86400) {
            return format!("{}{unit}", s / secs);
        }
    }
    format!("{s}s")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_default_reads_back_to_itself() {
        for d in [
            Duration::from_secs(86400),
            Duration::from_secs(90 * 86400),
            Duration::from_secs(120),
            Duration::from_secs(300),
            Duration::from_secs(3650 * 86400),
            Duration::from_secs(61),
            Duration::from_millis(1500),
            Duration::ZERO,
        ] {
            assert_eq!(parse_duration(&flag(d)), Ok(d), "{}", flag(d));
        }
        assert_eq!(flag(Duration::from_secs(86400)), "24h");
        assert_eq!(flag(Duration::from_secs(90 * 86400)), "90d");
        assert_eq!(flag(Duration::from_secs(120)), "2m");
    }

    #[test]
    fn forms_operators_write() {
        let d = |s| parse_duration(s).unwrap().as_secs();
        assert_eq!(d("3600"), 3600);
        assert_eq!(d("90s"), 90);
        assert_eq!(d("30m"), 1800);
        assert_eq!(d("24h"), 86400);
        assert_eq!(d("90d"), 90 * 86400);
        assert_eq!(d("1h30m"), 5400);
        assert_eq!(d("24h0m0s"), 86400);
        assert_eq!(parse_duration("500ms").unwrap().as_millis(), 500);
        assert!(parse_duration("").is_err());
        assert!(
            parse_duration("h")
                .unwrap_err()
                .contains("expected a number")
        );
        assert!(parse_duration("5y").unwrap_err().contains("unknown unit"));
        assert!(parse_duration("-5").is_err());
    }
}
