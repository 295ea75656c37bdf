//! Effective flag values: the log's, else this process's environment seed, else off.
//! Read from the read model on each decision, so every process follows a change.

use crate::app::AppState;
use gigafactory_domain::flags::{Flag, FlagMode};
use gigafactory_projections::flags::recorded;
use serde_json::{json, Value};
use sqlx::PgConnection;
use std::collections::BTreeMap;

/// Start-up values from the environment (`FLEET_PREEMPTION`, `FLEET_BUDGETS`): they
/// count only while the log has no event for the flag.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FlagSeeds(pub BTreeMap<Flag, FlagMode>);

impl FlagSeeds {
    /// Reads the environment; an unknown value is an error naming the variable.
    pub fn from_env() -> Result<Self, String> {
        let mut seeds = BTreeMap::new();
        for flag in Flag::ALL {
            if let Ok(v) = std::env::var(flag.env_var()) {
                let mode = v
                    .trim()
                    .parse::<FlagMode>()
                    .map_err(|e| format!("{}: {e}", flag.env_var()))?;
                seeds.insert(flag, mode);
            }
        }
        Ok(Self(seeds))
    }
}

/// Every flag's effective mode.
pub async fn effective(
    state: &AppState,
    conn: &mut PgConnection,
) -> Result<BTreeMap<Flag, FlagMode>, sqlx::Error> {
    let logged = recorded(conn).await?;
    Ok(Flag::ALL
        .into_iter()
        .map(|f| {
            let mode = logged
                .get(&f)
                .or_else(|| state.settings.flag_seeds.0.get(&f))
                .copied()
                .unwrap_or_default();
            (f, mode)
        })
        .collect())
}

/// One flag's effective mode.
pub async fn mode(
    state: &AppState,
    conn: &mut PgConnection,
    flag: Flag,
) -> Result<FlagMode, sqlx::Error> {
    Ok(effective(state, conn)
        .await?
        .get(&flag)
        .copied()
        .unwrap_or_default())
}

/// `{"preemption": "off", "budgets": "off"}`.
pub fn to_json(modes: &BTreeMap<Flag, FlagMode>) -> Value {
    let mut out = json!({});
    for (f, m) in modes {
        out[f.name()] = json!(m.as_str());
    }
    out
}
