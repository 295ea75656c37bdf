//! Scoring and ranking one factory's candidate jobs.

use super::weights::{Term, Weights};
use crate::{FactoryId, JobId, Priority, ProductId, Timestamp};
use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};
use std::collections::BTreeMap;

/// What the scheduler knows about a claimable job.
#[derive(Debug, Clone, PartialEq)]
pub struct JobCandidate {
    pub job_id: JobId,
    pub product_id: ProductId,
    pub priority: Priority,
    pub created_at: Timestamp,
    pub required_capabilities: Vec<String>,
    /// The factory that wrote the job's latest checkpoint, if any.
    pub checkpoint_factory: Option<FactoryId>,
}

/// The factory asking for work.
#[derive(Debug, Clone, PartialEq)]
pub struct FactoryProfile {
    pub factory_id: FactoryId,
    pub capabilities: Vec<String>,
}

/// The fleet's state the score depends on.
#[derive(Debug, Clone, PartialEq)]
pub struct SchedulingContext {
    pub now: Timestamp,
    /// Running (leased or running) jobs per product.
    pub running_by_product: BTreeMap<ProductId, u32>,
}

/// One term's contribution: `value × weight`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct TermScore {
    pub value: f64,
    pub weight: f64,
}

/// Why a job scored what it scored: `total = Σ value × weight`, one entry per term
/// in [`Term::ALL`] order (a fixed array: ranking allocates nothing per job).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Breakdown {
    pub total: f64,
    pub scores: [TermScore; 5],
}

impl Breakdown {
    /// One term's contribution.
    pub fn term(&self, term: Term) -> TermScore {
        self.scores[term.index()]
    }

    /// Every term with its contribution.
    pub fn terms(&self) -> impl Iterator<Item = (Term, TermScore)> + '_ {
        Term::ALL.into_iter().zip(self.scores)
    }
}

impl Serialize for Breakdown {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        struct Terms<'a>(&'a Breakdown);
        impl Serialize for Terms<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut m = s.serialize_map(Some(5))?;
                for (t, v) in self.0.terms() {
                    m.serialize_entry(t.name(), &v)?;
                }
                m.end()
            }
        }
        let mut m = s.serialize_map(Some(2))?;
        m.serialize_entry("total", &self.total)?;
        m.serialize_entry("terms", &Terms(self))?;
        m.end()
    }
}

/// Whether a factory with `capabilities` may run a job requiring `required`.
pub fn is_capable(required: &[String], capabilities: &[String]) -> bool {
    required.iter().all(|r| capabilities.contains(r))
}

/// The score of `job` for `factory`.
pub fn score(
    job: &JobCandidate,
    factory: &FactoryProfile,
    ctx: &SchedulingContext,
    weights: &Weights,
) -> Breakdown {
    score_at(
        job,
        job.created_at.timestamp_micros(),
        ctx.now.timestamp_micros(),
        factory,
        ctx,
        weights,
    )
}

/// [`score`] with the instants already in microseconds (ranking converts each once).
fn score_at(
    job: &JobCandidate,
    created_us: i64,
    now_us: i64,
    factory: &FactoryProfile,
    ctx: &SchedulingContext,
    weights: &Weights,
) -> Breakdown {
    let waited_minutes = (now_us - created_us).max(0) as f64 / 60_000_000.0;
    let fit = if factory.capabilities.is_empty() {
        1.0
    } else {
        (job.required_capabilities.len() as f64 / factory.capabilities.len() as f64).min(1.0)
    };
    let running = ctx
        .running_by_product
        .get(&job.product_id)
        .copied()
        .unwrap_or(0);
    let affinity = if job.checkpoint_factory == Some(factory.factory_id) {
        1.0
    } else {
        0.0
    };
    // In Term::ALL order: priority, age, capabilityFit, affinity, fairness.
    let values = [
        f64::from(3 - job.priority.rank()),
        waited_minutes,
        fit,
        affinity,
        1.0 / (1.0 + f64::from(running)),
    ];
    let mut scores = [TermScore {
        value: 0.0,
        weight: 0.0,
    }; 5];
    let mut total = 0.0;
    for (i, t) in Term::ALL.into_iter().enumerate() {
        let weight = weights.get(t);
        scores[i] = TermScore {
            value: values[i],
            weight,
        };
        total += values[i] * weight;
    }
    Breakdown { total, scores }
}

/// A candidate with its score.
#[derive(Debug, Clone, PartialEq)]
pub struct Ranked<'a> {
    pub job: &'a JobCandidate,
    pub breakdown: Breakdown,
}

/// The jobs this factory may run, best first (higher total, then older, then smaller
/// id), each with its breakdown. `weights_of` gives the resolved weights for a job's
/// product.
pub fn rank<'a, 'w>(
    candidates: &'a [JobCandidate],
    factory: &FactoryProfile,
    ctx: &SchedulingContext,
    weights_of: impl Fn(&ProductId) -> &'w Weights,
) -> Vec<Ranked<'a>> {
    let now_us = ctx.now.timestamp_micros();
    let mut scored: Vec<Ranked<'a>> = Vec::with_capacity(candidates.len());
    // Sort compact integer keys (higher total, then older, then smaller id), not the
    // scored entries: integer compares, small moves.
    let mut keys: Vec<(u64, i64, u128, u32)> = Vec::with_capacity(candidates.len());
    for job in candidates {
        if !is_capable(&job.required_capabilities, &factory.capabilities) {
            continue;
        }
        let created_us = job.created_at.timestamp_micros();
        let breakdown = score_at(
            job,
            created_us,
            now_us,
            factory,
            ctx,
            weights_of(&job.product_id),
        );
        keys.push((
            !ordered_bits(breakdown.total),
            created_us,
            job.job_id.0.as_u128(),
            scored.len() as u32,
        ));
        scored.push(Ranked { job, breakdown });
    }
    keys.sort_unstable();
    keys.into_iter()
        .map(|k| scored[k.3 as usize].clone())
        .collect()
}

/// Maps an f64 to a u64 with the same order (`total_cmp`'s order).
fn ordered_bits(x: f64) -> u64 {
    let b = x.to_bits();
    if b >> 63 == 1 {
        !b
    } else {
        b | (1 << 63)
    }
}
