//! `artifact_view`: each job's artifacts (metadata; the bytes are in the blob store).

use crate::{EventRecord, ProjectionError};
use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use gigafactory_domain::job::{Job, JobEvent};
use sqlx::{PgConnection, Row};
use uuid::Uuid;

pub async fn apply(conn: &mut PgConnection, event: &EventRecord) -> Result<(), ProjectionError> {
    // Most job events are not about artifacts: skip them without decoding.
    if event.aggregate_type != Job::TYPE
        || !matches!(
            event.event_type.as_str(),
            "ArtifactAdded" | "ArtifactDeleted"
        )
    {
        return Ok(());
    }
    match event.decode::<Job>()? {
        JobEvent::ArtifactAdded {
            artifact,
            factory_id,
            at,
        } => {
            sqlx::query(
                "INSERT INTO artifact_view (artifact_id, job_id, product_id, name, sha256, size, content_type,
                                            blob_key, factory_id, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (artifact_id) DO NOTHING",
            )
            .bind(artifact.artifact_id)
            .bind(crate::jobs::job_id_of(&event.aggregate_id))
            .bind(event.product_id.as_deref().unwrap_or_default())
            .bind(&artifact.name)
            .bind(&artifact.sha256)
            .bind(artifact.size as i64)
            .bind(&artifact.content_type)
            .bind(&artifact.blob_key)
            .bind(factory_id.map(|f| f.0))
            .bind(at)
            .execute(&mut *conn)
            .await?;
        }
        JobEvent::ArtifactDeleted { artifact_id, at } => {
            sqlx::query("UPDATE artifact_view SET deleted_at = $2 WHERE artifact_id = $1 AND deleted_at IS NULL")
                .bind(artifact_id)
                .bind(at)
                .execute(&mut *conn)
                .await?;
        }
        _ => {}
    }
    Ok(())
}

#[derive(Debug, Clone, PartialEq)]
pub struct ArtifactRow {
    pub artifact_id: Uuid,
    pub job_id: Uuid,
    pub name: String,
    pub sha256: String,
    pub size: i64,
    pub content_type: String,
    pub blob_key: String,
    pub created_at: DateTime<Utc>,
}

fn row(r: &sqlx::postgres::PgRow) -> ArtifactRow {
    ArtifactRow {
        artifact_id: r.get("artifact_id"),
        job_id: r.get("job_id"),
        name: r.get("name"),
        sha256: r.get("sha256"),
        size: r.get("size"),
        content_type: r.get("content_type"),
        blob_key: r.get("blob_key"),
        created_at: r.get("created_at"),
    }
}

const COLUMNS: &str = "artifact_id, job_id, name, sha256, size, content_type, blob_key, created_at";

/// A job's live artifacts, oldest first.
pub async fn of_job(
    conn: &mut PgConnection,
    job_id: Uuid,
) -> Result<Vec<ArtifactRow>, sqlx::Error> {
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM artifact_view WHERE job_id = $1 AND deleted_at IS NULL ORDER BY created_at, artifact_id"
    ))
    .bind(job_id)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows.iter().map(row).collect())
}

/// One live artifact of a job.
pub async fn get(
    conn: &mut PgConnection,
    job_id: Uuid,
    artifact_id: Uuid,
) -> Result<Option<ArtifactRow>, sqlx::Error> {
    let r = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM artifact_view WHERE job_id = $1 AND artifact_id = $2 AND deleted_at IS NULL"
    ))
    .bind(job_id)
    .bind(artifact_id)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(r.as_ref().map(row))
}

/// Whether a live artifact points at this artifact id (the orphan sweeper's test).
pub async fn is_live(conn: &mut PgConnection, artifact_id: Uuid) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM artifact_view WHERE artifact_id = $1 AND deleted_at IS NULL)",
    )
    .bind(artifact_id)
    .fetch_one(&mut *conn)
    .await
}
