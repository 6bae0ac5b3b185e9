//! Serialises durations as readable text (`"250ms"`) for `check-config` output and the admin
//! routes. A leaf, so any settings type can use it with `#[serde(with = "...")]`.

use std::time::Duration;

/// Writes `d` as `humantime` text.
pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_duration(*d))
}
