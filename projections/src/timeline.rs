//! `job_event_view`: each job's events, oldest first (the job detail's timeline).

use crate::log::RideAlong;
use crate::{EventRecord, ProjectionError};
use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use gigafactory_domain::job::Job;
use sqlx::{PgConnection, Row};
use uuid::Uuid;

/// Appends a job event to its job's timeline.
pub async fn apply(conn: &mut PgConnection, event: &EventRecord) -> Result<(), ProjectionError> {
    apply_batch(conn, std::slice::from_ref(event)).await
}

/// Appends a batch's job events to the timelines in one statement.
pub async fn apply_batch(
    conn: &mut PgConnection,
    events: &[EventRecord],
) -> Result<(), ProjectionError> {
    let job_events: Vec<&EventRecord> = events
        .iter()
        .filter(|e| e.aggregate_type == Job::TYPE)
        .collect();
    if job_events.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = job_events
        .iter()
        .map(|e| crate::jobs::job_id_of(&e.aggregate_id))
        .collect();
    let sequences: Vec<i64> = job_events.iter().map(|e| e.sequence).collect();
    let types: Vec<&str> = job_events.iter().map(|e| e.event_type.as_str()).collect();
    let payloads: Vec<&str> = job_events.iter().map(|e| e.payload.as_str()).collect();
    let recorded: Vec<DateTime<Utc>> = job_events.iter().map(|e| e.recorded_at).collect();
    sqlx::query(
        "INSERT INTO job_event_view (job_id, sequence, event_type, payload, recorded_at)
         SELECT i, s, t, p::json, r
         FROM unnest($1::uuid[], $2::bigint[], $3::text[], $4::text[], $5::timestamptz[])
              AS u(i, s, t, p, r)
         ON CONFLICT DO NOTHING",
    )
    .bind(&ids)
    .bind(&sequences)
    .bind(&types)
    .bind(&payloads)
    .bind(&recorded)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The timeline rows of the job events appended by the same statement (the command
/// path): the same rows [`apply_batch`] writes from those events, with no round trip
/// of its own.
pub fn write_along() -> RideAlong {
    RideAlong {
        sql: format!(
            "INSERT INTO job_event_view (job_id, sequence, event_type, payload, recorded_at)
             SELECT substring(aggregate_id FROM '[^/]*$')::uuid, sequence, event_type,
                    payload, recorded_at
             FROM appended WHERE aggregate_type = '{}'
             ON CONFLICT DO NOTHING",
            Job::TYPE
        ),
        args: vec![],
    }
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
