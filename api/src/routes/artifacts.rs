//! Artifacts: upload (streamed, hashed and sized on the way, limited), list, download
//! (streamed, with ETag = sha256 and Content-Length), delete.

#[allow(unused_imports)]
use crate::openapi::*;

use super::jobs::{stream_of, visible_job};
use super::params::{self, QueryMap};
use crate::app::AppState;
use crate::artifacts::key;
use crate::auth::{Caller, Operator};
use crate::commands::{execute, into_api};
use crate::error::ApiError;
use crate::views;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::StreamExt;
use gigafactory_domain::job::{check_artifact_name, ArtifactMeta, Job, JobCommand, Uploader};
use gigafactory_projections::artifacts;
use object_store::buffered::BufWriter;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use uuid::Uuid;

fn artifact_json(id: Uuid, name: &str, sha256: &str, size: i64, content_type: &str) -> Value {
    json!({"artifactId": id.to_string(), "name": name, "sha256": sha256, "size": size, "contentType": content_type})
}

/// `POST /fleet/jobs/:id/artifacts?name=&epoch=` (the lease holder with its epoch, or
/// an operator without one), raw body → 201.
#[utoipa::path(post, path = "/fleet/jobs/{job_id}/artifacts", tag = "artifacts", params(("job_id" = String, Path, description = "The job"), ("name" = String, Query), ("epoch" = Option<u64>, Query, description = "The lease epoch (factories)")), request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "The bytes; Content-Type is kept"), responses((status = 201, description = "Stored", body = ArtifactView), (status = 409, description = "fenced or invalid_stage", body = ErrorBody), (status = 400, description = "Malformed JSON", body = ErrorBody), (status = 401, description = "No or bad token", body = ErrorBody), (status = 403, description = "Not allowed for this token", body = ErrorBody), (status = 404, description = "Not found or not in the token's products", body = ErrorBody), (status = 422, description = "Invalid values", body = ErrorBody), (status = 503, description = "Database unavailable", body = ErrorBody), (status = 413, description = "Too large", body = ErrorBody)), security(("bearer" = [])))]
pub async fn upload(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<QueryMap>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let name = q.get("name").cloned().unwrap_or_default();
    check_artifact_name(&name).map_err(|m| ApiError::invalid("name", m))?;
    let uploader_scope = match &caller {
        Caller::Factory { products, .. } => crate::auth::Scope::Products(products.clone()),
        other => other.require_operator()?,
    };
    let job = visible_job(&state, &uploader_scope, &id).await?;
    let uploader = match &caller {
        Caller::Factory { factory_id, .. } => {
            let epoch = q
                .get("epoch")
                .ok_or_else(|| {
                    ApiError::invalid("epoch", "a factory uploads with its lease's epoch")
                })?
                .parse::<u64>()
                .map_err(|_| ApiError::invalid("epoch", "epoch must be an integer ≥ 0"))?;
            // Fail fast, before any byte is stored; the aggregate checks again.
            let live = job
                .lease
                .as_ref()
                .is_some_and(|l| l.epoch == epoch && l.factory_id == *factory_id);
            if !live {
                return Err(ApiError::Fenced {
                    current: job.current(),
                });
            }
            Uploader::Factory {
                factory_id: *factory_id,
                epoch,
            }
        }
        _ => Uploader::Operator,
    };
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/octet-stream")
        .to_string();
    let spec = job.spec.as_ref().expect("visible jobs are submitted");
    let artifact_id = Uuid::now_v7();
    let location = key(spec.product_id.as_str(), spec.job_id.0, artifact_id);

    // Stream the body into the store, hashing and counting as it goes.
    let mut writer = BufWriter::new(state.artifacts.clone(), location.clone());
    let mut hasher = Sha256::new();
    let mut size: u64 = 0;
    let mut stream = body.into_data_stream();
    let limit = state.settings.artifact_max_bytes;
    while let Some(chunk) = stream.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                let _ = writer.abort().await;
                return Err(ApiError::MalformedJson(format!("upload interrupted: {e}")));
            }
        };
        size += chunk.len() as u64;
        if size > limit {
            let _ = writer.abort().await;
            return Err(ApiError::TooLarge);
        }
        hasher.update(&chunk);
        if let Err(e) = writer.write_all(&chunk).await {
            let _ = writer.abort().await;
            return Err(ApiError::Internal(format!("writing the artifact: {e}")));
        }
    }
    writer
        .shutdown()
        .await
        .map_err(|e| ApiError::Internal(format!("storing the artifact: {e}")))?;
    let sha256 = hex::encode(hasher.finalize());
    let meta = ArtifactMeta {
        artifact_id,
        name: name.clone(),
        sha256: sha256.clone(),
        size,
        content_type: content_type.clone(),
        blob_key: location.to_string(),
    };
    let appended = execute::<Job, _>(&state, &stream_of(&job), |now| JobCommand::AddArtifact {
        uploader,
        artifact: meta.clone(),
        now,
    })
    .await;
    if let Err(e) = appended {
        // No event, no bytes: nothing that stays.
        if let Err(del) = state.artifacts.delete(&location).await {
            tracing::warn!(error = %del, artifact_id = %artifact_id, "could not remove an unrecorded blob; the orphan sweeper will");
        }
        return Err(into_api::<Job>(e));
    }
    tracing::info!(job_id = %spec.job_id, artifact_id = %artifact_id, size, "artifact stored");
    Ok((
        StatusCode::CREATED,
        Json(artifact_json(
            artifact_id,
            &name,
            &sha256,
            size as i64,
            &content_type,
        )),
    ))
}

/// `GET /fleet/jobs/:id/artifacts`.
#[utoipa::path(get, path = "/fleet/jobs/{job_id}/artifacts", tag = "artifacts", params(("job_id" = String, Path, description = "The job")), responses((status = 200, description = "Its artifacts", body = ArtifactPage), (status = 400, description = "Malformed JSON", body = ErrorBody), (status = 401, description = "No or bad token", body = ErrorBody), (status = 403, description = "Not allowed for this token", body = ErrorBody), (status = 404, description = "Not found or not in the token's products", body = ErrorBody), (status = 422, description = "Invalid values", body = ErrorBody), (status = 503, description = "Database unavailable", body = ErrorBody)), security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let job = visible_job(&state, &caller.scope(), &id).await?;
    let mut conn = state.pool.acquire().await?;
    let rows = artifacts::of_job(
        &mut conn,
        job.spec.as_ref().map(|s| s.job_id.0).unwrap_or_default(),
    )
    .await?;
    let items = rows
        .iter()
        .map(|r| {
            let mut v = artifact_json(r.artifact_id, &r.name, &r.sha256, r.size, &r.content_type);
            v["createdAt"] = json!(views::time(r.created_at));
            v
        })
        .collect();
    Ok(Json(views::page(items, None)))
}

/// `GET /fleet/jobs/:id/artifacts/:artifactId` → the bytes, streamed.
#[utoipa::path(get, path = "/fleet/jobs/{job_id}/artifacts/{artifact_id}", tag = "artifacts", params(("job_id" = String, Path, description = "The job"), ("artifact_id" = String, Path)), responses((status = 200, description = "The bytes, with ETag = sha256", body = Vec<u8>, content_type = "application/octet-stream"), (status = 400, description = "Malformed JSON", body = ErrorBody), (status = 401, description = "No or bad token", body = ErrorBody), (status = 403, description = "Not allowed for this token", body = ErrorBody), (status = 404, description = "Not found or not in the token's products", body = ErrorBody), (status = 422, description = "Invalid values", body = ErrorBody), (status = 503, description = "Database unavailable", body = ErrorBody)), security(("bearer" = [])))]
pub async fn download(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, artifact_id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let job = visible_job(&state, &caller.scope(), &id).await?;
    let artifact_id = params::id(&artifact_id, "artifact")?;
    let mut conn = state.pool.acquire().await?;
    let row = artifacts::get(
        &mut conn,
        job.spec.as_ref().map(|s| s.job_id.0).unwrap_or_default(),
        artifact_id,
    )
    .await?
    .ok_or(ApiError::NotFound("artifact"))?;
    drop(conn);
    let object = state
        .artifacts
        .get(&object_store::path::Path::from(row.blob_key.as_str()))
        .await
        .map_err(|e| match e {
            object_store::Error::NotFound { .. } => ApiError::NotFound("artifact"),
            other => ApiError::Internal(format!("reading the artifact: {other}")),
        })?;
    let body = Body::from_stream(object.into_stream());
    Ok((
        [
            (header::CONTENT_TYPE, row.content_type.clone()),
            (header::CONTENT_LENGTH, row.size.to_string()),
            (header::ETAG, format!("\"{}\"", row.sha256)),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{}\"", row.name.replace('"', "")),
            ),
        ],
        body,
    )
        .into_response())
}

/// `DELETE /fleet/jobs/:id/artifacts/:artifactId` (operator) → 204: the event, then
/// the bytes.
#[utoipa::path(delete, path = "/fleet/jobs/{job_id}/artifacts/{artifact_id}", tag = "artifacts", params(("job_id" = String, Path, description = "The job"), ("artifact_id" = String, Path)), responses((status = 204, description = "Deleted, bytes removed"), (status = 400, description = "Malformed JSON", body = ErrorBody), (status = 401, description = "No or bad token", body = ErrorBody), (status = 403, description = "Not allowed for this token", body = ErrorBody), (status = 404, description = "Not found or not in the token's products", body = ErrorBody), (status = 422, description = "Invalid values", body = ErrorBody), (status = 503, description = "Database unavailable", body = ErrorBody)), security(("bearer" = [])))]
pub async fn delete(
    State(state): State<AppState>,
    Operator(scope): Operator,
    Path((id, artifact_id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let job = visible_job(&state, &scope, &id).await?;
    let artifact_id = params::id(&artifact_id, "artifact")?;
    let mut conn = state.pool.acquire().await?;
    let row = artifacts::get(
        &mut conn,
        job.spec.as_ref().map(|s| s.job_id.0).unwrap_or_default(),
        artifact_id,
    )
    .await?
    .ok_or(ApiError::NotFound("artifact"))?;
    drop(conn);
    execute::<Job, _>(&state, &stream_of(&job), |now| JobCommand::DeleteArtifact {
        artifact_id,
        now,
    })
    .await
    .map_err(|e| match e {
        crate::commands::ExecError::Domain(gigafactory_domain::job::JobError::NotFound) => {
            ApiError::NotFound("artifact")
        }
        other => into_api::<Job>(other),
    })?;
    if let Err(e) = state
        .artifacts
        .delete(&object_store::path::Path::from(row.blob_key.as_str()))
        .await
    {
        tracing::warn!(error = %e, artifact_id = %artifact_id, "artifact bytes not removed; the orphan sweeper will");
    }
    Ok(StatusCode::NO_CONTENT)
}
