//! `run_view`: one row per lease of a job (a run), with its outcome and cost.

use crate::{EventRecord, ProjectionError};
use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use gigafactory_domain::job::{Job, JobEvent, RunOutcome};
use sqlx::{PgConnection, Row};
use uuid::Uuid;

pub async fn apply(conn: &mut PgConnection, event: &EventRecord) -> Result<(), ProjectionError> {
    if event.aggregate_type != Job::TYPE {
        return Ok(());
    }
    let job_id = crate::jobs::job_id_of(&event.aggregate_id);
    let seq = event.sequence;
    match event.decode::<Job>()? {
        JobEvent::LeaseGranted {
            epoch,
            run_id,
            factory_id,
            at,
            ..
        } => {
            sqlx::query(
                "INSERT INTO run_view (run_id, job_id, product_id, factory_id, epoch, outcome, started_at, last_sequence)
                 VALUES ($1, $2, $3, $4, $5, 'running', $6, $7) ON CONFLICT (run_id) DO NOTHING",
            )
            .bind(run_id.0)
            .bind(job_id)
            .bind(event.product_id.as_deref().unwrap_or_default())
            .bind(factory_id.0)
            .bind(epoch as i64)
            .bind(at)
            .bind(seq)
            .execute(&mut *conn)
            .await?;
        }
        JobEvent::RunSucceeded {
            run_id,
            cost_usd,
            at,
            ..
        } => end(conn, run_id.0, seq, RunOutcome::Succeeded, cost_usd, at).await?,
        JobEvent::RunFailed {
            run_id,
            cost_usd,
            at,
            ..
        } => end(conn, run_id.0, seq, RunOutcome::Failed, cost_usd, at).await?,
        JobEvent::LeaseExpired { run_id, at, .. } => {
            end(conn, run_id.0, seq, RunOutcome::Expired, None, at).await?
        }
        JobEvent::LeaseReleased { run_id, at, .. } => {
            end(conn, run_id.0, seq, RunOutcome::Released, None, at).await?
        }
        JobEvent::LeasePreempted { run_id, at, .. } => {
            end(conn, run_id.0, seq, RunOutcome::Preempted, None, at).await?
        }
        JobEvent::LeaseRevoked { run_id, at, .. } => {
            end(conn, run_id.0, seq, RunOutcome::Revoked, None, at).await?
        }
        JobEvent::JobCancelled { at, .. } => {
            // Ends the run that is still open, if any.
            sqlx::query(
                "UPDATE run_view SET outcome = 'cancelled', ended_at = $2, last_sequence = $3
                 WHERE job_id = $1 AND outcome = 'running' AND last_sequence < $3",
            )
            .bind(job_id)
            .bind(at)
            .bind(seq)
            .execute(&mut *conn)
            .await?;
        }
        _ => {}
    }
    Ok(())
}

async fn end(
    conn: &mut PgConnection,
    run_id: Uuid,
    seq: i64,
    outcome: RunOutcome,
    cost: Option<f64>,
    at: DateTime<Utc>,
) -> Result<(), ProjectionError> {
    sqlx::query(
        "UPDATE run_view SET outcome = $2, cost_usd = $3, ended_at = $4, last_sequence = $5
         WHERE run_id = $1 AND last_sequence < $5",
    )
    .bind(run_id)
    .bind(outcome.as_str())
    .bind(cost)
    .bind(at)
    .bind(seq)
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
