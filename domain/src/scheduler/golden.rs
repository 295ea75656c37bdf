//! Golden picks of the default weights. Each row is a scenario and the job the
//! defaults pick; a change to the defaults that changes a pick fails here, so it shows
//! in review. Change a row only on purpose, and say so in docs/scheduler.md.

use super::*;
use crate::{FactoryId, JobId, Priority, ProductId};
use chrono::{DateTime, Duration, TimeZone, Utc};
use std::collections::BTreeMap;
use uuid::Uuid;

fn now() -> DateTime<Utc> {
    Utc.timestamp_opt(1_800_000_000, 0).unwrap()
}

const ME: FactoryId = FactoryId(Uuid::from_u128(0xF));

/// (id, product, priority, minutes waited, required capabilities, checkpoint by me)
type Row = (
    u128,
    &'static str,
    Priority,
    i64,
    &'static [&'static str],
    bool,
);

fn job((id, product, priority, waited, caps, mine): Row) -> JobCandidate {
    JobCandidate {
        job_id: JobId(Uuid::from_u128(id)),
        product_id: ProductId(product.into()),
        priority,
        created_at: now() - Duration::minutes(waited),
        required_capabilities: caps.iter().map(|s| s.to_string()).collect(),
        checkpoint_factory: mine.then_some(ME),
    }
}

struct Scenario {
    name: &'static str,
    factory_caps: &'static [&'static str],
    running: &'static [(&'static str, u32)],
    jobs: &'static [Row],
    pick: u128,
}

use Priority::*;

const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "priority decides among fresh jobs",
        factory_caps: &[],
        running: &[],
        jobs: &[
            (1, "p", Low, 0, &[], false),
            (2, "p", Critical, 0, &[], false),
            (3, "p", High, 0, &[], false),
        ],
        pick: 2,
    },
    Scenario {
        name: "15 minutes of waiting beat one priority level",
        factory_caps: &[],
        running: &[],
        jobs: &[
            (1, "p", High, 0, &[], false),
            (2, "p", Normal, 15, &[], false),
        ],
        pick: 2,
    },
    Scenario {
        name: "5 minutes of waiting do not",
        factory_caps: &[],
        running: &[],
        jobs: &[
            (1, "p", High, 0, &[], false),
            (2, "p", Normal, 5, &[], false),
        ],
        pick: 1,
    },
    Scenario {
        name: "a low job waiting 35 minutes beats a fresh critical one",
        factory_caps: &[],
        running: &[],
        jobs: &[
            (1, "p", Critical, 0, &[], false),
            (2, "p", Low, 35, &[], false),
        ],
        pick: 2,
    },
    Scenario {
        name: "affinity: the factory holding the checkpoint",
        factory_caps: &[],
        running: &[],
        jobs: &[
            (1, "p", Normal, 3, &[], false),
            (2, "p", Normal, 2, &[], true),
        ],
        pick: 2,
    },
    Scenario {
        name: "capability fit: specialised work to the specialised factory",
        factory_caps: &["gpu", "rust"],
        running: &[],
        jobs: &[
            (1, "p", Normal, 1, &[], false),
            (2, "p", Normal, 1, &["gpu"], false),
        ],
        pick: 2,
    },
    Scenario {
        name: "fairness: the product with fewer running jobs",
        factory_caps: &[],
        running: &[("busy", 4)],
        jobs: &[
            (1, "busy", Normal, 1, &[], false),
            (2, "idle", Normal, 1, &[], false),
        ],
        pick: 2,
    },
    Scenario {
        name: "fairness does not outweigh a priority level",
        factory_caps: &[],
        running: &[("busy", 4)],
        jobs: &[
            (1, "busy", High, 1, &[], false),
            (2, "idle", Normal, 1, &[], false),
        ],
        pick: 1,
    },
    Scenario {
        name: "only capable jobs",
        factory_caps: &["rust"],
        running: &[],
        jobs: &[
            (1, "p", Critical, 9, &["browser"], false),
            (2, "p", Low, 0, &["rust"], false),
        ],
        pick: 2,
    },
    Scenario {
        name: "ties: the older job",
        factory_caps: &[],
        running: &[],
        jobs: &[
            (1, "p", Normal, 0, &[], false),
            (2, "p", Normal, 0, &[], false),
            (3, "p", Normal, 0, &[], false),
        ],
        pick: 1,
    },
];

#[test]
fn default_weights_reproduce_the_golden_picks() {
    let weights = Weights::defaults();
    for s in SCENARIOS {
        let factory = FactoryProfile {
            factory_id: ME,
            capabilities: s.factory_caps.iter().map(|c| c.to_string()).collect(),
        };
        let ctx = SchedulingContext {
            now: now(),
            running_by_product: s
                .running
                .iter()
                .map(|(p, n)| (ProductId(p.to_string()), *n))
                .collect::<BTreeMap<_, _>>(),
        };
        let jobs: Vec<JobCandidate> = s.jobs.iter().copied().map(job).collect();
        let ranked = rank(&jobs, &factory, &ctx, |_| &weights);
        assert_eq!(
            ranked[0].job.job_id.0.as_u128(),
            s.pick,
            "golden scenario: {}",
            s.name
        );
    }
}

#[test]
fn the_defaults_are_pinned() {
    let w = Weights::defaults();
    let pinned = [
        (Term::Priority, 1.0),
        (Term::Age, 0.1),
        (Term::CapabilityFit, 0.5),
        (Term::Affinity, 1.0),
        (Term::Fairness, 0.5),
    ];
    for (t, v) in pinned {
        assert_eq!(w.get(t), v, "default weight of {t}");
    }
}
