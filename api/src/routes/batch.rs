//! Batch factory calls (additive to API.md): claim several jobs in one call, report
//! several runs in one call. Each lease and each report is still its own event on its
//! own job's stream; a batch shares one transaction, so one commit (one WAL flush)
//! and one round of statements serve all of it.

#[allow(unused_imports)]
use crate::openapi::*;

use super::leases::{claimed_json, wait_for_claims, Claim, ReportBody};
use crate::app::AppState;
use crate::auth::FactoryCaller;
use crate::claim::MAX_BATCH;
use crate::commands::{execute_many_optimistic, into_api};
use crate::error::ApiError;
use crate::json::JsonBody;
use crate::views;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use gigafactory_domain::job::{Job, ReportStatus};
use gigafactory_domain::{JobId, ProductId};
use rand::Rng;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::HashSet;
use uuid::Uuid;

/// The one-job claim's fields plus `max`. Spelled out rather than flattened, so a
/// value of the wrong type is named by its field in the 422.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BatchClaim {
    /// Most jobs to claim (1–100); never more than the factory's free capacity.
    max: usize,
    #[serde(default)]
    product_ids: Option<Vec<String>>,
    #[serde(default)]
    #[schema(value_type = Option<std::collections::BTreeMap<String, f64>>)]
    weights: Option<serde_json::Map<String, Value>>,
    #[serde(default)]
    wait_ms: u64,
    #[serde(default)]
    lease_ttl_secs: Option<u32>,
}

/// `POST /fleet/batch/claim` → 200 `{"claims": [{job, lease, runId, breakdown}, ..]}`
/// (at least one) or 204. Takes the best-ranked free jobs of one ranking, up to `max`
/// and the factory's free capacity; `waitMs` waits for at least one.
#[utoipa::path(post, path = "/fleet/batch/claim", tag = "leases", request_body = BatchClaim, responses((status = 200, description = "One or more leases", body = ClaimedBatch), (status = 400, description = "Malformed JSON", body = ErrorBody), (status = 401, description = "No or bad token", body = ErrorBody), (status = 403, description = "Not allowed for this token", body = ErrorBody), (status = 422, description = "Invalid values", body = ErrorBody), (status = 503, description = "Database unavailable", body = ErrorBody), (status = 204, description = "Nothing claimable now")), security(("bearer" = [])))]
pub async fn claim(
    State(state): State<AppState>,
    FactoryCaller { factory_id, .. }: FactoryCaller,
    JsonBody(body): JsonBody<BatchClaim>,
) -> Result<Response, ApiError> {
    if !(1..=MAX_BATCH).contains(&body.max) {
        return Err(ApiError::invalid(
            "max",
            format!("max must be between 1 and {MAX_BATCH}"),
        ));
    }
    let claim = Claim {
        product_ids: body.product_ids,
        weights: body.weights,
        wait_ms: body.wait_ms,
        lease_ttl_secs: body.lease_ttl_secs,
    };
    let claimed = wait_for_claims(&state, factory_id, &claim.terms()?, body.max, None)
        .await?
        .claimed;
    if claimed.is_empty() {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let claims: Vec<Value> = claimed.iter().map(claimed_json).collect();
    Ok(Json(json!({ "claims": claims })).into_response())
}

/// One report: the job plus the one-job report's fields (spelled out, not
/// flattened, so a wrong value is named `reports[n].<field>`).
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BatchReportItem {
    job_id: String,
    epoch: u64,
    /// running | succeeded | failed
    #[schema(value_type = String)]
    status: ReportStatus,
    #[serde(default)]
    progress: Option<f64>,
    #[serde(default)]
    checkpoint: Option<Value>,
    #[serde(default)]
    cost_usd: Option<f64>,
    #[serde(default)]
    error: Option<String>,
}

impl BatchReportItem {
    fn report(&self) -> ReportBody {
        ReportBody {
            epoch: self.epoch,
            status: self.status,
            progress: self.progress,
            checkpoint: self.checkpoint.clone(),
            cost_usd: self.cost_usd,
            error: self.error.clone(),
        }
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct BatchReport {
    /// 1–100 reports, on distinct jobs.
    reports: Vec<BatchReportItem>,
}

/// `POST /fleet/batch/report` → 200 `{"results": [..]}`, one per report in order:
/// `{"jobId", "status": 200, "job"}` or `{"jobId", "status": 404|409|422, "error"}`.
/// A malformed batch (not 1–100 reports, a job twice, an `error` text too long) is
/// refused whole with 422 and appends nothing; otherwise each report stands alone
/// (one fenced report, or one the job refuses as invalid, does not stop the others)
/// and all the accepted ones commit together before the answer.
#[utoipa::path(post, path = "/fleet/batch/report", tag = "leases", request_body = BatchReport, responses((status = 200, description = "One result per report, in order", body = ReportedBatch), (status = 400, description = "Malformed JSON", body = ErrorBody), (status = 401, description = "No or bad token", body = ErrorBody), (status = 403, description = "Not allowed for this token", body = ErrorBody), (status = 422, description = "Invalid values", body = ErrorBody), (status = 503, description = "Database unavailable", body = ErrorBody)), security(("bearer" = [])))]
pub async fn report(
    State(state): State<AppState>,
    caller: FactoryCaller,
    JsonBody(body): JsonBody<BatchReport>,
) -> Result<Json<Value>, ApiError> {
    let items = &body.reports;
    if !(1..=MAX_BATCH).contains(&items.len()) {
        return Err(ApiError::invalid(
            "reports",
            format!("reports must hold between 1 and {MAX_BATCH} reports"),
        ));
    }
    // An id that is not a UUID names no job: that report's outcome is 404.
    let ids: Vec<Option<Uuid>> = items
        .iter()
        .map(|i| Uuid::parse_str(&i.job_id).ok())
        .collect();
    let reports: Vec<ReportBody> = items.iter().map(BatchReportItem::report).collect();
    let mut seen = HashSet::new();
    for (n, (report, id)) in reports.iter().zip(&ids).enumerate() {
        if id.is_some_and(|id| !seen.insert(id)) {
            return Err(ApiError::invalid(
                format!("reports[{n}].jobId"),
                "a job may be reported once per batch",
            ));
        }
        report.check(&format!("reports[{n}]."))?;
    }
    let known: Vec<Uuid> = ids.iter().flatten().copied().collect();
    let products = state.job_products.of(&state.pool, &known).await?;
    // The reports on jobs this factory's products cover, as (index, stream).
    let visible: Vec<(usize, String)> = ids
        .iter()
        .enumerate()
        .filter_map(|(n, id)| {
            let product = products.get(id.as_ref()?)?;
            caller.products.contains(product).then(|| {
                (
                    n,
                    JobId(id.expect("known")).stream_id(&ProductId(product.clone())),
                )
            })
        })
        .collect();
    let streams: Vec<String> = visible.iter().map(|(_, s)| s.clone()).collect();
    let jitters: Vec<f64> = {
        let mut rng = rand::thread_rng();
        visible.iter().map(|_| rng.gen()).collect()
    };
    let factory_id = caller.factory_id;
    let outcomes = if streams.is_empty() {
        vec![]
    } else {
        // As the one-job report: decided on the read model, one autocommit statement
        // for the whole batch (the locked way when any stream moved meanwhile).
        execute_many_optimistic(&state, &streams, |i, now| {
            reports[visible[i].0].command(factory_id, jitters[i], now)
        })
        .await
        .map_err(into_api::<Job>)?
    };
    let mut results: Vec<Value> = items
        .iter()
        .map(|item| {
            let (status, error) = ApiError::NotFound("job").status_and_body();
            json!({"jobId": item.job_id, "status": status.as_u16(), "error": error})
        })
        .collect();
    for ((n, _), outcome) in visible.iter().zip(outcomes) {
        let item = &items[*n];
        results[*n] = match outcome {
            Ok(done) => {
                if reports[*n].ends_run() && !done.events.is_empty() {
                    tracing::info!(job_id = %item.job_id, factory_id = %factory_id, "run ended");
                }
                json!({"jobId": item.job_id, "status": 200, "job": views::job(&done.aggregate)})
            }
            Err(refused) => {
                let (status, mut error) = ApiError::from(refused).status_and_body();
                // A field the job refused is named as the batch names it.
                if let Some(field) = error["field"].as_str() {
                    error["field"] = json!(format!("reports[{n}].{field}"));
                }
                json!({"jobId": item.job_id, "status": status.as_u16(), "error": error})
            }
        };
    }
    Ok(Json(json!({ "results": results })))
}
