//! HTTP routes: thin handlers that extract, call one function, map the error.

mod artifacts;
mod audit;
mod events;
mod factories;
mod flags;
mod health;
mod jobs;
mod leases;
mod params;
mod scheduler;
mod stream;
mod tokens;

use crate::app::AppState;
use crate::error::ApiError;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, Request};
use axum::routing::{delete, get, post};
use axum::Router;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

pub fn router(state: AppState) -> Router {
    let request_id = HeaderName::from_static("x-request-id");
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/fleet/tokens", post(tokens::issue))
        .route("/fleet/tokens/{token_id}", delete(tokens::revoke))
        .route("/fleet/factories", get(factories::list))
        .route("/fleet/factories/enroll", post(factories::enroll))
        .route("/fleet/factories/heartbeat", post(factories::heartbeat))
        .route("/fleet/factories/{factory_id}/token/rotate", post(factories::rotate))
        .route("/fleet/factories/{factory_id}/token/revoke", post(factories::revoke))
        .route("/fleet/jobs", post(jobs::submit).get(jobs::list))
        .route("/fleet/jobs/{job_id}", get(jobs::get).patch(jobs::patch))
        .route("/fleet/jobs/{job_id}/runs", get(jobs::runs))
        .route("/fleet/jobs/{job_id}/events", get(jobs::events))
        .route("/fleet/jobs/{job_id}/lease/renew", post(leases::renew))
        .route("/fleet/jobs/{job_id}/lease/release", post(leases::release))
        .route("/fleet/jobs/{job_id}/report", post(leases::report))
        .route("/fleet/claim", post(leases::claim))
        .route("/fleet/jobs/{job_id}/artifacts", post(artifacts::upload).get(artifacts::list))
        .route(
            "/fleet/jobs/{job_id}/artifacts/{artifact_id}",
            get(artifacts::download).delete(artifacts::delete),
        )
        .route("/fleet/events", get(events::list))
        .route("/fleet/weights/{product_id}", get(scheduler::get_weights).put(scheduler::put_weights))
        .route("/fleet/explain", get(scheduler::explain))
        .route("/fleet/flags", get(flags::get).put(flags::put))
        .route("/fleet/audit/verify", get(audit::verify))
        .route("/fleet/stream", get(stream::stream))
        .route("/metrics", get(crate::metrics::render))
        .route_layer(axum::middleware::from_fn(crate::metrics::track))
        .fallback(|| async { ApiError::NotFound("route") })
        .layer(DefaultBodyLimit::max(state.settings.max_body_bytes))
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(TraceLayer::new_for_http().make_span_with(|req: &Request<_>| {
            let id = req
                .headers()
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-");
            tracing::info_span!("request", method = %req.method(), path = %req.uri().path(), request_id = %id)
        }))
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
        .with_state(state)
}
