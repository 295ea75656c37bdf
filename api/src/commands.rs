//! Executes a command on an aggregate: load its stream, decide, append the events and
//! apply them to the read models, all in one transaction (read-your-writes), and
//! retry on optimistic-concurrency conflicts so clients never see one.

use crate::app::AppState;
use crate::error::ApiError;
use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use gigafactory_domain::job::Job;
use gigafactory_domain::Stream;
use gigafactory_projections::log::{self, AppendError, NewEvent};
use gigafactory_projections::{apply_to_read_models, EventRecord, ProjectionError};
use rand::Rng;
use sqlx::PgConnection;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How often a command is retried when another writer appended to its stream first.
pub const MAX_CONFLICT_RETRIES: usize = 50;

/// The aggregate after the command and the events it appended (none for a no-op).
#[derive(Debug)]
pub struct Executed<A> {
    pub aggregate: A,
    pub events: Vec<EventRecord>,
}

#[derive(Debug, thiserror::Error)]
pub enum ExecError<E: std::error::Error> {
    #[error(transparent)]
    Domain(E),
    #[error("too many concurrent writers on one stream")]
    Contended,
    #[error(transparent)]
    Conflict(AppendError),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    #[error(transparent)]
    Projection(#[from] ProjectionError),
}

/// Maps an execution error of aggregate `A` to the API's error.
pub fn into_api<A: Aggregate>(e: ExecError<A::Error>) -> ApiError
where
    ApiError: From<A::Error>,
{
    match e {
        ExecError::Domain(d) => d.into(),
        ExecError::Contended | ExecError::Conflict(_) => {
            ApiError::Conflict("too many concurrent writers; try again".into())
        }
        ExecError::Db(d) => d.into(),
        ExecError::Projection(p) => p.into(),
    }
}

/// The one clock of every process (SPEC §11): the database's `now()`, plus the
/// offset of a simulated clock in tests.
#[derive(Debug, Clone, Default)]
pub struct Clock {
    offset_ms: Arc<AtomicI64>,
}

impl Clock {
    /// Reads the clock in the caller's transaction.
    pub async fn now(&self, conn: &mut PgConnection) -> Result<DateTime<Utc>, sqlx::Error> {
        // clock_timestamp(), not now(): a command that waited for its stream's lock
        // must not judge a lease by the time its transaction began.
        sqlx::query_scalar("SELECT clock_timestamp() + $1 * interval '1 millisecond'")
            .bind(self.offset_ms.load(Ordering::Relaxed) as f64)
            .fetch_one(conn)
            .await
    }

    /// Waits for the writer lock of stream `key` (held until the transaction ends),
    /// then reads the clock — one round trip.
    pub async fn now_after_lock(
        &self,
        conn: &mut PgConnection,
        key: &str,
    ) -> Result<DateTime<Utc>, sqlx::Error> {
        // OFFSET 0 keeps the lock in its own step, evaluated before the clock.
        sqlx::query_scalar(
            "SELECT clock_timestamp() + $2 * interval '1 millisecond'
             FROM (SELECT pg_advisory_xact_lock(hashtextextended($1, 0)) OFFSET 0) AS locked",
        )
        .bind(key)
        .bind(self.offset_ms.load(Ordering::Relaxed) as f64)
        .fetch_one(conn)
        .await
    }

    /// Moves a simulated clock forward (tests and simulations only).
    pub fn advance(&self, by: chrono::Duration) {
        self.offset_ms
            .fetch_add(by.num_milliseconds(), Ordering::Relaxed);
    }
}

/// How a command waits for other writers of its stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamLock {
    /// Wait for the stream's writer lock (commands).
    Wait,
    /// The caller's transaction holds it already (execute, and the claim, which
    /// takes the first free one of its ranked jobs' locks without waiting).
    Held,
}

/// Loads, decides and appends inside the caller's transaction, holding the stream's
/// writer lock (a transaction-level advisory lock) so writers of one stream take
/// turns instead of failing on conflicts. On `ExecError::Conflict` the transaction is
/// aborted and must be rolled back.
pub async fn decide_in<A>(
    conn: &mut PgConnection,
    aggregate_id: &str,
    command: A::Command,
    lock: StreamLock,
) -> Result<Executed<A>, ExecError<A::Error>>
where
    A: Aggregate<Services = ()> + Stream + 'static,
{
    if lock == StreamLock::Wait {
        lock_stream::<A>(conn, aggregate_id).await?;
    }
    let mut aggregate: A = log::load(conn, aggregate_id).await?;
    let before = aggregate.version();
    let sink = EventSink::default();
    aggregate
        .handle(command, &(), &sink)
        .await
        .map_err(ExecError::Domain)?;
    let events = sink.collect().await;
    if events.is_empty() {
        return Ok(Executed {
            aggregate,
            events: vec![],
        });
    }
    let product = aggregate.product_id();
    let visible = aggregate.visible_to();
    let rows: Vec<NewEvent> = events
        .iter()
        .enumerate()
        .map(|(i, e)| {
            NewEvent::of::<A>(
                aggregate_id,
                before + 1 + i as u64,
                e,
                product.as_deref(),
                &visible,
            )
        })
        .collect();
    let records = log::append(conn, &rows).await.map_err(|e| match e {
        AppendError::Db(d) => ExecError::Db(d),
        c => ExecError::Conflict(c),
    })?;
    // A job command holds the job it just advanced: its row is written from it (one
    // statement), the other read models apply the events.
    let job = (&aggregate as &dyn std::any::Any).downcast_ref::<Job>();
    if let Some(job) = job {
        gigafactory_projections::jobs::write(conn, job).await?;
    }
    apply_to_read_models(conn, &records, job.is_some()).await?;
    for r in &records {
        metrics::counter!("gigafactory_events_appended_total", "type" => r.event_type.clone())
            .increment(1);
    }
    Ok(Executed {
        aggregate,
        events: records,
    })
}

/// Waits for the writer lock of `A`'s stream `aggregate_id` (held until the
/// transaction ends).
async fn lock_stream<A: Aggregate>(
    conn: &mut PgConnection,
    aggregate_id: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(stream_lock_key::<A>(aggregate_id))
        .execute(conn)
        .await?;
    Ok(())
}

/// The advisory-lock key of `A`'s stream `aggregate_id`.
pub fn stream_lock_key<A: Aggregate>(aggregate_id: &str) -> String {
    format!("{}/{}", A::TYPE, aggregate_id)
}

/// Runs `make(now)` on aggregate `aggregate_id` in its own transaction, retrying on
/// conflicts with a short random pause.
pub async fn execute<A, F>(
    state: &AppState,
    aggregate_id: &str,
    make: F,
) -> Result<Executed<A>, ExecError<A::Error>>
where
    A: Aggregate<Services = ()> + Stream + 'static,
    F: Fn(DateTime<Utc>) -> A::Command,
{
    for attempt in 0..MAX_CONFLICT_RETRIES {
        let mut tx = state.pool.begin().await?;
        // Take the stream's lock first, then read the clock: a command that waited
        // judges by the time it got its turn.
        let now = state
            .clock
            .now_after_lock(&mut tx, &stream_lock_key::<A>(aggregate_id))
            .await?;
        match decide_in::<A>(&mut tx, aggregate_id, make(now), StreamLock::Held).await {
            Ok(done) => {
                if done.events.is_empty() {
                    tx.rollback().await?;
                } else {
                    tx.commit().await?;
                    state.events_committed(&done.events);
                }
                return Ok(done);
            }
            Err(ExecError::Conflict(_)) => {
                tx.rollback().await?;
                conflict_pause(attempt).await;
            }
            Err(e) => return Err(e),
        }
    }
    Err(ExecError::Contended)
}

/// A short, growing, random pause before retrying after a conflict.
pub async fn conflict_pause(attempt: usize) {
    let cap = 1 + (attempt.min(6) as u64) * 2;
    let ms = rand::thread_rng().gen_range(0..=cap);
    tokio::time::sleep(Duration::from_millis(ms)).await;
}
