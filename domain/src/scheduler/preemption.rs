//! Preemption: when a `critical` job cannot be placed, which running job to evict.

use super::score::{is_capable, score, Breakdown, FactoryProfile, JobCandidate, SchedulingContext};
use super::weights::Weights;
use crate::{FactoryId, JobId, Priority, ProductId, Timestamp};

/// A job holding a lease.
#[derive(Debug, Clone, PartialEq)]
pub struct RunningJob {
    pub job_id: JobId,
    pub product_id: ProductId,
    pub priority: Priority,
    pub factory_id: FactoryId,
    /// When its current lease was granted.
    pub started_at: Timestamp,
}

/// A factory of the fleet, with its load.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetFactory {
    pub factory_id: FactoryId,
    pub product_ids: Vec<ProductId>,
    pub capabilities: Vec<String>,
    pub capacity: u32,
    pub load: u32,
}

impl FleetFactory {
    fn can_run(&self, job: &JobCandidate) -> bool {
        self.product_ids.contains(&job.product_id)
            && is_capable(&job.required_capabilities, &self.capabilities)
    }
}

/// The decision: evict `evict` (running on `factory_id`) so `for_job` can run there.
#[derive(Debug, Clone, PartialEq)]
pub struct Preemption {
    pub evict: JobId,
    pub factory_id: FactoryId,
    pub for_job: JobId,
    pub reason: String,
    /// The critical job's score on the freed factory.
    pub breakdown: Breakdown,
}

/// Only when a critical candidate cannot be placed (no capable factory serving its
/// product has a free slot) and a capable factory runs a strictly lower-priority job:
/// the victim is the lowest priority, then the latest started (least work lost), then
/// the smallest id. Critical candidates are considered oldest first. Never evicts an
/// equal or higher priority.
pub fn select_with_preemption<'w>(
    candidates: &[JobCandidate],
    running: &[RunningJob],
    factories: &[FleetFactory],
    ctx: &SchedulingContext,
    weights_of: impl Fn(&ProductId) -> &'w Weights,
) -> Option<Preemption> {
    let mut critical: Vec<&JobCandidate> = candidates
        .iter()
        .filter(|c| c.priority == Priority::Critical)
        .collect();
    critical.sort_by(|a, b| {
        a.created_at
            .cmp(&b.created_at)
            .then(a.job_id.cmp(&b.job_id))
    });
    for job in critical {
        let capable: Vec<&FleetFactory> = factories.iter().filter(|f| f.can_run(job)).collect();
        if capable.is_empty() || capable.iter().any(|f| f.load < f.capacity) {
            continue; // nowhere to run it, or it will be placed without evicting anyone
        }
        let victim = running
            .iter()
            .filter(|r| r.priority.rank() > job.priority.rank())
            .filter(|r| capable.iter().any(|f| f.factory_id == r.factory_id))
            .max_by(|a, b| {
                a.priority
                    .rank()
                    .cmp(&b.priority.rank())
                    .then(a.started_at.cmp(&b.started_at))
                    .then(b.job_id.cmp(&a.job_id))
            });
        if let Some(v) = victim {
            let factory = capable
                .iter()
                .find(|f| f.factory_id == v.factory_id)
                .expect("victim runs on a capable factory");
            let profile = FactoryProfile {
                factory_id: factory.factory_id,
                capabilities: factory.capabilities.clone(),
            };
            return Some(Preemption {
                evict: v.job_id,
                factory_id: v.factory_id,
                for_job: job.job_id,
                reason: format!(
                    "critical job {} cannot be placed: every capable factory is full; evicting {} job {}",
                    job.job_id, v.priority, v.job_id
                ),
                breakdown: score(job, &profile, ctx, weights_of(&job.product_id)),
            });
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Duration, TimeZone, Utc};
    use proptest::prelude::*;
    use std::collections::BTreeMap;
    use uuid::Uuid;

    fn t(s: i64) -> Timestamp {
        Utc.timestamp_opt(1_800_000_000, 0).unwrap() + Duration::seconds(s)
    }
    fn p() -> ProductId {
        ProductId("p".into())
    }
    fn cand(id: u128, priority: Priority) -> JobCandidate {
        JobCandidate {
            job_id: JobId(Uuid::from_u128(id)),
            product_id: p(),
            priority,
            created_at: t(0),
            required_capabilities: vec![],
            checkpoint_factory: None,
        }
    }
    fn run(id: u128, priority: Priority, factory: u128, started: i64) -> RunningJob {
        RunningJob {
            job_id: JobId(Uuid::from_u128(id)),
            product_id: p(),
            priority,
            factory_id: FactoryId(Uuid::from_u128(factory)),
            started_at: t(started),
        }
    }
    fn factory(id: u128, capacity: u32, load: u32) -> FleetFactory {
        FleetFactory {
            factory_id: FactoryId(Uuid::from_u128(id)),
            product_ids: vec![p()],
            capabilities: vec![],
            capacity,
            load,
        }
    }
    fn ctx() -> SchedulingContext {
        SchedulingContext {
            now: t(100),
            running_by_product: BTreeMap::new(),
        }
    }

    #[test]
    fn evicts_the_lowest_priority_latest_started_job() {
        let w = Weights::defaults();
        let running = [
            run(10, Priority::Low, 1, 5),
            run(11, Priority::Low, 2, 50),
            run(12, Priority::Normal, 1, 90),
        ];
        let d = select_with_preemption(
            &[cand(1, Priority::Critical)],
            &running,
            &[factory(1, 2, 2), factory(2, 1, 1)],
            &ctx(),
            |_| &w,
        )
        .unwrap();
        assert_eq!(d.evict, JobId(Uuid::from_u128(11)));
        assert_eq!(d.factory_id, FactoryId(Uuid::from_u128(2)));
        assert_eq!(d.for_job, JobId(Uuid::from_u128(1)));
    }

    #[test]
    fn no_preemption_with_a_free_slot_or_only_equal_priority() {
        let w = Weights::defaults();
        let c = [cand(1, Priority::Critical)];
        assert!(select_with_preemption(
            &c,
            &[run(10, Priority::Low, 1, 0)],
            &[factory(1, 2, 1)],
            &ctx(),
            |_| &w
        )
        .is_none());
        assert!(select_with_preemption(
            &c,
            &[run(10, Priority::Critical, 1, 0)],
            &[factory(1, 1, 1)],
            &ctx(),
            |_| &w
        )
        .is_none());
        assert!(select_with_preemption(
            &[cand(1, Priority::High)],
            &[run(10, Priority::Low, 1, 0)],
            &[factory(1, 1, 1)],
            &ctx(),
            |_| &w
        )
        .is_none());
    }

    proptest! {
        #[test]
        fn never_evicts_an_equal_or_higher_priority(
            running in proptest::collection::vec((0usize..4, 0u128..4, 0i64..100), 0..12),
            loads in proptest::collection::vec((1u32..3, 0u32..3), 4),
        ) {
            let w = Weights::defaults();
            let running: Vec<RunningJob> = running.iter().enumerate().map(|(i, (pr, f, s))| run(100 + i as u128, Priority::ALL[*pr], *f, *s)).collect();
            let factories: Vec<FleetFactory> = loads.iter().enumerate().map(|(i, (cap, load))| factory(i as u128, *cap, (*load).min(*cap))).collect();
            if let Some(d) = select_with_preemption(&[cand(1, Priority::Critical)], &running, &factories, &ctx(), |_| &w) {
                let victim = running.iter().find(|r| r.job_id == d.evict).unwrap();
                prop_assert!(victim.priority.rank() > Priority::Critical.rank());
                prop_assert!(factories.iter().all(|f| f.load >= f.capacity));
                let lowest = running.iter().map(|r| r.priority.rank()).max().unwrap();
                prop_assert_eq!(victim.priority.rank(), lowest);
            }
        }
    }
}
