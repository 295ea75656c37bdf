//! The `Job` aggregate: one stream per job, scoped by product. Its version is the
//! lease epoch (fencing token) at the moment a lease is granted.

mod aggregate;
mod commands;
mod errors;
mod events;

#[cfg(test)]
mod invariants;
#[cfg(test)]
mod tests;

pub use aggregate::{EndedRun, Job, Lease, Nomination};
pub use commands::{
    check_artifact_name, ArtifactMeta, JobCommand, NewJob, Report, ReportStatus, Uploader,
    LEASE_TTL_DEFAULT_SECS, LEASE_TTL_MAX_SECS, LEASE_TTL_MIN_SECS,
};
pub use errors::{CurrentState, JobError};
pub use events::{JobEvent, RunOutcome};
