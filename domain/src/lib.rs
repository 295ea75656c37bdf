//! Gigafactory's pure domain: the aggregates (jobs, factories, access tokens), their
//! commands, events and errors, and the pure rules the coordinator applies (claim
//! ordering, backoff). Nothing in here does I/O, reads a clock or the environment:
//! time, ids and randomness come in through commands.

pub mod access;
pub mod backoff;
pub mod factory;
pub mod flags;
pub mod ids;
pub mod job;
pub mod scheduler;
pub mod settings;
pub mod values;

pub use ids::{FactoryId, JobId, ProductId, RunId, TokenId};
pub use values::{Priority, Stage};

/// The database clock's reading handed to a command (SPEC §11: one clock).
pub type Timestamp = chrono::DateTime<chrono::Utc>;

/// What the event store needs to know about an aggregate to append its events: its
/// version (the last sequence applied) and who may see its events.
pub trait Stream {
    /// The number of events applied so far.
    fn version(&self) -> u64;
    /// The owning product, when there is exactly one.
    fn product_id(&self) -> Option<String>;
    /// The products whose callers may see the events (empty: `*` callers only).
    fn visible_to(&self) -> Vec<String>;
}

impl Stream for job::Job {
    fn version(&self) -> u64 {
        self.version
    }
    fn product_id(&self) -> Option<String> {
        self.spec.as_ref().map(|s| s.product_id.0.clone())
    }
    fn visible_to(&self) -> Vec<String> {
        self.product_id().into_iter().collect()
    }
}

impl Stream for factory::Factory {
    fn version(&self) -> u64 {
        self.version
    }
    fn product_id(&self) -> Option<String> {
        None
    }
    fn visible_to(&self) -> Vec<String> {
        self.spec
            .as_ref()
            .map(|s| s.product_ids.iter().map(|p| p.0.clone()).collect())
            .unwrap_or_default()
    }
}

impl Stream for access::AccessToken {
    fn version(&self) -> u64 {
        self.version
    }
    fn product_id(&self) -> Option<String> {
        None
    }
    fn visible_to(&self) -> Vec<String> {
        vec![]
    }
}
