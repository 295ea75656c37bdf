//! Keeps the busy tables healthy when autovacuum does not: it may be off (it is on
//! some servers), and even when on, a fresh table is first looked at only after
//! autovacuum's naptime. Without statistics the first minute of a new queue is
//! planned blind; without vacuum the queue index's head fills with the entries of
//! claimed jobs, which every claim then steps over. So a table is analysed once it
//! changed by more than a tenth since its last analysis, and vacuumed once a tenth
//! of it is dead (autovacuum's own rules), each at most every few seconds.
//!
//! The append-only tables (the log, the timeline) are analysed only when they have
//! grown by as much again as they had: every query on them goes by a key, so fresh
//! statistics change no plan, while each ANALYZE reads a 30,000-row sample (a
//! quarter of a second here) and makes every connection re-plan its statements on
//! that table. A 20,000-job drain analysed them a dozen times: a tenth of the
//! database's time.
//!
//! A table of [`LARGE_TABLE_ROWS`] or more is analysed at most once a minute (as
//! autovacuum, which visits a database once per `autovacuum_naptime`): its first
//! analyses, while it is small and its contents shift fastest, came every few
//! seconds, and by then each one reads a whole sample (100–170 ms for a 20,000-job
//! `job_view` here) and makes every connection re-plan its statements on it, for
//! statistics our statements' plans (generic, pinned to their indexes) hardly use.
//! A 20,000-job drain analysed `job_view` four to seven times. Vacuum keeps its
//! few-second pause: dead queue entries are what every claim steps over.

use sqlx::PgPool;

/// The tables whose plans and dead rows matter on the hot path.
const BUSY_TABLES: [&str; 4] = ["job_view", "run_view", "events", "event_positions"];

/// Changes since the last analysis, as a share of the rows the table had then
/// (`reltuples`, as autovacuum counts), that make it due:
/// autovacuum's tenth for the tables whose plans depend on their contents, a whole
/// table's worth for the append-only ones.
const ANALYZE_SHARE: [f64; 4] = [0.1, 0.1, 1.0, 1.0];

/// From this many rows (`reltuples`) on, a table is analysed at most every
/// [`LARGE_TABLE_ANALYZE_PAUSE_SECS`]; smaller ones every 5 seconds at most.
pub const LARGE_TABLE_ROWS: f64 = 10_000.0;

/// The least time between two analyses of a large table.
pub const LARGE_TABLE_ANALYZE_PAUSE_SECS: f64 = 60.0;

/// Analyses and vacuums the busy tables that need it; returns what it did.
pub async fn refresh(pool: &PgPool) -> Result<Vec<String>, sqlx::Error> {
    let due: Vec<(String, bool, bool)> = sqlx::query_as(
        "SELECT s.relname::text,
                n_mod_since_analyze > 500 + share * greatest(c.reltuples, 0)
                  AND coalesce(greatest(last_analyze, last_autoanalyze), '-infinity')
                      < now() - CASE WHEN c.reltuples >= $3 THEN $4 * interval '1 second'
                                     ELSE interval '5 seconds' END AS analyze,
                n_dead_tup > 1000 + 0.1 * n_live_tup
                  AND coalesce(greatest(last_vacuum, last_autovacuum), '-infinity')
                      < now() - interval '5 seconds' AS vacuum
         FROM pg_stat_user_tables s
         JOIN pg_class c ON c.oid = s.relid
         JOIN unnest($1::text[], $2::float8[]) AS t(name, share) ON t.name = s.relname
         WHERE s.schemaname = current_schema()",
    )
    .bind(BUSY_TABLES)
    .bind(ANALYZE_SHARE)
    .bind(LARGE_TABLE_ROWS)
    .bind(LARGE_TABLE_ANALYZE_PAUSE_SECS)
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
