//! Time as the broker writes it: Unix seconds and milliseconds, RFC 3339
//! in UTC. A leaf: imports nothing of the crate. A clock before 1970 reads
//! as the epoch (never a panic).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn since_epoch() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// Seconds since the Unix epoch.
pub fn unix_secs() -> u64 {
    since_epoch().as_secs()
}

/// Milliseconds since the Unix epoch (keys that sort by time, due times).
pub fn unix_ms() -> u64 {
    since_epoch().as_millis() as u64
}

/// `2026-01-02T03:04:05Z`: the records' `created_at`-style fields.
pub fn rfc3339_secs(unix: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(unix)).to_string()
}

/// `2026-01-02T03:04:05.678Z`: audit records and approvals.
pub fn rfc3339_millis(since_epoch: Duration) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + since_epoch).to_string()
}

/// Now, to the second.
pub fn now_rfc3339() -> String {
    rfc3339_secs(unix_secs())
}

/// Now, to the millisecond.
pub fn now_rfc3339_millis() -> String {
    rfc3339_millis(since_epoch())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes() {
        assert_eq!(rfc3339_secs(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_secs(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339_secs(1_795_302_766), "2026-11-21T23:12:46Z");
        assert_eq!(
            rfc3339_millis(Duration::from_millis(1_795_302_766_042)),
            "2026-11-21T23:12:46.042Z"
        );
        let t = now_rfc3339_millis();
        assert_eq!(t.len(), 24, "{t}");
        assert!(t.ends_with('Z'));
        assert!(unix_ms() / 1000 >= unix_secs() - 1);
    }
}
