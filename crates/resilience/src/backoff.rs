//! Backoff delays for code that schedules its own next attempt.

use std::time::Duration;

/// `base * 2^(attempt-1)`, capped at `cap` (attempt 0 or 1 → `base`). Saturating, never panics.
///
/// The cap applies to every attempt, so a `base` above `cap` yields `cap`.
pub fn exponential(attempt: u32, base: Duration, cap: Duration) -> Duration {
    let doublings = attempt.saturating_sub(1);
    let delay = 1u32
        .checked_shl(doublings)
        .and_then(|factor| base.checked_mul(factor))
        // 2^32 and more: anything but a zero base overflows past any sensible cap.
        .unwrap_or(if base.is_zero() { base } else { Duration::MAX });
    delay.min(cap)
}

/// "Equal jitter": `d/2 + random(0..=d/2)`, so delays stay within `[d/2, d]` and callers that
/// failed together spread out.
pub fn jittered(d: Duration) -> Duration {
    let half = d / 2;
    let half_nanos = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
    half.saturating_add(Duration::from_nanos(fastrand::u64(0..=half_nanos)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn exponential_doubles_from_base() {
        let (base, cap) = (100 * MS, Duration::from_secs(60));
        assert_eq!(exponential(0, base, cap), base);
        assert_eq!(exponential(1, base, cap), base);
        assert_eq!(exponential(2, base, cap), 200 * MS);
        assert_eq!(exponential(3, base, cap), 400 * MS);
        assert_eq!(exponential(10, base, cap), 51_200 * MS);
    }

    #[test]
    fn exponential_is_capped() {
        let (base, cap) = (100 * MS, Duration::from_secs(5));
        assert_eq!(exponential(7, base, cap), cap);
        assert_eq!(exponential(100, base, cap), cap);
        assert_eq!(exponential(1, Duration::from_secs(10), cap), cap);
    }

    #[test]
    fn exponential_never_overflows() {
        for attempt in [31, 32, 33, 64, 1_000, u32::MAX] {
            assert_eq!(
                exponential(attempt, MS, Duration::from_secs(30)),
                Duration::from_secs(30)
            );
            assert_eq!(
                exponential(attempt, Duration::MAX, Duration::MAX),
                Duration::MAX
            );
            assert_eq!(
                exponential(attempt, Duration::ZERO, Duration::MAX),
                Duration::ZERO
            );
        }
        assert_eq!(exponential(2, Duration::MAX, Duration::MAX), Duration::MAX);
    }

    #[test]
    fn jitter_stays_within_half_and_whole() {
        let d = Duration::from_millis(1_000);
        let mut seen_below_whole = false;
        for _ in 0..1_000 {
            let j = jittered(d);
            assert!(j >= d / 2 && j <= d, "{j:?}");
            seen_below_whole |= j < d;
        }
        assert!(seen_below_whole, "the delay is randomised");
        assert_eq!(jittered(Duration::ZERO), Duration::ZERO);
        assert!(jittered(Duration::MAX) >= Duration::MAX / 2);
        let one_ns = Duration::from_nanos(1);
        assert!(jittered(one_ns) <= one_ns);
    }
}
