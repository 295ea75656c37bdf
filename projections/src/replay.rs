//! Replay: rebuild every read model from the log alone into a fresh schema, compare
//! it row for row with the live read models, and optionally swap it in.
//!
//! The projections' SQL names its tables without a schema, so applying events with
//! `search_path = <replay schema>, public` writes the replay schema's copies while
//! reading the log from `public.events`. Liveness (`factory_liveness`) is not history:
//! it is neither rebuilt nor compared.

use crate::log::{read_after, EventRecord};
use crate::projector::{Projection, PROJECTIONS};
use crate::ProjectionError;
use serde::Serialize;
use serde_json::Value;
use sqlx::{PgPool, Row};
use std::sync::Arc;

/// Every log-built table and its key columns.
pub fn tables() -> Vec<(&'static str, &'static [&'static str])> {
    PROJECTIONS
        .iter()
        .flat_map(|p| p.keyed_tables().iter().copied())
        .collect()
}

/// One difference between a live row and its replayed twin.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Difference {
    pub table: String,
    pub key: Value,
    /// `None`: the whole row is missing on one side.
    pub column: Option<String>,
    pub live: Value,
    pub replayed: Value,
}

fn check_schema_name(schema: &str) -> Result<(), ProjectionError> {
    let ok = !schema.is_empty()
        && schema.len() < 60
        && schema
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && schema != "public";
    if ok {
        Ok(())
    } else {
        Err(ProjectionError::Db(sqlx::Error::Protocol(format!(
            "invalid replay schema name {schema:?}"
        ))))
    }
}

/// Rebuilds every read model into `schema` (dropped and created afresh) from the
/// positioned log, in batches; `progress(events so far, head position)` after each.
/// Returns how many events were applied.
pub async fn rebuild_into(
    pool: &PgPool,
    schema: &str,
    batch: i64,
    mut progress: impl FnMut(u64, i64),
) -> Result<u64, ProjectionError> {
    check_schema_name(schema)?;
    let mut conn = pool.acquire().await?;
    sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .execute(&mut *conn)
        .await?;
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&mut *conn)
        .await?;
    // Unlogged: a rebuild is a scratch copy until it is swapped in (a crash empties
    // it, and a rebuild starts afresh anyway), so its rows skip the write-ahead log;
    // `swap` makes the tables logged before they go live.
    // The keys now (upserts need them), the other indexes once the rows are in:
    // building an index once is far cheaper than maintaining it row by row.
    let mut deferred = Vec::new();
    for (table, _) in tables() {
        sqlx::query(&format!(
            "CREATE UNLOGGED TABLE {schema}.{table} (LIKE public.{table} INCLUDING ALL EXCLUDING INDEXES)"
        ))
        .execute(&mut *conn)
        .await?;
        for index in indexes_of(&mut conn, table).await? {
            let create = index.definition.replacen(
                &format!(" ON public.{table} "),
                &format!(" ON {schema}.{table} "),
                1,
            );
            let name = &index.name;
            match index.constraint.as_deref() {
                Some(kind @ ("p" | "u")) => {
                    let kind = if kind == "p" { "PRIMARY KEY" } else { "UNIQUE" };
                    let constrain = format!(
                        "ALTER TABLE {schema}.{table} ADD CONSTRAINT {name} {kind} USING INDEX {name}"
                    );
                    sqlx::query(&create).execute(&mut *conn).await?;
                    sqlx::query(&constrain).execute(&mut *conn).await?;
                }
                _ if index.unique || WRITE_PATH_INDEXES.contains(&name.as_str()) => {
                    sqlx::query(&create).execute(&mut *conn).await?;
                }
                _ => deferred.push(create),
            }
        }
    }
    // How far the rebuild got (the swap goes on from there).
    sqlx::query(&format!(
        "CREATE TABLE {schema}.gf_replay_mark (value bigint NOT NULL)"
    ))
    .execute(&mut *conn)
    .await?;
    sqlx::query(&format!("INSERT INTO {schema}.gf_replay_mark VALUES (0)"))
        .execute(&mut *conn)
        .await?;
    let head: i64 = sqlx::query_scalar("SELECT last_position FROM event_log_head")
        .fetch_one(&mut *conn)
        .await?;
    drop(conn);
    // A reader fetches the next batch while the current one is applied.
    let (batches, mut next) = tokio::sync::mpsc::channel(2);
    let reader = tokio::spawn(read_batches(pool.clone(), batch, batches));
    let mut applied = 0u64;
    while let Some(events) = next.recv().await {
        let events: Arc<Vec<EventRecord>> = Arc::new(events?);
        let last = events
            .last()
            .and_then(|e| e.position)
            .expect("batches are positioned and not empty");
        // The read models are independent: each group applies the batch on its own
        // connection at the same time (every apply is idempotent, so a crash between
        // the groups' commits and the mark only means some events apply twice).
        let mut groups = Vec::new();
        for group in PARALLEL_GROUPS {
            let (pool, events, schema) = (pool.clone(), events.clone(), schema.to_string());
            groups.push(tokio::spawn(async move {
                let mut tx = pool.begin().await?;
                // Custom plans here: the fresh tables have no statistics yet, and a
                // generic plan made now (a sequential scan) would then search each
                // batch's id array linearly per row, where a custom plan hashes it.
                sqlx::query(
                    "SELECT set_config('search_path', $1, true),
                            set_config('plan_cache_mode', 'auto', true)",
                )
                .bind(format!("{schema}, public"))
                .execute(&mut *tx)
                .await?;
                for p in group {
                    let started = std::time::Instant::now();
                    p.apply_batch(&mut tx, &events).await?;
                    tracing::debug!(
                        projection = p.name(),
                        events = events.len(),
                        elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
                        "replay applied a batch"
                    );
                }
                let started = std::time::Instant::now();
                tx.commit().await?;
                tracing::debug!(
                    elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
                    "replay committed a group"
                );
                Ok::<_, ProjectionError>(())
            }));
        }
        for group in groups {
            group.await.map_err(|e| {
                ProjectionError::Db(sqlx::Error::Protocol(format!("replay task failed: {e}")))
            })??;
        }
        sqlx::query(&format!("UPDATE {schema}.gf_replay_mark SET value = $1"))
            .bind(last)
            .execute(pool)
            .await?;
        applied += events.len() as u64;
        progress(applied, head.max(last));
    }
    reader.await.map_err(|e| {
        ProjectionError::Db(sqlx::Error::Protocol(format!("replay reader failed: {e}")))
    })?;
    let mut conn = pool.acquire().await?;
    for create in deferred {
        sqlx::query(&create).execute(&mut *conn).await?;
    }
    Ok(applied)
}

/// Indexes the projections' own writes search by (a cancel ends a job's open run, a
/// revocation a subject's credentials): built before the rows, not after.
const WRITE_PATH_INDEXES: [&str; 2] = ["run_view_job", "credential_view_subject"];

/// How many events a replay reads and applies at a time.
pub const REPLAY_BATCH: i64 = 5_000;

/// The read models a replay applies side by side (every projection in one group).
const PARALLEL_GROUPS: [&[Projection]; 2] = [
    &[Projection::Jobs],
    &[
        Projection::Runs,
        Projection::Factories,
        Projection::Credentials,
        Projection::Settings,
        Projection::Flags,
        Projection::Artifacts,
    ],
];

/// Reads the positioned log in batches into `out` until the end (or an error, which
/// it sends on; or until the receiver is gone).
async fn read_batches(
    pool: PgPool,
    batch: i64,
    out: tokio::sync::mpsc::Sender<Result<Vec<EventRecord>, sqlx::Error>>,
) {
    // A connection of its own, closed when done (it is set up for this reader only):
    // each batch is an index range and probes, which one backend reads faster than a
    // parallel plan that starts a worker per batch on a machine already busy applying.
    let conn = match pool.acquire().await {
        Ok(conn) => conn,
        Err(e) => {
            let _ = out.send(Err(e)).await;
            return;
        }
    };
    let mut conn = conn.detach();
    if let Err(e) = sqlx::query("SET max_parallel_workers_per_gather = 0")
        .execute(&mut conn)
        .await
    {
        let _ = out.send(Err(e)).await;
        return;
    }
    let mut after = 0;
    loop {
        let started = std::time::Instant::now();
        match read_after(&mut conn, after, batch, None).await {
            Ok(events) => {
                tracing::debug!(
                    events = events.len(),
                    elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
                    "replay read a batch"
                );
                let Some(last) = events.last().and_then(|e| e.position) else {
                    return;
                };
                after = last;
                if out.send(Ok(events)).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                let _ = out.send(Err(e)).await;
                return;
            }
        }
    }
}

/// An index of a live read-model table, as `CREATE INDEX` text.
struct IndexDef {
    name: String,
    definition: String,
    unique: bool,
    /// `p` (primary key) or `u` (unique constraint) when a constraint owns it.
    constraint: Option<String>,
}

async fn indexes_of(
    conn: &mut sqlx::PgConnection,
    table: &str,
) -> Result<Vec<IndexDef>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT c.relname::text AS name, pg_get_indexdef(i.indexrelid) AS definition,
                i.indisunique AS is_unique, con.contype::text AS constraint_kind
         FROM pg_index i
         JOIN pg_class c ON c.oid = i.indexrelid
         LEFT JOIN pg_constraint con ON con.conindid = i.indexrelid AND con.contype IN ('p', 'u')
         WHERE i.indrelid = ('public.' || $1)::regclass
         ORDER BY c.relname",
    )
    .bind(table)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .iter()
        .map(|r| IndexDef {
            name: r.get("name"),
            definition: r.get("definition"),
            unique: r.get("is_unique"),
            constraint: r.get("constraint_kind"),
        })
        .collect())
}

/// Compares the live read models with those in `schema`, row for row.
pub async fn compare(pool: &PgPool, schema: &str) -> Result<Vec<Difference>, ProjectionError> {
    check_schema_name(schema)?;
    let mut out = Vec::new();
    for (table, keys) in tables() {
        let using = keys.join(", ");
        let key_json = keys
            .iter()
            .map(|k| format!("'{k}', coalesce(to_jsonb(l.{k}), to_jsonb(r.{k}))"))
            .collect::<Vec<_>>()
            .join(", ");
        let key_json = key_json.replace("l.", "l_row.").replace("r.", "r_row.");
        let sql = format!(
            "SELECT jsonb_build_object({key_json}) AS key, to_jsonb(l_row) AS live, to_jsonb(r_row) AS replayed
             FROM public.{table} l_row FULL OUTER JOIN {schema}.{table} r_row USING ({using})
             WHERE to_jsonb(l_row) IS DISTINCT FROM to_jsonb(r_row)
             ORDER BY 1 LIMIT 1000"
        );
        let rows = sqlx::query(&sql).fetch_all(pool).await?;
        for r in rows {
            let key: Value = r.get("key");
            let live: Option<Value> = r.get("live");
            let replayed: Option<Value> = r.get("replayed");
            match (live, replayed) {
                (Some(Value::Object(l)), Some(Value::Object(rp))) => {
                    for (column, lv) in &l {
                        let rv = rp.get(column).cloned().unwrap_or(Value::Null);
                        if *lv != rv {
                            out.push(Difference {
                                table: table.into(),
                                key: key.clone(),
                                column: Some(column.clone()),
                                live: lv.clone(),
                                replayed: rv,
                            });
                        }
                    }
                }
                (l, rp) => out.push(Difference {
                    table: table.into(),
                    key,
                    column: None,
                    live: l.unwrap_or(Value::Null),
                    replayed: rp.unwrap_or(Value::Null),
                }),
            }
        }
    }
    Ok(out)
}

/// Replaces the live read models with the rebuilt ones in one transaction (queries
/// wait for the moment of the swap, they never see a half state), then drops the old.
/// Holding the projector's lock, it first applies to the rebuilt tables whatever was
/// positioned since the rebuild, so the checkpoints it sets skip nothing.
pub async fn swap(pool: &PgPool, schema: &str) -> Result<(), ProjectionError> {
    check_schema_name(schema)?;
    let old = format!("{schema}_old");
    // Logged before they go live (this writes each table to the log once, outside the
    // projector's lock; the swap below applies what came since).
    for (table, _) in tables() {
        sqlx::query(&format!("ALTER TABLE {schema}.{table} SET LOGGED"))
            .execute(pool)
            .await?;
    }
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(crate::projector::PROJECTOR_LOCK)
        .execute(&mut *tx)
        .await?;
    sqlx::query(&format!("SET LOCAL search_path TO {schema}, public"))
        .execute(&mut *tx)
        .await?;
    let mut after: i64 = sqlx::query_scalar(&format!(
        "SELECT coalesce((SELECT value FROM {schema}.gf_replay_mark), 0)"
    ))
    .fetch_one(&mut *tx)
    .await?;
    loop {
        let events = read_after(&mut tx, after, 1000, None).await?;
        let Some(last) = events.last().and_then(|e| e.position) else {
            break;
        };
        for p in PROJECTIONS {
            p.apply_batch(&mut tx, &events).await?;
        }
        after = last;
    }
    sqlx::query("SET LOCAL search_path TO public")
        .execute(&mut *tx)
        .await?;
    sqlx::query(&format!("DROP SCHEMA IF EXISTS {old} CASCADE"))
        .execute(&mut *tx)
        .await?;
    sqlx::query(&format!("CREATE SCHEMA {old}"))
        .execute(&mut *tx)
        .await?;
    for (table, _) in tables() {
        sqlx::query(&format!("ALTER TABLE public.{table} SET SCHEMA {old}"))
            .execute(&mut *tx)
            .await?;
        sqlx::query(&format!("ALTER TABLE {schema}.{table} SET SCHEMA public"))
            .execute(&mut *tx)
            .await?;
    }
    // The rebuilt tables reflect the log up to `after` (the sequencer may have given
    // positions since: the projector goes on from what the swap applied, not from
    // the head, or those events would never reach the new tables).
    sqlx::query("UPDATE projection_checkpoints SET position = $1")
        .bind(after)
        .execute(&mut *tx)
        .await?;
    sqlx::query(&format!("DROP SCHEMA {old} CASCADE"))
        .execute(&mut *tx)
        .await?;
    sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

#[cfg(test)]
mod parallel_groups_tests {
    use super::{PARALLEL_GROUPS, PROJECTIONS};

    #[test]
    fn every_projection_is_replayed_by_exactly_one_group() {
        for p in PROJECTIONS {
            let groups = PARALLEL_GROUPS.iter().filter(|g| g.contains(&p)).count();
            assert_eq!(groups, 1, "{}", p.name());
        }
    }
}
