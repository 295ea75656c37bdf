//! Connecting to PostgreSQL and applying the migrations.

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgPool};
use std::str::FromStr;
use std::time::Duration;

/// The project's migrations (`migrations/`), embedded in the binary.
pub static MIGRATOR: Migrator = sqlx::migrate!("../migrations");

/// How long a pooled connection may sit idle and still be handed out unchecked (as
/// HikariCP's bypass window, 500 ms there).
pub const CHECK_IF_IDLE_FOR: Duration = Duration::from_secs(1);

/// A pool whose connections carry one name of their own (`gigafactory-<pid>-<random>`,
/// [`pool_name`]), so a process can tell its own sessions from other `serve`
/// processes' on a shared server — across hosts too, where pids repeat (every
/// container's first process is pid 1).
/// JIT is off: our statements are short, and a plan misestimated past
/// `jit_above_cost` (a table not yet analysed) spent 100+ ms compiling.
/// Prepared statements keep their generic plan (`plan_cache_mode`): with the default,
/// PostgreSQL re-planned most of ours on every execution (a fifth of its CPU under the
/// drain, docs/performance.md). So no statement of ours may rely on a parameter's
/// value to be planned well: optional filters are left out of the SQL, not written as
/// `$n IS NULL OR …`.
///
/// A connection is checked (a `Sync` round trip) before it is handed out only when it
/// has been idle for [`CHECK_IF_IDLE_FOR`] or longer: sqlx's default checks every
/// acquisition, one round trip more per request and per batch (9 % of the server's
/// CPU under the drain, docs/performance.md), for a connection that answered a
/// moment ago. One that died since (a restarted server) fails its next statement
/// (`503`) and is dropped; the pool opens a fresh one.
pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    let options = PgConnectOptions::from_str(url)?
        .application_name(&format!(
            "{}{:08x}",
            process_prefix(),
            rand::random::<u32>()
        ))
        .options([("jit", "off"), ("plan_cache_mode", "force_generic_plan")]);
    PgPoolOptions::new()
        .max_connections(max_connections)
        .min_connections(1)
        // With the database gone, fail fast (503) instead of queueing requests.
        .acquire_timeout(Duration::from_secs(3))
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= CHECK_IF_IDLE_FOR {
                    conn.ping().await?;
                }
                Ok(true)
            })
        })
        .connect_with(options)
        .await
}

/// What every pool of this process names its connections with: `gigafactory-<pid>-`.
pub fn process_prefix() -> String {
    format!("gigafactory-{}-", std::process::id())
}

/// The name the connections of `pool` carry (`application_name`).
pub fn pool_name(pool: &PgPool) -> String {
    pool.connect_options()
        .get_application_name()
        .unwrap_or_default()
        .to_string()
}

/// Applies pending migrations (sqlx takes an advisory lock: several processes may
/// start at once).
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run(pool).await
}

/// Whether the database answers and every migration of this binary is applied.
pub async fn ready(pool: &PgPool) -> bool {
    let applied: Result<i64, _> =
        sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
            .fetch_one(pool)
            .await;
    matches!(applied, Ok(n) if n as usize >= MIGRATOR.iter().count())
}

/// A PostgreSQL URL with its database name replaced (the query string kept).
pub fn with_database(url: &str, db: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map(|(b, q)| (b, Some(q)))
        .unwrap_or((url, None));
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let path_start = base[scheme_end..]
        .find('/')
        .map(|i| scheme_end + i)
        .unwrap_or(base.len());
    format!(
        "{}/{}{}",
        &base[..path_start],
        db,
        query.map(|q| format!("?{q}")).unwrap_or_default()
    )
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn replaces_the_database_and_keeps_the_query() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/postgres", "x"),
            "postgres://postgres@127.0.0.1:5432/x"
        );
        assert_eq!(
            with_database("postgres://u:p@h:1/postgres?sslmode=disable", "x"),
            "postgres://u:p@h:1/x?sslmode=disable"
        );
        assert_eq!(with_database("postgres://h", "x"), "postgres://h/x");
    }
}
