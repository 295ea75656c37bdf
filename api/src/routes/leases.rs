//! Factory calls: claim (with long poll), renew, release, report.

#[allow(unused_imports)]
use crate::openapi::*;

use super::params;
use crate::app::AppState;
use crate::auth::FactoryCaller;
use crate::claim;
use crate::commands::{execute, execute_holding_factory, into_api};
use crate::error::ApiError;
use crate::json::JsonBody;
use crate::views;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use gigafactory_domain::job::{
    Job, JobCommand, Report, ReportStatus, LEASE_TTL_DEFAULT_SECS, LEASE_TTL_MAX_SECS,
    LEASE_TTL_MIN_SECS,
};
use gigafactory_domain::scheduler::WeightOverrides;
use gigafactory_domain::{FactoryId, JobId, ProductId};
use rand::Rng;
use serde::Deserialize;
use serde_json::{json, Value};
use std::time::Duration;
use tokio::time::Instant;

#[derive(Default, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Claim {
    #[serde(default)]
    pub(super) product_ids: Option<Vec<String>>,
    #[serde(default)]
    #[schema(value_type = Option<std::collections::BTreeMap<String, f64>>)]
    pub(super) weights: Option<serde_json::Map<String, Value>>,
    #[serde(default)]
    pub(super) wait_ms: u64,
    #[serde(default)]
    pub(super) lease_ttl_secs: Option<u32>,
}

/// Longest claim long poll.
const MAX_WAIT_MS: u64 = 30_000;
/// A waiting claim looks again at least this often (jobs whose backoff ends).
const RECHECK: Duration = Duration::from_millis(500);

/// `POST /fleet/claim` → 200 `{job, lease, runId, breakdown}` or 204. While waiting
/// (`waitMs`) it holds no database connection; commits anywhere wake it.
#[utoipa::path(post, path = "/fleet/claim", tag = "leases", request_body = Claim, responses((status = 200, description = "A lease", body = Claimed), (status = 400, description = "Malformed JSON", body = ErrorBody), (status = 401, description = "No or bad token", body = ErrorBody), (status = 403, description = "Not allowed for this token", body = ErrorBody), (status = 404, description = "Not found or not in the token's products", body = ErrorBody), (status = 422, description = "Invalid values", body = ErrorBody), (status = 503, description = "Database unavailable", body = ErrorBody), (status = 204, description = "Nothing claimable now")), security(("bearer" = [])))]
pub async fn claim(
    State(state): State<AppState>,
    FactoryCaller { factory_id, .. }: FactoryCaller,
    JsonBody(body): JsonBody<Claim>,
) -> Result<Response, ApiError> {
    match wait_for_claims(&state, factory_id, &body.terms()?, 1, None)
        .await?
        .claimed
        .pop()
    {
        Some(c) => Ok(Json(claimed_json(&c)).into_response()),
        None => Ok(StatusCode::NO_CONTENT.into_response()),
    }
}

/// A granted lease as the claim answers it.
pub(super) fn claimed_json(c: &claim::Claimed) -> Value {
    let lease = c.job.lease.as_ref().expect("a granted job holds a lease");
    json!({
        "job": views::job(&c.job),
        "lease": {"epoch": lease.epoch, "expiresAt": views::time(lease.expires_at)},
        "runId": lease.run_id.to_string(),
        "breakdown": c.breakdown,
    })
}

/// Claims up to `max` jobs for the factory, waiting up to `terms.wait` for at least
/// one; none: nothing claimable in that time. The first attempt makes the `finish`
/// report, if any (in its transaction); an error means nothing was appended (once
/// the report is committed, a later attempt's error answers the report alone).
pub(super) async fn wait_for_claims(
    state: &AppState,
    factory_id: FactoryId,
    terms: &ClaimTerms,
    max: usize,
    mut finish: Option<claim::Finish>,
) -> Result<claim::Granted, ApiError> {
    let deadline = Instant::now() + terms.wait;
    // A commit that may free work wakes one waiting claim, which looks alone (an idle
    // fleet's next job goes out in a transaction of one claim) and then wakes every
    // other waiting claim at once: the job may be for another factory, or the commit
    // brought more. Those are served together ([`claim::claim_jobs`]): a transaction
    // or two for the whole idle fleet, one candidate read per profile, and they wake
    // no one. (The wake-up used to be handed from claim to claim: one transaction
    // per waiting factory, one after the other, for every new job.)
    let mut first_to_wake = false;
    let mut finished = None;
    loop {
        // Register for wake-ups, then look: a commit while looking wakes this claim
        // to look again, so none is missed.
        let woken_first = state.wake.notified();
        let woken_with_all = state.wake_the_rest.notified();
        tokio::pin!(woken_first, woken_with_all);
        woken_first.as_mut().enable();
        woken_with_all.as_mut().enable();
        // Wakes the rest when this block ends — also if the request is dropped
        // (client gone) in the middle of the attempt.
        let wake_the_rest = WakeTheRest {
            state,
            armed: first_to_wake,
        };
        let attempt_started = std::time::Instant::now();
        let found = claim::claim_jobs(
            state,
            claim::ClaimRequest {
                factory_id,
                products: terms.products.clone(),
                weights: terms.weights.clone(),
                ttl_secs: terms.ttl_secs,
                max,
                finish: finish.take(),
            },
        )
        .await;
        metrics::histogram!("gigafactory_claim_duration_seconds")
            .record(attempt_started.elapsed().as_secs_f64());
        let found = match found {
            Ok(found) => found,
            // The report committed in an earlier attempt: it is durable, so answer it.
            Err(e) if finished.is_some() => {
                tracing::warn!(error = %e, factory_id = %factory_id, "a claim after its committed report failed");
                return Ok(claim::Granted {
                    finished,
                    claimed: vec![],
                });
            }
            Err(e) => return Err(e),
        };
        finished = finished.or(found.finished);
        if !found.claimed.is_empty() {
            metrics::counter!("gigafactory_claims_total", "outcome" => "granted")
                .increment(found.claimed.len() as u64);
            return Ok(claim::Granted {
                finished,
                claimed: found.claimed,
            });
        }
        let now = Instant::now();
        if now >= deadline || state.shutdown.is_cancelled() {
            metrics::counter!("gigafactory_claims_total", "outcome" => "empty").increment(1);
            return Ok(claim::Granted {
                finished,
                claimed: vec![],
            });
        }
        let nap = (deadline - now).min(RECHECK);
        drop(wake_the_rest);
        first_to_wake = tokio::select! {
            _ = woken_first => true,
            _ = woken_with_all => false,
            _ = tokio::time::sleep(nap) => false,
            _ = state.shutdown.cancelled() => return Ok(claim::Granted { finished, claimed: vec![] }),
        };
    }
}

/// A claim body, validated: what [`wait_for_claims`] asks for.
pub(super) struct ClaimTerms {
    products: Option<Vec<String>>,
    weights: Option<WeightOverrides>,
    ttl_secs: u32,
    wait: Duration,
}

impl Claim {
    /// The claim's terms, validated (422 naming the field).
    pub(super) fn terms(&self) -> Result<ClaimTerms, ApiError> {
        let (weights, ttl_secs) = claim_terms(self)?;
        Ok(ClaimTerms {
            products: self.product_ids.clone(),
            weights,
            ttl_secs,
            wait: Duration::from_millis(self.wait_ms),
        })
    }
}

/// The claim's weights and lease length, validated (422 naming the field).
fn claim_terms(body: &Claim) -> Result<(Option<WeightOverrides>, u32), ApiError> {
    if body.wait_ms > MAX_WAIT_MS {
        return Err(ApiError::invalid(
            "waitMs",
            format!("waitMs must be between 0 and {MAX_WAIT_MS}"),
        ));
    }
    let weights = match &body.weights {
        Some(w) => {
            Some(WeightOverrides::parse(w).map_err(|e| ApiError::invalid(e.field, e.message))?)
        }
        None => None,
    };
    let ttl = body.lease_ttl_secs.unwrap_or(LEASE_TTL_DEFAULT_SECS);
    if !(LEASE_TTL_MIN_SECS..=LEASE_TTL_MAX_SECS).contains(&ttl) {
        return Err(ApiError::invalid(
            "leaseTtlSecs",
            format!("leaseTtlSecs must be between {LEASE_TTL_MIN_SECS} and {LEASE_TTL_MAX_SECS}"),
        ));
    }
    Ok((weights, ttl))
}

/// Wakes every waiting claim when dropped, if armed: the claim a commit woke first
/// has looked.
struct WakeTheRest<'a> {
    state: &'a AppState,
    armed: bool,
}

impl Drop for WakeTheRest<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.state.wake_the_rest.notify_waiters();
        }
    }
}

/// The job's stream, if this factory's products cover the job (404 otherwise): its
/// product as remembered (the claim that leased it remembered it), else one indexed
/// lookup of it.
pub(super) async fn factory_stream(
    state: &AppState,
    caller: FactoryCaller,
    id: &str,
) -> Result<(FactoryId, String), ApiError> {
    let job_id = JobId(params::id(id, "job")?);
    let mut products = state.job_products.of(&state.pool, &[job_id.0]).await?;
    match products.remove(&job_id.0) {
        Some(product) if caller.products.contains(&product) => {
            Ok((caller.factory_id, job_id.stream_id(&ProductId(product))))
        }
        _ => Err(ApiError::NotFound("job")),
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Renew {
    epoch: u64,
    #[serde(default)]
    lease_ttl_secs: Option<u32>,
}

/// `POST /fleet/jobs/:id/lease/renew` → 200 `{expiresAt, epoch}`.
#[utoipa::path(post, path = "/fleet/jobs/{job_id}/lease/renew", tag = "leases", params(("job_id" = String, Path, description = "The job")), request_body = Renew, responses((status = 200, description = "The new expiry", body = Renewed), (status = 409, description = "fenced or invalid_stage", body = ErrorBody), (status = 400, description = "Malformed JSON", body = ErrorBody), (status = 401, description = "No or bad token", body = ErrorBody), (status = 403, description = "Not allowed for this token", body = ErrorBody), (status = 404, description = "Not found or not in the token's products", body = ErrorBody), (status = 422, description = "Invalid values", body = ErrorBody), (status = 503, description = "Database unavailable", body = ErrorBody)), security(("bearer" = [])))]
pub async fn renew(
    State(state): State<AppState>,
    caller: FactoryCaller,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<Renew>,
) -> Result<Json<Value>, ApiError> {
    let (factory_id, stream) = factory_stream(&state, caller, &id).await?;
    // Holding the factory's row: a claim counting its leases sees this renewal or
    // makes it find the lease expired (see `execute_holding_factory`).
    let done = execute_holding_factory::<Job, _>(&state, &stream, factory_id.0, |now| {
        JobCommand::RenewLease {
            factory_id,
            epoch: body.epoch,
            ttl_secs: body.lease_ttl_secs,
            now,
        }
    })
    .await
    .map_err(into_api::<Job>)?;
    let lease = done
        .aggregate
        .lease
        .as_ref()
        .ok_or(ApiError::Internal("renewed lease missing".into()))?;
    Ok(Json(
        json!({"expiresAt": views::time(lease.expires_at), "epoch": lease.epoch}),
    ))
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct Release {
    epoch: u64,
    #[serde(default)]
    checkpoint: Option<Value>,
}

/// `POST /fleet/jobs/:id/lease/release` → 200 the job (queued again).
#[utoipa::path(post, path = "/fleet/jobs/{job_id}/lease/release", tag = "leases", params(("job_id" = String, Path, description = "The job")), request_body = Release, responses((status = 200, description = "The job, queued again", body = JobView), (status = 409, description = "fenced or invalid_stage", body = ErrorBody), (status = 400, description = "Malformed JSON", body = ErrorBody), (status = 401, description = "No or bad token", body = ErrorBody), (status = 403, description = "Not allowed for this token", body = ErrorBody), (status = 404, description = "Not found or not in the token's products", body = ErrorBody), (status = 422, description = "Invalid values", body = ErrorBody), (status = 503, description = "Database unavailable", body = ErrorBody)), security(("bearer" = [])))]
pub async fn release(
    State(state): State<AppState>,
    caller: FactoryCaller,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<Release>,
) -> Result<Json<Value>, ApiError> {
    let (factory_id, stream) = factory_stream(&state, caller, &id).await?;
    let done = execute::<Job, _>(&state, &stream, |now| JobCommand::ReleaseLease {
        factory_id,
        epoch: body.epoch,
        checkpoint: body.checkpoint.clone(),
        now,
    })
    .await
    .map_err(into_api::<Job>)?;
    tracing::info!(job_id = %id, factory_id = %factory_id, "lease released");
    Ok(Json(views::job(&done.aggregate)))
}

#[derive(Clone, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReportBody {
    pub(super) epoch: u64,
    /// running | succeeded | failed
    #[schema(value_type = String)]
    pub(super) status: ReportStatus,
    #[serde(default)]
    pub(super) progress: Option<f64>,
    #[serde(default)]
    pub(super) checkpoint: Option<Value>,
    #[serde(default)]
    pub(super) cost_usd: Option<f64>,
    #[serde(default)]
    pub(super) error: Option<String>,
}

/// Longest `error` text a report may carry.
const MAX_ERROR_BYTES: usize = 10_000;

impl ReportBody {
    /// What the aggregate does not check (sizes); `prefix` goes before field names.
    pub(super) fn check(&self, prefix: &str) -> Result<(), ApiError> {
        if self
            .error
            .as_ref()
            .is_some_and(|e| e.len() > MAX_ERROR_BYTES)
        {
            return Err(ApiError::invalid(
                format!("{prefix}error"),
                format!("error must be at most {MAX_ERROR_BYTES} bytes"),
            ));
        }
        Ok(())
    }

    /// The job command this report is, at `now`.
    pub(super) fn command(
        &self,
        factory_id: FactoryId,
        jitter: f64,
        now: DateTime<Utc>,
    ) -> JobCommand {
        JobCommand::Report {
            factory_id,
            epoch: self.epoch,
            status: self.status,
            report: Report {
                progress: self.progress,
                checkpoint: self.checkpoint.clone(),
                cost_usd: self.cost_usd,
                error: self.error.clone(),
            },
            jitter,
            now,
        }
    }

    /// Whether this report ends the run.
    pub(super) fn ends_run(&self) -> bool {
        self.status != ReportStatus::Running
    }
}

/// `POST /fleet/jobs/:id/report` → 200 the job. Re-sending the report that ended the
/// run answers 200 and appends nothing.
#[utoipa::path(post, path = "/fleet/jobs/{job_id}/report", tag = "leases", params(("job_id" = String, Path, description = "The job")), request_body = ReportBody, responses((status = 200, description = "The job", body = JobView), (status = 409, description = "fenced or invalid_stage", body = ErrorBody), (status = 400, description = "Malformed JSON", body = ErrorBody), (status = 401, description = "No or bad token", body = ErrorBody), (status = 403, description = "Not allowed for this token", body = ErrorBody), (status = 404, description = "Not found or not in the token's products", body = ErrorBody), (status = 422, description = "Invalid values", body = ErrorBody), (status = 503, description = "Database unavailable", body = ErrorBody)), security(("bearer" = [])))]
pub async fn report(
    State(state): State<AppState>,
    caller: FactoryCaller,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<ReportBody>,
) -> Result<Json<Value>, ApiError> {
    let (factory_id, stream) = factory_stream(&state, caller, &id).await?;
    body.check("")?;
    let jitter: f64 = rand::thread_rng().gen();
    // Only the lease holder reports: decided on the job read model, one autocommit
    // statement (the locked way when the stream moved meanwhile).
    // Served together with the concurrent reports of other factories (one
    // statement for all; see `coalesced`).
    let command = {
        let body = body.clone();
        Box::new(move |now| body.command(factory_id, jitter, now))
    };
    let done = state
        .coalesced
        .report(crate::coalesced::ReportCall {
            state: state.clone(),
            stream,
            command,
        })
        .await?;
    if body.ends_run() && !done.events.is_empty() {
        tracing::info!(job_id = %id, factory_id = %factory_id, status = ?body.status, "run ended");
    }
    Ok(Json(views::job(&done.aggregate)))
}
