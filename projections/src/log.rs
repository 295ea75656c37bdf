//! The event log: append, load a stream, give positions (the sequencer), read by
//! position. Appends go through our own SQL (not postgres-es's `persist`, which opens
//! its own transaction) so that a command's events, its read-model updates and the
//! claim's row locks share one transaction. The table is postgres-es's, so its
//! `PostgresEventRepository` reads it too.

use crate::ProjectionError;
use chrono::{DateTime, Utc};
use cqrs_es::{Aggregate, DomainEvent};
use serde_json::Value;
use sqlx::{PgConnection, PgPool, Row};

/// The channel on which every appending transaction notifies (on commit).
pub const EVENTS_CHANNEL: &str = "gigafactory_events";

/// An event to append.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub aggregate_type: &'static str,
    pub aggregate_id: String,
    pub sequence: i64,
    pub event_type: String,
    pub event_version: String,
    pub payload: Value,
    pub product_id: Option<String>,
    pub visible_to: Vec<String>,
}

impl NewEvent {
    /// Serialises a domain event of aggregate `A` at `sequence`.
    pub fn of<A: Aggregate>(
        aggregate_id: &str,
        sequence: u64,
        event: &A::Event,
        product_id: Option<&str>,
        visible_to: &[String],
    ) -> Self {
        Self {
            aggregate_type: A::TYPE,
            aggregate_id: aggregate_id.to_string(),
            sequence: sequence as i64,
            event_type: event.event_type(),
            event_version: event.event_version(),
            payload: serde_json::to_value(event).expect("domain events serialise"),
            product_id: product_id.map(str::to_string),
            visible_to: visible_to.to_vec(),
        }
    }
}

/// An event as stored. `position` is `None` until the sequencer has given it one.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRecord {
    pub id: i64,
    pub position: Option<i64>,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub event_type: String,
    /// The payload as stored: JSON text, parsed only by whoever needs it (a replay's
    /// timeline copies it as it is; projections decode it straight into their event).
    pub payload: String,
    pub recorded_at: DateTime<Utc>,
    pub product_id: Option<String>,
    pub visible_to: Vec<String>,
}

impl EventRecord {
    /// The payload as a JSON value.
    pub fn payload_value(&self) -> Value {
        serde_json::from_str(&self.payload).unwrap_or(Value::Null)
    }

    /// Deserialises the payload as aggregate `A`'s event.
    pub fn decode<A: Aggregate>(&self) -> Result<A::Event, ProjectionError> {
        serde_json::from_str::<A::Event>(&self.payload).map_err(|source| ProjectionError::Payload {
            event_type: self.event_type.clone(),
            aggregate_id: self.aggregate_id.clone(),
            sequence: self.sequence,
            source,
        })
    }
}

/// Why an append failed.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// Another writer appended to the stream first (optimistic concurrency).
    #[error("concurrent append to the same stream")]
    Conflict,
    #[error(transparent)]
    Db(sqlx::Error),
}

/// A read-model write that rides along with an append: a data-modifying CTE of the
/// append's own statement, so a command writes its events and those rows in one
/// round trip. It may read the rows just appended as `appended` (columns
/// `aggregate_type, aggregate_id, sequence, event_type, payload, recorded_at`); it
/// sees the tables as they were before the statement (all CTEs share one snapshot),
/// so two ride-alongs must not write the same row.
#[derive(Debug, Clone)]
pub struct RideAlong {
    /// The statement, its parameters numbered from `$1` (renumbered when composed).
    pub sql: String,
    /// Its parameters, in order.
    pub args: Vec<Arg>,
}

/// A parameter of a [`RideAlong`].
#[derive(Debug, Clone)]
pub enum Arg {
    Json(Value),
    Uuids(Vec<uuid::Uuid>),
    MaybeUuids(Vec<Option<uuid::Uuid>>),
    Texts(Vec<String>),
    Ints(Vec<i64>),
    MaybeInts(Vec<Option<i64>>),
    Floats(Vec<Option<f64>>),
    Times(Vec<DateTime<Utc>>),
    MaybeTimes(Vec<Option<DateTime<Utc>>>),
}

impl Arg {
    /// Binds this parameter to `query`.
    pub fn bind<'q>(
        &'q self,
        query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
        match self {
            Arg::Json(v) => query.bind(v),
            Arg::Uuids(v) => query.bind(v),
            Arg::MaybeUuids(v) => query.bind(v),
            Arg::MaybeInts(v) => query.bind(v),
            Arg::Texts(v) => query.bind(v),
            Arg::Ints(v) => query.bind(v),
            Arg::Floats(v) => query.bind(v),
            Arg::Times(v) => query.bind(v),
            Arg::MaybeTimes(v) => query.bind(v),
        }
    }
}

impl RideAlong {
    /// Runs it as a statement of its own (the projector's and the replay's way).
    pub async fn run_alone(&self, conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        let mut query = sqlx::query(&self.sql);
        for arg in &self.args {
            query = arg.bind(query);
        }
        query.execute(conn).await?;
        Ok(())
    }
}

/// `sql` with each parameter `$n` renumbered `$n + offset`.
fn renumber(sql: &str, offset: usize) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        out.push(c);
        if c != '$' {
            continue;
        }
        let mut digits = String::new();
        while let Some(d) = chars.peek().filter(|d| d.is_ascii_digit()) {
            digits.push(*d);
            chars.next();
        }
        match digits.parse::<usize>() {
            Ok(n) => out.push_str(&(n + offset).to_string()),
            Err(_) => out.push_str(&digits),
        }
    }
    out
}

/// Who writes the read models of the events being appended. The projector passes
/// over events whose own transaction wrote them (the events' `read_models_written`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadModels {
    /// The appending transaction writes every read model the events touch (in the
    /// append's own statement, or in the rest of the same transaction).
    WrittenByThisTransaction,
    /// The projector applies the events once they have positions.
    LeftToTheProjector,
}

/// Appends events in the caller's transaction, for the projector to apply. Listeners
/// are told after the commit (see [`notify_committed`]), never from inside it.
pub async fn append(
    tx: &mut PgConnection,
    events: &[NewEvent],
) -> Result<Vec<EventRecord>, AppendError> {
    append_with(tx, events, &[], ReadModels::LeftToTheProjector).await
}

/// Appends events and runs `along` in the same statement (see [`RideAlong`]).
/// `read_models` is the caller's word on who writes the rest: with
/// [`ReadModels::WrittenByThisTransaction`], a commit without them would leave read
/// models behind that no projector pass repairs (a rebuild would).
pub async fn append_with(
    tx: &mut PgConnection,
    events: &[NewEvent],
    along: &[RideAlong],
    read_models: ReadModels,
) -> Result<Vec<EventRecord>, AppendError> {
    if events.is_empty() {
        return Ok(vec![]);
    }
    let mut types = Vec::new();
    let mut ids = Vec::new();
    let mut seqs = Vec::new();
    let mut etypes = Vec::new();
    let mut versions = Vec::new();
    let mut payloads = Vec::new();
    let mut products = Vec::new();
    let mut visible = Vec::new();
    for e in events {
        types.push(e.aggregate_type.to_string());
        ids.push(e.aggregate_id.clone());
        seqs.push(e.sequence);
        etypes.push(e.event_type.clone());
        versions.push(e.event_version.clone());
        payloads.push(e.payload.to_string());
        products.push(e.product_id.clone());
        // text[] of text[] is not a thing in Postgres: pass as one joined string.
        visible.push(e.visible_to.join("\u{1f}"));
    }
    // The mark is named only when set: the column's default says the rest.
    let (mark_column, mark_value) = match read_models {
        ReadModels::WrittenByThisTransaction => (", read_models_written", ", true"),
        ReadModels::LeftToTheProjector => ("", ""),
    };
    let mut sql = format!(
        "WITH appended AS (
         INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version,
                             payload, metadata, product_id, visible_to{mark_column})
         SELECT t, i, s, et, v, p::json, '{{}}'::json, pr,
                CASE WHEN vis = '' THEN '{{}}'::text[] ELSE string_to_array(vis, chr(31)) END
                {mark_value}
         FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[], $6::text[],
                     $7::text[], $8::text[]) AS u(t, i, s, et, v, p, pr, vis)
         RETURNING aggregate_type, aggregate_id, sequence, event_type, payload, id, recorded_at)",
    );
    let mut args = Vec::new();
    for (n, write) in along.iter().enumerate() {
        let text = renumber(&write.sql, 8 + args.len());
        args.extend(write.args.iter());
        sql.push_str(&format!(", along_{n} AS ({text})"));
    }
    sql.push_str(" SELECT aggregate_type, aggregate_id, sequence, id, recorded_at FROM appended");
    let mut query = sqlx::query(&sql)
        .bind(&types)
        .bind(&ids)
        .bind(&seqs)
        .bind(&etypes)
        .bind(&versions)
        .bind(&payloads)
        .bind(&products)
        .bind(&visible);
    for arg in args {
        query = arg.bind(query);
    }
    let rows = query.fetch_all(&mut *tx).await.map_err(|e| match &e {
        sqlx::Error::Database(d) if d.is_unique_violation() => AppendError::Conflict,
        _ => AppendError::Db(e),
    })?;
    // RETURNING's order is not promised: match each row to its event by its primary
    // key (aggregate type, stream, sequence).
    type Key = (String, String, i64);
    let stored: std::collections::HashMap<Key, (i64, DateTime<Utc>)> = rows
        .iter()
        .map(|r| {
            (
                (
                    r.get("aggregate_type"),
                    r.get("aggregate_id"),
                    r.get("sequence"),
                ),
                (r.get("id"), r.get("recorded_at")),
            )
        })
        .collect();
    events
        .iter()
        .zip(payloads)
        .map(|(e, payload)| {
            let (id, recorded_at) = *stored
                .get(&(
                    e.aggregate_type.to_string(),
                    e.aggregate_id.clone(),
                    e.sequence,
                ))
                .ok_or_else(|| AppendError::Db(sqlx::Error::RowNotFound))?;
            Ok(EventRecord {
                id,
                position: None,
                aggregate_type: e.aggregate_type.to_string(),
                aggregate_id: e.aggregate_id.clone(),
                sequence: e.sequence,
                event_type: e.event_type.clone(),
                payload,
                recorded_at,
                product_id: e.product_id.clone(),
                visible_to: e.visible_to.clone(),
            })
        })
        .collect()
}

/// Tells every listening process that events were committed (a transaction of its
/// own: it takes the notification-queue lock only for a moment and writes no WAL).
pub async fn notify_committed(pool: &PgPool, payload: &str) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(EVENTS_CHANNEL)
        .bind(payload)
        .execute(pool)
        .await?;
    Ok(())
}

/// Whether a session other than `own_name`'s pool is connected to this database as
/// a Gigafactory process (`application_name` `gigafactory-…`): someone who may be
/// listening for [`notify_committed`].
pub async fn others_connected(pool: &PgPool, own_name: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_stat_activity
                        WHERE datname = current_database()
                          AND application_name LIKE 'gigafactory-%'
                          AND application_name <> $1)",
    )
    .bind(own_name)
    .fetch_one(pool)
    .await
}

/// Loads several aggregates of type `A` in one query (a batch command holds all
/// their stream locks). A stream with no events comes back as `A::default()`.
pub async fn load_many<A: Aggregate>(
    conn: &mut PgConnection,
    aggregate_ids: &[String],
) -> Result<std::collections::HashMap<String, A>, ProjectionError> {
    let rows = sqlx::query(
        "SELECT aggregate_id, sequence, event_type, payload::text AS payload FROM events
         WHERE aggregate_type = $1 AND aggregate_id = ANY($2) ORDER BY aggregate_id, sequence",
    )
    .bind(A::TYPE)
    .bind(aggregate_ids)
    .fetch_all(&mut *conn)
    .await?;
    fold_streams(aggregate_ids, &rows)
}

/// As [`load_many`], and reads the clock (`clock_timestamp()` plus the simulated
/// offset `clock_offset_ms`) in the same statement: for a transaction that began
/// holding the streams' writer locks ([`crate::turns`]), the time it got its turn.
pub async fn load_many_at_clock<A: Aggregate>(
    conn: &mut PgConnection,
    aggregate_ids: &[String],
    clock_offset_ms: f64,
) -> Result<(DateTime<Utc>, std::collections::HashMap<String, A>), ProjectionError> {
    let rows = sqlx::query(
        "SELECT c.now, e.aggregate_id, e.sequence, e.event_type, e.payload
         FROM (SELECT clock_timestamp() + $3 * interval '1 millisecond' AS now) AS c
         LEFT JOIN LATERAL (
             SELECT aggregate_id, sequence, event_type, payload::text AS payload FROM events
             WHERE aggregate_type = $1 AND aggregate_id = ANY($2)) AS e ON true
         ORDER BY e.aggregate_id, e.sequence",
    )
    .bind(A::TYPE)
    .bind(aggregate_ids)
    .bind(clock_offset_ms)
    .fetch_all(&mut *conn)
    .await?;
    Ok((clock_of(&rows), fold_streams(aggregate_ids, &rows)?))
}

/// The `now` column of a statement that reads the clock in a one-row subquery
/// left-joined to what it loads (so at least one row always comes back).
pub fn clock_of(rows: &[sqlx::postgres::PgRow]) -> DateTime<Utc> {
    rows.first()
        .map(|r| r.get("now"))
        .expect("the clock row is always there")
}

/// Folds `(aggregate_id, sequence, event_type, payload jsonb)` rows, in sequence
/// order per stream, into the aggregates of `aggregate_ids` (a stream with no
/// events — or only a row whose `sequence` is NULL — is `A::default()`).
pub fn fold_streams<A: Aggregate>(
    aggregate_ids: &[String],
    rows: &[sqlx::postgres::PgRow],
) -> Result<std::collections::HashMap<String, A>, ProjectionError> {
    let mut aggregates: std::collections::HashMap<String, A> = aggregate_ids
        .iter()
        .map(|id| (id.clone(), A::default()))
        .collect();
    for row in rows {
        if row.get::<Option<i64>, _>("sequence").is_none() {
            continue;
        }
        let id: String = row.get("aggregate_id");
        let event = decode_row::<A>(row, &id)?;
        aggregates.entry(id).or_default().apply(event);
    }
    Ok(aggregates)
}

/// The event in a `(sequence, event_type, payload text)` row of stream `aggregate_id`
/// (the payload's stored text, decoded straight into the event).
fn decode_row<A: Aggregate>(
    row: &sqlx::postgres::PgRow,
    aggregate_id: &str,
) -> Result<A::Event, ProjectionError> {
    let payload: &str = row.get("payload");
    serde_json::from_str(payload).map_err(|source| ProjectionError::Payload {
        event_type: row.get("event_type"),
        aggregate_id: aggregate_id.to_string(),
        sequence: row.get("sequence"),
        source,
    })
}

/// Loads aggregate `A` as it was at `version` (events with sequence ≤ version).
pub async fn load_until<A: Aggregate>(
    conn: &mut PgConnection,
    aggregate_id: &str,
    version: i64,
) -> Result<A, ProjectionError> {
    let rows = sqlx::query(
        "SELECT sequence, event_type, payload::text AS payload FROM events
         WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence <= $3 ORDER BY sequence",
    )
    .bind(A::TYPE)
    .bind(aggregate_id)
    .bind(version)
    .fetch_all(&mut *conn)
    .await?;
    let mut aggregate = A::default();
    for row in rows {
        aggregate.apply(decode_row::<A>(&row, aggregate_id)?);
    }
    Ok(aggregate)
}

/// Runs the sequencer once (one at a time across processes: it waits for the log
/// head's row lock). Returns how many events got a position.
pub async fn assign_positions(pool: &PgPool, max_batch: i32) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT gf_assign_positions($1)")
        .bind(max_batch)
        .fetch_one(pool)
        .await
}

/// Who may see an event: `None` = every product (`*`), else these products.
pub type Scope<'a> = Option<&'a [String]>;

// `payload` as stored (json text): parsed by whoever needs it, never into jsonb.
const RECORD_COLUMNS: &str = "id, position, aggregate_type, aggregate_id, sequence, event_type,
     payload::text AS payload, recorded_at, product_id, visible_to";

fn record(row: &sqlx::postgres::PgRow) -> EventRecord {
    EventRecord {
        id: row.get("id"),
        position: row.get("position"),
        aggregate_type: row.get("aggregate_type"),
        aggregate_id: row.get("aggregate_id"),
        sequence: row.get("sequence"),
        event_type: row.get("event_type"),
        payload: row.get("payload"),
        recorded_at: row.get("recorded_at"),
        product_id: row.get("product_id"),
        visible_to: row.get("visible_to"),
    }
}

/// Positioned events after `after`, in log order, that `scope` may see.
pub async fn read_after(
    conn: &mut PgConnection,
    after: i64,
    limit: i64,
    scope: Scope<'_>,
) -> Result<Vec<EventRecord>, sqlx::Error> {
    // Two statements, not `$3 IS NULL OR …`: a generic plan (db::connect) must still
    // be free to use the visible_to index for a narrow scope.
    let rows = match scope {
        None => {
            sqlx::query(&format!(
                "SELECT {RECORD_COLUMNS} FROM positioned_events WHERE position > $1
                 ORDER BY position LIMIT $2"
            ))
            .bind(after)
            .bind(limit)
            .fetch_all(&mut *conn)
            .await?
        }
        Some(products) => {
            sqlx::query(&format!(
                "SELECT {RECORD_COLUMNS} FROM positioned_events
                 WHERE position > $1 AND visible_to && $3
                 ORDER BY position LIMIT $2"
            ))
            .bind(after)
            .bind(limit)
            .bind(products)
            .fetch_all(&mut *conn)
            .await?
        }
    };
    Ok(rows.iter().map(record).collect())
}

/// What the projector has to look at of the positions after `after`, up to `limit`
/// of them: the last position looked at, and, in log order, the events among them
/// that it must apply — those whose own transaction did not write their read models
/// (see [`ReadModels`]), and every one up to `every_event_through` — and, for each,
/// whether its transaction wrote them. One statement, so one snapshot: the log head
/// and every position up to it (the sequencer gives dense positions and moves the
/// head in the same transaction). The range's `ORDER BY … LIMIT` (its size anyway)
/// keeps the generic plan a walk of `event_positions` probing `events` by id: without
/// it the plan hashed a sequential scan of the whole log (33 ms per call under the
/// drain, `pg_stat_statements`).
pub async fn read_to_project(
    conn: &mut PgConnection,
    after: i64,
    limit: i64,
    every_event_through: i64,
) -> Result<(i64, Vec<EventRecord>, Vec<bool>), sqlx::Error> {
    let rows = sqlx::query(&format!(
        "SELECT h.upto, e.* FROM
             (SELECT greatest(least(last_position, $1 + $2), $1) AS upto FROM event_log_head) h
         LEFT JOIN LATERAL (
             SELECT {RECORD_COLUMNS}, read_models_written FROM positioned_events
             WHERE position > $1 AND position <= h.upto
               AND (position <= $3 OR NOT read_models_written)
             ORDER BY position LIMIT $2
         ) e ON true
         ORDER BY e.position"
    ))
    .bind(after)
    .bind(limit)
    .bind(every_event_through)
    .fetch_all(&mut *conn)
    .await?;
    let upto = rows.first().map_or(after, |r| r.get("upto"));
    let rows: Vec<_> = rows
        .iter()
        .filter(|r| r.get::<Option<i64>, _>("id").is_some())
        .collect();
    let events = rows.iter().map(|r| record(r)).collect();
    let written = rows.iter().map(|r| r.get("read_models_written")).collect();
    Ok((upto, events, written))
}

/// Committed events without a position: those from the sequencer's mark on (every
/// event before it in (txid, id) order has one) that `event_positions` does not list.
/// The mark comes from sub-selects, so the scan starts there in the (txid, id) index;
/// OFFSET 0 keeps each "has it a position?" a probe of `event_positions`' index.
const UNPOSITIONED: &str = "events e
     WHERE (e.txid, e.id) >= ((SELECT scan_from_txid FROM event_log_head),
                              (SELECT scan_from_id FROM event_log_head))
       AND NOT EXISTS (SELECT 1 FROM event_positions q WHERE q.event_id = e.id OFFSET 0)";

/// The highest insertion id among committed events without a position, if any.
pub async fn newest_unpositioned(pool: &PgPool) -> Result<Option<i64>, sqlx::Error> {
    // OFFSET 0: max(id) alone would walk the id index down from the newest event.
    sqlx::query_scalar(&format!(
        "SELECT max(id) FROM (SELECT e.id FROM {UNPOSITIONED} OFFSET 0) AS unpositioned"
    ))
    .fetch_one(pool)
    .await
}

/// Whether any committed event with insertion id ≤ `id` still lacks a position.
pub async fn unpositioned_up_to(pool: &PgPool, id: i64) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(&format!(
        "SELECT EXISTS (SELECT 1 FROM {UNPOSITIONED} AND e.id <= $1)"
    ))
    .bind(id)
    .fetch_one(pool)
    .await
}

#[cfg(test)]
mod tests {
    use super::renumber;

    #[test]
    fn renumbering_shifts_every_parameter_and_leaves_the_rest() {
        assert_eq!(
            renumber("SELECT $1::uuid[], $10, $2 FROM t WHERE a = '$'", 8),
            "SELECT $9::uuid[], $18, $10 FROM t WHERE a = '$'"
        );
    }
}
