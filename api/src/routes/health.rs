use crate::app::AppState;
#[allow(unused_imports)]
use crate::openapi::*;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

/// 200 while the process is up.
#[utoipa::path(get, path = "/healthz", tag = "process", responses((status = 200, description = "The process is up", body = StatusView)))]
pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// 200 when the database answers and every migration is applied; 503 otherwise.
#[utoipa::path(get, path = "/readyz", tag = "process", responses((status = 200, description = "Ready", body = StatusView), (status = 503, description = "Database unreachable or migrations missing", body = StatusView)))]
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    if crate::db::ready(&state.pool).await {
        (StatusCode::OK, Json(json!({"status": "ready"})))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(
                json!({"status": "unavailable", "reason": "database unreachable or migrations not applied"}),
            ),
        )
    }
}
