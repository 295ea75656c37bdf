//! `GET /fleet/events?after=&limit=`: the global log in position order, scoped to the
//! caller's products (operator, auditor, admin).

#[allow(unused_imports)]
use crate::openapi::*;

use super::params::{self, QueryMap};
use crate::app::AppState;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::views;
use axum::extract::{Query, State};
use axum::Json;
use gigafactory_projections::log;
use serde_json::Value;
use std::time::Duration;
use tokio::time::Instant;

/// How long a read waits for the sequencer to position events committed before it.
const POSITION_WAIT: Duration = Duration::from_secs(2);

#[utoipa::path(get, path = "/fleet/events", tag = "audit", params(("after" = Option<i64>, Query, description = "Position"), ("limit" = Option<i64>, Query)), responses((status = 200, description = "Events in position order", body = LogPage), (status = 400, description = "Malformed JSON", body = ErrorBody), (status = 401, description = "No or bad token", body = ErrorBody), (status = 403, description = "Not allowed for this token", body = ErrorBody), (status = 404, description = "Not found or not in the token's products", body = ErrorBody), (status = 422, description = "Invalid values", body = ErrorBody), (status = 503, description = "Database unavailable", body = ErrorBody)), security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<QueryMap>,
) -> Result<Json<Value>, ApiError> {
    let scope = caller.require_reader()?;
    // `cursor` (the lists' convention, given back as nextCursor) and `after` are the same.
    let after = match q.get("cursor") {
        Some(_) => params::non_negative(&q, "cursor")?,
        None => params::non_negative(&q, "after")?,
    };
    let limit = params::limit(&q)?;
    read_your_writes(&state).await?;
    let filter = scope.as_filter();
    let mut conn = state.pool.acquire().await?;
    let events = log::read_after(&mut conn, after, limit, filter.as_deref()).await?;
    let next = (events.len() as i64 == limit)
        .then(|| {
            events
                .last()
                .and_then(|e| e.position)
                .map(|p| p.to_string())
        })
        .flatten();
    Ok(Json(views::page(
        events.iter().map(views::log_event).collect(),
        next,
    )))
}

/// Events committed before this request get their positions before it reads
/// (bounded wait: a long transaction elsewhere in the cluster can hold them back).
async fn read_your_writes(state: &AppState) -> Result<(), ApiError> {
    let Some(newest) = log::newest_unpositioned(&state.pool).await? else {
        return Ok(());
    };
    let deadline = Instant::now() + POSITION_WAIT;
    loop {
        log::assign_positions(&state.pool, 1000).await?;
        if !log::unpositioned_up_to(&state.pool, newest).await? || Instant::now() >= deadline {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
