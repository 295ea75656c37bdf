//! The event log and the read models built from it.
//!
//! - [`log`]: appending events (our own transactional append path on postgres-es's
//!   `events` table), loading a stream, the sequencer that gives the log its one
//!   order, and reading the log by position.
//! - one module per read model, owning its table's SQL: [`jobs`], [`runs`],
//!   [`timeline`], [`factories`], [`credentials`], [`liveness`].
//! - [`turns`]: transactions that begin holding their advisory locks.
//! - [`projector`]: applies the log, in position order, to every read model, with a
//!   checkpoint per projection kept in the same transaction as its writes.
//!
//! Every `apply` is idempotent, so the command path also applies its own events in
//! its own transaction (read-your-writes) and the projector applying them again
//! later changes nothing.

pub mod artifacts;
pub mod audit;
pub mod credentials;
pub mod factories;
pub mod flags;
pub mod jobs;
pub mod liveness;
pub mod log;
pub mod projector;
pub mod replay;
pub mod runs;
pub mod settings;
pub mod timeline;
pub mod turns;

pub use log::{EventRecord, NewEvent};

/// Why reading or projecting failed.
#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    #[error("event {event_type} at {aggregate_id}#{sequence} does not deserialize: {source}")]
    Payload {
        event_type: String,
        aggregate_id: String,
        sequence: i64,
        source: serde_json::Error,
    },
    #[error("read model state does not deserialize: {0}")]
    State(serde_json::Error),
}

pub type Tx<'a> = sqlx::Transaction<'a, sqlx::Postgres>;

/// Applies a command's events to every read model but those in `written` (the
/// command path wrote them in the append's own statement; see
/// [`log::RideAlong`]). Idempotent, like every projection.
pub async fn apply_to_read_models(
    tx: &mut sqlx::PgConnection,
    events: &[EventRecord],
    written: &[projector::Projection],
) -> Result<(), ProjectionError> {
    for p in projector::PROJECTIONS {
        if written.contains(&p) {
            continue;
        }
        p.apply_batch(tx, events).await?;
    }
    Ok(())
}
