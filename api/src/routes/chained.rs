//! The report that asks for the next job (additive to API.md): a factory ending a
//! run and wanting another makes one call instead of two. The report and the claim
//! share the claim's transaction — one statement appends the report's event and the
//! new lease's, one commit makes both durable — and the report's ended run frees the
//! slot the claim fills. Each is still its own event on its own job's stream, exactly
//! what the two calls would append.

#[allow(unused_imports)]
use crate::openapi::*;

use super::leases::{claimed_json, factory_stream, wait_for_claims, Claim, ReportBody};
use crate::app::AppState;
use crate::auth::FactoryCaller;
use crate::claim::Finish;
use crate::error::ApiError;
use crate::json::JsonBody;
use crate::views;
use axum::extract::{Path, State};
use axum::Json;
use rand::Rng;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

#[derive(Deserialize, utoipa::ToSchema)]
pub struct ReportAndClaim {
    /// The report, as `POST /fleet/jobs/:id/report` takes it.
    report: ReportBody,
    /// The claim, as `POST /fleet/claim` takes it (all fields optional).
    #[serde(default)]
    claim: Claim,
}

/// `POST /fleet/jobs/:id/report-and-claim` → 200 `{"job": Job, "next": {job, lease,
/// runId, breakdown} | null}`: the report, then a claim of one job in the same
/// transaction (`next` null: nothing claimable within `claim.waitMs`). A refused
/// report (fenced, invalid) answers as the report alone would and appends nothing,
/// nor claims; an invalid claim is refused before the report is made.
#[utoipa::path(post, path = "/fleet/jobs/{job_id}/report-and-claim", tag = "leases", params(("job_id" = String, Path, description = "The job reported")), request_body = ReportAndClaim, responses((status = 200, description = "The reported job and the next lease, if any", body = ReportedAndClaimed), (status = 409, description = "fenced or invalid_stage", body = ErrorBody), (status = 400, description = "Malformed JSON", body = ErrorBody), (status = 401, description = "No or bad token", body = ErrorBody), (status = 403, description = "Not allowed for this token", body = ErrorBody), (status = 404, description = "Not found or not in the token's products", body = ErrorBody), (status = 422, description = "Invalid values", body = ErrorBody), (status = 503, description = "Database unavailable", body = ErrorBody)), security(("bearer" = [])))]
pub async fn report_and_claim(
    State(state): State<AppState>,
    caller: FactoryCaller,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<ReportAndClaim>,
) -> Result<Json<Value>, ApiError> {
    let (factory_id, stream) = factory_stream(&state, caller, &id).await?;
    body.report.check("report.")?;
    let jitter: f64 = rand::thread_rng().gen();
    let report = body.report.clone();
    let finish = Finish {
        stream,
        command: Arc::new(move |now| report.command(factory_id, jitter, now)),
    };
    // The claim is checked before the report is made: a bad claim appends nothing.
    let terms = body.claim.terms().map_err(|e| under("claim.", e))?;
    let granted = wait_for_claims(&state, factory_id, &terms, 1, Some(finish))
        .await
        .map_err(|e| under("report.", e))?;
    let finished = granted
        .finished
        .ok_or_else(|| ApiError::Internal("a claim answered without its report".into()))?;
    if body.report.ends_run() && !finished.events.is_empty() {
        tracing::info!(job_id = %id, factory_id = %factory_id, status = ?body.report.status, "run ended");
    }
    let next = granted.claimed.first().map(claimed_json);
    Ok(Json(
        json!({"job": views::job(&finished.aggregate), "next": next}),
    ))
}

/// An invalid field named as this call's body names it (`claim.waitMs`,
/// `report.costUsd`).
fn under(prefix: &str, e: ApiError) -> ApiError {
    match e {
        ApiError::Invalid { field, message } => ApiError::Invalid {
            field: format!("{prefix}{field}"),
            message,
        },
        e => e,
    }
}
