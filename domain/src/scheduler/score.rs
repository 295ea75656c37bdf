//! Scoring and ranking one factory's candidate jobs.

use super::weights::{Term, Weights};
use crate::{FactoryId, JobId, Priority, ProductId, Timestamp};
use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};
use std::cmp::Ordering;
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

/// Why a job scored what it scored: `total = Σ value × weight`.
#[derive(Debug, Clone, PartialEq)]
pub struct Breakdown {
    pub total: f64,
    pub terms: BTreeMap<Term, TermScore>,
}

impl Serialize for Breakdown {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        struct Terms<'a>(&'a BTreeMap<Term, TermScore>);
        impl Serialize for Terms<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut m = s.serialize_map(Some(self.0.len()))?;
                for (t, v) in self.0 {
                    m.serialize_entry(t.name(), v)?;
                }
                m.end()
            }
        }
        let mut m = s.serialize_map(Some(2))?;
        m.serialize_entry("total", &self.total)?;
        m.serialize_entry("terms", &Terms(&self.terms))?;
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
    let waited_ms = (ctx.now - job.created_at).num_milliseconds().max(0) as f64;
    let fit = if factory.capabilities.is_empty() {
        1.0
    } else {
        job.required_capabilities.len() as f64 / factory.capabilities.len() as f64
    };
    let running = ctx
        .running_by_product
        .get(&job.product_id)
        .copied()
        .unwrap_or(0);
    let values = [
        (Term::Priority, f64::from(3 - job.priority.rank())),
        (Term::Age, waited_ms / 60_000.0),
        (Term::CapabilityFit, fit.min(1.0)),
        (
            Term::Affinity,
            if job.checkpoint_factory == Some(factory.factory_id) {
                1.0
            } else {
                0.0
            },
        ),
        (Term::Fairness, 1.0 / (1.0 + f64::from(running))),
    ];
    let terms: BTreeMap<Term, TermScore> = values
        .into_iter()
        .map(|(t, value)| {
            (
                t,
                TermScore {
                    value,
                    weight: weights.get(t),
                },
            )
        })
        .collect();
    let total = terms.values().map(|s| s.value * s.weight).sum();
    Breakdown { total, terms }
}

/// A candidate with its score.
#[derive(Debug, Clone, PartialEq)]
pub struct Ranked {
    pub job: JobCandidate,
    pub breakdown: Breakdown,
}

/// Higher total first; then older; then smaller id.
fn order(a: &Ranked, b: &Ranked) -> Ordering {
    b.breakdown
        .total
        .total_cmp(&a.breakdown.total)
        .then(a.job.created_at.cmp(&b.job.created_at))
        .then(a.job.job_id.cmp(&b.job.job_id))
}

/// The jobs this factory may run, best first, each with its breakdown. `weights_of`
/// gives the resolved weights for a job's product.
pub fn rank<'w>(
    candidates: Vec<JobCandidate>,
    factory: &FactoryProfile,
    ctx: &SchedulingContext,
    weights_of: impl Fn(&ProductId) -> &'w Weights,
) -> Vec<Ranked> {
    let mut ranked: Vec<Ranked> = candidates
        .into_iter()
        .filter(|j| is_capable(&j.required_capabilities, &factory.capabilities))
        .map(|job| {
            let breakdown = score(&job, factory, ctx, weights_of(&job.product_id));
            Ranked { job, breakdown }
        })
        .collect();
    ranked.sort_by(order);
    ranked
}
