//! The projector: reads the log in position order and applies each event to every
//! read model, keeping one checkpoint per projection in the same transaction as the
//! writes. One runs in every `serve` process; an advisory lock lets one at a time
//! work, the others skip that round.

use crate::log::{read_to_project, EventRecord};
use crate::ProjectionError;
use sqlx::{PgConnection, PgPool, Row};
use std::borrow::Cow;
use std::collections::HashMap;

/// The read models the projector maintains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Projection {
    Jobs,
    Runs,
    Factories,
    Credentials,
    Settings,
    Flags,
    Artifacts,
}

pub const PROJECTIONS: [Projection; 7] = [
    Projection::Jobs,
    Projection::Runs,
    Projection::Factories,
    Projection::Credentials,
    Projection::Settings,
    Projection::Flags,
    Projection::Artifacts,
];

impl Projection {
    pub fn name(self) -> &'static str {
        match self {
            Self::Jobs => "jobs",
            Self::Runs => "runs",
            Self::Factories => "factories",
            Self::Credentials => "credentials",
            Self::Settings => "settings",
            Self::Flags => "flags",
            Self::Artifacts => "artifacts",
        }
    }

    /// The tables this projection writes, with their key columns (for rebuilds and
    /// row-for-row comparisons).
    pub fn keyed_tables(self) -> &'static [(&'static str, &'static [&'static str])] {
        match self {
            Self::Jobs => &[("job_view", &["job_id"])],
            Self::Runs => &[("run_view", &["run_id"])],
            Self::Factories => &[("factory_view", &["factory_id"])],
            Self::Credentials => &[("credential_view", &["token_hash"])],
            Self::Settings => &[("product_settings_view", &["product_id"])],
            Self::Flags => &[("flag_view", &["flag"])],
            Self::Artifacts => &[("artifact_view", &["artifact_id"])],
        }
    }

    /// Whether applying an event of this aggregate type and event type writes to this
    /// projection's tables (the `apply` functions skip every other event without a
    /// statement). A command that writes every projection an event touches in the
    /// append's own statement needs no other statement, and so no transaction.
    pub fn touches(self, aggregate_type: &str, event_type: &str) -> bool {
        use cqrs_es::Aggregate;
        use gigafactory_domain::{access, factory, flags, job, settings};
        match self {
            Self::Jobs => aggregate_type == job::Job::TYPE,
            Self::Runs => {
                aggregate_type == job::Job::TYPE && crate::runs::RUN_EVENTS.contains(&event_type)
            }
            Self::Factories => aggregate_type == factory::Factory::TYPE,
            Self::Credentials => {
                aggregate_type == access::AccessToken::TYPE
                    || aggregate_type == factory::Factory::TYPE
            }
            Self::Settings => aggregate_type == settings::ProductSettings::TYPE,
            Self::Flags => aggregate_type == flags::FleetFlags::TYPE,
            Self::Artifacts => {
                aggregate_type == job::Job::TYPE
                    && matches!(event_type, "ArtifactAdded" | "ArtifactDeleted")
            }
        }
    }

    /// Applies a batch of events in log order. The busy projections (jobs, runs)
    /// write a batch in a few statements; the others go event by event
    /// (their events are rare).
    pub async fn apply_batch(
        self,
        conn: &mut PgConnection,
        events: &[EventRecord],
    ) -> Result<(), ProjectionError> {
        match self {
            Self::Jobs => crate::jobs::apply_batch(conn, events).await,
            Self::Runs => crate::runs::apply_batch(conn, events).await,
            _ => {
                for event in events {
                    self.apply(conn, event).await?;
                }
                Ok(())
            }
        }
    }

    pub async fn apply(
        self,
        conn: &mut PgConnection,
        event: &EventRecord,
    ) -> Result<(), ProjectionError> {
        match self {
            Self::Jobs => crate::jobs::apply(conn, event).await,
            Self::Runs => crate::runs::apply(conn, event).await,
            Self::Factories => crate::factories::apply(conn, event).await,
            Self::Credentials => crate::credentials::apply(conn, event).await,
            Self::Settings => crate::settings::apply(conn, event).await,
            Self::Flags => crate::flags::apply(conn, event).await,
            Self::Artifacts => crate::artifacts::apply(conn, event).await,
        }
    }
}

/// Lock key for "one projector at a time".
pub const PROJECTOR_LOCK: i64 = 0x6766_7072_6f6a; // "gfproj"

/// Looks at up to `batch` positions past the lowest checkpoint and applies the
/// events among them that their own transaction did not write to the read models
/// (the command path writes them all; see [`crate::log::ReadModels`]) — every event,
/// for a projection up to its [`Checkpoint::applies_every_event_through`]. Every
/// checkpoint moves past what was looked at. Returns how many positions were looked
/// at (0: caught up), or `None` when another process holds the projector lock.
pub async fn run_once(pool: &PgPool, batch: i64) -> Result<Option<usize>, ProjectionError> {
    let mut tx = pool.begin().await?;
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
        .bind(PROJECTOR_LOCK)
        .fetch_one(&mut *tx)
        .await?;
    if !locked {
        tx.rollback().await?;
        return Ok(None);
    }
    let mut checkpoints = checkpoints(&mut tx).await?;
    let from = checkpoints.values().map(|c| c.position).min().unwrap_or(0);
    let every_event_through = checkpoints
        .values()
        .map(|c| c.applies_every_event_through)
        .max()
        .unwrap_or(0);
    let (upto, events, written) =
        read_to_project(&mut tx, from, batch, every_event_through).await?;
    if upto > from {
        for p in PROJECTIONS {
            let cp = checkpoints
                .get_mut(p.name())
                .expect("every projection has a checkpoint");
            let first = events.partition_point(|e| e.position.unwrap_or(0) <= cp.position);
            let due = due_events(
                &events[first..],
                &written[first..],
                cp.applies_every_event_through,
            );
            if !due.is_empty() {
                p.apply_batch(&mut tx, &due).await?;
            }
            cp.position = cp.position.max(upto);
        }
        let names: Vec<&str> = PROJECTIONS.iter().map(|p| p.name()).collect();
        let positions: Vec<i64> = PROJECTIONS
            .iter()
            .map(|p| checkpoints[p.name()].position)
            .collect();
        sqlx::query(
            "UPDATE projection_checkpoints c SET position = u.position
             FROM unnest($1::text[], $2::bigint[]) AS u(projection, position)
             WHERE c.projection = u.projection",
        )
        .bind(&names)
        .bind(&positions)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(Some((upto - from) as usize))
}

/// Of `events` (past a projection's checkpoint; `written[i]`: whether the i-th one's
/// transaction wrote the read models), those it must apply: the unwritten ones, and
/// every one up to `every_event_through`. Borrowed when that is all of them (the
/// usual case: the read returns only those), copied only when some are left out.
fn due_events<'a>(
    events: &'a [EventRecord],
    written: &[bool],
    every_event_through: i64,
) -> Cow<'a, [EventRecord]> {
    let due = |(e, written): (&EventRecord, &bool)| {
        !written || e.position.unwrap_or(0) <= every_event_through
    };
    if events.iter().zip(written).all(due) {
        Cow::Borrowed(events)
    } else {
        Cow::Owned(
            events
                .iter()
                .zip(written)
                .filter(|&x| due(x))
                .map(|(e, _)| e.clone())
                .collect(),
        )
    }
}

/// Where a projection is in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    /// Every event up to here is applied (or was written by its own transaction).
    pub position: i64,
    /// Up to here the projection applies every event, even those whose transaction
    /// wrote the read models: they did not write this one if it did not exist yet (a
    /// checkpoint created later starts at the log's head) or was moved back to be
    /// rebuilt (a trigger moves this to where the checkpoint had been; migration 15).
    pub applies_every_event_through: i64,
}

/// Every projection's checkpoint (creating missing ones at 0, applying every event
/// up to the log's head).
pub async fn checkpoints(
    conn: &mut PgConnection,
) -> Result<HashMap<&'static str, Checkpoint>, sqlx::Error> {
    let names: Vec<&str> = PROJECTIONS.iter().map(|p| p.name()).collect();
    // One statement: the SELECT does not see the CTE's new rows (one snapshot), so
    // they are added to its answer.
    let rows = sqlx::query(
        "WITH created AS (
             INSERT INTO projection_checkpoints (projection, applies_every_event_through)
             SELECT unnest($1::text[]), (SELECT last_position FROM event_log_head)
             ON CONFLICT DO NOTHING
             RETURNING projection, position, applies_every_event_through)
         SELECT projection, position, applies_every_event_through FROM projection_checkpoints
         UNION ALL SELECT projection, position, applies_every_event_through FROM created",
    )
    .bind(&names)
    .fetch_all(&mut *conn)
    .await?;
    let stored: HashMap<String, Checkpoint> = rows
        .iter()
        .map(|r| {
            (
                r.get("projection"),
                Checkpoint {
                    position: r.get("position"),
                    applies_every_event_through: r.get("applies_every_event_through"),
                },
            )
        })
        .collect();
    Ok(PROJECTIONS
        .iter()
        .map(|p| {
            let at = stored.get(p.name()).copied().unwrap_or(Checkpoint {
                position: 0,
                applies_every_event_through: 0,
            });
            (p.name(), at)
        })
        .collect())
}

/// The lowest checkpoint: every read model reflects the log up to here.
pub async fn low_water_mark(pool: &PgPool) -> Result<i64, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    Ok(checkpoints(&mut conn)
        .await?
        .values()
        .map(|c| c.position)
        .min()
        .unwrap_or(0))
}

/// The last position the sequencer has given.
pub async fn log_head(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT last_position FROM event_log_head")
        .fetch_one(pool)
        .await
}
