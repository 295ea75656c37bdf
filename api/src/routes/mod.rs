//! HTTP routes: thin handlers that extract, call one function, map the error.

mod artifacts;
mod audit;
mod batch;
mod chained;
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
use axum::Router;
use std::sync::Arc;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// The router and the OpenAPI document, built from one list of routes.
pub fn router(state: AppState) -> Router {
    let request_id = HeaderName::from_static("x-request-id");
    let (api, doc) = OpenApiRouter::with_openapi(crate::openapi::ApiDoc::openapi())
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
        .routes(routes!(crate::metrics::render))
        .routes(routes!(openapi_json))
        .routes(routes!(tokens::issue))
        .routes(routes!(tokens::revoke))
        .routes(routes!(factories::list))
        .routes(routes!(factories::enroll))
        .routes(routes!(factories::heartbeat))
        .routes(routes!(factories::rotate))
        .routes(routes!(factories::revoke))
        .routes(routes!(jobs::submit, jobs::list))
        .routes(routes!(jobs::get, jobs::patch))
        .routes(routes!(jobs::runs))
        .routes(routes!(jobs::events))
        .routes(routes!(leases::renew))
        .routes(routes!(leases::release))
        .routes(routes!(leases::report))
        .routes(routes!(leases::claim))
        .routes(routes!(chained::report_and_claim))
        .routes(routes!(batch::claim))
        .routes(routes!(batch::report))
        .routes(routes!(artifacts::upload, artifacts::list))
        .routes(routes!(artifacts::download, artifacts::delete))
        .routes(routes!(events::list))
        .routes(routes!(scheduler::get_weights, scheduler::put_weights))
        .routes(routes!(scheduler::explain))
        .routes(routes!(flags::get, flags::put))
        .routes(routes!(audit::verify))
        .routes(routes!(stream::stream))
        .split_for_parts();
    let doc = Arc::new(doc);
    api.route_layer(axum::middleware::from_fn(crate::metrics::track))
        .fallback(|| async { ApiError::NotFound("route") })
        .layer(axum::Extension(doc))
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

/// `GET /openapi.json`: this document.
#[utoipa::path(get, path = "/openapi.json", tag = "process", responses((status = 200, description = "The OpenAPI 3 document of every route", body = Object)))]
async fn openapi_json(
    axum::Extension(doc): axum::Extension<Arc<utoipa::openapi::OpenApi>>,
) -> axum::Json<utoipa::openapi::OpenApi> {
    axum::Json((*doc).clone())
}
