//! `factory_view`: enrolled factories, their products, capabilities and capacity.
//! Health, load and leases are joined in at query time (liveness is not history).

use crate::{EventRecord, ProjectionError};
use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use gigafactory_domain::factory::Factory;
use sqlx::{PgConnection, Row};
use std::collections::HashMap;
use uuid::Uuid;

pub async fn apply(conn: &mut PgConnection, event: &EventRecord) -> Result<(), ProjectionError> {
    if event.aggregate_type != Factory::TYPE {
        return Ok(());
    }
    let id = factory_id_of(&event.aggregate_id);
    // Usually the command path has applied it already: check without a lock first.
    let current: Option<i64> =
        sqlx::query_scalar("SELECT version FROM factory_view WHERE factory_id = $1")
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?;
    if current.is_some_and(|v| v >= event.sequence) {
        return Ok(());
    }
    let row =
        sqlx::query("SELECT version, state FROM factory_view WHERE factory_id = $1 FOR UPDATE")
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?;
    let mut factory = match row {
        Some(r) if r.get::<i64, _>("version") >= event.sequence => return Ok(()),
        Some(r) => {
            serde_json::from_value::<Factory>(r.get("state")).map_err(ProjectionError::State)?
        }
        None => Factory::default(),
    };
    factory.apply(event.decode::<Factory>()?);
    let Some(spec) = &factory.spec else {
        return Ok(());
    };
    let products: Vec<&str> = spec.product_ids.iter().map(|p| p.as_str()).collect();
    sqlx::query(
        "INSERT INTO factory_view (factory_id, name, product_ids, capabilities, capacity, status,
             enrolled_at, version, state)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
         ON CONFLICT (factory_id) DO UPDATE SET status = EXCLUDED.status,
             version = EXCLUDED.version, state = EXCLUDED.state
         WHERE factory_view.version < EXCLUDED.version",
    )
    .bind(id)
    .bind(&spec.name)
    .bind(&products)
    .bind(&spec.capabilities)
    .bind(spec.capacity as i32)
    .bind(
        serde_json::to_value(factory.status)
            .unwrap()
            .as_str()
            .unwrap_or_default()
            .to_string(),
    )
    .bind(factory.enrolled_at)
    .bind(factory.version as i64)
    .bind(serde_json::to_value(&factory).expect("factory state serialises"))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The factory id in a factory stream id (`factory:<uuid>`).
pub fn factory_id_of(aggregate_id: &str) -> Uuid {
    aggregate_id
        .strip_prefix("factory:")
        .and_then(|s| Uuid::parse_str(s).ok())
        .unwrap_or_default()
}

/// A factory as the fleet map and the claim path need it.
#[derive(Debug, Clone, PartialEq)]
pub struct FactoryRow {
    pub factory_id: Uuid,
    pub name: String,
    pub product_ids: Vec<String>,
    pub capabilities: Vec<String>,
    pub capacity: i32,
    pub status: String,
    pub last_heartbeat_at: Option<DateTime<Utc>>,
    /// Seconds since the last heartbeat by the database clock (None: never).
    pub heartbeat_age_secs: Option<f64>,
}

fn row(r: &sqlx::postgres::PgRow) -> FactoryRow {
    FactoryRow {
        factory_id: r.get("factory_id"),
        name: r.get("name"),
        product_ids: r.get("product_ids"),
        capabilities: r.get("capabilities"),
        capacity: r.get("capacity"),
        status: r.get("status"),
        last_heartbeat_at: r.get("last_heartbeat_at"),
        heartbeat_age_secs: r.get("age"),
    }
}

const COLUMNS: &str = "SELECT f.factory_id, f.name, f.product_ids, f.capabilities, f.capacity,
        f.status, l.last_heartbeat_at,
        extract(epoch FROM now() - l.last_heartbeat_at)::float8 AS age";
const FROM: &str = " FROM factory_view f LEFT JOIN factory_liveness l USING (factory_id)";

/// A factory about to claim: its row (locked), the clock read after the lock, its
/// live leases and the queued job a preemption reserved a slot of it for, if the
/// reservation is still live.
pub struct ClaimingFactory {
    pub factory: FactoryRow,
    /// The claim's clock (SPEC §11), read once the factory's lock is held: a claim
    /// that waited judges leases — and dates its grant — by the time it got its turn.
    pub now: DateTime<Utc>,
    /// Leases not yet expired (an expired lease, swept or not, frees its slot: the
    /// holder can no longer write on it).
    pub live_leases: i64,
    pub nominated: Option<Uuid>,
}

/// Factories about to claim, holding their claims locks (see
/// [`claims_lock_key`]): each one's row, the clock (SPEC §11: the simulated offset
/// `clock_offset_ms` added; one reading for all), its live leases and its
/// nomination, by id (unknown ids are absent). Not in the locking statement: that
/// statement's snapshot would be from before the wait and miss the lease the
/// previous claim just committed. A renewal shares the lock before reading its
/// clock, so it cannot extend a lease this count takes for expired.
pub async fn for_claim_many(
    conn: &mut PgConnection,
    ids: &[Uuid],
    clock_offset_ms: f64,
) -> Result<HashMap<Uuid, ClaimingFactory>, sqlx::Error> {
    let rows = sqlx::query(&format!(
        "{COLUMNS}, c.now,
                (SELECT count(*) FROM job_view j
                 WHERE j.lease_factory_id = f.factory_id AND j.lease_expires_at > c.now) AS live_leases,
                (SELECT j.job_id FROM job_view j
                 WHERE j.nominated_factory_id = f.factory_id AND j.nominated_until > c.now
                   AND j.stage = 'queued'
                 ORDER BY j.nominated_until LIMIT 1) AS nominated
         {FROM}, (SELECT clock_timestamp() + $2 * interval '1 millisecond' AS now) AS c
         WHERE f.factory_id = ANY($1)"
    ))
    .bind(ids)
    .bind(clock_offset_ms)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .iter()
        .map(|r| {
            let factory = row(r);
            (
                factory.factory_id,
                ClaimingFactory {
                    factory,
                    now: r.get("now"),
                    live_leases: r.get("live_leases"),
                    nominated: r.get("nominated"),
                },
            )
        })
        .collect())
}

/// The advisory lock a factory's claims take in turn and its renewals share. Not a
/// row lock: locking a row gives the transaction an id at once, and the sequencer
/// gives no position past a transaction id still running — a claim would hold the
/// whole log back for its ranking and lock rounds. An advisory lock needs no id (the
/// claim gets one at its INSERT, just before it commits).
pub fn claims_lock_key(id: Uuid) -> String {
    format!("factory-claims/{id}")
}

/// Takes factory `id`'s claims lock until the transaction ends (what a claim holds
/// while it counts and grants).
pub async fn lock_for_claims(conn: &mut PgConnection, id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(claims_lock_key(id))
        .execute(conn)
        .await?;
    Ok(())
}

/// One factory.
pub async fn get(conn: &mut PgConnection, id: Uuid) -> Result<Option<FactoryRow>, sqlx::Error> {
    Ok(
        sqlx::query(&format!("{COLUMNS}{FROM} WHERE f.factory_id = $1"))
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?
            .as_ref()
            .map(row),
    )
}

/// Active factories serving any product in `scope` (`None` = all), in enrollment
/// order (ids are UUID v7), after the cursor id.
pub async fn list(
    conn: &mut PgConnection,
    scope: Option<&[String]>,
    after: Option<Uuid>,
    limit: i64,
) -> Result<Vec<FactoryRow>, sqlx::Error> {
    let sql = format!(
        "{COLUMNS}{FROM} WHERE f.status = 'active' AND ($1::text[] IS NULL OR f.product_ids && $1)
           AND ($2::uuid IS NULL OR f.factory_id > $2)
         ORDER BY f.factory_id LIMIT $3"
    );
    let rows = sqlx::query(&sql)
        .bind(scope)
        .bind(after)
        .bind(limit)
        .fetch_all(&mut *conn)
        .await?;
    Ok(rows.iter().map(row).collect())
}

/// An active factory with its load: live leases plus slots reserved by live
/// nominations.
#[derive(Debug, Clone)]
pub struct LoadRow {
    pub factory_id: Uuid,
    pub product_ids: Vec<String>,
    pub capabilities: Vec<String>,
    pub capacity: i32,
    pub load: i64,
}

/// Only factories heard from within `offline_after_secs` count: an offline factory's
/// free slots are not slots anyone can use.
pub async fn fleet_load(
    conn: &mut PgConnection,
    now: DateTime<Utc>,
    offline_after_secs: f64,
) -> Result<Vec<LoadRow>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT f.factory_id, f.product_ids, f.capabilities, f.capacity,
                (SELECT count(*) FROM job_view j WHERE j.lease_factory_id = f.factory_id AND j.lease_expires_at > $1)
              + (SELECT count(*) FROM job_view j WHERE j.nominated_factory_id = f.factory_id
                   AND j.nominated_until > $1 AND j.stage = 'queued') AS load
         FROM factory_view f JOIN factory_liveness l USING (factory_id)
         WHERE f.status = 'active' AND l.last_heartbeat_at > now() - make_interval(secs => $2)",
    )
    .bind(now)
    .bind(offline_after_secs)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .iter()
        .map(|r| LoadRow {
            factory_id: r.get("factory_id"),
            product_ids: r.get("product_ids"),
            capabilities: r.get("capabilities"),
            capacity: r.get("capacity"),
            load: r.get("load"),
        })
        .collect())
}
