//! JSON shapes of API.md, built from aggregates and read-model rows.

use chrono::{DateTime, SecondsFormat, Utc};
use gigafactory_domain::job::Job;
use gigafactory_projections::factories::FactoryRow;
use gigafactory_projections::jobs::HeldLease;
use gigafactory_projections::runs::RunRow;
use gigafactory_projections::timeline::TimelineEntry;
use gigafactory_projections::EventRecord;
use serde_json::{json, Value};

/// RFC 3339 UTC with milliseconds.
pub fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

pub fn opt_time(t: Option<DateTime<Utc>>) -> Value {
    t.map(|t| json!(time(t))).unwrap_or(Value::Null)
}

/// A job as `GET /fleet/jobs/:id` answers it.
pub fn job(job: &Job) -> Value {
    let Some(spec) = &job.spec else {
        return Value::Null;
    };
    json!({
        "id": spec.job_id.to_string(),
        "productId": spec.product_id.as_str(),
        "title": spec.title,
        "payload": spec.payload,
        "kind": "leaf",
        "stage": job.stage,
        "priority": spec.priority,
        "requiredCapabilities": spec.required_capabilities,
        "attempts": job.attempts,
        "maxAttempts": spec.max_attempts,
        "timeoutSecs": spec.timeout_secs,
        "parentId": null,
        "dependsOn": [],
        "budget": {"usd": spec.budget_usd},
        "lease": job.lease.as_ref().map(|l| json!({
            "factoryId": l.factory_id.to_string(),
            "epoch": l.epoch,
            "expiresAt": time(l.expires_at),
            "runId": l.run_id.to_string(),
        })),
        "checkpoint": job.checkpoint,
        "progress": job.progress,
        "lastError": job.last_error,
        "availableAt": opt_time(job.available_at),
        "createdAt": opt_time(job.created_at),
        "updatedAt": opt_time(job.updated_at),
        "version": job.version,
    })
}

pub fn run(r: &RunRow) -> Value {
    json!({
        "runId": r.run_id.to_string(),
        "factoryId": r.factory_id.to_string(),
        "epoch": r.epoch,
        "outcome": r.outcome,
        "costUsd": r.cost_usd,
        "startedAt": time(r.started_at),
        "endedAt": opt_time(r.ended_at),
    })
}

pub fn timeline_entry(e: &TimelineEntry) -> Value {
    json!({
        "sequence": e.sequence,
        "type": e.event_type,
        "payload": inner_payload(&e.payload),
        "recordedAt": time(e.recorded_at),
    })
}

pub fn log_event(e: &EventRecord) -> Value {
    json!({
        "position": e.position,
        "productId": e.product_id,
        "aggregateType": e.aggregate_type,
        "aggregateId": e.aggregate_id,
        "sequence": e.sequence,
        "type": e.event_type,
        "payload": inner_payload(&e.payload_value()),
        "recordedAt": time(e.recorded_at),
    })
}

/// Events are stored as `{"<Type>": {...}}` (cqrs-es's serde form); the API shows
/// the inner object, since `type` is given beside it.
fn inner_payload(p: &Value) -> Value {
    match p {
        Value::Object(m) if m.len() == 1 => m.values().next().cloned().unwrap_or(Value::Null),
        other => other.clone(),
    }
}

/// Health by heartbeat age (SPEC §11 defaults: stale after 30 s, offline after 120 s).
pub fn health(age_secs: Option<f64>, stale_after: f64, offline_after: f64) -> &'static str {
    match age_secs {
        Some(a) if a < stale_after => "healthy",
        Some(a) if a < offline_after => "stale",
        _ => "offline",
    }
}

pub fn factory(
    f: &FactoryRow,
    leases: &[&HeldLease],
    stale_after: f64,
    offline_after: f64,
) -> Value {
    json!({
        "factoryId": f.factory_id.to_string(),
        "name": f.name,
        "productIds": f.product_ids,
        "capabilities": f.capabilities,
        "capacity": f.capacity,
        "health": health(f.heartbeat_age_secs, stale_after, offline_after),
        "load": leases.len(),
        "lastHeartbeatAt": opt_time(f.last_heartbeat_at),
        "leases": leases.iter().map(|l| json!({
            "jobId": l.job_id.to_string(),
            "productId": l.product_id,
            "epoch": l.epoch,
            "expiresAt": time(l.expires_at),
        })).collect::<Vec<_>>(),
    })
}

/// A list page.
pub fn page(items: Vec<Value>, next_cursor: Option<String>) -> Value {
    json!({"items": items, "nextCursor": next_cursor})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_follows_heartbeat_age() {
        assert_eq!(health(Some(1.0), 30.0, 120.0), "healthy");
        assert_eq!(health(Some(31.0), 30.0, 120.0), "stale");
        assert_eq!(health(Some(121.0), 30.0, 120.0), "offline");
        assert_eq!(health(None, 30.0, 120.0), "offline");
    }
}
