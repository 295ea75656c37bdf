//! Prometheus metrics (`GET /metrics`), through the `metrics` facade.
//!
//! | metric | kind | labels |
//! |---|---|---|
//! | `gigafactory_http_requests_total` | counter | `route`, `method`, `status` |
//! | `gigafactory_http_request_duration_seconds` | histogram | `route`, `method` |
//! | `gigafactory_claims_total` | counter | `outcome` = `granted` \| `empty` |
//! | `gigafactory_claim_duration_seconds` | histogram | |
//! | `gigafactory_fenced_writes_total` | counter | |
//! | `gigafactory_lease_expiries_total` | counter | |
//! | `gigafactory_preemptions_total` | counter | `mode` = `on` \| `shadow` |
//! | `gigafactory_events_appended_total` | counter | `type` |
//! | `gigafactory_projection_lag_events` | gauge | `projection` |
//! | `gigafactory_projection_lag_seconds` | gauge | `projection` |
//! | `gigafactory_queue_depth` | gauge | `product`, `stage` (measured at scrape time) |
//! | `gigafactory_sse_subscribers` | gauge | |

use crate::app::AppState;
use crate::error::ApiError;
use axum::extract::{MatchedPath, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use sqlx::Row;
use std::sync::OnceLock;
use std::time::Instant;

/// The process-wide recorder (installed once, shared by every app in the process).
pub fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        PrometheusBuilder::new()
            .set_buckets(&[
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ])
            .expect("valid buckets")
            .install_recorder()
            .expect("one metrics recorder per process")
    })
}

/// Counts and times every request by its route template (never the raw path: ids
/// would explode the label space).
pub async fn track(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = req.method().to_string();
    let started = Instant::now();
    let response = next.run(req).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!("gigafactory_http_requests_total", "route" => route.clone(), "method" => method.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("gigafactory_http_request_duration_seconds", "route" => route, "method" => method)
        .record(started.elapsed().as_secs_f64());
    response
}

/// Sets the projection-lag gauges: events behind the log's head, and the age of the
/// oldest event not yet projected.
pub async fn record_projection_lag(state: &AppState) -> Result<(), sqlx::Error> {
    let rows = sqlx::query(
        "SELECT c.projection, h.last_position - c.position AS behind,
                coalesce(extract(epoch FROM now() - (SELECT recorded_at FROM positioned_events e WHERE e.position = c.position + 1)), 0)::float8 AS secs
         FROM projection_checkpoints c, event_log_head h",
    )
    .fetch_all(&state.pool)
    .await?;
    for r in rows {
        let name: String = r.get("projection");
        metrics::gauge!("gigafactory_projection_lag_events", "projection" => name.clone())
            .set(r.get::<i64, _>("behind") as f64);
        metrics::gauge!("gigafactory_projection_lag_seconds", "projection" => name)
            .set(r.get::<f64, _>("secs"));
    }
    Ok(())
}

/// `GET /metrics`: Prometheus text.
#[utoipa::path(get, path = "/metrics", tag = "process", responses((status = 200, description = "Prometheus text", body = String, content_type = "text/plain")))]
pub async fn render(State(state): State<AppState>) -> Result<Response, ApiError> {
    let rows = sqlx::query(
        "SELECT product_id, stage, count(*) AS n FROM job_view GROUP BY product_id, stage",
    )
    .fetch_all(&state.pool)
    .await?;
    for r in rows {
        let product: String = r.get("product_id");
        let stage: String = r.get("stage");
        metrics::gauge!("gigafactory_queue_depth", "product" => product, "stage" => stage)
            .set(r.get::<i64, _>("n") as f64);
    }
    Ok((
        [(CONTENT_TYPE, "text/plain; version=0.0.4")],
        handle().render(),
    )
        .into_response())
}
