//! `run_view`: one row per lease of a job (a run), with its outcome and cost.

use crate::log::{Arg, NewEvent, RideAlong};
use crate::{EventRecord, ProjectionError};
use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use gigafactory_domain::job::{Job, JobEvent, RunOutcome};
use sqlx::{PgConnection, Row};
use std::collections::HashMap;
use uuid::Uuid;

/// Applies one event.
pub async fn apply(conn: &mut PgConnection, event: &EventRecord) -> Result<(), ProjectionError> {
    apply_batch(conn, std::slice::from_ref(event)).await
}

/// A run started in the batch being applied, as the batch leaves it.
struct NewRun {
    run_id: Uuid,
    job_id: Uuid,
    product_id: String,
    factory_id: Uuid,
    epoch: i64,
    outcome: RunOutcome,
    cost_usd: Option<f64>,
    started_at: DateTime<Utc>,
    ended_at: Option<DateTime<Utc>>,
    last_sequence: i64,
}

/// The end of a run started before the batch.
struct RunEnd {
    outcome: RunOutcome,
    cost_usd: Option<f64>,
    at: DateTime<Utc>,
    sequence: i64,
}

/// What the runs projection reads of an event: one in the log, or one a command is
/// about to append (its writes then ride along with the append).
pub struct RunSource<'a> {
    pub aggregate_type: &'a str,
    pub aggregate_id: &'a str,
    pub sequence: i64,
    pub event_type: &'a str,
    pub payload: Payload<'a>,
    pub product_id: Option<&'a str>,
}

/// An event's payload: as stored (JSON text) or as a command is about to append it.
pub enum Payload<'a> {
    Text(&'a str),
    Value(&'a serde_json::Value),
}

impl<'a> From<&'a EventRecord> for RunSource<'a> {
    fn from(e: &'a EventRecord) -> Self {
        Self {
            aggregate_type: &e.aggregate_type,
            aggregate_id: &e.aggregate_id,
            sequence: e.sequence,
            event_type: &e.event_type,
            payload: Payload::Text(&e.payload),
            product_id: e.product_id.as_deref(),
        }
    }
}

impl<'a> From<&'a NewEvent> for RunSource<'a> {
    fn from(e: &'a NewEvent) -> Self {
        Self {
            aggregate_type: e.aggregate_type,
            aggregate_id: &e.aggregate_id,
            sequence: e.sequence,
            event_type: &e.event_type,
            payload: Payload::Value(&e.payload),
            product_id: e.product_id.as_deref(),
        }
    }
}

impl RunSource<'_> {
    fn decode(&self) -> Result<JobEvent, ProjectionError> {
        match self.payload {
            Payload::Text(text) => serde_json::from_str::<JobEvent>(text),
            Payload::Value(value) => <JobEvent as serde::Deserialize>::deserialize(value),
        }
        .map_err(|source| ProjectionError::Payload {
            event_type: self.event_type.to_string(),
            aggregate_id: self.aggregate_id.to_string(),
            sequence: self.sequence,
            source,
        })
    }
}

/// The writes a batch of events makes to `run_view`.
pub struct RunWrites {
    started: Vec<NewRun>,
    ends: HashMap<Uuid, RunEnd>,
    cancels: Vec<(Uuid, DateTime<Utc>, i64)>,
}

/// Applies a batch of events in log order: runs started in the batch are folded in
/// memory and upserted at once, then the ends of older runs and the cancellations
/// are applied in one statement each. Every write is guarded by `last_sequence`, so
/// applying an event twice changes nothing.
pub async fn apply_batch(
    conn: &mut PgConnection,
    events: &[EventRecord],
) -> Result<(), ProjectionError> {
    plan(events.iter().map(RunSource::from))?.apply(conn).await
}

/// The job events that touch runs: the others are skipped without decoding.
pub const RUN_EVENTS: [&str; 8] = [
    "LeaseGranted",
    "RunSucceeded",
    "RunFailed",
    "LeaseExpired",
    "LeaseReleased",
    "LeasePreempted",
    "LeaseRevoked",
    "JobCancelled",
];

/// What a batch of events (in log order) writes to `run_view`.
pub fn plan<'a>(
    events: impl IntoIterator<Item = RunSource<'a>>,
) -> Result<RunWrites, ProjectionError> {
    let mut started: Vec<NewRun> = Vec::new();
    let mut index: HashMap<Uuid, usize> = HashMap::new();
    let mut ends: HashMap<Uuid, RunEnd> = HashMap::new();
    let mut cancels: Vec<(Uuid, DateTime<Utc>, i64)> = Vec::new();
    for event in events
        .into_iter()
        .filter(|e| e.aggregate_type == Job::TYPE && RUN_EVENTS.contains(&e.event_type))
    {
        let job_id = crate::jobs::job_id_of(event.aggregate_id);
        let seq = event.sequence;
        let (run_id, outcome, cost_usd, at) = match event.decode()? {
            JobEvent::LeaseGranted {
                epoch,
                run_id,
                factory_id,
                at,
                ..
            } => {
                index.entry(run_id.0).or_insert_with(|| {
                    started.push(NewRun {
                        run_id: run_id.0,
                        job_id,
                        product_id: event.product_id.unwrap_or_default().to_string(),
                        factory_id: factory_id.0,
                        epoch: epoch as i64,
                        outcome: RunOutcome::Running,
                        cost_usd: None,
                        started_at: at,
                        ended_at: None,
                        last_sequence: seq,
                    });
                    started.len() - 1
                });
                continue;
            }
            JobEvent::RunSucceeded {
                run_id,
                cost_usd,
                at,
                ..
            } => (run_id, RunOutcome::Succeeded, cost_usd, at),
            JobEvent::RunFailed {
                run_id,
                cost_usd,
                at,
                ..
            } => (run_id, RunOutcome::Failed, cost_usd, at),
            JobEvent::LeaseExpired { run_id, at, .. } => (run_id, RunOutcome::Expired, None, at),
            JobEvent::LeaseReleased { run_id, at, .. } => (run_id, RunOutcome::Released, None, at),
            JobEvent::LeasePreempted { run_id, at, .. } => {
                (run_id, RunOutcome::Preempted, None, at)
            }
            JobEvent::LeaseRevoked { run_id, at, .. } => (run_id, RunOutcome::Revoked, None, at),
            JobEvent::JobCancelled { at, .. } => {
                // Ends the run that is still open, if any.
                for run in started.iter_mut().filter(|r| {
                    r.job_id == job_id && r.outcome == RunOutcome::Running && r.last_sequence < seq
                }) {
                    run.outcome = RunOutcome::Cancelled;
                    run.ended_at = Some(at);
                    run.last_sequence = seq;
                }
                cancels.push((job_id, at, seq));
                continue;
            }
            _ => continue,
        };
        match index.get(&run_id.0) {
            Some(&i) if started[i].last_sequence < seq => {
                let run = &mut started[i];
                run.outcome = outcome;
                run.cost_usd = cost_usd;
                run.ended_at = Some(at);
                run.last_sequence = seq;
            }
            Some(_) => {}
            None => {
                ends.insert(
                    run_id.0,
                    RunEnd {
                        outcome,
                        cost_usd,
                        at,
                        sequence: seq,
                    },
                );
            }
        }
    }
    Ok(RunWrites {
        started,
        ends,
        cancels,
    })
}

impl RunWrites {
    /// Writes them, one statement per kind of write present.
    pub async fn apply(self, conn: &mut PgConnection) -> Result<(), ProjectionError> {
        for write in [self.started_write(), self.ends_write()]
            .into_iter()
            .flatten()
        {
            write.run_alone(conn).await?;
        }
        cancel_open(conn, &self.cancels).await
    }

    /// The writes as ride-alongs of the append of these events, or `None` when they
    /// cannot ride along: a cancellation ends whichever run is open, which may be one
    /// another write of the same statement changes (all CTEs share one snapshot).
    /// The other two never touch the same run: an end of a run started in the batch
    /// is folded into its start.
    pub fn write_along(&self) -> Option<Vec<RideAlong>> {
        if !self.cancels.is_empty() {
            return None;
        }
        Some(
            [self.started_write(), self.ends_write()]
                .into_iter()
                .flatten()
                .collect(),
        )
    }

    fn started_write(&self) -> Option<RideAlong> {
        let runs = &self.started;
        (!runs.is_empty()).then(|| RideAlong {
            sql: INSERT_STARTED.to_string(),
            args: vec![
                Arg::Uuids(runs.iter().map(|r| r.run_id).collect()),
                Arg::Uuids(runs.iter().map(|r| r.job_id).collect()),
                Arg::Texts(runs.iter().map(|r| r.product_id.clone()).collect()),
                Arg::Uuids(runs.iter().map(|r| r.factory_id).collect()),
                Arg::Ints(runs.iter().map(|r| r.epoch).collect()),
                Arg::Texts(
                    runs.iter()
                        .map(|r| r.outcome.as_str().to_string())
                        .collect(),
                ),
                Arg::Floats(runs.iter().map(|r| r.cost_usd).collect()),
                Arg::Times(runs.iter().map(|r| r.started_at).collect()),
                Arg::MaybeTimes(runs.iter().map(|r| r.ended_at).collect()),
                Arg::Ints(runs.iter().map(|r| r.last_sequence).collect()),
            ],
        })
    }

    fn ends_write(&self) -> Option<RideAlong> {
        let ends: Vec<(&Uuid, &RunEnd)> = self.ends.iter().collect();
        (!ends.is_empty()).then(|| RideAlong {
            sql: END_OLDER.to_string(),
            args: vec![
                Arg::Uuids(ends.iter().map(|(id, _)| **id).collect()),
                Arg::Texts(
                    ends.iter()
                        .map(|(_, e)| e.outcome.as_str().to_string())
                        .collect(),
                ),
                Arg::Floats(ends.iter().map(|(_, e)| e.cost_usd).collect()),
                Arg::Times(ends.iter().map(|(_, e)| e.at).collect()),
                Arg::Ints(ends.iter().map(|(_, e)| e.sequence).collect()),
            ],
        })
    }
}

/// Inserts the runs started (`$1`…`$10`: one array per column); a row already this
/// far along is left alone.
const INSERT_STARTED: &str =
    "INSERT INTO run_view (run_id, job_id, product_id, factory_id, epoch, outcome, cost_usd,
                               started_at, ended_at, last_sequence)
         SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::uuid[], $5::bigint[],
                              $6::text[], $7::float8[], $8::timestamptz[], $9::timestamptz[],
                              $10::bigint[]) AS u(run_id, job_id, product_id, factory_id, epoch,
                                                  outcome, cost_usd, started_at, ended_at,
                                                  last_sequence)
         -- A row already this far along is left alone, unlocked: ON CONFLICT DO UPDATE
         -- locks the row it meets even when its WHERE is false, and the projector
         -- re-applying a grant would make the run's report wait for its commit. Rows
         -- only move forward, so one this far along stays so.
         WHERE NOT EXISTS (SELECT 1 FROM run_view r
                           WHERE r.run_id = u.run_id AND r.last_sequence >= u.last_sequence)
         ON CONFLICT (run_id) DO UPDATE SET outcome = EXCLUDED.outcome,
             cost_usd = EXCLUDED.cost_usd, ended_at = EXCLUDED.ended_at,
             last_sequence = EXCLUDED.last_sequence
         WHERE run_view.last_sequence < EXCLUDED.last_sequence";

/// Ends runs started before the batch (`$1`…`$5`: run ids, outcomes, costs, times,
/// sequences).
const END_OLDER: &str =
    "UPDATE run_view r SET outcome = u.outcome, cost_usd = u.cost, ended_at = u.at,
                               last_sequence = u.seq
         FROM unnest($1::uuid[], $2::text[], $3::float8[], $4::timestamptz[], $5::bigint[])
              AS u(run_id, outcome, cost, at, seq)
         WHERE r.run_id = ANY($1) AND r.run_id = u.run_id AND r.last_sequence < u.seq";

async fn cancel_open(
    conn: &mut PgConnection,
    cancels: &[(Uuid, DateTime<Utc>, i64)],
) -> Result<(), ProjectionError> {
    if cancels.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "UPDATE run_view r SET outcome = 'cancelled', ended_at = u.at, last_sequence = u.seq
         FROM unnest($1::uuid[], $2::timestamptz[], $3::bigint[]) AS u(job_id, at, seq)
         WHERE r.job_id = ANY($1) AND r.job_id = u.job_id AND r.outcome = 'running'
           AND r.last_sequence < u.seq",
    )
    .bind(cancels.iter().map(|c| c.0).collect::<Vec<_>>())
    .bind(cancels.iter().map(|c| c.1).collect::<Vec<_>>())
    .bind(cancels.iter().map(|c| c.2).collect::<Vec<_>>())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// A run as the API shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRow {
    pub run_id: Uuid,
    pub factory_id: Uuid,
    pub epoch: i64,
    pub outcome: String,
    pub cost_usd: Option<f64>,
    pub started_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
}

/// A job's runs, oldest first.
pub async fn of_job(conn: &mut PgConnection, job_id: Uuid) -> Result<Vec<RunRow>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT run_id, factory_id, epoch, outcome, cost_usd, started_at, ended_at FROM run_view
         WHERE job_id = $1 ORDER BY epoch",
    )
    .bind(job_id)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .iter()
        .map(|r| RunRow {
            run_id: r.get("run_id"),
            factory_id: r.get("factory_id"),
            epoch: r.get("epoch"),
            outcome: r.get("outcome"),
            cost_usd: r.get("cost_usd"),
            started_at: r.get("started_at"),
            ended_at: r.get("ended_at"),
        })
        .collect())
}

/// Runs of this factory that ended after `since` on jobs it still says it runs, with
/// no newer run of the factory on that job: the jobs it must stop, and why.
pub async fn stop_directives(
    conn: &mut PgConnection,
    factory_id: Uuid,
    running_job_ids: &[Uuid],
    since: DateTime<Utc>,
) -> Result<Vec<(Uuid, String)>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT DISTINCT ON (job_id) job_id, outcome, ended_at FROM run_view
         WHERE factory_id = $1 AND job_id = ANY($2)
         ORDER BY job_id, epoch DESC",
    )
    .bind(factory_id)
    .bind(running_job_ids)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .iter()
        .filter(|r| {
            r.get::<Option<DateTime<Utc>>, _>("ended_at")
                .is_some_and(|t| t > since)
        })
        .map(|r| (r.get("job_id"), r.get("outcome")))
        .collect())
}
