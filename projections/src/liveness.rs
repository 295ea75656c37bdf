//! `factory_liveness`: heartbeat times. Not history: never in the log, not rebuilt
//! by the projector, left out of replay comparisons.

use sqlx::PgConnection;
use uuid::Uuid;

/// Records a heartbeat at the database clock's now.
pub async fn record_heartbeat(
    conn: &mut PgConnection,
    factory_id: Uuid,
    running: &[Uuid],
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO factory_liveness (factory_id, last_heartbeat_at, running_job_ids)
         VALUES ($1, now(), $2)
         ON CONFLICT (factory_id) DO UPDATE SET last_heartbeat_at = now(), running_job_ids = $2",
    )
    .bind(factory_id)
    .bind(running)
    .execute(&mut *conn)
    .await?;
    Ok(())
}
