//! Backoff before a failed or expired job is queued again: exponential with jitter.
//! Pure: the jitter fraction is drawn by the caller and passed in.

use chrono::Duration;

/// Delay after the first failure.
pub const BACKOFF_BASE_MS: i64 = 1_000;
/// No backoff is longer than this.
pub const BACKOFF_CAP_MS: i64 = 5 * 60 * 1_000;

/// Delay before attempt `attempts + 1` may start, after `attempts` failures/expiries
/// (≥ 1). "Equal jitter": half the exponential delay is fixed, half is scaled by
/// `jitter` ∈ [0, 1), so retries of many jobs that failed together spread out while
/// each still waits at least half the nominal delay.
pub fn retry_delay(attempts: u32, jitter: f64) -> Duration {
    let exp = attempts.saturating_sub(1).min(20);
    let nominal = (BACKOFF_BASE_MS.saturating_mul(1_i64 << exp)).min(BACKOFF_CAP_MS);
    let jitter = if jitter.is_finite() {
        jitter.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let half = nominal / 2;
    Duration::milliseconds(half + (half as f64 * jitter) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_exponentially_and_is_capped() {
        assert_eq!(retry_delay(1, 0.0).num_milliseconds(), 500);
        assert_eq!(retry_delay(1, 0.999).num_milliseconds(), 999);
        assert_eq!(retry_delay(2, 0.0).num_milliseconds(), 1_000);
        assert_eq!(retry_delay(4, 0.0).num_milliseconds(), 4_000);
        assert_eq!(retry_delay(40, 1.0).num_milliseconds(), BACKOFF_CAP_MS);
        assert_eq!(
            retry_delay(40, f64::NAN).num_milliseconds(),
            BACKOFF_CAP_MS / 2
        );
    }
}
