//! `GET/PUT /fleet/flags`: fleet-wide run-time flags (`*` tokens and the admin read;
//! the admin changes them, as events every process follows).

#[allow(unused_imports)]
use crate::openapi::*;

use crate::app::AppState;
use crate::auth::{Admin, Caller, Scope};
use crate::commands::{execute, into_api};
use crate::error::ApiError;
use crate::json::JsonBody;
use axum::extract::State;
use axum::Json;
use gigafactory_domain::flags::{Flag, FlagMode, FlagsCommand, FleetFlags, FLEET_FLAGS_ID};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

fn fleet_wide_reader(caller: &Caller) -> Result<(), ApiError> {
    match caller.require_reader()? {
        Scope::All => Ok(()),
        Scope::Products(_) => Err(ApiError::Forbidden(
            "flags are fleet-wide: they need a * token or the admin",
        )),
    }
}

#[utoipa::path(get, path = "/fleet/flags", tag = "scheduler", responses((status = 200, description = "The flags", body = FlagsView), (status = 400, description = "Malformed JSON", body = ErrorBody), (status = 401, description = "No or bad token", body = ErrorBody), (status = 403, description = "Not allowed for this token", body = ErrorBody), (status = 404, description = "Not found or not in the token's products", body = ErrorBody), (status = 422, description = "Invalid values", body = ErrorBody), (status = 503, description = "Database unavailable", body = ErrorBody)), security(("bearer" = [])))]
pub async fn get(State(state): State<AppState>, caller: Caller) -> Result<Json<Value>, ApiError> {
    fleet_wide_reader(&caller)?;
    let mut conn = state.pool.acquire().await?;
    Ok(Json(crate::flags::to_json(
        &crate::flags::effective(&state, &mut conn).await?,
    )))
}

/// `PUT /fleet/flags` `{"preemption"?: mode, "budgets"?: mode}` (admin) → 200 all flags.
#[utoipa::path(put, path = "/fleet/flags", tag = "scheduler", request_body = FlagsPatch, responses((status = 200, description = "The flags", body = FlagsView), (status = 400, description = "Malformed JSON", body = ErrorBody), (status = 401, description = "No or bad token", body = ErrorBody), (status = 403, description = "Not allowed for this token", body = ErrorBody), (status = 404, description = "Not found or not in the token's products", body = ErrorBody), (status = 422, description = "Invalid values", body = ErrorBody), (status = 503, description = "Database unavailable", body = ErrorBody)), security(("bearer" = [])))]
pub async fn put(
    State(state): State<AppState>,
    _admin: Admin,
    JsonBody(body): JsonBody<Map<String, Value>>,
) -> Result<Json<Value>, ApiError> {
    let mut modes = BTreeMap::new();
    for (name, value) in &body {
        let flag = Flag::ALL
            .into_iter()
            .find(|f| f.name() == name)
            .ok_or_else(|| {
                ApiError::invalid(
                    name.clone(),
                    format!("unknown flag {name:?}; flags are preemption, budgets"),
                )
            })?;
        let mode = value
            .as_str()
            .ok_or_else(|| "must be a string".to_string())
            .and_then(|s| s.parse::<FlagMode>())
            .map_err(|e| ApiError::invalid(name.clone(), format!("{name}: {e}")))?;
        modes.insert(flag, mode);
    }
    if modes.is_empty() {
        return Err(ApiError::invalid("preemption", "give at least one flag"));
    }
    execute::<FleetFlags, _>(&state, FLEET_FLAGS_ID, |now| FlagsCommand::Set {
        modes: modes.clone(),
        now,
    })
    .await
    .map_err(into_api::<FleetFlags>)?;
    tracing::info!(flags = ?modes, "flags changed");
    state.wake_all();
    let mut conn = state.pool.acquire().await?;
    Ok(Json(crate::flags::to_json(
        &crate::flags::effective(&state, &mut conn).await?,
    )))
}
