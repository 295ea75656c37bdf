//! The scheduler's surface: per-product weights and the explain view.

#[allow(unused_imports)]
use crate::openapi::*;

use super::params::{self, QueryMap};
use crate::app::AppState;
use crate::auth::{Caller, Operator};
use crate::commands::{execute, into_api};
use crate::error::ApiError;
use crate::json::JsonBody;
use crate::scheduling::rank_for_factory;
use axum::extract::{Path, Query, State};
use axum::Json;
use gigafactory_domain::scheduler::{FleetWeightConfig, WeightOverrides};
use gigafactory_domain::settings::{ProductSettings, SettingsCommand};
use gigafactory_domain::{FactoryId, ProductId};
use gigafactory_projections::{factories, settings};
use serde::Deserialize;
use serde_json::{json, Map, Value};

fn product(id: &str, scope: &crate::auth::Scope) -> Result<ProductId, ApiError> {
    match ProductId::parse(id) {
        Some(p) if scope.covers(p.as_str()) => Ok(p),
        _ => Err(ApiError::NotFound("product")),
    }
}

fn weights_body(product: &ProductId, overrides: Option<&WeightOverrides>) -> Value {
    let effective = FleetWeightConfig {
        product: overrides.cloned(),
        request: None,
    }
    .resolve();
    json!({
        "productId": product.as_str(),
        "weights": effective.to_json(),
        "source": if overrides.is_some() { "product" } else { "default" },
        "override": overrides.map(|o| o.to_json()).unwrap_or_else(|| json!({})),
    })
}

/// `GET /fleet/weights/:productId` → the effective weights and where they come from.
#[utoipa::path(get, path = "/fleet/weights/{product_id}", tag = "scheduler", params(("product_id" = String, Path)), responses((status = 200, description = "The effective weights", body = WeightsView), (status = 400, description = "Malformed JSON", body = ErrorBody), (status = 401, description = "No or bad token", body = ErrorBody), (status = 403, description = "Not allowed for this token", body = ErrorBody), (status = 404, description = "Not found or not in the token's products", body = ErrorBody), (status = 422, description = "Invalid values", body = ErrorBody), (status = 503, description = "Database unavailable", body = ErrorBody)), security(("bearer" = [])))]
pub async fn get_weights(
    State(state): State<AppState>,
    caller: Caller,
    Path(product_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let product = product(&product_id, &caller.require_reader()?)?;
    let mut conn = state.pool.acquire().await?;
    let overrides = settings::weights_of(&mut conn, std::slice::from_ref(&product.0)).await?;
    Ok(Json(weights_body(
        &product,
        overrides.get(product.as_str()),
    )))
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct PutWeights {
    #[schema(value_type = std::collections::BTreeMap<String, f64>)]
    weights: Map<String, Value>,
}

/// `PUT /fleet/weights/:productId` `{"weights": {..}}` (operator): the product's
/// override, stored as an event. `{}` goes back to the defaults.
#[utoipa::path(put, path = "/fleet/weights/{product_id}", tag = "scheduler", params(("product_id" = String, Path)), request_body = PutWeights, responses((status = 200, description = "The effective weights", body = WeightsView), (status = 400, description = "Malformed JSON", body = ErrorBody), (status = 401, description = "No or bad token", body = ErrorBody), (status = 403, description = "Not allowed for this token", body = ErrorBody), (status = 404, description = "Not found or not in the token's products", body = ErrorBody), (status = 422, description = "Invalid values", body = ErrorBody), (status = 503, description = "Database unavailable", body = ErrorBody)), security(("bearer" = [])))]
pub async fn put_weights(
    State(state): State<AppState>,
    Operator(scope): Operator,
    Path(product_id): Path<String>,
    JsonBody(body): JsonBody<PutWeights>,
) -> Result<Json<Value>, ApiError> {
    let product = product(&product_id, &scope)?;
    let weights =
        WeightOverrides::parse(&body.weights).map_err(|e| ApiError::invalid(e.field, e.message))?;
    execute::<ProductSettings, _>(&state, product.as_str(), |now| {
        SettingsCommand::SetWeights {
            product_id: product.clone(),
            weights: weights.clone(),
            now,
        }
    })
    .await
    .map_err(into_api::<ProductSettings>)?;
    tracing::info!(product_id = %product, "weights changed");
    Ok(Json(weights_body(
        &product,
        (!weights.is_empty()).then_some(&weights),
    )))
}

/// `GET /fleet/explain?factoryId=&limit=` (operator/auditor): how that factory would
/// rank the queue now, best first, with each breakdown. Only the caller's products.
#[utoipa::path(get, path = "/fleet/explain", tag = "scheduler", params(("factoryId" = String, Query), ("limit" = Option<i64>, Query)), responses((status = 200, description = "The ranking, best first", body = Explained), (status = 400, description = "Malformed JSON", body = ErrorBody), (status = 401, description = "No or bad token", body = ErrorBody), (status = 403, description = "Not allowed for this token", body = ErrorBody), (status = 404, description = "Not found or not in the token's products", body = ErrorBody), (status = 422, description = "Invalid values", body = ErrorBody), (status = 503, description = "Database unavailable", body = ErrorBody)), security(("bearer" = [])))]
pub async fn explain(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<QueryMap>,
) -> Result<Json<Value>, ApiError> {
    let scope = caller.require_reader()?;
    let factory_id = q
        .get("factoryId")
        .ok_or_else(|| ApiError::invalid("factoryId", "factoryId is required"))?;
    let factory_id = FactoryId(params::id(factory_id, "factory")?);
    let limit = params::limit(&q)?;
    let mut conn = state.pool.acquire().await?;
    let factory = factories::get(&mut conn, factory_id.0)
        .await?
        .filter(|f| scope.covers_any(&f.product_ids))
        .ok_or(ApiError::NotFound("factory"))?;
    let products: Vec<String> = factory
        .product_ids
        .iter()
        .filter(|p| scope.covers(p))
        .cloned()
        .collect();
    let now = state.clock.now(&mut conn).await?;
    let ranked = rank_for_factory(
        &mut conn,
        factory_id,
        &factory.capabilities,
        &products,
        None,
        now,
        limit,
    )
    .await?;
    let candidates: Vec<Value> = ranked
        .iter()
        .take(limit as usize)
        .map(|r| {
            json!({
                "jobId": r.job.job_id.to_string(),
                "productId": r.job.product_id.as_str(),
                "priority": r.job.priority,
                "breakdown": r.breakdown,
            })
        })
        .collect();
    Ok(Json(
        json!({"factoryId": factory_id.to_string(), "candidates": candidates}),
    ))
}
