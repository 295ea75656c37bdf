//! `job_view`: the job list, job detail and the claimable queue. Each row holds the
//! job aggregate's state at `version`, plus the columns queries filter and sort on.

use crate::log::{Arg, RideAlong};
use crate::{EventRecord, ProjectionError};
use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use gigafactory_domain::job::Job;
use gigafactory_domain::scheduler::WeightOverrides;
use gigafactory_domain::{JobId, Priority, Stage};
use serde_json::Value;
use sqlx::types::Json;
use sqlx::{PgConnection, Row};
use std::collections::{BTreeSet, HashMap};
use uuid::Uuid;

/// Applies a job event: the stored state advanced by one event.
pub async fn apply(conn: &mut PgConnection, event: &EventRecord) -> Result<(), ProjectionError> {
    apply_batch(conn, std::slice::from_ref(event)).await
}

/// Applies a batch of events in log order (events of other aggregates are skipped):
/// one query for the versions, one to lock and load the rows that are behind, and
/// one bulk upsert — whatever the batch's size.
pub async fn apply_batch(
    conn: &mut PgConnection,
    events: &[EventRecord],
) -> Result<(), ProjectionError> {
    let job_events: Vec<(Uuid, &EventRecord)> = events
        .iter()
        .filter(|e| e.aggregate_type == Job::TYPE)
        .map(|e| (job_id_of(&e.aggregate_id), e))
        .collect();
    if job_events.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = job_events
        .iter()
        .map(|(id, _)| *id)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    // Usually the command path has applied them already: check without a lock first,
    // so the projector does not lock (and make claims skip) rows that are current.
    let current: HashMap<Uuid, i64> =
        sqlx::query("SELECT job_id, version FROM job_view WHERE job_id = ANY($1)")
            .bind(&ids)
            .fetch_all(&mut *conn)
            .await?
            .iter()
            .map(|r| (r.get("job_id"), r.get("version")))
            .collect();
    let behind: BTreeSet<Uuid> = job_events
        .iter()
        .filter(|(id, e)| current.get(id).is_none_or(|v| *v < e.sequence))
        .map(|(id, _)| *id)
        .collect();
    if behind.is_empty() {
        return Ok(());
    }
    let behind: Vec<Uuid> = behind.into_iter().collect();
    let mut jobs: HashMap<Uuid, Job> = HashMap::new();
    for r in sqlx::query(
        "SELECT job_id, state FROM job_view WHERE job_id = ANY($1) ORDER BY job_id FOR UPDATE",
    )
    .bind(&behind)
    .fetch_all(&mut *conn)
    .await?
    {
        let Json(job) = r.try_get::<Json<Job>, _>("state")?;
        jobs.insert(r.get("job_id"), job);
    }
    let mut changed = BTreeSet::new();
    for (id, e) in job_events {
        if behind.binary_search(&id).is_err() {
            continue;
        }
        let job = jobs.entry(id).or_default();
        if e.sequence <= job.version as i64 {
            continue;
        }
        job.apply(e.decode::<Job>()?);
        changed.insert(id);
    }
    write_rows(conn, changed.iter().map(|id| &jobs[id])).await
}

/// The job id in a job stream id (`<product>/<uuid>`).
pub fn job_id_of(aggregate_id: &str) -> Uuid {
    aggregate_id
        .rsplit('/')
        .next()
        .and_then(|s| Uuid::parse_str(s).ok())
        .unwrap_or_default()
}

/// `job_view` rows, column by column (each bound as one array): no JSON document of
/// rows for the database to parse, and the state serialised straight to its text.
#[derive(Default)]
struct Rows {
    job_id: Vec<Uuid>,
    product_id: Vec<String>,
    title: Vec<String>,
    stage: Vec<String>,
    priority: Vec<String>,
    priority_rank: Vec<i64>,
    /// Array literals (`{"a","b"}`): a text[] per row cannot ride in one array.
    required_capabilities: Vec<String>,
    attempts: Vec<i64>,
    max_attempts: Vec<i64>,
    lease_factory_id: Vec<Option<Uuid>>,
    lease_epoch: Vec<Option<i64>>,
    lease_expires_at: Vec<Option<DateTime<Utc>>>,
    available_at: Vec<Option<DateTime<Utc>>>,
    created_at: Vec<Option<DateTime<Utc>>>,
    updated_at: Vec<Option<DateTime<Utc>>>,
    version: Vec<i64>,
    state: Vec<String>,
    affinity_factory_id: Vec<Option<Uuid>>,
    nominated_factory_id: Vec<Option<Uuid>>,
    nominated_until: Vec<Option<DateTime<Utc>>>,
}

impl Rows {
    /// Adds the job's row; a job not yet submitted has none.
    fn push(&mut self, job: &Job) {
        let Some(spec) = job.spec.as_ref() else {
            return;
        };
        let lease = job.lease.as_ref();
        self.job_id.push(spec.job_id.0);
        self.product_id.push(spec.product_id.as_str().to_string());
        self.title.push(spec.title.clone());
        self.stage.push(job.stage.as_str().to_string());
        self.priority.push(spec.priority.as_str().to_string());
        self.priority_rank.push(spec.priority.rank().into());
        self.required_capabilities
            .push(array_literal(&spec.required_capabilities));
        self.attempts.push(job.attempts.into());
        self.max_attempts.push(spec.max_attempts.into());
        self.lease_factory_id.push(lease.map(|l| l.factory_id.0));
        self.lease_epoch.push(lease.map(|l| l.epoch as i64));
        self.lease_expires_at.push(lease.map(|l| l.expires_at));
        self.available_at.push(job.available_at);
        self.created_at.push(job.created_at);
        self.updated_at.push(job.updated_at);
        self.version.push(job.version as i64);
        self.state
            .push(serde_json::to_string(job).expect("job state serialises"));
        self.affinity_factory_id
            .push(job.checkpoint_factory.map(|f| f.0));
        self.nominated_factory_id
            .push(job.nomination.as_ref().map(|n| n.factory_id.0));
        self.nominated_until
            .push(job.nomination.as_ref().map(|n| n.until));
    }

    fn into_args(self) -> Vec<Arg> {
        vec![
            Arg::Uuids(self.job_id),
            Arg::Texts(self.product_id),
            Arg::Texts(self.title),
            Arg::Texts(self.stage),
            Arg::Texts(self.priority),
            Arg::Ints(self.priority_rank),
            Arg::Texts(self.required_capabilities),
            Arg::Ints(self.attempts),
            Arg::Ints(self.max_attempts),
            Arg::MaybeUuids(self.lease_factory_id),
            Arg::MaybeInts(self.lease_epoch),
            Arg::MaybeTimes(self.lease_expires_at),
            Arg::MaybeTimes(self.available_at),
            Arg::MaybeTimes(self.created_at),
            Arg::MaybeTimes(self.updated_at),
            Arg::Ints(self.version),
            Arg::Texts(self.state),
            Arg::MaybeUuids(self.affinity_factory_id),
            Arg::MaybeUuids(self.nominated_factory_id),
            Arg::MaybeTimes(self.nominated_until),
        ]
    }
}

/// A PostgreSQL array literal of `items` (each quoted, `"` and `\` escaped).
fn array_literal(items: &[String]) -> String {
    let mut out = String::from("{");
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push('"');
        for c in item.chars() {
            if c == '"' || c == '\\' {
                out.push('\\');
            }
            out.push(c);
        }
        out.push('"');
    }
    out.push('}');
    out
}

/// The `job_view` upsert of the columns in `$1`…`$20` ([`Rows`]); a row never
/// replaces a newer version.
const UPSERT: &str =
    "INSERT INTO job_view (job_id, product_id, title, stage, priority, priority_rank,
         required_capabilities, attempts, max_attempts, lease_factory_id, lease_epoch,
         lease_expires_at, available_at, created_at, updated_at, version, state,
         affinity_factory_id, nominated_factory_id, nominated_until)
     SELECT job_id, product_id, title, stage, priority, priority_rank::smallint,
         required_capabilities::text[], attempts::int, max_attempts::int, lease_factory_id,
         lease_epoch, lease_expires_at, available_at, created_at, updated_at, version,
         state::json, affinity_factory_id, nominated_factory_id, nominated_until
     FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bigint[],
                 $7::text[], $8::bigint[], $9::bigint[], $10::uuid[], $11::bigint[],
                 $12::timestamptz[], $13::timestamptz[], $14::timestamptz[], $15::timestamptz[],
                 $16::bigint[], $17::text[], $18::uuid[], $19::uuid[], $20::timestamptz[])
          AS r(job_id, product_id, title, stage, priority, priority_rank,
               required_capabilities, attempts, max_attempts, lease_factory_id, lease_epoch,
               lease_expires_at, available_at, created_at, updated_at, version, state,
               affinity_factory_id, nominated_factory_id, nominated_until)
     ON CONFLICT (job_id) DO UPDATE SET title = EXCLUDED.title, stage = EXCLUDED.stage,
         priority = EXCLUDED.priority, priority_rank = EXCLUDED.priority_rank,
         attempts = EXCLUDED.attempts, lease_factory_id = EXCLUDED.lease_factory_id,
         lease_epoch = EXCLUDED.lease_epoch, lease_expires_at = EXCLUDED.lease_expires_at,
         available_at = EXCLUDED.available_at, updated_at = EXCLUDED.updated_at,
         version = EXCLUDED.version, state = EXCLUDED.state,
         affinity_factory_id = EXCLUDED.affinity_factory_id,
         nominated_factory_id = EXCLUDED.nominated_factory_id,
         nominated_until = EXCLUDED.nominated_until
     WHERE job_view.version < EXCLUDED.version";

/// Upserts the jobs' rows in one statement; a row never replaces a newer version.
async fn write_rows<'a>(
    conn: &mut PgConnection,
    jobs: impl IntoIterator<Item = &'a Job>,
) -> Result<(), ProjectionError> {
    if let Some(write) = upsert(jobs) {
        write.run_alone(conn).await?;
    }
    Ok(())
}

/// The jobs' rows as of their versions, written by the statement that appends their
/// events (the command path holds the jobs it just advanced); `None` when there is
/// nothing to write.
pub fn write_along(jobs: &[&Job]) -> Option<RideAlong> {
    upsert(jobs.iter().copied())
}

/// The upsert of the jobs' rows; `None` when there are none.
fn upsert<'a>(jobs: impl IntoIterator<Item = &'a Job>) -> Option<RideAlong> {
    let mut rows = Rows::default();
    for job in jobs {
        rows.push(job);
    }
    (!rows.job_id.is_empty()).then(|| RideAlong {
        sql: UPSERT.to_string(),
        args: rows.into_args(),
    })
}

/// One job as the read model has it.
pub async fn get(conn: &mut PgConnection, job_id: JobId) -> Result<Option<Job>, ProjectionError> {
    let state: Option<Json<Job>> =
        sqlx::query_scalar("SELECT state FROM job_view WHERE job_id = $1")
            .bind(job_id.0)
            .fetch_optional(&mut *conn)
            .await?;
    Ok(state.map(|Json(job)| job))
}

/// The clock (`clock_timestamp()` plus the simulated offset `clock_offset_ms`) and
/// job `job_id` as the read model has it, in one statement. The row is written with
/// every job event in the event's own transaction, so its state is the job's stream
/// folded to its `version` — what an optimistic command decides on.
pub async fn state_at_clock(
    conn: &mut PgConnection,
    job_id: Uuid,
    clock_offset_ms: f64,
) -> Result<(DateTime<Utc>, Option<Job>), ProjectionError> {
    let (now, mut jobs) = states_at_clock(conn, &[job_id], clock_offset_ms).await?;
    Ok((now, jobs.remove(&job_id)))
}

/// As [`state_at_clock`], for several jobs (those without a row are left out).
pub async fn states_at_clock(
    conn: &mut PgConnection,
    job_ids: &[Uuid],
    clock_offset_ms: f64,
) -> Result<(DateTime<Utc>, HashMap<Uuid, Job>), ProjectionError> {
    let rows = sqlx::query(
        "SELECT c.now, j.job_id, j.state
         FROM (SELECT clock_timestamp() + $2 * interval '1 millisecond' AS now) AS c
         LEFT JOIN job_view j ON j.job_id = ANY($1)",
    )
    .bind(job_ids)
    .bind(clock_offset_ms)
    .fetch_all(&mut *conn)
    .await?;
    let now = crate::log::clock_of(&rows);
    let mut jobs = HashMap::new();
    for r in &rows {
        if let Some(Json(job)) = r.try_get::<Option<Json<Job>>, _>("state")? {
            jobs.insert(r.get("job_id"), job);
        }
    }
    Ok((now, jobs))
}

/// Filters for the job list.
#[derive(Debug, Default, Clone)]
pub struct JobFilter {
    /// Products the caller may see (`None` = all).
    pub scope: Option<Vec<String>>,
    pub product_id: Option<String>,
    pub stage: Option<Stage>,
    pub priority: Option<Priority>,
    /// Keyset cursor: (created_at, job_id) of the last item of the previous page.
    pub after: Option<(DateTime<Utc>, Uuid)>,
    pub limit: i64,
}

/// Jobs, newest first, after the cursor. Only the filters given are in the SQL:
/// our connections use generic plans (`db::connect`), which cannot drop an
/// `$n IS NULL OR …` branch — a product filter must reach the planner as
/// `product_id = $n` to use `job_view_product` for the order.
pub async fn list(conn: &mut PgConnection, f: &JobFilter) -> Result<Vec<Job>, ProjectionError> {
    let mut q = sqlx::QueryBuilder::<sqlx::Postgres>::new("SELECT state FROM job_view WHERE true");
    if let Some(scope) = &f.scope {
        q.push(" AND product_id = ANY(").push_bind(scope).push(")");
    }
    if let Some(product) = &f.product_id {
        q.push(" AND product_id = ").push_bind(product);
    }
    if let Some(stage) = f.stage {
        q.push(" AND stage = ").push_bind(stage.as_str());
    }
    if let Some(priority) = f.priority {
        q.push(" AND priority = ").push_bind(priority.as_str());
    }
    if let Some((created_at, job_id)) = f.after {
        q.push(" AND (created_at, job_id) < (")
            .push_bind(created_at)
            .push(", ")
            .push_bind(job_id)
            .push(")");
    }
    q.push(" ORDER BY created_at DESC, job_id DESC LIMIT ")
        .push_bind(f.limit);
    let rows = q.build().fetch_all(&mut *conn).await?;
    rows.iter()
        .map(|r| Ok(r.try_get::<Json<Job>, _>("state")?.0))
        .collect()
}

/// The products of several jobs (unknown ids are left out), for scoping a batch.
pub async fn products_of(
    conn: &mut PgConnection,
    job_ids: &[Uuid],
) -> Result<HashMap<Uuid, String>, sqlx::Error> {
    let rows = sqlx::query("SELECT job_id, product_id FROM job_view WHERE job_id = ANY($1)")
        .bind(job_ids)
        .fetch_all(&mut *conn)
        .await?;
    Ok(rows
        .iter()
        .map(|r| (r.get("job_id"), r.get("product_id")))
        .collect())
}

/// A claimable job as the scheduler sees it.
#[derive(Debug, Clone)]
pub struct CandidateRow {
    pub job_id: Uuid,
    pub product_id: String,
    pub priority: String,
    pub created_at: DateTime<Utc>,
    pub required_capabilities: Vec<String>,
    pub affinity_factory_id: Option<Uuid>,
    /// The factory a live preemption reservation holds this job for, if any: only it
    /// may be granted the job until the reservation ends.
    pub nominated_for: Option<Uuid>,
}

/// What the scheduler needs to rank a factory's candidates, read in one statement.
#[derive(Debug, Clone, Default)]
pub struct CandidateSet {
    pub rows: Vec<CandidateRow>,
    /// Leased jobs per product of the candidates (fairness); absent: none.
    pub running: HashMap<String, i64>,
    /// The weight override (`product_settings_view.weights`) of each candidate's
    /// product that has one.
    pub weight_overrides: HashMap<String, WeightOverrides>,
}

/// The claim's bounded candidate set for factories of one profile (`products`,
/// `capabilities`; one factory, or several claiming together): the best `per_set`
/// queued, available jobs of each of `products` they may run by priority, ∪ the
/// oldest `per_set` of each (a starving job is always seen), ∪ those whose
/// checkpoint one of `factory_ids` holds (affinity). A job a preemption reserved for
/// one of them is in the set with `nominated_for` naming it. One statement, no row locks: the claim then takes the stream
/// lock of the best one no other claimer holds, and the job aggregate has the last
/// word. Each set is read per product from an index in the set's order (migration 8).
/// The same statement brings each candidate product's running count and weight
/// override (the settings projection's table, read here to save two round trips).
pub async fn candidates(
    conn: &mut PgConnection,
    products: &[String],
    capabilities: &[String],
    factory_ids: &[Uuid],
    now: DateTime<Utc>,
    per_set: i64,
) -> Result<CandidateSet, ProjectionError> {
    let rows = sqlx::query(candidates_sql())
        .bind(products)
        .bind(capabilities)
        .bind(now)
        .bind(per_set)
        .bind(factory_ids)
        .fetch_all(&mut *conn)
        .await?;
    let mut set = CandidateSet::default();
    let mut seen = std::collections::HashSet::new();
    for r in rows {
        let job_id: Uuid = r.get("job_id");
        if !seen.insert(job_id) {
            continue;
        }
        let product_id: String = r.get("product_id");
        if let Some(n) = r.get::<Option<i64>, _>("running") {
            set.running.insert(product_id.clone(), n);
        }
        if let Some(stored) = r.get::<Option<Value>, _>("weights") {
            if let Some(w) = crate::settings::overrides_of(stored)? {
                set.weight_overrides.insert(product_id.clone(), w);
            }
        }
        set.rows.push(CandidateRow {
            job_id,
            product_id,
            priority: r.get("priority"),
            created_at: r.get("created_at"),
            required_capabilities: r.get("required_capabilities"),
            affinity_factory_id: r.get("affinity_factory_id"),
            nominated_for: r.get("nominated_for"),
        });
    }
    Ok(set)
}

/// The statement [`candidates`] runs: `$1` products, `$2` the capabilities, `$3` now,
/// `$4` rows per set, `$5` the factories (public so that a test can plan it). Built
/// once per process.
pub fn candidates_sql() -> &'static str {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SQL.get_or_init(build_candidates_sql)
}

fn build_candidates_sql() -> String {
    // `= '{}' OR`: the planner estimates `<@` far too selective (and would sort a
    // sequential scan); most jobs need no capability, which the statistics know.
    let filters = "j.stage = 'queued'
           AND (j.required_capabilities = '{}' OR j.required_capabilities <@ $2)
           AND (j.available_at IS NULL OR j.available_at <= $3)
           AND (j.nominated_until IS NULL OR j.nominated_until <= $3 OR j.nominated_factory_id = ANY($5))";
    let columns = "j.job_id, j.product_id, j.priority, j.created_at, j.required_capabilities,
                   j.affinity_factory_id,
                   CASE WHEN j.nominated_until > $3 THEN j.nominated_factory_id END AS nominated_for";
    let per_product = |order: &str| {
        format!(
            "SELECT c.* FROM unnest($1::text[]) AS p(product_id) CROSS JOIN LATERAL (
                 SELECT {columns} FROM job_view j
                 WHERE j.product_id = p.product_id AND {filters}
                 ORDER BY {order} LIMIT $4) AS c"
        )
    };
    format!(
        "WITH candidate AS (({}) UNION ALL ({}) UNION ALL (
             SELECT {columns} FROM job_view j
             WHERE j.affinity_factory_id = ANY($5) AND j.product_id = ANY($1) AND {filters}
             ORDER BY j.created_at, j.job_id LIMIT $4)),
         running AS (
             SELECT j.product_id, count(*) AS n FROM job_view j
             WHERE j.lease_factory_id IS NOT NULL
               AND j.product_id IN (SELECT product_id FROM candidate)
             GROUP BY j.product_id)
         SELECT candidate.*, running.n AS running, s.weights
         FROM candidate
         LEFT JOIN running USING (product_id)
         LEFT JOIN product_settings_view s USING (product_id)",
        per_product("j.priority_rank, j.created_at, j.job_id"),
        // Ids descending among equal ages: only the queue index delivers this order
        // (migration 16), so a generic plan never walks `job_view_product` instead.
        per_product("j.created_at, j.job_id DESC"),
    )
}

/// A lease as the fleet map shows it.
#[derive(Debug, Clone)]
pub struct HeldLease {
    pub factory_id: Uuid,
    pub job_id: Uuid,
    pub product_id: String,
    pub epoch: i64,
    pub expires_at: DateTime<Utc>,
}

/// The leases held by these factories.
pub async fn leases_of(
    conn: &mut PgConnection,
    factories: &[Uuid],
) -> Result<Vec<HeldLease>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT lease_factory_id, job_id, product_id, lease_epoch, lease_expires_at FROM job_view
         WHERE lease_factory_id = ANY($1) ORDER BY lease_expires_at",
    )
    .bind(factories)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .iter()
        .map(|r| HeldLease {
            factory_id: r.get("lease_factory_id"),
            job_id: r.get("job_id"),
            product_id: r.get("product_id"),
            epoch: r.get("lease_epoch"),
            expires_at: r.get("lease_expires_at"),
        })
        .collect())
}

/// Jobs whose lease has expired by the database clock, oldest expiry first.
pub async fn expired_leases(
    conn: &mut PgConnection,
    now: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<(Uuid, String)>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT job_id, product_id FROM job_view
         WHERE lease_expires_at <= $2 AND lease_factory_id IS NOT NULL
         ORDER BY lease_expires_at LIMIT $1",
    )
    .bind(limit)
    .bind(now)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .iter()
        .map(|r| (r.get("job_id"), r.get("product_id")))
        .collect())
}

/// Jobs leased by revoked factories (their leases must be released).
pub async fn leased_by_revoked(
    conn: &mut PgConnection,
    limit: i64,
) -> Result<Vec<(Uuid, String, Uuid)>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT j.job_id, j.product_id, j.lease_factory_id FROM job_view j
         JOIN factory_view f ON f.factory_id = j.lease_factory_id
         WHERE f.status = 'revoked' LIMIT $1",
    )
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .iter()
        .map(|r| {
            (
                r.get("job_id"),
                r.get("product_id"),
                r.get("lease_factory_id"),
            )
        })
        .collect())
}

/// The earliest instant a backing-off queued job becomes claimable, if any.
pub async fn next_available_at(
    conn: &mut PgConnection,
) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT min(available_at) FROM job_view WHERE stage = 'queued' AND available_at > now()",
    )
    .fetch_one(&mut *conn)
    .await
}

/// Queued, available critical jobs without a live nomination, oldest first: the
/// ones preemption may make room for.
pub async fn critical_waiting(
    conn: &mut PgConnection,
    now: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<CandidateRow>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT job_id, product_id, priority, created_at, required_capabilities, affinity_factory_id
         FROM job_view
         WHERE stage = 'queued' AND priority = 'critical'
           AND (available_at IS NULL OR available_at <= $1)
           AND (nominated_until IS NULL OR nominated_until <= $1)
         ORDER BY created_at, job_id LIMIT $2",
    )
    .bind(now)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .iter()
        .map(|r| CandidateRow {
            job_id: r.get("job_id"),
            product_id: r.get("product_id"),
            priority: r.get("priority"),
            created_at: r.get("created_at"),
            required_capabilities: r.get("required_capabilities"),
            affinity_factory_id: r.get("affinity_factory_id"),
            // Only jobs without a live reservation are read.
            nominated_for: None,
        })
        .collect())
}

/// A job holding a live lease, for preemption.
#[derive(Debug, Clone)]
pub struct RunningRow {
    pub job_id: Uuid,
    pub product_id: String,
    pub priority: String,
    pub factory_id: Uuid,
    pub started_at: DateTime<Utc>,
}

/// Jobs with a live lease on factories serving any of `products`.
pub async fn running(
    conn: &mut PgConnection,
    now: DateTime<Utc>,
) -> Result<Vec<RunningRow>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT j.job_id, j.product_id, j.priority, j.lease_factory_id, r.started_at
         FROM job_view j JOIN run_view r ON r.job_id = j.job_id AND r.epoch = j.lease_epoch
         WHERE j.lease_factory_id IS NOT NULL AND j.lease_expires_at > $1",
    )
    .bind(now)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .iter()
        .map(|r| RunningRow {
            job_id: r.get("job_id"),
            product_id: r.get("product_id"),
            priority: r.get("priority"),
            factory_id: r.get("lease_factory_id"),
            started_at: r.get("started_at"),
        })
        .collect())
}

#[cfg(test)]
mod array_literal_tests {
    use super::array_literal;

    #[test]
    fn quotes_every_item_and_escapes_quotes_and_backslashes() {
        assert_eq!(array_literal(&[]), "{}");
        let items = [
            "gpu".to_string(),
            r#"a"b\c"#.to_string(),
            "x,y {z}".to_string(),
        ];
        assert_eq!(array_literal(&items), r#"{"gpu","a\"b\\c","x,y {z}"}"#);
    }
}
