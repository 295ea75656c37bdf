//! Jobs: submit, list, detail, operator moves (ship, cancel, reprioritise), runs and
//! the event timeline.

#[allow(unused_imports)]
use crate::openapi::*;

use super::params::{self, QueryMap};
use crate::app::AppState;
use crate::auth::{Caller, Operator, Scope};
use crate::commands::{execute, execute_new_job, into_api};
use crate::error::ApiError;
use crate::json::JsonBody;
use crate::views;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use gigafactory_domain::job::{Job, JobCommand, NewJob};
use gigafactory_domain::{JobId, Priority, ProductId, Stage};
use gigafactory_projections::jobs::{self, JobFilter};
use gigafactory_projections::{runs, timeline};
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;

#[derive(Deserialize, utoipa::ToSchema)]
pub struct Budget {
    usd: f64,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SubmitJob {
    product_id: String,
    title: String,
    #[serde(default)]
    payload: Option<Value>,
    #[serde(default)]
    required_capabilities: Vec<String>,
    /// critical | high | normal | low
    #[serde(default)]
    #[schema(value_type = String)]
    priority: Priority,
    #[serde(default)]
    budget: Option<Budget>,
    #[serde(default = "three")]
    max_attempts: u32,
    #[serde(default)]
    timeout_secs: Option<u32>,
    #[serde(default)]
    depends_on: Vec<Value>,
    #[serde(default)]
    children: Vec<Value>,
}

fn three() -> u32 {
    3
}

/// `POST /fleet/jobs` (operator) → 201 the job.
#[utoipa::path(post, path = "/fleet/jobs", tag = "jobs", request_body = SubmitJob, responses((status = 201, description = "The job", body = JobView), (status = 400, description = "Malformed JSON", body = ErrorBody), (status = 401, description = "No or bad token", body = ErrorBody), (status = 403, description = "Not allowed for this token", body = ErrorBody), (status = 404, description = "Not found or not in the token's products", body = ErrorBody), (status = 422, description = "Invalid values", body = ErrorBody), (status = 503, description = "Database unavailable", body = ErrorBody)), security(("bearer" = [])))]
pub async fn submit(
    State(state): State<AppState>,
    Operator(scope): Operator,
    JsonBody(body): JsonBody<SubmitJob>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let product = ProductId::parse(&body.product_id).ok_or_else(|| {
        ApiError::invalid(
            "productId",
            "productId must be 1–64 characters of A-Z a-z 0-9 . _ -",
        )
    })?;
    if !scope.covers(product.as_str()) {
        return Err(ApiError::NotFound("product"));
    }
    if !body.depends_on.is_empty() {
        return Err(ApiError::invalid(
            "dependsOn",
            "job dependencies are not supported by this server yet",
        ));
    }
    if !body.children.is_empty() {
        return Err(ApiError::invalid(
            "children",
            "child jobs are not supported by this server yet",
        ));
    }
    let job_id = JobId(Uuid::now_v7());
    let new = NewJob {
        job_id,
        product_id: product.clone(),
        title: body.title,
        payload: body.payload.unwrap_or_else(|| json!({})),
        required_capabilities: body.required_capabilities,
        priority: body.priority,
        budget_usd: body.budget.map(|b| b.usd).unwrap_or(0.0),
        max_attempts: body.max_attempts,
        timeout_secs: body.timeout_secs,
    };
    let done = execute_new_job(&state, &job_id.stream_id(&product), |now| {
        JobCommand::Submit {
            job: new.clone(),
            now,
        }
    })
    .await
    .map_err(into_api::<Job>)?;
    tracing::info!(job_id = %job_id, product_id = %product, "job submitted");
    Ok((StatusCode::CREATED, Json(views::job(&done.aggregate))))
}

/// `GET /fleet/jobs?productId=&stage=&priority=&limit=&cursor=` → newest first.
#[utoipa::path(get, path = "/fleet/jobs", tag = "jobs", params(("productId" = Option<String>, Query), ("stage" = Option<String>, Query), ("priority" = Option<String>, Query), ("limit" = Option<i64>, Query), ("cursor" = Option<String>, Query)), responses((status = 200, description = "Jobs, newest first", body = JobPage), (status = 400, description = "Malformed JSON", body = ErrorBody), (status = 401, description = "No or bad token", body = ErrorBody), (status = 403, description = "Not allowed for this token", body = ErrorBody), (status = 404, description = "Not found or not in the token's products", body = ErrorBody), (status = 422, description = "Invalid values", body = ErrorBody), (status = 503, description = "Database unavailable", body = ErrorBody)), security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<QueryMap>,
) -> Result<Json<Value>, ApiError> {
    let scope = caller.scope();
    let limit = params::limit(&q)?;
    let stage = match q.get("stage") {
        Some(s) => Some(
            s.parse::<Stage>()
                .map_err(|_| ApiError::invalid("stage", format!("unknown stage {s:?}")))?,
        ),
        None => None,
    };
    let priority = match q.get("priority") {
        Some(s) => Some(
            s.parse::<Priority>()
                .map_err(|_| ApiError::invalid("priority", format!("unknown priority {s:?}")))?,
        ),
        None => None,
    };
    let after = match q.get("cursor") {
        Some(c) => {
            Some(parse_cursor(c).ok_or_else(|| ApiError::invalid("cursor", "invalid cursor"))?)
        }
        None => None,
    };
    let filter = JobFilter {
        scope: scope.as_filter(),
        product_id: q.get("productId").cloned(),
        stage,
        priority,
        after,
        limit,
    };
    let mut conn = state.pool.acquire().await?;
    let found = jobs::list(&mut conn, &filter).await?;
    let next = (found.len() as i64 == limit)
        .then(|| {
            found
                .last()
                .and_then(|j| Some(cursor(j.created_at?, j.spec.as_ref()?.job_id.0)))
        })
        .flatten();
    Ok(Json(views::page(
        found.iter().map(views::job).collect(),
        next,
    )))
}

fn cursor(created_at: DateTime<Utc>, id: Uuid) -> String {
    format!("{}_{}", created_at.timestamp_micros(), id)
}

fn parse_cursor(c: &str) -> Option<(DateTime<Utc>, Uuid)> {
    let (micros, id) = c.split_once('_')?;
    Some((
        DateTime::from_timestamp_micros(micros.parse().ok()?)?,
        Uuid::parse_str(id).ok()?,
    ))
}

/// The job from the read model if the caller's scope covers its product; else 404.
pub async fn visible_job(state: &AppState, scope: &Scope, id: &str) -> Result<Job, ApiError> {
    let id = JobId(params::id(id, "job")?);
    let mut conn = state.pool.acquire().await?;
    match jobs::get(&mut conn, id).await? {
        Some(job)
            if job
                .spec
                .as_ref()
                .is_some_and(|s| scope.covers(s.product_id.as_str())) =>
        {
            Ok(job)
        }
        _ => Err(ApiError::NotFound("job")),
    }
}

/// The job's stream id, after the scope check.
pub fn stream_of(job: &Job) -> String {
    let spec = job.spec.as_ref().expect("visible jobs are submitted");
    spec.job_id.stream_id(&spec.product_id)
}

/// `GET /fleet/jobs/:id`; `?asOf=<version>`: the job as it was at that version,
/// built from its events (not from the read model).
#[utoipa::path(get, path = "/fleet/jobs/{job_id}", tag = "jobs", params(("job_id" = String, Path, description = "The job"), ("asOf" = Option<i64>, Query, description = "The job as it was at this version")), responses((status = 200, description = "The job", body = JobView), (status = 400, description = "Malformed JSON", body = ErrorBody), (status = 401, description = "No or bad token", body = ErrorBody), (status = 403, description = "Not allowed for this token", body = ErrorBody), (status = 404, description = "Not found or not in the token's products", body = ErrorBody), (status = 422, description = "Invalid values", body = ErrorBody), (status = 503, description = "Database unavailable", body = ErrorBody)), security(("bearer" = [])))]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<QueryMap>,
) -> Result<Json<Value>, ApiError> {
    let job = visible_job(&state, &caller.scope(), &id).await?;
    let Some(as_of) = q.get("asOf") else {
        return Ok(Json(views::job(&job)));
    };
    let version = match as_of.parse::<i64>() {
        Ok(v) if v >= 1 => v,
        _ => return Err(ApiError::invalid("asOf", "asOf must be a version ≥ 1")),
    };
    let mut conn = state.pool.acquire().await?;
    let then: Job =
        gigafactory_projections::log::load_until(&mut conn, &stream_of(&job), version).await?;
    if (then.version as i64) < version {
        return Err(ApiError::NotFound("version"));
    }
    Ok(Json(views::job(&then)))
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct PatchJob {
    /// shipped | cancelled
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    stage: Option<Stage>,
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    priority: Option<Priority>,
    #[serde(default)]
    reason: Option<String>,
}

/// `PATCH /fleet/jobs/:id` (operator): `{"stage": "shipped"|"cancelled"}` or
/// `{"priority": ..}` → 200 the job.
#[utoipa::path(patch, path = "/fleet/jobs/{job_id}", tag = "jobs", params(("job_id" = String, Path, description = "The job")), request_body = PatchJob, responses((status = 200, description = "The job", body = JobView), (status = 409, description = "fenced or invalid_stage", body = ErrorBody), (status = 400, description = "Malformed JSON", body = ErrorBody), (status = 401, description = "No or bad token", body = ErrorBody), (status = 403, description = "Not allowed for this token", body = ErrorBody), (status = 404, description = "Not found or not in the token's products", body = ErrorBody), (status = 422, description = "Invalid values", body = ErrorBody), (status = 503, description = "Database unavailable", body = ErrorBody)), security(("bearer" = [])))]
pub async fn patch(
    State(state): State<AppState>,
    Operator(scope): Operator,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<PatchJob>,
) -> Result<Json<Value>, ApiError> {
    let job = visible_job(&state, &scope, &id).await?;
    let command: Box<dyn Fn(DateTime<Utc>) -> JobCommand + Send + Sync> =
        match (body.stage, body.priority) {
            (Some(Stage::Shipped), None) => Box::new(|now| JobCommand::Ship { now }),
            (Some(Stage::Cancelled), None) => {
                let reason = body.reason.clone();
                Box::new(move |now| JobCommand::Cancel {
                    reason: reason.clone(),
                    now,
                })
            }
            (Some(_), None) => {
                return Err(ApiError::invalid(
                    "stage",
                    "stage may only be set to shipped or cancelled",
                ))
            }
            (None, Some(priority)) => {
                Box::new(move |now| JobCommand::Reprioritise { priority, now })
            }
            _ => {
                return Err(ApiError::invalid(
                    "stage",
                    "give exactly one of stage or priority",
                ))
            }
        };
    let done = execute::<Job, _>(&state, &stream_of(&job), command)
        .await
        .map_err(into_api::<Job>)?;
    tracing::info!(job_id = %id, stage = %done.aggregate.stage, "job changed by operator");
    if done.aggregate.stage == Stage::Cancelled {
        state.wake_all();
    }
    Ok(Json(views::job(&done.aggregate)))
}

/// `GET /fleet/jobs/:id/runs`.
#[utoipa::path(get, path = "/fleet/jobs/{job_id}/runs", tag = "jobs", params(("job_id" = String, Path, description = "The job")), responses((status = 200, description = "Its runs", body = RunPage), (status = 400, description = "Malformed JSON", body = ErrorBody), (status = 401, description = "No or bad token", body = ErrorBody), (status = 403, description = "Not allowed for this token", body = ErrorBody), (status = 404, description = "Not found or not in the token's products", body = ErrorBody), (status = 422, description = "Invalid values", body = ErrorBody), (status = 503, description = "Database unavailable", body = ErrorBody)), security(("bearer" = [])))]
pub async fn runs(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let job = visible_job(&state, &caller.scope(), &id).await?;
    let mut conn = state.pool.acquire().await?;
    let job_id = job.spec.as_ref().map(|s| s.job_id.0).unwrap_or_default();
    let rows = runs::of_job(&mut conn, job_id).await?;
    Ok(Json(views::page(
        rows.iter().map(views::run).collect(),
        None,
    )))
}

/// `GET /fleet/jobs/:id/events?cursor=&limit=` → the job's events, oldest first.
#[utoipa::path(get, path = "/fleet/jobs/{job_id}/events", tag = "jobs", params(("job_id" = String, Path, description = "The job"), ("limit" = Option<i64>, Query), ("cursor" = Option<String>, Query)), responses((status = 200, description = "Its events, oldest first", body = TimelinePage), (status = 400, description = "Malformed JSON", body = ErrorBody), (status = 401, description = "No or bad token", body = ErrorBody), (status = 403, description = "Not allowed for this token", body = ErrorBody), (status = 404, description = "Not found or not in the token's products", body = ErrorBody), (status = 422, description = "Invalid values", body = ErrorBody), (status = 503, description = "Database unavailable", body = ErrorBody)), security(("bearer" = [])))]
pub async fn events(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<QueryMap>,
) -> Result<Json<Value>, ApiError> {
    let job = visible_job(&state, &caller.scope(), &id).await?;
    let limit = params::limit(&q)?;
    let after = match q.get("cursor") {
        Some(c) => c
            .parse::<i64>()
            .map_err(|_| ApiError::invalid("cursor", "invalid cursor"))?,
        None => 0,
    };
    let mut conn = state.pool.acquire().await?;
    let stream = job
        .spec
        .as_ref()
        .map(|s| s.job_id.stream_id(&s.product_id))
        .unwrap_or_default();
    let entries = timeline::of_job(&mut conn, &stream, after, limit).await?;
    let next = (entries.len() as i64 == limit)
        .then(|| entries.last().map(|e| e.sequence.to_string()))
        .flatten();
    Ok(Json(views::page(
        entries.iter().map(views::timeline_entry).collect(),
        next,
    )))
}
