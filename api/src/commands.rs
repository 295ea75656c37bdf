//! Executes a command on an aggregate: load its stream, decide, append the events and
//! apply them to the read models, all in one transaction (read-your-writes), and
//! retry on optimistic-concurrency conflicts so clients never see one.

use crate::app::AppState;
use crate::error::ApiError;
use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use gigafactory_domain::job::{Job, JobCommand, JobError};
use gigafactory_domain::Stream;
use gigafactory_projections::jobs;
use gigafactory_projections::log::{self, AppendError, NewEvent, ReadModels};
use gigafactory_projections::projector::{Projection, PROJECTIONS};
use gigafactory_projections::runs;
use gigafactory_projections::turns::{self, Turn};
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
    /// A batch named one stream twice (callers must not).
    #[error("one stream twice in one batch")]
    DuplicateStream,
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
        ExecError::DuplicateStream => ApiError::Internal("one stream twice in one batch".into()),
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

    /// The simulated clock's offset from the database's, in milliseconds (for a
    /// statement that reads the clock itself).
    pub fn offset_ms(&self) -> f64 {
        self.offset_ms.load(Ordering::Relaxed) as f64
    }

    /// Moves a simulated clock forward (tests and simulations only).
    pub fn advance(&self, by: chrono::Duration) {
        self.offset_ms
            .fetch_add(by.num_milliseconds(), Ordering::Relaxed);
    }
}

/// Loads, decides and appends inside the caller's transaction, which holds the
/// stream's writer lock (a transaction-level advisory lock: writers of one stream
/// take turns instead of failing on conflicts). On `ExecError::Conflict` the
/// transaction is aborted and must be rolled back.
pub async fn decide_in<A>(
    conn: &mut PgConnection,
    aggregate_id: &str,
    command: A::Command,
) -> Result<Executed<A>, ExecError<A::Error>>
where
    A: Aggregate<Services = ()> + Stream + 'static,
{
    only(decide_many::<A>(conn, vec![(aggregate_id.to_string(), command)]).await?)
}

/// The outcome of a one-command batch, its refusal as the error.
fn only<A: Aggregate>(mut outcomes: Vec<Outcome<A>>) -> Result<Executed<A>, ExecError<A::Error>> {
    outcomes
        .pop()
        .expect("one outcome per command")
        .map_err(ExecError::Domain)
}

/// What one command of a batch came to: the aggregate after it and its events, or
/// the aggregate's refusal (which appended nothing).
pub type Outcome<A> = Result<Executed<A>, <A as Aggregate>::Error>;

/// Decides several commands, each on its own stream (ids distinct), in the caller's
/// transaction, which holds every one of their writer locks: one query loads the
/// streams, one appends all the events, one writes the job rows, then the other read
/// models apply them — the same statements whatever the batch's size. A command its
/// aggregate refuses appends nothing and does not stop the others. On
/// `ExecError::Conflict` the transaction is aborted and must be rolled back.
pub async fn decide_many<A>(
    conn: &mut PgConnection,
    commands: Vec<(String, A::Command)>,
) -> Result<Vec<Outcome<A>>, ExecError<A::Error>>
where
    A: Aggregate<Services = ()> + Stream + 'static,
{
    let ids: Vec<String> = commands.iter().map(|(id, _)| id.clone()).collect();
    // decide_loaded refuses a stream named twice.
    let aggregates = log::load_many::<A>(conn, &ids).await?;
    decide_loaded(conn, commands, aggregates).await
}

/// As [`decide_many`], on the aggregates the caller loaded (after taking their
/// stream locks): the claim loads them in the statement that takes the locks.
pub async fn decide_loaded<A>(
    conn: &mut PgConnection,
    commands: Vec<(String, A::Command)>,
    aggregates: std::collections::HashMap<String, A>,
) -> Result<Vec<Outcome<A>>, ExecError<A::Error>>
where
    A: Aggregate<Services = ()> + Stream + 'static,
{
    decide(commands, aggregates).await?.write(conn).await
}

/// What `command` does to `aggregate`, decided and applied in memory only (nothing
/// is written): the aggregate after it, or its refusal. A claim carrying a report
/// needs it before it counts the factory's free slots (a report that ends a run
/// frees one); the same command on the same aggregate decides the same way when it
/// is then appended.
pub async fn preview<A>(aggregate: &A, command: A::Command) -> Result<A, A::Error>
where
    A: Aggregate<Services = ()> + Clone,
{
    let mut after = aggregate.clone();
    decide_one(&mut after, command).await?;
    Ok(after)
}

/// Runs `command` on `aggregate`, applying its events to it: the events, or the
/// refusal (the aggregate as it was: our aggregates decide every event before
/// applying the first).
async fn decide_one<A>(aggregate: &mut A, command: A::Command) -> Result<Vec<A::Event>, A::Error>
where
    A: Aggregate<Services = ()>,
{
    let sink = EventSink::default();
    aggregate.handle(command, &(), &sink).await?;
    Ok(sink.collect().await)
}

/// Commands decided (pure: no I/O) and the events they would append.
struct Decided<A: Aggregate> {
    /// Per command: its aggregate and how many of `rows` are its events, or the refusal.
    outcomes: Vec<Result<(A, usize), A::Error>>,
    rows: Vec<NewEvent>,
}

/// The events a batch's commands appended, in order.
fn appended<A: Aggregate>(outcomes: &[Outcome<A>]) -> Vec<EventRecord> {
    outcomes
        .iter()
        .filter_map(|o| o.as_ref().ok())
        .flat_map(|e| e.events.iter().cloned())
        .collect()
}

/// After a commit (or an autocommit statement): wakes this process's log worker
/// and waiting claims for what the batch appended, if anything.
fn announce_committed<A: Aggregate>(state: &AppState, outcomes: &[Outcome<A>]) {
    let events = appended(outcomes);
    if !events.is_empty() {
        state.events_committed(&events);
    }
}

/// Runs each command on its aggregate (a missing one is `A::default()`).
async fn decide<A>(
    commands: Vec<(String, A::Command)>,
    mut aggregates: std::collections::HashMap<String, A>,
) -> Result<Decided<A>, ExecError<A::Error>>
where
    A: Aggregate<Services = ()> + Stream + 'static,
{
    let ids: Vec<&String> = commands.iter().map(|(id, _)| id).collect();
    if ids.iter().collect::<std::collections::HashSet<_>>().len() != ids.len() {
        return Err(ExecError::DuplicateStream);
    }
    let mut outcomes: Vec<Result<(A, usize), A::Error>> = Vec::with_capacity(commands.len());
    let mut rows: Vec<NewEvent> = Vec::new();
    for (id, command) in commands {
        let mut aggregate = aggregates.remove(&id).unwrap_or_default();
        let before = aggregate.version();
        let events = match decide_one(&mut aggregate, command).await {
            Ok(events) => events,
            Err(e) => {
                outcomes.push(Err(e));
                continue;
            }
        };
        let product = aggregate.product_id();
        let visible = aggregate.visible_to();
        rows.extend(events.iter().enumerate().map(|(i, e)| {
            NewEvent::of::<A>(&id, before + 1 + i as u64, e, product.as_deref(), &visible)
        }));
        outcomes.push(Ok((aggregate, events.len())));
    }
    Ok(Decided { outcomes, rows })
}

impl<A> Decided<A>
where
    A: Aggregate<Services = ()> + Stream + 'static,
{
    /// The read-model writes that ride along with the append (and the projections
    /// they cover). Job commands hold the jobs they just advanced: their rows (and
    /// their runs') are written by the append's own statement.
    fn along(&self) -> Result<(Vec<Projection>, Vec<log::RideAlong>), ExecError<A::Error>> {
        let jobs: Vec<&Job> = self
            .outcomes
            .iter()
            .filter_map(|d| d.as_ref().ok())
            .filter(|(_, n)| *n > 0)
            .filter_map(|(a, _)| (a as &dyn std::any::Any).downcast_ref::<Job>())
            .collect();
        let mut written = Vec::new();
        let mut along = Vec::new();
        if let Some(job_rows) = gigafactory_projections::jobs::write_along(&jobs) {
            written.push(Projection::Jobs);
            along.push(job_rows);
        }
        if let Some(runs) = runs::plan(self.rows.iter().map(runs::RunSource::from))?.write_along() {
            written.push(Projection::Runs);
            along.extend(runs);
        }
        Ok((written, along))
    }

    /// Whether the projections in `written` (the append's ride-along writes) are every
    /// read model the events touch: then the append's one statement is all there is
    /// to write, and it needs no transaction of its own.
    fn all_written_by(&self, written: &[Projection]) -> bool {
        !PROJECTIONS.iter().any(|p| {
            !written.contains(p)
                && self
                    .rows
                    .iter()
                    .any(|r| p.touches(r.aggregate_type, &r.event_type))
        })
    }

    /// Appends the events (one statement, with the ride-along writes), applies them
    /// to the other read models, and hands each command its outcome. On
    /// `ExecError::Conflict` nothing was appended (in a transaction: it is aborted).
    async fn write(self, conn: &mut PgConnection) -> Result<Vec<Outcome<A>>, ExecError<A::Error>> {
        let (written, along) = self.along()?;
        self.write_along(conn, &written, &along).await
    }

    /// As [`Decided::write`], with the ride-along writes [`Decided::along`] planned.
    async fn write_along(
        self,
        conn: &mut PgConnection,
        written: &[Projection],
        along: &[log::RideAlong],
    ) -> Result<Vec<Outcome<A>>, ExecError<A::Error>> {
        // Every read model the events touch is written here: by the append's own
        // statement, or in the caller's transaction below (a caller without one
        // writes everything in the statement: `try_on_read_models`).
        let records = log::append_with(
            conn,
            &self.rows,
            along,
            ReadModels::WrittenByThisTransaction,
        )
        .await
        .map_err(|e| match e {
            AppendError::Db(d) => ExecError::Db(d),
            c => ExecError::Conflict(c),
        })?;
        if !records.is_empty() {
            apply_to_read_models(conn, &records, written).await?;
        }
        for r in &records {
            metrics::counter!("gigafactory_events_appended_total", "type" => r.event_type.clone())
                .increment(1);
        }
        let mut records = records.into_iter();
        Ok(self
            .outcomes
            .into_iter()
            .map(|d| {
                d.map(|(aggregate, n)| Executed {
                    aggregate,
                    events: records.by_ref().take(n).collect(),
                })
            })
            .collect())
    }
}

/// Runs `make(i, now)` on each of the job streams `aggregate_ids` (distinct)
/// optimistically, for commands whose stream seldom has another writer at the same
/// moment (lease holders' reports): decided on the job read model's states
/// ([`jobs::states_at_clock`]: each stream folded to its version, read with the
/// clock), then appended by one autocommit statement that also writes every read
/// model the events touch — no `BEGIN`, stream lock, load or `COMMIT` round trip.
/// The events' key (aggregate, sequence) refuses the append if any stream moved
/// since the read; then none is written and the batch runs the locked way
/// ([`execute_many`]), as it does when the events need more than the one statement.
pub async fn execute_many_optimistic<F>(
    state: &AppState,
    aggregate_ids: &[String],
    make: F,
) -> Result<Vec<Outcome<Job>>, ExecError<JobError>>
where
    F: Fn(usize, DateTime<Utc>) -> JobCommand,
{
    let job_ids: Vec<uuid::Uuid> = aggregate_ids.iter().map(|id| jobs::job_id_of(id)).collect();
    let mut conn = state.pool.acquire().await?;
    let (now, mut read) =
        jobs::states_at_clock(&mut conn, &job_ids, state.clock.offset_ms()).await?;
    let loaded: Option<std::collections::HashMap<String, Job>> = aggregate_ids
        .iter()
        .zip(&job_ids)
        .map(|(id, job_id)| read.remove(job_id).map(|job| (id.clone(), job)))
        .collect();
    if let Some(loaded) = loaded {
        let commands = aggregate_ids
            .iter()
            .enumerate()
            .map(|(i, id)| (id.clone(), make(i, now)))
            .collect();
        if let Some(outcomes) = try_on_read_models(&mut conn, commands, loaded).await? {
            announce_committed(state, &outcomes);
            return Ok(outcomes);
        }
    }
    drop(conn);
    execute_many(state, aggregate_ids, make).await
}

/// Runs `make(now)` on a job stream that cannot exist yet — its id was just drawn
/// (a UUIDv7 of this process): there is no stream to lock or load, so the clock is
/// read and the command decided on an empty job, and one autocommit statement
/// appends its events with every read model they touch (as a report's) — two round
/// trips, no `BEGIN`, lock or `COMMIT`. Should the stream exist after all, the
/// events' key refuses the append, nothing is written, and the command runs the
/// locked way ([`execute`]), as it does when its events need more than the one
/// statement.
pub async fn execute_new_job<F>(
    state: &AppState,
    aggregate_id: &str,
    make: F,
) -> Result<Executed<Job>, ExecError<JobError>>
where
    F: Fn(DateTime<Utc>) -> JobCommand,
{
    let mut conn = state.pool.acquire().await?;
    let now = state.clock.now(&mut conn).await?;
    let commands = vec![(aggregate_id.to_string(), make(now))];
    match try_on_read_models(&mut conn, commands, Default::default()).await? {
        Some(outcomes) => {
            announce_committed(state, &outcomes);
            only(outcomes)
        }
        None => {
            drop(conn);
            execute(state, aggregate_id, make).await
        }
    }
}

/// The optimistic step of [`execute_many_optimistic`] on `job` as read: `Ok(None)` when
/// the command must run the locked way (the stream moved since the read, or its
/// events need more than one statement); nothing was appended then.
pub async fn try_on_read_model(
    conn: &mut PgConnection,
    aggregate_id: &str,
    job: Job,
    command: JobCommand,
) -> Result<Option<Executed<Job>>, ExecError<JobError>> {
    let outcomes = try_on_read_models(
        conn,
        vec![(aggregate_id.to_string(), command)],
        [(aggregate_id.to_string(), job)].into(),
    )
    .await?;
    outcomes.map(only).transpose()
}

/// The optimistic step for several commands on the jobs as read (one per command's
/// stream): `Ok(None)` when they must run the locked way; nothing was appended then.
pub async fn try_on_read_models(
    conn: &mut PgConnection,
    commands: Vec<(String, JobCommand)>,
    jobs: std::collections::HashMap<String, Job>,
) -> Result<Option<Vec<Outcome<Job>>>, ExecError<JobError>> {
    let decided = decide(commands, jobs).await?;
    let (written, along) = decided.along()?;
    if !decided.all_written_by(&written) {
        return Ok(None);
    }
    match decided.write_along(conn, &written, &along).await {
        Ok(outcomes) => Ok(Some(outcomes)),
        Err(ExecError::Conflict(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Waits for the writer locks of several streams (held until the transaction ends),
/// always in one global order (by lock key), so two transactions locking overlapping
/// sets cannot deadlock.
pub async fn lock_streams(conn: &mut PgConnection, keys: &[String]) -> Result<(), sqlx::Error> {
    // OFFSET 0 keeps the sorted keys in their own step: the locks are taken in order.
    sqlx::query(
        "SELECT count(pg_advisory_xact_lock(k)) FROM
           (SELECT DISTINCT hashtextextended(key, 0) AS k FROM unnest($1::text[]) AS key
            ORDER BY 1 OFFSET 0) AS keys",
    )
    .bind(keys)
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
    execute_with(state, aggregate_id, None, make).await
}

/// As [`execute`], also sharing `factory`'s claims lock from before the clock is read
/// until the commit. A lease renewal needs it: a claim counts the factory's live
/// leases holding that lock exclusively, so a renewal either commits before the
/// count starts (and is counted) or reads its clock after the claim committed (and
/// finds a lease the claim counted as expired expired) — never over capacity.
pub async fn execute_holding_factory<A, F>(
    state: &AppState,
    aggregate_id: &str,
    factory: uuid::Uuid,
    make: F,
) -> Result<Executed<A>, ExecError<A::Error>>
where
    A: Aggregate<Services = ()> + Stream + 'static,
    F: Fn(DateTime<Utc>) -> A::Command,
{
    execute_with(state, aggregate_id, Some(factory), make).await
}

async fn execute_with<A, F>(
    state: &AppState,
    aggregate_id: &str,
    factory: Option<uuid::Uuid>,
    make: F,
) -> Result<Executed<A>, ExecError<A::Error>>
where
    A: Aggregate<Services = ()> + Stream + 'static,
    F: Fn(DateTime<Utc>) -> A::Command,
{
    only(
        in_turn::<A, _>(state, &[aggregate_id.to_string()], factory, |_, now| {
            make(now)
        })
        .await?,
    )
}

/// Runs `make(i, now)` on each of `aggregate_ids` (distinct) in one transaction —
/// one commit for all — after taking all their writer locks in one global order.
/// Retries the whole batch on a conflict. Each command's refusal is its own outcome.
pub async fn execute_many<A, F>(
    state: &AppState,
    aggregate_ids: &[String],
    make: F,
) -> Result<Vec<Outcome<A>>, ExecError<A::Error>>
where
    A: Aggregate<Services = ()> + Stream + 'static,
    F: Fn(usize, DateTime<Utc>) -> A::Command,
{
    in_turn(state, aggregate_ids, None, make).await
}

/// The one command loop: begin a transaction holding the streams' writer locks (and
/// `factory`'s claims lock, shared), all in the round trip of its `BEGIN`
/// ([`turns`]); then read the clock with the streams — a command that waited judges
/// by the time it got its turn — decide, commit if anything was appended; retry the
/// whole transaction on a conflict with a short random pause.
async fn in_turn<A, F>(
    state: &AppState,
    aggregate_ids: &[String],
    factory: Option<uuid::Uuid>,
    make: F,
) -> Result<Vec<Outcome<A>>, ExecError<A::Error>>
where
    A: Aggregate<Services = ()> + Stream + 'static,
    F: Fn(usize, DateTime<Utc>) -> A::Command,
{
    let keys: Vec<String> = aggregate_ids
        .iter()
        .map(|id| stream_lock_key::<A>(id))
        .collect();
    let mut turn = Turn::of_all(&keys);
    if let Some(factory) = factory {
        turn = turn.sharing(gigafactory_projections::factories::claims_lock_key(factory));
    }
    for attempt in 0..MAX_CONFLICT_RETRIES {
        // BEGIN and the locks in one round trip; the clock and the streams in the next.
        let mut tx = turns::begin(&state.pool, &turn).await?;
        let (now, aggregates) =
            log::load_many_at_clock::<A>(&mut tx, aggregate_ids, state.clock.offset_ms()).await?;
        let commands = aggregate_ids
            .iter()
            .enumerate()
            .map(|(i, id)| (id.clone(), make(i, now)))
            .collect();
        match decide_loaded::<A>(&mut tx, commands, aggregates).await {
            Ok(outcomes) => {
                let events = appended(&outcomes);
                if events.is_empty() {
                    tx.rollback().await?;
                } else {
                    tx.commit().await?;
                    state.events_committed(&events);
                }
                return Ok(outcomes);
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
