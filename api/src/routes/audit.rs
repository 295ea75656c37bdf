//! `GET /fleet/audit/verify` (auditor, operator, admin): the log's integrity.

#[allow(unused_imports)]
use crate::openapi::*;

use super::params::QueryMap;
use crate::app::AppState;
use crate::auth::{Caller, Scope};
use crate::error::ApiError;
use axum::extract::{Query, State};
use axum::Json;
use gigafactory_projections::audit::{parse_expectation, verify_log};
use gigafactory_projections::log::assign_positions;
use serde_json::{json, Value};

/// `?expect=<position>:<digest>` checks a noted prefix too. Callers scoped to some
/// products see the problems of those products' events (and the counts, which reveal
/// nothing); `*` callers see every problem.
#[utoipa::path(get, path = "/fleet/audit/verify", tag = "audit", params(("expect" = Option<String>, Query, description = "position:digest")), responses((status = 200, description = "The verdict", body = Verified), (status = 400, description = "Malformed JSON", body = ErrorBody), (status = 401, description = "No or bad token", body = ErrorBody), (status = 403, description = "Not allowed for this token", body = ErrorBody), (status = 404, description = "Not found or not in the token's products", body = ErrorBody), (status = 422, description = "Invalid values", body = ErrorBody), (status = 503, description = "Database unavailable", body = ErrorBody)), security(("bearer" = [])))]
pub async fn verify(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<QueryMap>,
) -> Result<Json<Value>, ApiError> {
    let scope = caller.require_reader()?;
    let expect =
        match q.get("expect") {
            Some(e) => Some(parse_expectation(e).ok_or_else(|| {
                ApiError::invalid("expect", "expect is <position>:<64 hex digits>")
            })?),
            None => None,
        };
    assign_positions(&state.pool, 10_000).await?;
    let mut conn = state.pool.acquire().await?;
    let report = verify_log(&mut conn, expect).await?;
    let problems: Vec<_> = report
        .problems
        .iter()
        .filter(|p| match &scope {
            Scope::All => true,
            Scope::Products(_) => p.product_id.as_deref().is_some_and(|pr| scope.covers(pr)),
        })
        .collect();
    // A scoped caller's verdict covers what it may see (and the log's own checks).
    let ok = match &scope {
        Scope::All => report.ok,
        Scope::Products(_) => problems.is_empty(),
    };
    Ok(Json(json!({
        "ok": ok,
        "events": report.events,
        "problems": problems,
        "position": report.position,
        "digest": report.digest,
    })))
}
