//! The order in which claimable jobs are offered to a factory: priority first, then
//! age (oldest first), then id for a deterministic tie-break. One pure function, so
//! the scoring scheduler can replace it in one place.

use crate::{JobId, Priority, Timestamp};
use std::cmp::Ordering;

/// What the ordering needs to know about a claimable job.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimCandidate {
    pub job_id: JobId,
    pub priority: Priority,
    pub created_at: Timestamp,
    pub required_capabilities: Vec<String>,
}

/// Whether a factory with `capabilities` may run a job requiring `required`.
pub fn is_capable(required: &[String], capabilities: &[String]) -> bool {
    required.iter().all(|r| capabilities.contains(r))
}

/// Compares two candidates: `Less` means `a` goes first.
pub fn claim_order(a: &ClaimCandidate, b: &ClaimCandidate) -> Ordering {
    a.priority
        .rank()
        .cmp(&b.priority.rank())
        .then(a.created_at.cmp(&b.created_at))
        .then(a.job_id.cmp(&b.job_id))
}

/// The candidates this factory may run, best first.
pub fn rank_candidates(
    mut candidates: Vec<ClaimCandidate>,
    capabilities: &[String],
) -> Vec<ClaimCandidate> {
    candidates.retain(|c| is_capable(&c.required_capabilities, capabilities));
    candidates.sort_by(claim_order);
    candidates
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};
    use uuid::Uuid;

    fn cand(n: u128, p: Priority, secs: i64, caps: &[&str]) -> ClaimCandidate {
        ClaimCandidate {
            job_id: JobId(Uuid::from_u128(n)),
            priority: p,
            created_at: Utc.timestamp_opt(secs, 0).unwrap(),
            required_capabilities: caps.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn priority_then_age_then_id() {
        let ranked = rank_candidates(
            vec![
                cand(1, Priority::Low, 0, &[]),
                cand(2, Priority::High, 50, &[]),
                cand(3, Priority::High, 10, &[]),
                cand(4, Priority::Critical, 99, &[]),
                cand(5, Priority::High, 10, &[]),
            ],
            &[],
        );
        let ids: Vec<u128> = ranked.iter().map(|c| c.job_id.0.as_u128()).collect();
        assert_eq!(ids, vec![4, 3, 5, 2, 1]);
    }

    #[test]
    fn only_capable_jobs_are_offered() {
        let caps = vec!["rust".to_string()];
        let ranked = rank_candidates(
            vec![
                cand(1, Priority::Critical, 0, &["gpu"]),
                cand(2, Priority::Low, 0, &["rust"]),
            ],
            &caps,
        );
        assert_eq!(ranked.len(), 1);
        assert_eq!(ranked[0].job_id.0.as_u128(), 2);
    }
}
