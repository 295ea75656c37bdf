//! Gigafactory's pure domain: the aggregates (jobs, factories, access tokens), their
//! commands, events and errors, and the pure rules the coordinator applies (claim
//! ordering, backoff). Nothing in here does I/O, reads a clock or the environment:
//! time, ids and randomness come in through commands.

pub mod access;
pub mod backoff;
pub mod claim_order;
pub mod factory;
pub mod ids;
pub mod job;
pub mod values;

pub use ids::{FactoryId, JobId, ProductId, RunId, TokenId};
pub use values::{Priority, Stage};

/// The database clock's reading handed to a command (SPEC §11: one clock).
pub type Timestamp = chrono::DateTime<chrono::Utc>;
