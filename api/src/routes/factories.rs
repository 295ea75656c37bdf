//! Factories: enrollment, heartbeats, token rotation and revocation, the fleet map.

#[allow(unused_imports)]
use crate::openapi::*;

use super::params::{self, QueryMap};
use crate::app::AppState;
use crate::auth::{generate_token, hash_token, Caller, FactoryCaller, Operator, Scope};
use crate::commands::{execute, into_api, ExecError};
use crate::error::ApiError;
use crate::json::JsonBody;
use crate::views;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use gigafactory_domain::factory::{Factory, FactoryCommand, NewFactory};
use gigafactory_domain::job::{Job, JobCommand, JobError};
use gigafactory_domain::{FactoryId, JobId, ProductId};
use gigafactory_projections::{factories, jobs, liveness, runs};
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Enroll {
    name: String,
    product_ids: Vec<String>,
    #[serde(default)]
    capabilities: Vec<String>,
    #[serde(default = "one")]
    capacity: u32,
}

fn one() -> u32 {
    1
}

/// `POST /fleet/factories/enroll` (operator) → 201 `{factoryId, token}`.
#[utoipa::path(post, path = "/fleet/factories/enroll", tag = "factories", request_body = Enroll, responses((status = 201, description = "The factory and its token, shown once", body = Enrolled), (status = 400, description = "Malformed JSON", body = ErrorBody), (status = 401, description = "No or bad token", body = ErrorBody), (status = 403, description = "Not allowed for this token", body = ErrorBody), (status = 404, description = "Not found or not in the token's products", body = ErrorBody), (status = 422, description = "Invalid values", body = ErrorBody), (status = 503, description = "Database unavailable", body = ErrorBody)), security(("bearer" = [])))]
pub async fn enroll(
    State(state): State<AppState>,
    Operator(scope): Operator,
    JsonBody(body): JsonBody<Enroll>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let mut products = Vec::new();
    for p in &body.product_ids {
        let id = ProductId::parse(p)
            .ok_or_else(|| ApiError::invalid("productIds", format!("{p:?} is not a product id")))?;
        if !scope.covers(p) {
            return Err(ApiError::NotFound("product"));
        }
        products.push(id);
    }
    let token = generate_token();
    let factory_id = FactoryId(Uuid::now_v7());
    let factory = NewFactory {
        factory_id,
        name: body.name,
        product_ids: products,
        capabilities: body.capabilities,
        capacity: body.capacity,
        token_hash: hash_token(&token),
    };
    execute::<Factory, _>(&state, &factory_id.aggregate_id(), |now| {
        FactoryCommand::Enroll {
            factory: factory.clone(),
            now,
        }
    })
    .await
    .map_err(into_api::<Factory>)?;
    tracing::info!(factory_id = %factory_id, "factory enrolled");
    Ok((
        StatusCode::CREATED,
        Json(json!({"factoryId": factory_id.to_string(), "token": token})),
    ))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Heartbeat {
    #[serde(default)]
    running_job_ids: Vec<String>,
}

/// How long a stop directive repeats after the lease ended (SPEC §11).
const DIRECTIVE_WINDOW_SECS: i64 = 300;

/// `POST /fleet/factories/heartbeat` (factory): liveness, and directives for jobs
/// it still runs whose lease has ended (cancelled, expired, revoked…).
#[utoipa::path(post, path = "/fleet/factories/heartbeat", tag = "factories", request_body = Heartbeat, responses((status = 200, description = "Directives and flags", body = HeartbeatAnswer), (status = 400, description = "Malformed JSON", body = ErrorBody), (status = 401, description = "No or bad token", body = ErrorBody), (status = 403, description = "Not allowed for this token", body = ErrorBody), (status = 404, description = "Not found or not in the token's products", body = ErrorBody), (status = 422, description = "Invalid values", body = ErrorBody), (status = 503, description = "Database unavailable", body = ErrorBody)), security(("bearer" = [])))]
pub async fn heartbeat(
    State(state): State<AppState>,
    FactoryCaller { factory_id, .. }: FactoryCaller,
    JsonBody(body): JsonBody<Heartbeat>,
) -> Result<Json<Value>, ApiError> {
    let running: Vec<Uuid> = body
        .running_job_ids
        .iter()
        .map(|s| {
            Uuid::parse_str(s)
                .map_err(|_| ApiError::invalid("runningJobIds", format!("{s:?} is not a job id")))
        })
        .collect::<Result<_, _>>()?;
    let mut conn = state.pool.acquire().await?;
    liveness::record_heartbeat(&mut conn, factory_id.0, &running).await?;
    let now = state.clock.now(&mut conn).await?;
    let since = now - chrono::Duration::seconds(DIRECTIVE_WINDOW_SECS);
    let directives: Vec<Value> = runs::stop_directives(&mut conn, factory_id.0, &running, since)
        .await?
        .into_iter()
        .filter(|(_, outcome)| !matches!(outcome.as_str(), "succeeded" | "failed" | "released"))
        .map(|(job_id, reason)| json!({"type": "stop", "jobId": job_id.to_string(), "reason": reason}))
        .collect();
    let flags = crate::flags::effective(&state, &mut conn).await?;
    Ok(Json(json!({
        "factoryId": factory_id.to_string(),
        "directives": directives,
        "flags": crate::flags::to_json(&flags),
    })))
}

/// The factory, if the caller may act on it: itself, or an operator covering one of
/// its products. Anything else: 404.
async fn factory_for(
    state: &AppState,
    caller: &Caller,
    id: &str,
    operator_only: bool,
) -> Result<FactoryId, ApiError> {
    let id = FactoryId(params::id(id, "factory")?);
    match caller {
        Caller::Factory { factory_id, .. } if !operator_only => {
            return if *factory_id == id {
                Ok(id)
            } else {
                Err(ApiError::NotFound("factory"))
            };
        }
        _ => {}
    }
    let scope = caller.require_operator()?;
    let mut conn = state.pool.acquire().await?;
    match factories::get(&mut conn, id.0).await? {
        Some(f) if scope.covers_any(&f.product_ids) => Ok(id),
        _ => Err(ApiError::NotFound("factory")),
    }
}

/// `POST /fleet/factories/:id/token/rotate` → 200 `{token}`; the old token works
/// until the new one is first used or 60 s pass.
#[utoipa::path(post, path = "/fleet/factories/{factory_id}/token/rotate", tag = "factories", params(("factory_id" = String, Path, description = "The factory")), responses((status = 200, description = "The new token", body = Rotated), (status = 400, description = "Malformed JSON", body = ErrorBody), (status = 401, description = "No or bad token", body = ErrorBody), (status = 403, description = "Not allowed for this token", body = ErrorBody), (status = 404, description = "Not found or not in the token's products", body = ErrorBody), (status = 422, description = "Invalid values", body = ErrorBody), (status = 503, description = "Database unavailable", body = ErrorBody)), security(("bearer" = [])))]
pub async fn rotate(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let factory_id = factory_for(&state, &caller, &id, false).await?;
    let token = generate_token();
    let hash = hash_token(&token);
    execute::<Factory, _>(&state, &factory_id.aggregate_id(), |now| {
        FactoryCommand::RotateToken {
            new_token_hash: hash.clone(),
            now,
        }
    })
    .await
    .map_err(into_api::<Factory>)?;
    tracing::info!(factory_id = %factory_id, "factory token rotated");
    Ok(Json(json!({"token": token})))
}

/// `POST /fleet/factories/:id/token/revoke` (operator) → 204; its tokens are refused
/// at once and its leases go back to the queue.
#[utoipa::path(post, path = "/fleet/factories/{factory_id}/token/revoke", tag = "factories", params(("factory_id" = String, Path, description = "The factory")), responses((status = 204, description = "Revoked; its leases go back to the queue"), (status = 400, description = "Malformed JSON", body = ErrorBody), (status = 401, description = "No or bad token", body = ErrorBody), (status = 403, description = "Not allowed for this token", body = ErrorBody), (status = 404, description = "Not found or not in the token's products", body = ErrorBody), (status = 422, description = "Invalid values", body = ErrorBody), (status = 503, description = "Database unavailable", body = ErrorBody)), security(("bearer" = [])))]
pub async fn revoke(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let factory_id = factory_for(&state, &caller, &id, true).await?;
    execute::<Factory, _>(&state, &factory_id.aggregate_id(), |now| {
        FactoryCommand::Revoke { now }
    })
    .await
    .map_err(into_api::<Factory>)?;
    tracing::info!(factory_id = %factory_id, "factory revoked");
    release_leases_of(&state, factory_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Releases every lease a revoked factory holds (the sweeper does the same for any a
/// crash left behind).
async fn release_leases_of(state: &AppState, factory_id: FactoryId) -> Result<(), ApiError> {
    // A claim of this factory that read it active before the revocation committed may
    // still be granting: wait for its turn to end (the factory's claims lock), so its
    // lease is among those read below. Later claims find the factory revoked.
    let mut turn = state.pool.begin().await?;
    gigafactory_projections::factories::lock_for_claims(&mut turn, factory_id.0).await?;
    turn.commit().await?;
    let mut conn = state.pool.acquire().await?;
    let held = jobs::leases_of(&mut conn, &[factory_id.0]).await?;
    drop(conn);
    for lease in held {
        let stream = JobId(lease.job_id).stream_id(&ProductId(lease.product_id));
        match execute::<Job, _>(state, &stream, |now| JobCommand::RevokeLease {
            factory_id,
            now,
        })
        .await
        {
            Ok(_) | Err(ExecError::Domain(JobError::Fenced { .. })) => {}
            Err(e) => return Err(into_api::<Job>(e)),
        }
    }
    Ok(())
}

/// `GET /fleet/factories` (operator/auditor): the fleet map.
#[utoipa::path(get, path = "/fleet/factories", tag = "factories", params(("limit" = Option<i64>, Query, description = "1–500, default 50"), ("cursor" = Option<String>, Query, description = "nextCursor of the previous page")), responses((status = 200, description = "The fleet map", body = FactoryPage), (status = 400, description = "Malformed JSON", body = ErrorBody), (status = 401, description = "No or bad token", body = ErrorBody), (status = 403, description = "Not allowed for this token", body = ErrorBody), (status = 404, description = "Not found or not in the token's products", body = ErrorBody), (status = 422, description = "Invalid values", body = ErrorBody), (status = 503, description = "Database unavailable", body = ErrorBody)), security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<QueryMap>,
) -> Result<Json<Value>, ApiError> {
    let scope = caller.require_reader()?;
    let limit = params::limit(&q)?;
    let after = match q.get("cursor") {
        Some(c) => {
            Some(Uuid::parse_str(c).map_err(|_| ApiError::invalid("cursor", "invalid cursor"))?)
        }
        None => None,
    };
    let mut conn = state.pool.acquire().await?;
    let filter = scope.as_filter();
    let rows = factories::list(&mut conn, filter.as_deref(), after, limit).await?;
    let ids: Vec<Uuid> = rows.iter().map(|f| f.factory_id).collect();
    let leases = jobs::leases_of(&mut conn, &ids).await?;
    let s = &state.settings;
    let items: Vec<Value> = rows
        .iter()
        .map(|f| {
            let mine: Vec<_> = leases
                .iter()
                .filter(|l| l.factory_id == f.factory_id && visible(&scope, &l.product_id))
                .collect();
            views::factory(f, &mine, s.stale_after_secs, s.offline_after_secs)
        })
        .collect();
    let next = (items.len() as i64 == limit)
        .then(|| ids.last().map(|i| i.to_string()))
        .flatten();
    Ok(Json(views::page(items, next)))
}

fn visible(scope: &Scope, product: &str) -> bool {
    scope.covers(product)
}
