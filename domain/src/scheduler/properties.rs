//! Properties of ranking for random fleets and queues.

use super::*;
use crate::{FactoryId, JobId, Priority, ProductId};
use chrono::{Duration, TimeZone, Utc};
use proptest::prelude::*;
use std::collections::BTreeMap;
use uuid::Uuid;

const CAPS: [&str; 4] = ["rust", "gpu", "browser", "python"];

fn caps() -> impl Strategy<Value = Vec<String>> {
    proptest::sample::subsequence(CAPS.to_vec(), 0..=3)
        .prop_map(|v| v.into_iter().map(String::from).collect())
}

fn candidate() -> impl Strategy<Value = JobCandidate> {
    (
        any::<u64>(),
        0u8..3,
        0usize..4,
        0i64..100_000,
        caps(),
        any::<bool>(),
    )
        .prop_map(|(id, p, pr, age, caps, mine)| JobCandidate {
            job_id: JobId(Uuid::from_u128(u128::from(id))),
            product_id: ProductId(format!("p{p}")),
            priority: Priority::ALL[pr],
            created_at: Utc.timestamp_opt(1_800_000_000, 0).unwrap() - Duration::seconds(age),
            required_capabilities: caps,
            checkpoint_factory: mine.then_some(FactoryId(Uuid::from_u128(1))),
        })
}

fn weights() -> impl Strategy<Value = Weights> {
    proptest::collection::vec(0.0f64..10.0, 5).prop_map(|v| {
        let mut o = WeightOverrides::default();
        for (t, w) in Term::ALL.into_iter().zip(v) {
            o.0.insert(t, w);
        }
        Weights::defaults().with(&o)
    })
}

proptest! {
    #[test]
    fn picks_are_capable_sorted_and_totals_are_weighted_sums(
        jobs in proptest::collection::vec(candidate(), 0..40),
        factory_caps in caps(),
        running in proptest::collection::vec(0u32..10, 3),
        w in weights(),
    ) {
        let factory = FactoryProfile { factory_id: FactoryId(Uuid::from_u128(1)), capabilities: factory_caps };
        let ctx = SchedulingContext {
            now: Utc.timestamp_opt(1_800_000_000, 0).unwrap(),
            running_by_product: running.iter().enumerate().map(|(i, n)| (ProductId(format!("p{i}")), *n)).collect::<BTreeMap<_, _>>(),
        };
        let capable = jobs.iter().filter(|j| is_capable(&j.required_capabilities, &factory.capabilities)).count();
        let ranked = rank(&jobs, &factory, &ctx, |_| &w);
        prop_assert_eq!(ranked.len(), capable);
        for r in &ranked {
            prop_assert!(is_capable(&r.job.required_capabilities, &factory.capabilities));
            let sum: f64 = r.breakdown.terms().map(|(t, s)| { assert_eq!(s.weight, w.get(t)); s.value * s.weight }).sum();
            prop_assert!((sum - r.breakdown.total).abs() < 1e-9);
        }
        for pair in ranked.windows(2) {
            prop_assert!(pair[0].breakdown.total >= pair[1].breakdown.total);
        }
    }
}
