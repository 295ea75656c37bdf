//! The scheduler: which job a factory should run next, and (later) which running job
//! to preempt. Pure: no I/O, no clock, no environment — `now` and the fleet's state
//! come in through [`SchedulingContext`].
//!
//! The score of job J for factory F is a weighted sum of named terms (see [`Term`]);
//! every pick carries its [`Breakdown`]. Only jobs whose required capabilities F has
//! are candidates. Ties break deterministically: older job first, then smaller id.

mod preemption;
mod score;
mod weights;

#[cfg(test)]
mod golden;
#[cfg(test)]
mod properties;

pub use preemption::{select_with_preemption, FleetFactory, Preemption, RunningJob};
pub use score::{
    is_capable, rank, score, Breakdown, FactoryProfile, JobCandidate, Ranked, SchedulingContext,
    TermScore,
};
pub use weights::{FleetWeightConfig, Term, WeightError, WeightOverrides, Weights};
