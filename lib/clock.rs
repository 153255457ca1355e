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
