//! Keeps the busy tables healthy when autovacuum does not: it may be off (it is on
//! some servers), and even when on, a fresh table is first looked at only after
//! autovacuum's naptime. Without statistics the first minute of a new queue is
//! planned blind; without vacuum the queue index's head fills with the entries of
//! claimed jobs, which every claim then steps over. So a table is analysed once it
//! changed by more than a tenth since its last analysis, and vacuumed once a tenth
//! of it is dead (autovacuum's own rules), each at most every few seconds.

use sqlx::PgPool;

/// The tables whose plans and dead rows matter on the hot path.
const BUSY_TABLES: [&str; 4] = ["job_view", "run_view", "events", "job_event_view"];

/// Analyses and vacuums the busy tables that need it; returns what it did.
pub async fn refresh(pool: &PgPool) -> Result<Vec<String>, sqlx::Error> {
    let due: Vec<(String, bool, bool)> = sqlx::query_as(
        "SELECT relname::text,
                n_mod_since_analyze > 500 + 0.1 * n_live_tup
                  AND coalesce(greatest(last_analyze, last_autoanalyze), '-infinity')
                      < now() - interval '5 seconds' AS analyze,
                n_dead_tup > 1000 + 0.1 * n_live_tup
                  AND coalesce(greatest(last_vacuum, last_autovacuum), '-infinity')
                      < now() - interval '5 seconds' AS vacuum
         FROM pg_stat_user_tables
         WHERE schemaname = current_schema() AND relname = ANY($1)",
    )
    .bind(BUSY_TABLES)
    .fetch_all(pool)
    .await?;
    let mut done = Vec::new();
    for (table, analyze, vacuum) in due {
        // Only names from BUSY_TABLES reach the statements.
        if !BUSY_TABLES.contains(&table.as_str()) {
            continue;
        }
        // SKIP_LOCKED: never queue behind (or hold up) another process's maintenance
        // or a replay's swap; the next round tries again.
        let statement = match (vacuum, analyze) {
            (true, true) => format!("VACUUM (ANALYZE, SKIP_LOCKED) {table}"),
            (true, false) => format!("VACUUM (SKIP_LOCKED) {table}"),
            (false, true) => format!("ANALYZE (SKIP_LOCKED) {table}"),
            (false, false) => continue,
        };
        sqlx::query(&statement).execute(pool).await?;
        tracing::debug!(table = %table, %statement, "table maintenance");
        done.push(statement);
    }
    Ok(done)
}
