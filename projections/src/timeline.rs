//! The job detail's timeline: each job's events, oldest first, read from the log
//! itself — a job's stream in `events`, by its primary key. Nothing is written for it
//! (migration 17: it was a table rebuilt from the log, one row per job event); the
//! `job_event_view` view shows the same rows to SQL clients.

use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use gigafactory_domain::job::Job;
use sqlx::{PgConnection, Row};

/// One entry of a job's timeline.
#[derive(Debug, Clone, PartialEq)]
pub struct TimelineEntry {
    pub sequence: i64,
    pub event_type: String,
    pub payload: serde_json::Value,
    pub recorded_at: DateTime<Utc>,
}

/// The events of the job whose stream is `stream` (`<productId>/<jobId>`) with
/// sequence > `after`, oldest first.
pub async fn of_job(
    conn: &mut PgConnection,
    stream: &str,
    after: i64,
    limit: i64,
) -> Result<Vec<TimelineEntry>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT sequence, event_type, payload, recorded_at FROM events
         WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence > $3
         ORDER BY sequence LIMIT $4",
    )
    .bind(Job::TYPE)
    .bind(stream)
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
