//! `job_event_view`: each job's events, oldest first (the job detail's timeline).

use crate::{EventRecord, ProjectionError};
use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use gigafactory_domain::job::Job;
use sqlx::{PgConnection, Row};
use uuid::Uuid;

pub async fn apply(conn: &mut PgConnection, event: &EventRecord) -> Result<(), ProjectionError> {
    if event.aggregate_type != Job::TYPE {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO job_event_view (job_id, sequence, event_type, payload, recorded_at)
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
    )
    .bind(crate::jobs::job_id_of(&event.aggregate_id))
    .bind(event.sequence)
    .bind(&event.event_type)
    .bind(&event.payload)
    .bind(event.recorded_at)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// One entry of a job's timeline.
#[derive(Debug, Clone, PartialEq)]
pub struct TimelineEntry {
    pub sequence: i64,
    pub event_type: String,
    pub payload: serde_json::Value,
    pub recorded_at: DateTime<Utc>,
}

/// A job's events with sequence > `after`, oldest first.
pub async fn of_job(
    conn: &mut PgConnection,
    job_id: Uuid,
    after: i64,
    limit: i64,
) -> Result<Vec<TimelineEntry>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT sequence, event_type, payload, recorded_at FROM job_event_view
         WHERE job_id = $1 AND sequence > $2 ORDER BY sequence LIMIT $3",
    )
    .bind(job_id)
    .bind(after)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .iter()
        .map(|r| TimelineEntry {
            sequence: r.get("sequence"),
            event_type: r.get("event_type"),
            payload: r.get("payload"),
            recorded_at: r.get("recorded_at"),
        })
        .collect())
}
