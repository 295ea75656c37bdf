//! Operator and auditor tokens (admin only).

#[allow(unused_imports)]
use crate::openapi::*;

use super::params;
use crate::app::AppState;
use crate::auth::{generate_token, hash_token, Admin, Caller};
use crate::commands::{execute, into_api};
use crate::error::ApiError;
use crate::json::JsonBody;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use gigafactory_domain::access::{AccessToken, AccessTokenCommand, NewAccessToken, Role};
use gigafactory_domain::TokenId;
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;

#[derive(Deserialize, utoipa::ToSchema)]
pub struct IssueToken {
    /// operator | auditor
    #[schema(value_type = String)]
    role: Role,
    products: Vec<String>,
    name: String,
}

/// `POST /fleet/tokens` → 201 `{tokenId, token}`; the token is shown only here.
#[utoipa::path(post, path = "/fleet/tokens", tag = "tokens", request_body = IssueToken, responses((status = 201, description = "The token, shown once", body = TokenIssued), (status = 400, description = "Malformed JSON", body = ErrorBody), (status = 401, description = "No or bad token", body = ErrorBody), (status = 403, description = "Not allowed for this token", body = ErrorBody), (status = 404, description = "Not found or not in the token's products", body = ErrorBody), (status = 422, description = "Invalid values", body = ErrorBody), (status = 503, description = "Database unavailable", body = ErrorBody)), security(("bearer" = [])))]
pub async fn issue(
    State(state): State<AppState>,
    _admin: Admin,
    JsonBody(body): JsonBody<IssueToken>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let token = generate_token();
    let token_id = TokenId(Uuid::now_v7());
    let new = NewAccessToken {
        token_id,
        role: body.role,
        products: body.products,
        name: body.name,
        token_hash: hash_token(&token),
    };
    execute::<AccessToken, _>(&state, &token_id.aggregate_id(), |now| {
        AccessTokenCommand::Issue {
            token: new.clone(),
            now,
        }
    })
    .await
    .map_err(into_api::<AccessToken>)?;
    tracing::info!(token_id = %token_id, role = ?body.role, "access token issued");
    Ok((
        StatusCode::CREATED,
        Json(json!({"tokenId": token_id.to_string(), "token": token})),
    ))
}

/// `DELETE /fleet/tokens/:tokenId` → 204; the token is refused at once.
#[utoipa::path(delete, path = "/fleet/tokens/{token_id}", tag = "tokens", params(("token_id" = String, Path, description = "The token id")), responses((status = 204, description = "Revoked"), (status = 400, description = "Malformed JSON", body = ErrorBody), (status = 401, description = "No or bad token", body = ErrorBody), (status = 403, description = "Not allowed for this token", body = ErrorBody), (status = 404, description = "Not found or not in the token's products", body = ErrorBody), (status = 422, description = "Invalid values", body = ErrorBody), (status = 503, description = "Database unavailable", body = ErrorBody)), security(("bearer" = [])))]
pub async fn revoke(
    State(state): State<AppState>,
    caller: Caller,
    Path(token_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require_admin()?;
    let token_id = TokenId(params::id(&token_id, "token")?);
    execute::<AccessToken, _>(&state, &token_id.aggregate_id(), |now| {
        AccessTokenCommand::Revoke { now }
    })
    .await
    .map_err(into_api::<AccessToken>)?;
    tracing::info!(token_id = %token_id, "access token revoked");
    Ok(StatusCode::NO_CONTENT)
}
