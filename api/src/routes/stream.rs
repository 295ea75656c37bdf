//! `GET /fleet/stream`: server-sent events, one message per appended event the caller
//! may see, in log order. `id:` is the event's position: reconnect with
//! `Last-Event-ID` to get exactly what was missed (read from the log), then live ones.
//!
//! The stream holds no database connection while it waits (it is woken after each
//! log-worker round, which LISTEN wakes whenever any process appends). A consumer too
//! slow to keep up gets an `event: resync` message and is closed rather than buffered
//! without bound. SIGTERM closes every stream.

#[allow(unused_imports)]
use crate::openapi::*;

use crate::app::AppState;
use crate::auth::{hash_token, Caller};
use crate::error::ApiError;
use crate::views;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::stream::{self, Stream};
use gigafactory_projections::credentials::find_valid;
use gigafactory_projections::log::read_after;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// A subscriber looks at the log at least this often, woken or not.
const RECHECK: Duration = Duration::from_secs(1);

#[utoipa::path(get, path = "/fleet/stream", tag = "audit", params(("Last-Event-ID" = Option<i64>, Header, description = "Resume after this position")), responses((status = 200, description = "Server-sent events: id = position, event = type, data = the event", content_type = "text/event-stream", body = String), (status = 400, description = "Malformed JSON", body = ErrorBody), (status = 401, description = "No or bad token", body = ErrorBody), (status = 403, description = "Not allowed for this token", body = ErrorBody), (status = 404, description = "Not found or not in the token's products", body = ErrorBody), (status = 422, description = "Invalid values", body = ErrorBody), (status = 503, description = "Database unavailable", body = ErrorBody)), security(("bearer" = [])))]
pub async fn stream(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let scope = caller.scope().as_filter();
    let start = match headers.get("last-event-id").and_then(|v| v.to_str().ok()) {
        Some(v) => v
            .trim()
            .parse::<i64>()
            .ok()
            .filter(|p| *p >= 0)
            .ok_or_else(|| {
                ApiError::invalid("Last-Event-ID", "Last-Event-ID must be a position")
            })?,
        // A new subscriber starts at the log's head: live events only.
        None => {
            sqlx::query_scalar("SELECT last_position FROM event_log_head")
                .fetch_one(&state.pool)
                .await?
        }
    };
    let (tx, rx) = mpsc::channel::<Event>(state.settings.sse_buffer.max(1));
    let overflowed = Arc::new(AtomicBool::new(false));
    // The token is checked again at every wake-up: a revoked or rotated-out token's
    // stream ends at once (the admin token cannot be revoked while the server runs).
    let recheck = match caller {
        Caller::Admin => None,
        _ => headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(|t| hash_token(t.trim())),
    };
    tokio::spawn(produce(
        state.clone(),
        scope,
        start,
        recheck,
        tx,
        overflowed.clone(),
    ));
    metrics::gauge!("gigafactory_sse_subscribers").increment(1.0);
    let guard = Subscriber;
    let events = stream::unfold(
        (rx, overflowed, false, guard),
        |(mut rx, overflowed, done, guard)| async move {
            if done {
                return None;
            }
            match rx.recv().await {
                Some(event) => Some((Ok(event), (rx, overflowed, false, guard))),
                None if overflowed.load(Ordering::Relaxed) => {
                    let resync = Event::default()
                        .event("resync")
                        .data("the subscriber fell behind; reconnect with Last-Event-ID");
                    Some((Ok(resync), (rx, overflowed, true, guard)))
                }
                None => None,
            }
        },
    );
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// Decrements the subscriber gauge when the response stream is dropped.
struct Subscriber;
impl Drop for Subscriber {
    fn drop(&mut self) {
        metrics::gauge!("gigafactory_sse_subscribers").decrement(1.0);
    }
}

/// Reads the log after `position` and sends what the subscriber may see, until the
/// subscriber leaves, falls behind, or the server shuts down.
async fn produce(
    state: AppState,
    scope: Option<Vec<String>>,
    mut position: i64,
    token_hash: Option<String>,
    tx: mpsc::Sender<Event>,
    overflowed: Arc<AtomicBool>,
) {
    loop {
        if let Some(hash) = &token_hash {
            let valid = match state.pool.acquire().await {
                Ok(mut conn) => find_valid(&mut conn, hash)
                    .await
                    .map(|c| c.is_some())
                    .unwrap_or(true),
                Err(_) => true,
            };
            if !valid {
                return;
            }
        }
        // Register before reading, so a round finishing in between is not missed.
        let woken = state.positioned.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        let batch = match state.pool.acquire().await {
            Ok(mut conn) => read_after(&mut conn, position, 500, scope.as_deref()).await,
            Err(e) => Err(e),
        };
        match batch {
            Ok(events) if !events.is_empty() => {
                // Every position up to the last read is past, visible or not.
                let last = events.last().and_then(|e| e.position).unwrap_or(position);
                for e in &events {
                    let message = Event::default()
                        .id(e.position.unwrap_or_default().to_string())
                        .event(&e.event_type)
                        .data(views::log_event(e).to_string());
                    match tx.try_send(message) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            overflowed.store(true, Ordering::Relaxed);
                            return;
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => return,
                    }
                }
                position = last;
                continue;
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "stream could not read the log"),
        }
        tokio::select! {
            _ = woken => {}
            _ = tokio::time::sleep(RECHECK) => {}
            _ = tx.closed() => return,
            _ = state.shutdown.cancelled() => return,
        }
    }
}
