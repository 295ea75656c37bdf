//! Keeps the planner's statistics of the busy tables fresh when autovacuum does not:
//! it may be off (it is on some servers), and even when on, a fresh table is first
//! analysed only after autovacuum's naptime — the first minute of a new queue would
//! be planned blind. A table is analysed once it changed by more than a tenth since
//! its last analysis (autovacuum's own rule), at most every few seconds.

use sqlx::PgPool;

/// The tables whose plans matter on the hot path.
const BUSY_TABLES: [&str; 3] = ["job_view", "run_view", "events"];

/// Analyses the busy tables that changed enough; returns their names.
pub async fn refresh(pool: &PgPool) -> Result<Vec<String>, sqlx::Error> {
    let stale: Vec<String> = sqlx::query_scalar(
        "SELECT relname::text FROM pg_stat_user_tables
         WHERE schemaname = current_schema() AND relname = ANY($1)
           AND n_mod_since_analyze > 500 + 0.1 * n_live_tup
           AND coalesce(greatest(last_analyze, last_autoanalyze), '-infinity')
               < now() - interval '5 seconds'",
    )
    .bind(BUSY_TABLES)
    .fetch_all(pool)
    .await?;
    for table in &stale {
        // Only names from BUSY_TABLES reach here.
        if BUSY_TABLES.contains(&table.as_str()) {
            sqlx::query(&format!("ANALYZE {table}"))
                .execute(pool)
                .await?;
            tracing::debug!(table = %table, "statistics refreshed");
        }
    }
    Ok(stale)
}
