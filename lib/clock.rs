//! Time as the records keep it: Unix seconds, as a float.

use std::time::{SystemTime, UNIX_EPOCH};

/// Now, in Unix seconds (0 if the clock is before 1970).
pub fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// A time the records keep, as the system's (the Unix epoch for one before it).
pub fn at(unix: f64) -> SystemTime {
    UNIX_EPOCH + std::time::Duration::try_from_secs_f64(unix).unwrap_or_default()
}

/// A time in the past as options take it: a duration ago (`30m`, `2h`, `1d 12h`), a time
/// (RFC 3339, UTC: `2026-12-24T06:00:00Z`), or Unix seconds (as the records write times).
pub fn parse_past(s: &str, now: f64) -> Result<f64, String> {
    let s = s.trim();
    if let Ok(unix) = s.parse::<f64>() {
        if unix.is_finite() && unix >= 0.0 {
            return Ok(unix);
        }
    } else if let Ok(d) = humantime::parse_duration(s) {
        return Ok(now - d.as_secs_f64());
    } else if let Ok(t) = humantime::parse_rfc3339_weak(s) {
        return Ok(t
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64()));
    }
    Err(format!(
        "{s:?} is not a duration ago (30m, 2h, 1d), a time (2026-12-24T06:00:00Z) or Unix seconds"
    ))
}
