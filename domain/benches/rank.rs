//! Ranking 10,000 claimable jobs for one factory (target: < 1 ms on the reference
//! 2-core machine). Run: `cargo bench -p gigafactory-domain --bench rank`.

use chrono::{Duration, TimeZone, Utc};
use criterion::{criterion_group, criterion_main, Criterion};
use gigafactory_domain::scheduler::{
    rank, FactoryProfile, JobCandidate, SchedulingContext, Weights,
};
use gigafactory_domain::{FactoryId, JobId, Priority, ProductId};
use std::collections::BTreeMap;
use uuid::Uuid;

fn candidates(n: usize) -> Vec<JobCandidate> {
    let caps = ["rust", "gpu", "browser"];
    (0..n)
        .map(|i| JobCandidate {
            job_id: JobId(Uuid::from_u128(i as u128 * 7919)),
            product_id: ProductId(format!("p{}", i % 5)),
            priority: Priority::ALL[i % 4],
            created_at: Utc.timestamp_opt(1_800_000_000, 0).unwrap()
                - Duration::seconds((i * 37 % 7200) as i64),
            required_capabilities: caps.iter().take(i % 3).map(|s| s.to_string()).collect(),
            checkpoint_factory: (i % 50 == 0).then_some(FactoryId(Uuid::from_u128(1))),
        })
        .collect()
}

/// The factory, context and weights every measurement uses.
fn fixture() -> (FactoryProfile, SchedulingContext, Weights) {
    let factory = FactoryProfile {
        factory_id: FactoryId(Uuid::from_u128(1)),
        capabilities: vec!["rust".into(), "gpu".into()],
    };
    let ctx = SchedulingContext {
        now: Utc.timestamp_opt(1_800_000_000, 0).unwrap(),
        running_by_product: (0..5)
            .map(|p| (ProductId(format!("p{p}")), p as u32))
            .collect::<BTreeMap<_, _>>(),
    };
    (factory, ctx, Weights::defaults())
}

fn bench(c: &mut Criterion) {
    let (factory, ctx, weights) = fixture();
    let jobs = candidates(10_000);
    c.bench_function("rank 10k candidates", |b| {
        b.iter(|| rank(&jobs, &factory, &ctx, |_| &weights).len())
    });
}

criterion_group!(benches, bench);
criterion_main!(benches, phase_benches);

fn phases(c: &mut Criterion) {
    use gigafactory_domain::scheduler::score;
    let (factory, ctx, weights) = fixture();
    let jobs = candidates(10_000);
    c.bench_function("score only 10k", |b| {
        b.iter(|| {
            jobs.iter()
                .map(|j| score(j, &factory, &ctx, &weights).total)
                .sum::<f64>()
        })
    });
    c.bench_function("capable only 10k", |b| {
        b.iter(|| {
            jobs.iter()
                .filter(|j| {
                    gigafactory_domain::scheduler::is_capable(
                        &j.required_capabilities,
                        &factory.capabilities,
                    )
                })
                .count()
        })
    });
}
criterion_group!(phase_benches, phases);
