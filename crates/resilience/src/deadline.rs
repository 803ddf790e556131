//! Instants a duration away from another, without overflow: a configured delay of any size
//! saturates at the end of time instead of panicking (`DateTime + TimeDelta::MAX` panics).

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

fn delta(d: Duration) -> Option<TimeDelta> {
    TimeDelta::from_std(d).ok()
}

/// `at + d`, or the latest representable instant if that is out of range.
pub fn after(at: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    delta(d)
        .and_then(|d| at.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// `at - d`, or the earliest representable instant if that is out of range.
pub fn before(at: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    delta(d)
        .and_then(|d| at.checked_sub_signed(d))
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// Whether `since` is at least `d` before `now` (false for any `d` beyond the range of time).
pub fn elapsed(since: DateTime<Utc>, now: DateTime<Utc>, d: Duration) -> bool {
    delta(d).is_some_and(|d| now.signed_duration_since(since) >= d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saturates_instead_of_panicking() {
        let now = Utc::now();
        assert_eq!(after(now, Duration::MAX), DateTime::<Utc>::MAX_UTC);
        assert_eq!(before(now, Duration::MAX), DateTime::<Utc>::MIN_UTC);
        assert_eq!(
            after(now, Duration::from_secs(u64::MAX / 4)),
            DateTime::<Utc>::MAX_UTC
        );
        assert_eq!(
            after(now, Duration::from_millis(1500)),
            now + TimeDelta::milliseconds(1500)
        );
        assert_eq!(
            before(now, Duration::from_secs(2)),
            now - TimeDelta::seconds(2)
        );
    }

    #[test]
    fn elapsed_compares_ages() {
        let now = Utc::now();
        let then = now - TimeDelta::seconds(10);
        assert!(elapsed(then, now, Duration::from_secs(10)));
        assert!(elapsed(then, now, Duration::ZERO));
        assert!(!elapsed(then, now, Duration::from_secs(11)));
        assert!(!elapsed(then, now, Duration::MAX));
    }
}
