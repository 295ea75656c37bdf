//! `flag_view`: the fleet's run-time flags as the log has them.

use crate::{EventRecord, ProjectionError};
use cqrs_es::Aggregate;
use gigafactory_domain::flags::{Flag, FlagMode, FlagsEvent, FleetFlags};
use sqlx::{PgConnection, Row};
use std::collections::BTreeMap;

pub async fn apply(conn: &mut PgConnection, event: &EventRecord) -> Result<(), ProjectionError> {
    if event.aggregate_type != FleetFlags::TYPE {
        return Ok(());
    }
    let FlagsEvent::FlagChanged { flag, mode, .. } = event.decode::<FleetFlags>()?;
    sqlx::query(
        "INSERT INTO flag_view (flag, mode, version) VALUES ($1, $2, $3)
         ON CONFLICT (flag) DO UPDATE SET mode = EXCLUDED.mode, version = EXCLUDED.version
         WHERE flag_view.version < EXCLUDED.version",
    )
    .bind(flag.name())
    .bind(mode.as_str())
    .bind(event.sequence)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The flags that have been set in the log (absent: never set).
pub async fn recorded(conn: &mut PgConnection) -> Result<BTreeMap<Flag, FlagMode>, sqlx::Error> {
    let rows = sqlx::query("SELECT flag, mode FROM flag_view")
        .fetch_all(&mut *conn)
        .await?;
    Ok(rows
        .iter()
        .filter_map(|r| {
            let flag = Flag::ALL
                .into_iter()
                .find(|f| f.name() == r.get::<String, _>("flag"))?;
            let mode = r.get::<String, _>("mode").parse().ok()?;
            Some((flag, mode))
        })
        .collect())
}
